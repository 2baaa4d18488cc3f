"""Teacher -> compressed artifact, once. Never imports ``pocketpilot.lsp_server`` or pygls.

Public API: :func:`compress`, :func:`load_artifact`, :func:`list_artifacts`,
:func:`resolve_artifact`, :func:`verify_artifact`, :func:`parse_spec`, :data:`METHODS`,
:data:`PACKAGED`. Names are imported on first use, so that importing a torch-free part
(for example :mod:`pocketpilot.teachers` for ``--help``) stays fast.
"""

from importlib import import_module

_EXPORTS = {
    "CompressResult": "api", "compress": "api", "load_artifact": "pocketpilot.runtime.loader",
    "get_active": "pocketpilot.store", "home": "pocketpilot.store", "list_artifacts": "pocketpilot.store",
    "resolve_artifact": "pocketpilot.store", "set_active": "pocketpilot.store", "verify_artifact": "pocketpilot.store",
    "METHODS": "methods", "get_method": "methods",
    "DEFAULT_TEACHER": "pocketpilot.teachers", "PACKAGED": "pocketpilot.teachers", "parse_spec": "pocketpilot.teachers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = _EXPORTS[name]
        return getattr(import_module(mod if "." in mod else f"pocketpilot.compression.{mod}"), name)
    raise AttributeError(f"module 'pocketpilot.compression' has no attribute {name!r}")

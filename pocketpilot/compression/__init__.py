"""Teacher -> compressed artifact, once. Never imports ``pocketpilot.lsp_server`` or pygls.

Public API: :func:`compress`, :func:`load_artifact`, :func:`list_artifacts`,
:func:`resolve_artifact`, :func:`verify_artifact`, :func:`parse_spec`, :data:`METHODS`,
:data:`PACKAGED`. Names are imported on first use, so that importing a torch-free part
(for example :mod:`pocketpilot.compression.teachers` for ``--help``) stays fast.
"""

from importlib import import_module

_EXPORTS = {
    "CompressResult": "api", "compress": "api", "load_artifact": "api",
    "get_active": "artifacts", "home": "artifacts", "list_artifacts": "artifacts",
    "resolve_artifact": "artifacts", "set_active": "artifacts", "verify_artifact": "artifacts",
    "METHODS": "quantize", "get_method": "quantize",
    "DEFAULT_TEACHER": "teachers", "PACKAGED": "teachers", "parse_spec": "teachers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"pocketpilot.compression.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pocketpilot.compression' has no attribute {name!r}")

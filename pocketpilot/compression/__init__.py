"""Teacher -> compressed artifact, once. Never imports ``pocketpilot.lsp_server`` or pygls.

Public API: :func:`compress` (and its :class:`CompressResult`), the method registry
(:data:`METHODS`, :func:`get_method`). The artifact store is :mod:`pocketpilot.store`, teacher
specs are :mod:`pocketpilot.teachers`. Names are imported on first use, so that importing a
torch-free part (for example :mod:`pocketpilot.compression.methods` for ``--help``) stays fast.
"""

from importlib import import_module

_EXPORTS = {"CompressResult": "build", "compress": "api", "METHODS": "methods", "get_method": "methods"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # lazy: torch (api, build)
        return getattr(import_module(f"pocketpilot.compression.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pocketpilot.compression' has no attribute {name!r}")

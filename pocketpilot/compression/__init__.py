"""Teacher -> compressed artifact, once. Never imports ``pocketpilot.lsp_server`` or pygls.

Public API: :func:`compress`, :func:`list_artifacts`, :func:`resolve_artifact`,
:func:`verify_artifact`, :func:`parse_spec`, :data:`METHODS`, :data:`PACKAGED`.
"""

from pocketpilot.compression.api import CompressResult, compress, load_artifact
from pocketpilot.compression.artifacts import (
    get_active,
    home,
    list_artifacts,
    resolve_artifact,
    set_active,
    verify_artifact,
)
from pocketpilot.compression.quantize import METHODS, get_method
from pocketpilot.compression.teachers import DEFAULT_TEACHER, PACKAGED, parse_spec

__all__ = [
    "CompressResult", "compress", "load_artifact", "get_active", "home", "list_artifacts",
    "resolve_artifact", "set_active", "verify_artifact", "METHODS", "get_method",
    "DEFAULT_TEACHER", "PACKAGED", "parse_spec",
]

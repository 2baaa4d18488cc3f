"""User-facing errors: one line that says what went wrong and what to do."""


class PocketPilotError(Exception):
    """An error caused by the user's input or environment.

    The message is a single line meant to be shown as-is (CLI stderr, LSP
    ``window/showMessage``); it says what to do next. Subclasses refine the kind.
    """


class UnknownTeacherError(PocketPilotError, ValueError):
    """A teacher spec matched none of the accepted forms."""


class UnknownMethodError(PocketPilotError, ValueError):
    """A quantization method name is not in the registry."""


class FetchError(PocketPilotError):
    """A teacher could not be fetched (no network, hash mismatch, missing file)."""


class ArtifactError(PocketPilotError):
    """An artifact is missing, partial or corrupt."""


class PositionError(PocketPilotError, ValueError):
    """A cursor position lies outside the document."""


class DocumentNotOpenError(PocketPilotError, ValueError):
    """A request names a document the client never opened (the server reads no files for it)."""


class MissingDependencyError(PocketPilotError, ImportError):
    """An optional package a feature needs is not installed; the message gives the pip command."""


class CustomCodeError(PocketPilotError):
    """A model folder needs its own Python code to load (``auto_map`` for an architecture transformers lacks).

    PocketPilot never runs code shipped with a model (``trust_remote_code=False`` everywhere).
    """

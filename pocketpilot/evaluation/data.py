"""Where the evaluation data sets live (CodeXGLUE, ReCode): ``$POCKETPILOT_DATA`` or ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

from pocketpilot.errors import PocketPilotError

#: environment variable naming the data folder
DATA_ENV = "POCKETPILOT_DATA"


def data_dir(holds: str = "codexglue_line/ and recode/") -> Path:
    """The shared evaluation-data folder: ``$POCKETPILOT_DATA`` when set, else ``shared/data`` beside the project.

    Args:
        holds: what the caller needs from it, for the error message.

    Raises:
        PocketPilotError: the folder does not exist (the message names the variable to set).
    """
    env = os.environ.get(DATA_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not path.is_dir():
        raise PocketPilotError(f"evaluation data folder not found: {path}; set {DATA_ENV} to the folder holding {holds}")
    return path

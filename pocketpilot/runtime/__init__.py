"""Load an artifact and complete code. No LSP, no training."""

from pocketpilot.runtime.engine import Completion, CompletionEngine, EngineSettings
from pocketpilot.runtime.loader import LoadedModel, load_model_folder

__all__ = ["Completion", "CompletionEngine", "EngineSettings", "LoadedModel", "load_model_folder"]

"""Load an artifact and complete code. No LSP, no training."""

from pocketpilot.runtime.settings import EngineSettings


def __getattr__(name: str):
    # torch-heavy modules load lazily, so `import pocketpilot.runtime.settings` stays cheap
    if name in ("Completion", "CompletionEngine"):
        from pocketpilot.runtime import engine

        return getattr(engine, name)
    if name in ("LoadedModel", "load_model_folder"):
        from pocketpilot.runtime import loader

        return getattr(loader, name)
    raise AttributeError(name)

__all__ = ["Completion", "CompletionEngine", "EngineSettings", "LoadedModel", "load_model_folder"]

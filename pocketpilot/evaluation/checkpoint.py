"""Resumable evaluation: every model output is appended to a JSONL checkpoint as it is made.

A long evaluation (Qwen2.5-Coder-1.5B in float32 takes about 29 s per completion on 2 cores,
so 500 tasks take 4 hours) can be stopped with Ctrl-C, or split over several sittings, and
the same ``pocketpilot eval ... --checkpoint FILE`` command continues where it stopped: the
outputs already in FILE are reused, only the missing ones are computed.

An output is reused only for the same model weights (:func:`model_fingerprint`), the same kind
of request (``lines``, ``humaneval`` ...), the same input text and the same engine settings, so a
rebuilt artifact, a changed task or other settings are computed afresh. Each record is one JSON
line written with flush and fsync; a line cut short by a crash or a full disk is skipped when
the file is read back (and counted in :attr:`Checkpoint.skipped`), so nothing already kept is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pocketpilot.errors import PocketPilotError


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def model_fingerprint(folder: str | Path) -> str:
    """What identifies a model's weights, as a sha256 hex digest (64 characters).

    - an artifact (``manifest.json``): the sha256 of every weight file the manifest records;
    - a converted teacher (``teacher.json``): its spec and the source GGUF's sha256;
    - any other folder: the name, size and modification time of each ``*.safetensors`` file.

    The ``config.json`` and ``quantization.json`` texts are included in every case.

    Raises:
        PocketPilotError: ``folder`` has no weights and no manifest (nothing to identify).
    """
    folder = Path(folder)
    parts: dict[str, Any] = {}
    for name in ("config.json", "quantization.json"):
        p = folder / name
        if p.is_file():
            parts[name] = p.read_text()
    manifest, teacher = folder / "manifest.json", folder / "teacher.json"
    if manifest.is_file():
        try:
            parts["files"] = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            raise PocketPilotError(f"{manifest} is unreadable or has no 'files'; rebuild the artifact") from None
    elif teacher.is_file():
        try:
            info = json.loads(teacher.read_text())
            parts["teacher"] = [info["spec"], info.get("gguf_sha256") or info.get("source")]
        except (OSError, ValueError, KeyError, TypeError):
            raise PocketPilotError(f"{teacher} is unreadable; delete {folder} and run the command again") from None
    else:
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise PocketPilotError(f"{folder} has no *.safetensors weights to fingerprint")
        parts["weights"] = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]
    return _digest(parts)


class Checkpoint:
    """An append-only JSONL file of model outputs, keyed by model, kind and input.

    Each line is ``{"key": sha256 hex, "value": ...}``. Reading keeps the last value of each key.

    Attributes:
        path: the JSONL file.
        skipped: lines that could not be parsed when the file was read (a cut-short last line).
        hits, new: outputs reused from the file, and added to it, since it was opened.

    Raises:
        PocketPilotError: the file exists but cannot be read, or ``path`` is a folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped = self.hits = self.new = 0
        self._values: dict[str, Any] = {}
        self._cut_short = False  # the file's last line has no newline (a write was cut short)
        if self.path.is_dir():
            raise PocketPilotError(f"checkpoint {self.path} is a folder; pass a file path such as {self.path}/eval.jsonl")
        if self.path.exists():
            try:
                text = self.path.read_text(encoding="utf-8")
                lines = text.splitlines()
                self._cut_short = bool(text) and not text.endswith("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise PocketPilotError(f"cannot read checkpoint {self.path} ({exc}); pass another --checkpoint file") from None
            for line in lines:
                try:
                    row = json.loads(line)
                    self._values[row["key"]] = row["value"]
                except (ValueError, KeyError, TypeError):
                    self.skipped += 1

    def __len__(self) -> int:
        return len(self._values)

    def scope(self, model: str, kind: str, settings: Any = None) -> "CheckpointScope":
        """A view of the outputs of one model (:func:`model_fingerprint`) for one kind of request,
        under ``settings`` (any JSON value: engine settings, generation limits)."""
        return CheckpointScope(self, _digest([model, kind, settings]))

    def get(self, key: str) -> Any:
        if key in self._values:
            self.hits += 1
            return self._values[key]
        return None

    def put(self, key: str, value: Any) -> None:
        """Append one record and make it durable (flush + fsync).

        Raises:
            PocketPilotError: the file cannot be written (full disk, read-only folder); what was
                already written stays valid.
        """
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                # a line cut short earlier stays alone on its line, so this one parses
                f.write(("\n" if self._cut_short else "") + line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise PocketPilotError(f"cannot write checkpoint {self.path} ({exc.strerror or exc}); free disk space "
                                   f"and run the same command again: the outputs kept so far are reused") from None
        self._cut_short = False
        self._values[key] = value
        self.new += 1

    def summary(self) -> str:
        """One line: how many outputs were reused and added, and how many bad lines were skipped."""
        bad = f", {self.skipped} unreadable line(s) skipped" if self.skipped else ""
        return f"checkpoint {self.path}: {self.hits} output(s) reused, {self.new} added{bad}"


class CheckpointScope:
    """The outputs of one model for one kind of request, keyed by their input (any JSON value)."""

    def __init__(self, checkpoint: Checkpoint, prefix: str) -> None:
        self.checkpoint, self.prefix = checkpoint, prefix

    def _key(self, item: Any) -> str:
        return _digest([self.prefix, item])

    def get(self, item: Any) -> Any:
        """The stored output for ``item``, or ``None`` (counted in :attr:`Checkpoint.hits` when found)."""
        return self.checkpoint.get(self._key(item))

    def put(self, item: Any, value: Any) -> None:
        """Store ``value`` (JSON-serializable) for ``item``; see :meth:`Checkpoint.put`."""
        self.checkpoint.put(self._key(item), value)


class CheckpointedEngine:
    """A :class:`pocketpilot.runtime.CompletionEngine` whose single-line completions are kept in
    a checkpoint and reused (with the latency measured when they were made).

    Only ``complete(prefix, suffix, allow_block=...)`` is wrapped, which is what the ``lines``
    and ``codexglue`` suites call; the reused count is :attr:`reused`.
    """

    FIELDS = ("text", "raw", "prompt_tokens", "new_tokens", "prefill_ms", "decode_ms")

    def __init__(self, engine, scope: CheckpointScope) -> None:
        self.engine, self.scope, self.reused = engine, scope, 0

    def complete(self, prefix: str, suffix: str = "", *, allow_block: bool = True, **kw):
        from pocketpilot.runtime.engine import Completion  # lazy: torch (runtime.engine)

        if kw:  # anything else changes the output in ways the key does not capture
            return self.engine.complete(prefix, suffix, allow_block=allow_block, **kw)
        item = [prefix, suffix, allow_block]
        stored = self.scope.get(item)
        if isinstance(stored, dict) and all(f in stored for f in self.FIELDS):
            self.reused += 1
            return Completion(**{f: stored[f] for f in self.FIELDS})
        c = self.engine.complete(prefix, suffix, allow_block=allow_block)
        self.scope.put(item, {f: getattr(c, f) for f in self.FIELDS})
        return c

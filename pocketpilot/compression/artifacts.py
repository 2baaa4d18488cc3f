"""The user cache: teacher folders, artifact folders, manifests, atomic writes, verification.

Layout under :func:`home` (``$POCKETPILOT_HOME``, else platformdirs' user cache dir)::

    teachers/<slug>/        plain Hugging Face folders converted from packaged or .gguf teachers
    artifacts/<id>/         one compressed model each: safetensors, tokenizer, manifest.json
    active.json             {"artifact": "<id>"}: what `serve` and `complete` use by default
    tmp/                    partial writes; renamed into place only when complete
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pocketpilot.errors import ArtifactError, PocketPilotError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def home() -> Path:
    """Root of PocketPilot's cache: ``$POCKETPILOT_HOME`` or platformdirs' user cache dir."""
    env = os.environ.get("POCKETPILOT_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("pocketpilot", appauthor=False))


def teachers_dir() -> Path:
    """Folder of converted teacher models."""
    return home() / "teachers"


def artifacts_dir() -> Path:
    """Folder of compressed artifacts."""
    return home() / "artifacts"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    """Total size in bytes of the files in ``folder`` matching ``pattern`` (recursive)."""
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def weight_files(folder: Path) -> list[Path]:
    """The ``*.safetensors`` files of a model folder, sorted."""
    return sorted(folder.glob("*.safetensors"))


def disk_error(exc: OSError, where: Path) -> PocketPilotError:
    """A one-line user error for an ``OSError`` raised while writing under ``where``."""
    if exc.errno == errno.ENOSPC:
        return PocketPilotError(
            f"out of disk space while writing {where}; free some space or set POCKETPILOT_HOME to a bigger disk"
        )
    return PocketPilotError(f"cannot write {where}: {exc.strerror or exc}; check permissions or set POCKETPILOT_HOME")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a folder elsewhere and move it to ``final`` only if the block succeeds.

    Yields a fresh temporary folder under ``home()/tmp`` (same filesystem, so the final
    ``rename`` is atomic). On any exception the temporary folder is deleted and ``final`` is
    left as it was; an existing ``final`` is replaced only after the new one is complete.

    Raises:
        PocketPilotError: the disk is full or not writable (other exceptions pass through).
    """
    tmp_root = home() / "tmp"
    tmp = tmp_root / f"{final.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        tmp.mkdir(parents=True)
        yield tmp
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if final.exists():
            old = tmp_root / f"{final.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(exc, final) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex[:6]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, path) from exc


def rebuild_command(manifest: dict | None, artifact_id: str) -> str:
    """The command that rebuilds an artifact, from its manifest when readable.

    A recipe may carry its own ``command`` (distilled artifacts do); else it is
    ``pocketpilot compress --teacher SPEC --method NAME --force``.
    """
    if manifest and isinstance(manifest.get("recipe"), dict) and manifest["recipe"].get("command"):
        return manifest["recipe"]["command"]
    if manifest and "teacher" in manifest and "recipe" in manifest:
        return (
            f"pocketpilot compress --teacher {manifest['teacher']['spec']} "
            f"--method {manifest['recipe']['method']} --force"
        )
    return f"pocketpilot compress --force (artifact {artifact_id})"


def read_manifest(folder: Path) -> dict:
    """Parse ``manifest.json`` of an artifact folder.

    Raises:
        ArtifactError: missing or unreadable manifest (the message names the rebuild command).
    """
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            f"artifact {folder.name} is incomplete (no {MANIFEST}); rebuild it with: {rebuild_command(None, folder.name)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"artifact {folder.name} has an unreadable {MANIFEST} ({exc}); rebuild it with: "
            f"{rebuild_command(None, folder.name)}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"artifact {folder.name} has an unknown manifest schema; rebuild it with: {rebuild_command(None, folder.name)}"
        )
    return manifest


def verify_artifact(folder: Path) -> dict:
    """Check an artifact folder against its manifest; return the manifest.

    Every weight file listed in the manifest must exist with the recorded size and sha256,
    and no unlisted weight file may be present.

    Raises:
        ArtifactError: the folder is missing, partial or corrupt; the message gives the
            ``pocketpilot compress ... --force`` command that rebuilds it.
    """
    if not folder.is_dir():
        raise ArtifactError(f"no artifact at {folder}; create one with: pocketpilot compress")
    manifest = read_manifest(folder)
    files: dict = manifest.get("files", {})
    fix = rebuild_command(manifest, folder.name)
    problem = None
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            problem = f"{name} is missing"
        elif path.stat().st_size != meta["bytes"]:
            problem = f"{name} has {path.stat().st_size} bytes, expected {meta['bytes']}"
        elif sha256_file(path) != meta["sha256"]:
            problem = f"{name} fails its sha256 check"
        if problem:
            break
    if problem is None:
        extra = [p.name for p in weight_files(folder) if p.name not in files]
        if extra:
            problem = f"unexpected weight file {extra[0]}"
        elif not files:
            problem = "the manifest lists no weight files"
    if problem:
        raise ArtifactError(f"artifact {folder.name} is corrupt: {problem}; rebuild it with: {fix}")
    return manifest


def file_records(folder: Path) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` for every weight file in ``folder``."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in weight_files(folder)}


def active_path() -> Path:
    return home() / "active.json"


def get_active() -> str | None:
    """Id of the active artifact, or ``None`` when none was set (or the pointer is unreadable)."""
    try:
        return json.loads(active_path().read_text()).get("artifact")
    except (OSError, ValueError, AttributeError):
        return None


def set_active(artifact_id: str) -> None:
    """Make ``artifact_id`` the default for ``serve`` and ``complete``."""
    home().mkdir(parents=True, exist_ok=True)
    write_json(active_path(), {"artifact": artifact_id})


def list_artifacts() -> list[dict]:
    """Summaries of the cached artifacts, sorted by id.

    Each dict has ``id``, ``folder``, ``active`` (bool), ``ok`` (manifest readable), and, when
    readable, ``teacher``, ``method``, ``artifact_bytes``, ``teacher_bytes``, ``created_at``,
    ``metrics``; an unreadable one has ``error`` instead. Weight hashes are not re-checked here.
    """
    active = get_active()
    rows = []
    root = artifacts_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        row: dict = {"id": folder.name, "folder": str(folder), "active": folder.name == active}
        try:
            m = read_manifest(folder)
            row.update(
                ok=True,
                teacher=m["teacher"]["spec"],
                method=m["recipe"]["method"],
                artifact_bytes=m["artifact_bytes"],
                teacher_bytes=m["teacher"]["bytes"],
                created_at=m["created_at"],
                metrics=m.get("metrics", {}),
            )
        except (ArtifactError, KeyError) as exc:
            row.update(ok=False, error=str(exc))
        rows.append(row)
    return rows


def resolve_artifact(name: str | None = None) -> Path:
    """Folder of an artifact given its id, a folder path, or ``None`` for the active one.

    Raises:
        ArtifactError: no such artifact, or no artifact at all (says how to create one).
    """
    if name:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        folder = artifacts_dir() / name
        if folder.is_dir():
            return folder
        known = ", ".join(r["id"] for r in list_artifacts()) or "none yet"
        raise ArtifactError(f"unknown artifact {name!r} (cached: {known}); list them with: pocketpilot list")
    active = get_active()
    if active and (artifacts_dir() / active).is_dir():
        return artifacts_dir() / active
    raise ArtifactError("no compressed model yet; create one with: pocketpilot compress")


def read_json_or_none(path: Path) -> dict | None:
    """Parse a JSON file, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

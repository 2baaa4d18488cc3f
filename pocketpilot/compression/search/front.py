"""The stored front: reading a search back, picking a point for a budget, building it, and the table and plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pocketpilot.compression.api import compress
from pocketpilot.compression.build import CompressResult
from pocketpilot.compression.search.builder import Builder
from pocketpilot.compression.search.models import non_dominated
from pocketpilot.compression.search.run import SEARCH_FORMAT
from pocketpilot.compression.search.space import StudentConfig
from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.store import (
    Progress,
    artifacts_dir,
    home,
    no_progress,
    read_manifest,
    set_active,
    verify_artifact,
)
from pocketpilot.teachers import DEFAULT_TEACHER, fetch_teacher, parse_spec

# --------------------------------------------------------------------------- picking


def load_search(teacher: str | None = None) -> dict | None:
    """The stored search of a teacher, by spec as given to ``search`` or by slug (None: the default teacher),
    or None when there is none. Never fetches anything.

    Raises:
        PocketPilotError: a stored state is not valid JSON.
    """
    name = teacher or DEFAULT_TEACHER
    folder = home() / "search"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except ValueError:
            raise PocketPilotError(f"the stored search {path} is corrupt; delete it or run `pocketpilot search --fresh`") from None
        if isinstance(state, dict) and state.get("format") == SEARCH_FORMAT and name in (state.get("teacher"),
                                                                                          state.get("teacher_slug")):
            return state
    return None


@dataclass
class Pick:
    """The point chosen for a budget.

    Attributes:
        key: configuration key; artifact_id: its artifact (None: the float32 teacher itself).
        measured: its measurements (ms, bytes, ES).
        meets_budget: its measured one-line latency is within the budget.
        reason: one line a person can read.
    """

    key: str
    artifact_id: str | None
    measured: dict
    meets_budget: bool
    reason: str
    candidates: int = 0
    config: dict = field(default_factory=dict)


def pick_for_budget(state: dict, budget_ms: float, max_bytes: int | None = None, min_es_share: float = 0.9,
                    floor_share: float = 0.5) -> Pick:
    """The best measured point for a latency budget and a size limit.

    Among measured points within ``max_bytes`` that keep at least ``floor_share`` of the best
    measured ES (a student that lost more than that is no code completer, however fast): the
    highest ES whose one-line latency is within ``budget_ms`` (ties: faster). If none is, the
    fastest point whose ES is at least ``min_es_share`` of the best measured ES, with
    ``meets_budget`` False.

    Raises:
        PocketPilotError: a non-positive budget, or no measured point within the size limit.
    """
    if budget_ms <= 0:
        raise PocketPilotError(f"latency budget must be positive, got {budget_ms} ms")
    rows = [r for r in state.get("evaluated", []) if max_bytes is None or r["measured"]["bytes"] <= max_bytes]
    if not rows:
        smallest = min((r["measured"]["bytes"] for r in state.get("evaluated", [])), default=None)
        raise PocketPilotError(
            "no measured point within " + (f"{max_bytes / 1e6:.0f} MB" if max_bytes else "the limits")
            + (f" (the smallest is {smallest / 1e6:.0f} MB)" if smallest else "")
            + "; run `pocketpilot search` with that --max-mb to measure points under it")
    top = max(r["measured"]["es"] for r in rows)
    within = [r for r in rows if r["measured"]["line_ms"] <= budget_ms and r["measured"]["es"] >= floor_share * top]
    if within:
        best = max(within, key=lambda r: (r["measured"]["es"], -r["measured"]["line_ms"]))
        reason = (f"{best['key']}: best measured ES ({best['measured']['es']:.2f}) of {len(within)} point(s) within "
                  f"{budget_ms:.0f} ms ({best['measured']['line_ms']:.0f} ms, {best['measured']['bytes'] / 1e6:.0f} MB)")
    else:
        good = [r for r in rows if r["measured"]["es"] >= min_es_share * top]
        best = min(good, key=lambda r: r["measured"]["line_ms"])
        reason = (f"no measured point keeping {floor_share:.0%} of the best ES is within {budget_ms:.0f} ms; "
                  f"{best['key']} is the fastest keeping {min_es_share:.0%} of the best ES "
                  f"({best['measured']['es']:.2f}, {best['measured']['line_ms']:.0f} ms)")
    return Pick(best["key"], best["artifact_id"], best["measured"], bool(within), reason, len(rows), best["config"])


def materialize(state: dict, pick: Pick, progress: Progress | None = None, activate: bool = True) -> CompressResult:
    """The artifact of a picked point, rebuilt if it was deleted; made active. Returns ``CompressResult``.

    The float32 teacher itself (no artifact) is written as the ``none`` artifact.

    Raises:
        PocketPilotError: the errors of compress / distill while rebuilding (teacher fetch, disk).
    """
    progress = progress or no_progress
    if pick.artifact_id is None:
        return compress(state["teacher"], "none", eval_tasks=0, activate=activate, progress=progress)
    final = artifacts_dir() / pick.artifact_id
    try:
        manifest = verify_artifact(final)
        reused = True
    except ArtifactError:
        progress(f"rebuilding {pick.artifact_id}", None)
        teacher_obj = fetch_teacher(parse_spec(state["teacher"]), progress)
        Builder(teacher_obj, progress).build(StudentConfig(**pick.config))
        manifest = read_manifest(final)
        reused = False
    if activate:
        set_active(pick.artifact_id)
    return CompressResult(pick.artifact_id, final, reused, manifest)


# --------------------------------------------------------------------------- output


def table(state: dict) -> str:
    """Markdown table of the measured points, front points marked with ``*``."""
    front = set(state.get("front", []))
    lines = ["| | configuration | layers | FFN | method | KD steps | size MB | prefill ms | decode ms/tok | one-line ms "
             "(predicted) | ES (predicted) | EM |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(state.get("evaluated", []), key=lambda r: r["measured"]["line_ms"]):
        c, m, p = r["config"], r["measured"], r["predicted"]
        pes = "-" if p.get("es") is None else f"{p['es']:.1f}"
        lines.append(f"| {'*' if r['key'] in front else ''} | {r['key']} | {c['layers']} ({c['pick']}) | {c['ffn']} | "
                     f"{c['quant']} | {c['steps']} | {m['bytes'] / 1e6:.0f} | {m['prefill_ms']:.0f} | "
                     f"{m['decode_ms_per_token']:.1f} | {m['line_ms']:.0f} ({p['line_ms']:.0f}) | {m['es']:.2f} ({pes}) | "
                     f"{m['em']:.1f} |")
    return "\n".join(lines)


def plot(state: dict, path: Path) -> Path:
    """PNG: predicted ES against predicted one-line latency for the predicted front (grey), measured points
    (marker area = size on disk) and the measured Pareto front (red)."""
    import matplotlib  # lazy: matplotlib (only for the plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib

    pts = state.get("evaluated", [])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    pf = [r for r in state.get("predicted_front", []) if not r.get("measured") and r.get("es") is not None]
    if pf:
        ax.scatter([r["line_ms"] for r in pf], [r["es"] for r in pf], s=10, c="lightgrey",
                   label="predicted front (not built)")
    biggest = max((r["measured"]["bytes"] for r in pts), default=1)
    front = set(state.get("front", []))
    for r in pts:
        m = r["measured"]
        ax.scatter(m["line_ms"], m["es"], s=30 + 600 * m["bytes"] / biggest, alpha=0.6, edgecolors="black",
                   c="tab:red" if r["key"] in front else "tab:blue")
        ax.annotate(f"{r['key']}\n{m['bytes'] / 1e6:.0f} MB", (m["line_ms"], m["es"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=6)
    two_d = non_dominated([(r["measured"]["line_ms"], r["measured"]["es"]) for r in pts], (False, True))
    f2 = sorted((pts[i]["measured"]["line_ms"], pts[i]["measured"]["es"]) for i in two_d)
    if f2:
        ax.step([x for x, _ in f2], [y for _, y in f2], where="post", color="tab:red", linewidth=1,
                label="measured front (latency, ES)")
    ax.set_xscale("log")
    ax.set_xlabel("one-line completion latency, ms (512-token prefill + 12 tokens; log scale)")
    ax.set_ylabel("edit similarity (held-out stdlib tasks)")
    ax.set_title(f"{state.get('teacher')}: measured students (red = Pareto-optimal in latency, size, ES)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

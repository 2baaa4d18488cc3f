"""Readable output of ``pocketpilot eval``: a Markdown report and PNG plots (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

from pocketpilot.errors import PocketPilotError


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when lower ``x`` (latency) and higher ``y`` (ES) are better.

    A point is dominated if another is at least as good in both and strictly better in one.
    Returned in order of increasing ``x``.
    """
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i])


def _fmt(v, spec: str = ".2f", scale: float = 1.0, none: str = "-") -> str:
    return none if v is None else format(v / scale, spec)


def _mb(v) -> str:
    return _fmt(v, ".1f", 1e6)


def _latency(m: dict) -> float | None:
    """One-line p50 (ms) on the same tasks as the ES: the line-completion suite's, else the cost suite's."""
    return (m.get("lines") or {}).get("latency_ms_p50") or (m.get("cost") or {}).get("latency_ms_p50")


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib  # lazy: matplotlib takes about a second to import and only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the backend

    return plt


def plot_pareto(result: dict, path: Path) -> Path | None:
    """ES against one-line p50 latency per model, marker area proportional to size on disk; front drawn.

    Returns the PNG path, or ``None`` when fewer than one model has both figures.
    """
    plt = _pyplot()

    rows = [(label, _latency(m), (m.get("lines") or {}).get("es"), m.get("size_bytes") or 0)
            for label, m in result["models"].items()]
    rows = [r for r in rows if r[1] is not None and r[2] is not None]
    if not rows:
        return None
    biggest = max(r[3] for r in rows) or 1
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, lat, es, size in rows:
        ax.scatter(lat, es, s=40 + 900 * size / biggest, alpha=0.55, edgecolors="black")
        ax.annotate(f"{label}\n{size / 1e6:.0f} MB", (lat, es), textcoords="offset points", xytext=(6, 6), fontsize=7)
    front = pareto_front([(r[1], r[2]) for r in rows])
    ax.step([rows[i][1] for i in front], [rows[i][2] for i in front], where="post", color="tab:red",
            linewidth=1, label="Pareto front")
    lo, hi = min(r[2] for r in rows), max(r[2] for r in rows)
    pad = max(1.0, (5.0 - (hi - lo)) / 2)  # ES differences under a point still show as such
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xscale("log")
    ax.set_xlabel("one-line completion p50 latency, ms (log)")
    ax.set_ylabel("edit similarity (ES, 0-100)")
    ax.set_title("PocketPilot: quality vs latency (marker area = size on disk)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_recode(result: dict, path: Path) -> Path | None:
    """Grouped bars: nominal pass@1 and mean perturbed pass@1 per ReCode category, per model (None if no ReCode)."""
    plt = _pyplot()

    models = {k: m["recode"] for k, m in result["models"].items() if m.get("recode")}
    if not models:
        return None
    cats = list(next(iter(models.values()))["categories"])
    groups = ["nominal"] + cats
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    width = 0.8 / len(models)
    for i, (label, rec) in enumerate(models.items()):
        vals = [rec["nominal"]] + [rec["categories"][c]["mean"] for c in cats]
        ax.bar([g + i * width for g in range(len(groups))], vals, width, label=label)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("pass@1, % (greedy)")
    ax.set_title("ReCode: HumanEval pass@1, nominal and mean over each category's perturbations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown(result: dict, plots: dict[str, Path] | None = None, relative_to: Path | None = None) -> str:
    """The report as Markdown: configuration, one table per suite, ratios to the first model, plots.

    Args:
        result: :func:`pocketpilot.evaluation.runner.run_eval`'s dict.
        plots: ``{plot name: PNG path}`` to embed.
        relative_to: write plot paths relative to this folder when they lie under it.
    """
    models = result["models"]
    out = _header(result)
    for section in (_lines_section, _codexglue_section, _humaneval_section, _summarize_section, _cost_section):
        out += section(models)
    out += _ratios_section(models, result.get("ratios") or {})
    for name, path in (plots or {}).items():
        full = path.resolve()
        shown = full.relative_to(relative_to) if relative_to and full.is_relative_to(relative_to) else path
        out += [f"![{name}]({shown})", ""]
    return "\n".join(out)


def _header(result: dict) -> list[str]:
    """Title, suites, seed, limit, wall time (s), inputs and what the checkpoint supplied."""
    cfg, models = result["config"], result["models"]
    out = ["# PocketPilot evaluation", ""]
    out.append(f"Suites: {', '.join(cfg['suites'])}; seed {cfg['seed']}"
               + (f"; limit {cfg['limit']}" if cfg.get("limit") else "") + f"; wall time {result.get('wall_s', 0):.0f} s.")
    for key in ("tasks", "codexglue", "humaneval", "summarize"):
        if cfg.get(key):
            out.append(f"- {key}: {cfg[key]}")
    if cfg.get("checkpoint"):
        reused = sum((m.get(s) or {}).get("reused", 0) for m in models.values()
                     for s in ("lines", "codexglue", "summarize", "cost"))
        out.append(f"- checkpoint: {cfg['checkpoint']} ({reused} line completions, docstrings and cost results taken from "
                   f"it, made by earlier runs or for a repeated input in this one, with the latencies measured "
                   f"when each was made)")
    out.append("")
    return out


def _lines_section(models: dict) -> list[str]:
    """The line-completion table (ES, EM %, p50 / p95 ms, decode ms/token), or nothing."""
    if not any(m.get("lines") for m in models.values()):
        return []
    out = ["## Line completion on raw code", "",
           "| model | weights MB | ES | EM % | p50 ms | p95 ms | decode ms/token |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in models.items():
        r = m.get("lines") or {}
        if r:
            out.append(f"| {label} | {_mb(m.get('size_bytes'))} | {_fmt(r['es'])} | {_fmt(r['em'])} | "
                       f"{_fmt(r['latency_ms_p50'], '.0f')} | {_fmt(r['latency_ms_p95'], '.0f')} | "
                       f"{_fmt(r.get('decode_ms_per_token'), '.1f')} |")
    return out + [""]


def _codexglue_section(models: dict) -> list[str]:
    """The CodeXGLUE table (ES, EM %, p50 ms) with the published figures, or nothing."""
    if not any(m.get("codexglue") for m in models.values()):
        return []
    out = ["## CodeXGLUE line completion (official de-normalization and metrics)", "",
           "| model | ES | EM % | p50 ms |", "|---|---:|---:|---:|"]
    for label, m in models.items():
        r = m.get("codexglue") or {}
        if r:
            out.append(f"| {label} | {_fmt(r['es'])} | {_fmt(r['em'])} | {_fmt(r.get('latency_ms_p50'), '.0f')} |")
    return out + ["", "Published on the test split (EM / ES): CodeGPT-small-py 42.18 / 71.23, UniXcoder 43.12 / 72.00 "
                  "(fine-tuned on py150; the models here are zero-shot on its tokenized format).", ""]


def _humaneval_section(models: dict) -> list[str]:
    """The HumanEval / ReCode table (pass@1 %, per-category mean and drop, worst-case drop), or nothing."""
    if not any(m.get("humaneval") or m.get("recode") for m in models.values()):
        return []
    cats: list[str] = []
    for m in models.values():
        for c in (m.get("recode") or {}).get("categories", {}):
            if c not in cats:
                cats.append(c)
    cols = ["HumanEval"] + [f"{c} mean (drop)" for c in cats] + (["worst-case drop"] if cats else [])
    out = ["## HumanEval and ReCode robustness (pass@1 %, greedy)", "",
           "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, m in models.items():
        he, rec = m.get("humaneval") or {}, m.get("recode") or {}
        if he or rec:
            out.append(f"| {label} | " + " | ".join(_humaneval_cells(he, rec, cats)) + " |")
    how = sorted({r["sandbox"] for m in models.values() for r in (m.get("humaneval"), m.get("recode"))
                  if r and r.get("sandbox")})
    return out + ["", "Drop = nominal minus perturbed pass@1, percentage points (ReCode, Wang et al. 2022); "
                  "`format` and `natgen` are measured against the partial-code nominal.", ""] + [
                  f"Generated code ran {h}." for h in how] + ([""] if how else [])


def _humaneval_cells(he: dict, rec: dict, cats: list[str]) -> list[str]:
    """One model's cells of the HumanEval / ReCode table."""
    cells = [_fmt(he.get("pass@1", rec.get("nominal")), ".1f")]
    for c in cats:
        v = rec.get("categories", {}).get(c)
        cells.append("-" if v is None else f"{v['mean']:.1f} ({v['drop_mean']:+.1f})")
    if cats:
        worst = max((v["drop_worst"] for v in rec.get("categories", {}).values()), default=None)
        cells.append(_fmt(worst, ".1f"))
    return cells


def _summarize_section(models: dict) -> list[str]:
    """The summarization table (BLEU-4, ROUGE-L, p50 / p95 ms, functions cut, empty answers), or nothing."""
    if not any(m.get("summarize") for m in models.values()):
        return []
    out = ["## Code summarization (docstrings; CodeXGLUE smoothed BLEU-4, ROUGE-L F1)", "",
           "| model | BLEU-4 | ROUGE-L | p50 ms | p95 ms | cut | empty |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in models.items():
        r = m.get("summarize") or {}
        if r:
            out.append(f"| {label} | {_fmt(r['bleu'])} | {_fmt(r['rouge_l'])} | {_fmt(r['latency_ms_p50'], '.0f')} | "
                       f"{_fmt(r['latency_ms_p95'], '.0f')} | {r.get('cut', 0)} | {r.get('empty', 0)} |")
    return out + ["", "Against each function's own docstring summary (its first paragraph); cut = functions shortened "
                  "to fit the prompt, empty = no usable docstring written.", ""]


def _cost_section(models: dict) -> list[str]:
    """The cost table (MB, ms, tokens/s, J and g CO2e per 1000 completions) and its energy notes, or nothing."""
    if not any(m.get("cost") for m in models.values()):
        return []
    out = ["## Cost (one child process per model)", "",
           "| model | size MB | load ms | peak RSS MB | prefill 512 ms | prefill 1024 ms | decode ms/token | "
           "p50 ms | p95 ms | tokens/s | J / 1000 | g CO2e / 1000 | energy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    notes = []
    for label, m in models.items():
        c = m.get("cost") or {}
        if not c:
            continue
        pre = c.get("prefill_ms") or {}
        out.append(f"| {label} | {_mb(c.get('size_bytes'))} | {_fmt(c.get('load_ms'), '.0f')} | "
                   f"{_mb(c.get('peak_rss_bytes'))} | {_fmt(pre.get('512'), '.0f')} | {_fmt(pre.get('1024'), '.0f')} | "
                   f"{_fmt(c.get('decode_ms_per_token'), '.1f')} | {_fmt(c.get('latency_ms_p50'), '.0f')} | "
                   f"{_fmt(c.get('latency_ms_p95'), '.0f')} | {_fmt(c.get('tokens_per_s'), '.1f')} | "
                   f"{_fmt(c.get('energy_j_per_1000'), '.0f')} | {_fmt(c.get('co2e_g_per_1000'), '.3f')} | "
                   f"{c.get('energy_source') or '-'} |")
        if c.get("energy_note") and c["energy_note"] not in notes:
            notes.append(c["energy_note"])
    return out + [""] + [f"Energy: {n}" for n in notes] + [""]


def _ratios_section(models: dict, rat: dict) -> list[str]:
    """The ratios to the first model (metrics any model has), or nothing for a single model."""
    if len(models) <= 1 or not rat:
        return []
    keys = [k for k in next(iter(rat.values())) if any(r.get(k) is not None for r in rat.values())]
    first = next(iter(models))
    out = [f"## Ratios to {first}", "", "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for label, r in rat.items():
        out.append(f"| {label} | " + " | ".join(_fmt(r.get(k), ".3f") for k in keys) + " |")
    return out + ["", "Value / reference: above 1 is better for ES, EM, pass@1, BLEU and ROUGE-L, below 1 is better for latency, "
                  "memory, energy and size.", ""]


def write_report(result: dict, report: Path | None = None, plots_dir: Path | None = None) -> dict[str, Path]:
    """Write the plots (into ``plots_dir``, default beside ``report``) and the Markdown ``report``.

    Returns ``{plot name: path}`` of the plots written.

    Raises:
        PocketPilotError: a path cannot be written (full disk, no permission).
    """
    base = report.parent if report else Path(".")
    stem = report.stem if report else "eval"
    plots_dir = plots_dir or base
    written = {}
    try:
        for name, fn in (("pareto", plot_pareto), ("recode", plot_recode)):
            p = fn(result, plots_dir / f"{stem}-{name}.png")
            if p is not None:
                written[name] = p
        if report:
            tmp = report.with_name(report.name + ".partial")
            tmp.write_text(markdown(result, written, relative_to=report.parent.resolve()
                                    if all(p.resolve().is_relative_to(report.parent.resolve()) for p in written.values())
                                    else None) + "\n")
            tmp.replace(report)
    except OSError as exc:
        raise PocketPilotError(f"cannot write the report ({exc.strerror or exc}); check the path and free disk space") from None
    return written

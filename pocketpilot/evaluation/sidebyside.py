"""``bench engines``: PocketPilot's engines and llama.cpp on the teacher's shipped GGUF, side by side in one run.

Every model is loaded once, then timed round after round in rotating order (so a slower or
busier moment of the machine falls on all of them alike), with the same thread count and the
same prompt token ids: a 512-token prefill, decode ms/token, and cold one-line completions at
real standard-library positions through the same :class:`pocketpilot.runtime.CompletionEngine`
(for llama.cpp too: only the forward pass differs). Beside each figure: the ratio to llama.cpp
on the shipped GGUF and to the memory floor, the weight bytes a decode step reads divided by the
read bandwidth measured now.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from pocketpilot.corpus import default_source_dir
from pocketpilot.evaluation.speed import measure_speed
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime.engine import CompletionEngine
from pocketpilot.runtime.llamacpp import LlamaCppModel, LlamaContext
from pocketpilot.runtime.loader import LoadedModel, load_any, resolve_any
from pocketpilot.store import weight_files
from pocketpilot.teachers import teacher_gguf


def read_gbps(gib: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth now, with torch's thread count: best of ``repeats`` sums of ``gib`` GiB (GB/s)."""
    a = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def load_shipped_gguf(gguf: Path, teacher_folder: Path, threads: int) -> LoadedModel:
    """The teacher's own GGUF file run by llama.cpp, with the teacher folder's tokenizer and config."""
    tok = AutoTokenizer.from_pretrained(teacher_folder, local_files_only=True, trust_remote_code=False)
    config = AutoConfig.from_pretrained(teacher_folder, local_files_only=True, trust_remote_code=False)
    model = LlamaCppModel(gguf, config, LlamaContext(gguf, threads=threads))
    return LoadedModel(model=model, tokenizer=tok, dtype=torch.float16, folder=gguf.parent, engine="llama.cpp")


def weight_bytes(loaded: LoadedModel) -> int:
    """Bytes of the model's weight files (safetensors or GGUF): about what a decode step reads (bytes)."""
    if loaded.engine == "llama.cpp":
        return loaded.model.gguf.stat().st_size
    return sum(f.stat().st_size for f in weight_files(Path(loaded.folder)))


def side_by_side(models: list[str], baseline_teacher: str | None = None, positions: int = 10, rounds: int = 3,
                 prompt_tokens: int = 512, new_tokens: int = 16, log: Callable[[str], None] = lambda m: None) -> dict:
    """Time ``models`` (and llama.cpp on ``baseline_teacher``'s shipped GGUF) alternately on this machine.

    Args:
        models: artifact ids, folders or teacher specs (see :func:`pocketpilot.runtime.loader.load_any`).
        baseline_teacher: packaged teacher alias or ``.gguf`` path whose GGUF llama.cpp runs as the
            peer; ``None`` skips it.
        positions: stdlib line-completion positions for the cold completions (seed 0).
        rounds: timed rounds; medians are reported.
        prompt_tokens, new_tokens: prefill length and decode steps timed (tokens).

    Returns:
        ``{"threads", "read_gbps", "rows": {label: {...}}}``; each row has ``engine``, ``weight_bytes``,
        ``prefill_ms``, ``decode_ms_per_token``, ``cold_p50_ms``, ``floor_ms_per_token`` and, with a
        baseline, ``*_vs_llama_cpp`` ratios (``value / baseline``).

    Raises:
        MissingDependencyError: a baseline or GGUF artifact without llama-cpp-python.
        PocketPilotError: unknown model, missing teacher.
    """
    threads = torch.get_num_threads()
    loaded: dict[str, LoadedModel] = {}
    for name in models:
        loaded[name] = load_any(name)
    base_label = None
    if baseline_teacher:
        gguf = teacher_gguf(baseline_teacher, lambda m, f: log(f"   {m}"))
        base_label = f"llama.cpp {gguf.name}"
        loaded[base_label] = load_shipped_gguf(gguf, resolve_any(baseline_teacher), threads)
    gbps = read_gbps()
    text = (default_source_dir() / "json" / "encoder.py").read_text() * 3
    tasks = make_tasks(n=positions, seed=0)
    samples: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": [], "cold": []} for k in loaded}
    labels = list(loaded)
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        for label in order:
            lm = loaded[label]
            sp = measure_speed(lm, text, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=1)
            samples[label]["prefill"].append(sp["prefill_ms"])
            samples[label]["decode"].append(sp["decode_ms_per_token"])
            engine = CompletionEngine(lm)
            samples[label]["cold"].extend(engine.complete(t["prefix"], t["suffix"], allow_block=False).total_ms
                                          for t in tasks)
            log(f"round {r + 1}/{rounds} {label}: prefill {sp['prefill_ms']} ms, decode {sp['decode_ms_per_token']} ms/token")
    rows = {}
    for label, lm in loaded.items():
        s = samples[label]
        wb = weight_bytes(lm)
        row = {"engine": lm.engine, "weight_bytes": wb, "prefill_ms": round(statistics.median(s["prefill"]), 1),
               "decode_ms_per_token": round(statistics.median(s["decode"]), 2),
               "cold_p50_ms": round(statistics.median(s["cold"]), 1),
               "floor_ms_per_token": round(wb / (gbps * 1e9) * 1e3, 2)}
        row["decode_vs_floor"] = round(row["decode_ms_per_token"] / row["floor_ms_per_token"], 2)
        rows[label] = row
    if base_label:
        ref = rows[base_label]
        for row in rows.values():
            for key in ("prefill_ms", "decode_ms_per_token", "cold_p50_ms"):
                row[f"{key}_vs_llama_cpp"] = round(row[key] / ref[key], 2) if ref[key] else None
    return {"threads": threads, "read_gbps": round(gbps, 1), "prompt_tokens": prompt_tokens,
            "positions": len(tasks), "rounds": rounds, "baseline": base_label, "rows": rows}

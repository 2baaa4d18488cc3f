"""What one model costs on this machine: disk, load time, memory, speed, latency and energy.

:func:`measure_cost` runs the measurement in a child process
(``python -m pocketpilot.evaluation.cost NAME --tasks-file FILE ...``) so that the load time
and the peak memory are the model's own, not those of the process that asks. The child
writes one JSON object on its stdout and its logs on stderr. :func:`measure_cost_inproc` is
the child-side measurement, reusable on an already loaded model.

Units: times in ms (``*_ms``), sizes and memory in bytes (``*_bytes``), energy in joules
(``energy_*j*``), emissions in grams of CO2-equivalent (``co2e_g_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from pocketpilot.corpus import default_source_dir
from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.line_completion import percentile
from pocketpilot.evaluation.tasks import read_tasks, write_tasks
from pocketpilot.store import folder_bytes, weight_files

log = logging.getLogger(__name__)

#: Country whose average grid carbon intensity (codecarbon's offline data,
#: ``codecarbon/data/private_infra/global_energy_mix.json``) converts energy to CO2e.
DEFAULT_COUNTRY = "USA"
#: Values of ``energy_source`` when energy was measured: ``"rapl"``: CPU energy read from RAPL
#: counters (Linux ``/sys/class/powercap/intel-rapl*`` or the Windows Energy Meter Interface);
#: ``"meter"``: another hardware power reading (Intel Power Gadget, Apple powermetrics,
#: Raspberry Pi PMIC); ``"estimate"``: codecarbon's model (CPU TDP x load, or a constant share of
#: TDP); ``"unknown"``: codecarbon set up a CPU tracker this module does not recognise.
#: ``None`` when energy was not measured.
ENERGY_SOURCES = ("rapl", "meter", "estimate", "unknown")
#: Decode steps timed after each prefill by :func:`pocketpilot.evaluation.speed.measure_speed` (tokens).
SPEED_NEW_TOKENS = 32
#: The install command given when codecarbon is missing.
CODECARBON_PIP = "pip install codecarbon"
_ERROR_PREFIX = "pocketpilot: error: "
_J_PER_KWH = 3.6e6


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def current_rss_bytes() -> int:
    """Resident memory of this process now (bytes); without ``/proc``, the peak so far."""
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else _ru_maxrss_bytes()


def peak_rss_bytes() -> tuple[int, str]:
    """Peak resident memory of this process so far (bytes) and where it was read.

    On Linux ``VmHWM`` of ``/proc/self/status`` (source ``"VmHWM"``): the high-water mark of
    this process's own address space. ``getrusage().ru_maxrss`` is not used there because
    Linux carries the parent's high-water mark into a child across fork/exec: a child started
    by a 2 GB process reports ``ru_maxrss`` >= 2 GB however little it uses. Elsewhere
    ``ru_maxrss`` (source ``"ru_maxrss"``; KiB on Linux, bytes on macOS, converted to bytes).
    """
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024, "VmHWM"
    return _ru_maxrss_bytes(), "ru_maxrss"


def max_positions(loaded) -> int | None:
    """The model's maximum sequence length from its config (tokens), or ``None`` if it names none."""
    cfg = loaded.model.config
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def speed_text(loaded, tokens: int) -> str:
    """Standard-library source (``json/encoder.py``, repeated) with at least ``tokens`` tokens.

    Raises:
        PocketPilotError: the standard library's ``json/encoder.py`` is missing.
    """
    path = default_source_dir() / "json" / "encoder.py"
    try:
        base = path.read_text(encoding="utf-8")
    except OSError:
        raise PocketPilotError(f"cannot read {path} (the standard-library text timed for prefill speed)") from None
    per_copy = max(1, len(loaded.tokenizer.encode(base, add_special_tokens=False)))
    return base * (math.ceil(tokens / per_copy) + 1)  # +1: token merges across copy boundaries


def _rapl_status() -> str:
    """``"readable"``, ``"not readable"`` (present, e.g. root-only ``energy_uj``) or ``"absent"``."""
    files = glob.glob("/sys/class/powercap/intel-rapl*/energy_uj") + glob.glob(
        "/sys/class/powercap/intel-rapl*/*/energy_uj")
    if not files:
        return "absent"
    return "readable" if any(os.access(f, os.R_OK) for f in files) else "not readable"


def _classify_cpu_tracker(hardware: list) -> tuple[str, str | None, object]:
    """``(energy_source, codecarbon mode, cpu object)`` from a started tracker's ``_hardware`` list.

    codecarbon 3.3.2 puts one CPU-side object there: ``CPU`` with ``_mode`` ``"intel_rapl"`` /
    ``"windows_emi"`` (RAPL counters), ``"intel_power_gadget"`` (a meter), ``"cpu_load"`` (TDP x
    CPU load) or ``"constant"`` (a share of TDP); or ``AppleSiliconChip`` (powermetrics) or
    ``Raspberry`` (PMIC), both meters.
    """
    for hw in hardware:
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", None)
            if mode in ("intel_rapl", "windows_emi"):
                return "rapl", mode, hw
            if mode == "intel_power_gadget":
                return "meter", mode, hw
            if mode in ("cpu_load", "constant"):
                return "estimate", mode, hw
            return "unknown", mode, hw
        if kind == "AppleSiliconChip" and getattr(hw, "chip_part", "CPU") == "CPU":
            return "meter", "apple_powermetrics", hw
        if kind == "Raspberry" and getattr(hw, "chip_part", "CPU") == "CPU":
            return "meter", "raspberry_pmic", hw
    return "unknown", None, None


def _energy_note(source: str, mode: str | None, cpu, country: str, tracking_mode: str, version: str) -> str:
    rapl = _rapl_status()
    intensity = f"CO2e from {country}'s average grid intensity (codecarbon offline data)"
    ram = "RAM energy estimated from memory size"
    if source == "rapl":
        return (f"CPU energy read from RAPL counters by codecarbon {version} ({mode}; whole CPU package, so "
                f"other processes' work counts too); {ram}; {intensity}")
    if source == "meter":
        return f"CPU energy from a hardware power reading by codecarbon {version} ({mode}); {ram}; {intensity}"
    why = {"absent": "no /sys/class/powercap/intel-rapl* on this machine",
           "not readable": "RAPL files exist but are not readable by this user (energy_uj is often root-only)",
           "readable": "RAPL files readable but codecarbon did not use them"}[rapl]
    tdp = getattr(cpu, "_tdp", None)
    model = getattr(cpu, "_model", None) or "unknown CPU"
    generic = " (generic TDP: CPU model not in codecarbon's table)" if getattr(cpu, "_is_generic_tdp", False) else ""
    if mode == "cpu_load":
        how = (f"TDP {tdp} W of {model}{generic} x {'this process' if tracking_mode == 'process' else 'machine'}'s "
               f"CPU load")
    elif mode == "constant":
        how = f"a constant 50% of TDP {tdp} W of {model}{generic}"
    else:
        how = f"codecarbon mode {mode!r}"
    return f"CPU energy ESTIMATED by codecarbon {version} as {how} ({why}); not measured; {ram}; {intensity}"


def _null_energy(note: str) -> dict:
    return {"energy_j_per_1000": None, "co2e_g_per_1000": None, "energy_source": None, "energy_method": None,
            "energy_cpu_j_per_1000": None, "energy_ram_j_per_1000": None, "energy_note": note}


class _EnergyMeter:
    """codecarbon's ``OfflineEmissionsTracker`` around a block of work, quiet on stdout."""

    def __init__(self, country_iso_code: str, measure_power_secs: float, tracking_mode: str) -> None:
        self.country, self.tracking_mode = country_iso_code, tracking_mode
        self.measure_power_secs = measure_power_secs
        self.tracker = None
        self.failed: str | None = None

    def start(self) -> str | None:
        """Start tracking; returns a note (and tracks nothing) if codecarbon is missing or unusable."""
        try:
            import codecarbon  # lazy: heavy, and only the energy measurement needs it (missing: reported, not raised)
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.input import DataSource
        except ImportError:
            return f"codecarbon is not installed, energy not measured; install it with: {CODECARBON_PIP}"
        self.version = getattr(codecarbon, "__version__", "?")
        if self.country not in DataSource().get_global_energy_mix_data():
            raise PocketPilotError(f"unknown country ISO code {self.country!r} for CO2e; use a 3-letter code "
                                   f"such as {DEFAULT_COUNTRY}, FRA or DEU")
        with contextlib.redirect_stdout(sys.stderr):  # the JSON channel stays clean whatever codecarbon prints
            self.tracker = OfflineEmissionsTracker(
                country_iso_code=self.country, save_to_file=False, log_level="error",
                measure_power_secs=self.measure_power_secs, tracking_mode=self.tracking_mode,
                allow_multiple_runs=True)
            self.tracker.start()  # hardware detection happens here, before the timed window opens
        if getattr(self.tracker, "_start_time", None) is None:  # codecarbon swallows its own errors
            self.tracker = None
            return "codecarbon failed to start (see its log on stderr); energy not measured"
        return None

    def stop(self, n: int) -> dict:
        """Stop tracking; energy fields scaled to 1000 completions from ``n`` completions."""
        with contextlib.redirect_stdout(sys.stderr):
            self.tracker.stop()
        data = getattr(self.tracker, "final_emissions_data", None)
        if data is None or not n:
            return _null_energy("codecarbon returned no data (see its log on stderr); energy not measured")
        source, mode, cpu = _classify_cpu_tracker(getattr(self.tracker, "_hardware", []))
        cpu_j, ram_j = data.cpu_energy * _J_PER_KWH, data.ram_energy * _J_PER_KWH
        intensity = data.emissions / data.energy_consumed if data.energy_consumed else 0.0  # kg/kWh
        scale = 1000 / n
        return {
            # CPU + RAM only: the model runs on the CPU, a GPU codecarbon may also see is not counted
            "energy_j_per_1000": round((cpu_j + ram_j) * scale, 3),
            "co2e_g_per_1000": round(intensity * (data.cpu_energy + data.ram_energy) * 1000 * scale, 6),
            "energy_source": source,
            "energy_method": mode,
            "energy_cpu_j_per_1000": round(cpu_j * scale, 3),
            "energy_ram_j_per_1000": round(ram_j * scale, 3),
            "energy_note": _energy_note(source, mode, cpu, self.country, self.tracking_mode, self.version),
        }


def measure_cost_inproc(
    loaded,
    tasks: list[dict],
    n_completions: int = 20,
    prompt_lengths: Sequence[int] = (512, 1024),
    energy: bool = True,
    country_iso_code: str = DEFAULT_COUNTRY,
    measure_power_secs: float = 1.0,
    tracking_mode: str = "process",
) -> dict:
    """Measure an already loaded model in this process (the child side of :func:`measure_cost`).

    Memory figures are this process's, whatever else it holds; run it in a fresh process (as
    :func:`measure_cost` does) for a model's own numbers.

    Args:
        loaded: a :class:`pocketpilot.runtime.LoadedModel`.
        tasks: line-completion rows ``{"prefix", "suffix", "gt"}``; the first ``n_completions`` are
            timed (see :mod:`pocketpilot.evaluation.tasks`).
        n_completions: completions timed (fewer if there are fewer tasks).
        prompt_lengths: prompt lengths whose prefill is timed (tokens).
        energy: measure energy with codecarbon around the completion loop.
        country_iso_code: 3-letter ISO code of the grid used for CO2e (default :data:`DEFAULT_COUNTRY`).
        measure_power_secs: codecarbon's power sampling interval (s).
        tracking_mode: codecarbon's ``"process"`` (this process's CPU load; default, right on a shared
            machine) or ``"machine"`` (whole machine). RAPL counters are always whole-package.

    Returns:
        A dict (JSON-serialisable):
        ``folder``; ``size_bytes`` (all files of the model folder), ``weights_bytes`` (its
        weight files: safetensors or GGUF); ``peak_rss_bytes`` and ``peak_rss_source`` (see :func:`peak_rss_bytes`),
        read after all runs; ``max_positions`` (tokens); ``prefill_ms`` ``{str(length): ms or None}``
        and ``prefill_skipped`` ``{str(length): reason}`` for lengths the model cannot hold;
        ``decode_ms_per_token`` (ms, after the shortest timed prompt, ``decode_prompt_tokens``);
        ``n_completions``; ``latency_ms_p50`` / ``latency_ms_p95`` (wall time of one
        ``engine.complete`` call: tokenizing, prefill, decode, post-processing; ms);
        ``tokens_per_s`` (all new tokens / all decode time, tokens/s; decode time is
        :attr:`Completion.decode_ms`, which starts after the prefill, while the first new
        token comes from the prefill's logits); ``new_tokens``; ``energy_j_per_1000`` (CPU +
        RAM, J per 1000 completions), ``co2e_g_per_1000`` (g CO2e per 1000 completions),
        ``energy_cpu_j_per_1000``, ``energy_ram_j_per_1000``, ``energy_source`` (one of
        :data:`ENERGY_SOURCES` or ``None``), ``energy_method`` (codecarbon's CPU mode),
        ``energy_note`` (one line: how energy was obtained, or why not), ``country_iso_code``;
        ``device`` (``"cpu"``), ``torch_threads``.

    Raises:
        PocketPilotError: no tasks, a prompt length below 1, an unknown country code, or the
            standard-library text for the speed runs is missing.
    """
    import torch  # lazy: torch

    run, lengths = _check_cost_inputs(tasks, n_completions, prompt_lengths)
    out: dict = {"folder": str(loaded.folder)}
    # all files / weight files only (bytes); stat follows symlinks, so a Hugging Face cache snapshot counts its blobs
    out["size_bytes"] = folder_bytes(Path(loaded.folder))
    out["weights_bytes"] = sum(p.stat().st_size for p in weight_files(Path(loaded.folder)))
    out.update(_speed_fields(loaded, lengths))
    meter = _EnergyMeter(country_iso_code, measure_power_secs, tracking_mode) if energy else None
    latency, new_tokens, decode_ms, skipped = _time_completions(loaded, run, meter)
    out.update(meter.stop(len(run)) if meter and meter.tracker else _null_energy(skipped))
    out["country_iso_code"] = country_iso_code if out["energy_source"] else None
    out.update({
        "n_completions": len(run),
        "latency_ms_p50": round(percentile(latency, 50), 2),
        "latency_ms_p95": round(percentile(latency, 95), 2),
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / (decode_ms / 1e3), 1) if decode_ms > 0 else None,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
    })
    out["peak_rss_bytes"], out["peak_rss_source"] = peak_rss_bytes()
    return out


def _check_cost_inputs(tasks: list[dict], n_completions: int,
                       prompt_lengths: Sequence[int]) -> tuple[list[dict], list[int]]:
    """The tasks to time (the first ``n_completions``) and the distinct prompt lengths, sorted (tokens).

    Raises:
        PocketPilotError: no task to time, or a prompt length below 1.
    """
    run = list(tasks[: max(0, n_completions)])
    if not run:
        raise PocketPilotError("no line-completion tasks to time (need at least 1)")
    lengths = sorted({int(n) for n in prompt_lengths})
    if any(n < 1 for n in lengths):
        raise PocketPilotError(f"prompt lengths must be >= 1 token, got {list(prompt_lengths)}")
    return run, lengths


def _speed_fields(loaded, lengths: list[int]) -> dict:
    """Prefill and decode speed on standard-library text, for each prompt length the model can hold.

    Returns:
        ``{"max_positions", "prefill_ms": {str(length): ms or None}, "prefill_skipped": {str(length):
        reason}, "decode_ms_per_token" (ms, after the shortest timed prompt), "decode_prompt_tokens"}``.

    Raises:
        PocketPilotError: the standard-library text is missing.
    """
    from pocketpilot.evaluation.speed import measure_speed  # lazy: torch

    limit = max_positions(loaded)
    out: dict = {"max_positions": limit}
    fits = [n for n in lengths if limit is None or n + SPEED_NEW_TOKENS <= limit]
    out["prefill_ms"] = {str(n): None for n in lengths}
    out["prefill_skipped"] = {
        str(n): f"{n} prompt + {SPEED_NEW_TOKENS} decode tokens exceed the model's {limit} positions"
        for n in lengths if n not in fits}
    out["decode_ms_per_token"] = out["decode_prompt_tokens"] = None
    if fits:
        text = speed_text(loaded, max(fits))
        for n in fits:
            res = measure_speed(loaded, text, prompt_tokens=n, new_tokens=SPEED_NEW_TOKENS)
            out["prefill_ms"][str(n)] = res["prefill_ms"]
            if out["decode_ms_per_token"] is None:
                out["decode_ms_per_token"], out["decode_prompt_tokens"] = res["decode_ms_per_token"], n
    return out


def _time_completions(loaded, run: list[dict], meter: "_EnergyMeter | None") -> tuple[list[float], int, float, str | None]:
    """Time one-line completions of ``run`` with a fresh engine, a new document per task, forgotten at
    once (no KV reuse), inside the energy ``meter`` when given (started here, stopped by the caller).

    Returns:
        ``(latencies in ms, new tokens, decode time in ms, why energy is not measured or None)``.
    """
    from pocketpilot.runtime import CompletionEngine  # lazy: torch

    engine = CompletionEngine(loaded)
    engine.complete(run[0]["prefix"], run[0].get("suffix", ""), allow_block=False, cache_key="cost-warmup")
    engine.forget("cost-warmup")  # the warm-up builds the engine's token tables; not timed
    skipped = meter.start() if meter else "not measured (energy=False)"
    latency, new_tokens, decode_ms = [], 0, 0.0
    try:
        for i, task in enumerate(run):
            key = f"cost-task-{i}"
            t0 = time.perf_counter()
            c = engine.complete(task["prefix"], task.get("suffix", ""), allow_block=False, cache_key=key)
            latency.append((time.perf_counter() - t0) * 1e3)
            engine.forget(key)
            new_tokens += c.new_tokens
            decode_ms += c.decode_ms
    except BaseException:
        if meter and meter.tracker:  # stop codecarbon's sampling threads before the error propagates
            with contextlib.suppress(Exception):
                meter.tracker.stop()
        raise
    return latency, new_tokens, decode_ms, skipped


def _child_measure(args) -> dict:
    """The child's measurement: load ``args.name``, then :func:`measure_cost_inproc` (see :func:`build_parser`)."""
    from pocketpilot.runtime.loader import load_any  # lazy: torch

    if args.threads:
        import torch  # lazy: torch

        torch.set_num_threads(args.threads)
    tasks = read_tasks(Path(args.tasks_file))
    t0 = time.perf_counter()
    loaded = load_any(args.name)
    load_ms = (time.perf_counter() - t0) * 1e3
    rss = current_rss_bytes()
    res = measure_cost_inproc(loaded, tasks, n_completions=args.n, prompt_lengths=args.prompt_lengths,
                              energy=not args.no_energy, country_iso_code=args.country,
                              measure_power_secs=args.measure_power_secs, tracking_mode=args.tracking_mode)
    return {"name": args.name, "load_ms": round(load_ms, 1), "rss_after_load_bytes": rss, **res}


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m pocketpilot.evaluation.cost``."""
    p = argparse.ArgumentParser(prog="python -m pocketpilot.evaluation.cost",
                                description="Measure one model's cost; one JSON object on stdout, logs on stderr.")
    p.add_argument("name", nargs="?", default=None, help="anything load_any accepts; omitted: the active artifact")
    p.add_argument("--tasks-file", required=True, help="line-completion tasks (JSONL)")
    p.add_argument("--n", type=int, default=20, help="completions timed")
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[512, 1024], help="prefill lengths (tokens)")
    p.add_argument("--no-energy", action="store_true", help="skip codecarbon")
    p.add_argument("--country", default=DEFAULT_COUNTRY, help="3-letter ISO code of the grid, for CO2e")
    p.add_argument("--measure-power-secs", type=float, default=1.0, help="codecarbon sampling interval (s)")
    p.add_argument("--tracking-mode", choices=("process", "machine"), default="process")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m pocketpilot.evaluation.cost``: print the measurement as one JSON line on stdout.

    Everything else anything writes to stdout (Python or C level) is sent to stderr while it
    runs. Returns 0; 2 after a :class:`PocketPilotError`, whose message is then the last line
    of stderr, prefixed ``pocketpilot: error: ``.
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # fd 1 -> stderr, for the whole run
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                result = _child_measure(args)
            except PocketPilotError as exc:
                print(f"{_ERROR_PREFIX}{exc}", file=sys.stderr, flush=True)
                return 2
        sys.stderr.flush()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def measure_cost(
    name: str | None,
    tasks: list[dict],
    n_completions: int = 20,
    prompt_lengths: Sequence[int] = (512, 1024),
    energy: bool = True,
    timeout_s: float = 1800,
    country_iso_code: str = DEFAULT_COUNTRY,
    threads: int | None = None,
) -> dict:
    """Measure one model's cost in a child process, so load time and peak memory are its own.

    Runs ``sys.executable -m pocketpilot.evaluation.cost`` with this process's environment
    (``POCKETPILOT_HOME`` included) and parses the JSON it prints.

    Args:
        name: anything :func:`pocketpilot.runtime.loader.load_any` accepts (artifact id or folder,
            plain Hugging Face folder, teacher spec); ``None``: the active artifact.
        tasks: line-completion rows ``{"prefix", "suffix", "gt"}``; the first ``n_completions`` are timed.
        n_completions: completions timed.
        prompt_lengths: prompt lengths whose prefill is timed (tokens); a length the model's
            positions cannot hold is reported as ``None`` with the reason in ``prefill_skipped``.
        energy: measure energy with codecarbon (``None`` fields and a note if it is missing).
        timeout_s: wall-clock limit for the child (s).
        country_iso_code: grid used for CO2e (3-letter ISO code, default :data:`DEFAULT_COUNTRY`).
        threads: torch threads in the child; default: torch's own choice.

    Returns:
        :func:`measure_cost_inproc`'s dict plus ``name``, ``load_ms`` (wall time of ``load_any``, ms)
        and ``rss_after_load_bytes`` (resident memory right after loading, bytes).

    Raises:
        PocketPilotError: the child failed (its last stderr line: e.g. an unknown model name),
            ran past ``timeout_s``, or printed something other than one JSON object.
    """
    label = name or "active artifact"
    with tempfile.TemporaryDirectory(prefix="pocketpilot-cost-") as tmp:
        tasks_file = Path(tmp) / "tasks.jsonl"
        write_tasks(list(tasks[: max(1, n_completions)]), tasks_file)
        cmd = _child_command(name, tasks_file, n_completions, prompt_lengths, energy, country_iso_code, threads)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        log.info("measuring cost of %s: %s", label, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PocketPilotError(f"cost measurement of {label} ran past {timeout_s:g} s; "
                                   f"try fewer completions or shorter prompt lengths") from None
    return _child_result(proc, label)


def _child_command(name: str | None, tasks_file: Path, n_completions: int, prompt_lengths: Sequence[int],
                   energy: bool, country_iso_code: str, threads: int | None) -> list[str]:
    """The ``python -m pocketpilot.evaluation.cost`` command line (see :func:`build_parser`)."""
    cmd = [sys.executable, "-m", "pocketpilot.evaluation.cost", "--tasks-file", str(tasks_file),
           "--n", str(n_completions), "--country", country_iso_code,
           "--prompt-lengths", *(str(int(n)) for n in prompt_lengths)]
    if not energy:
        cmd.append("--no-energy")
    if threads:
        cmd += ["--threads", str(threads)]
    if name is not None:
        cmd += ["--", name]
    return cmd


def _child_result(proc: subprocess.CompletedProcess, label: str) -> dict:
    """The JSON object a finished child printed.

    Raises:
        PocketPilotError: the child failed (its own one-line error, else its last stderr line) or
            printed something other than one JSON object.
    """
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        mine = [ln for ln in lines if ln.startswith(_ERROR_PREFIX)]
        if mine:  # a PocketPilotError: its own one-line message (found even if something logged after it)
            raise PocketPilotError(mine[-1][len(_ERROR_PREFIX):])
        last = lines[-1] if lines else f"exit status {proc.returncode}, nothing on stderr"
        raise PocketPilotError(f"cost measurement of {label} failed: {last}")
    try:
        result = json.loads(proc.stdout)
        if not isinstance(result, dict):
            raise ValueError
    except ValueError:
        head = proc.stdout.strip().splitlines()[0][:200] if proc.stdout.strip() else "nothing"
        raise PocketPilotError(f"cost measurement of {label} printed {head!r} instead of one JSON object") from None
    return result

if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``pocketpilot compress | doctor | distill | search | list | complete | serve | eval | bench``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from pocketpilot.compression.methods import METHODS
from pocketpilot.compression.shapes import (
    DEFAULT_BUDGET_MS,
    DEFAULT_WARMUP_MS,
    KEYSTROKE_TOKENS,
    LINE_TOKENS,
    PROMPT_TOKENS,
)
from pocketpilot.corpus import held_out_files
from pocketpilot.errors import PocketPilotError, PositionError
from pocketpilot.store import home, list_artifacts
from pocketpilot.teachers import (
    ACCEPTED_FORMS,
    DEFAULT_TEACHER,
    fetch_teacher,
    parse_spec,
)


def _stderr_progress(message: str, fraction: float | None) -> None:
    pct = f"[{fraction * 100:3.0f}%] " if fraction is not None else "       "
    print(f"{pct}{message}", file=sys.stderr, flush=True)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def cmd_compress(args) -> int:
    from pocketpilot.compression import compress  # lazy: torch

    decision = None
    if args.for_this_machine:
        if args.teacher or args.method:
            raise PocketPilotError("--for-this-machine chooses the teacher and method itself; drop --teacher/--method")
        from pocketpilot.compression.recipe import (
            compress_for_this_machine,  # lazy: torch
        )

        res, decision = compress_for_this_machine(args.budget_ms, eval_tasks=args.eval_tasks, force=args.force,
                                                  progress=_stderr_progress, warmup_budget_ms=args.warmup_budget_ms)
    else:
        res = compress(args.teacher or DEFAULT_TEACHER, args.method or "int8", force=args.force,
                       eval_tasks=args.eval_tasks, progress=_stderr_progress)
    s = res.summary()
    if decision is not None:
        s["machine_decision"] = {k: res.manifest.machine_decision[k] for k in
                                 ("teacher", "method", "budget_ms", "warmup_budget_ms", "meets_budget", "reason",
                                  "predicted_line_ms", "measured_line_ms_p50", "predicted_warm_ms",
                                  "measured_warm_ms_p50", "measured_meets_budget")}
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    if decision is not None:
        md = s["machine_decision"]
        print(f"chose {md['teacher']} {md['method']} for this machine: {md['reason']}")
        if md["measured_warm_ms_p50"] is not None:
            predicted = "" if md["predicted_warm_ms"] is None else f"predicted {md['predicted_warm_ms']:.0f} ms, "
            print(f"  measured while typing: p50 {md['measured_warm_ms_p50']:.0f} ms ({predicted}budget "
                  f"{md['budget_ms']:.0f} ms: {'met' if md['measured_meets_budget'] else 'not met'})")
        if md["measured_line_ms_p50"] is not None:
            print(f"  measured cold one-line p50 {md['measured_line_ms_p50']:.0f} ms (predicted {md['predicted_line_ms']:.0f} ms)")
    m = s["metrics"]
    print(f"artifact {s['artifact_id']} {'(cached)' if s['reused'] else '(new)'}: {s['folder']}")
    print(f"  size {_human(s['artifact_bytes'])} vs teacher {_human(s['teacher_fp32_bytes'])} in fp32 "
          f"({100 * s['artifact_bytes'] / s['teacher_fp32_bytes']:.1f}%)")
    if m:
        t, a = m["teacher"], m["artifact"]
        print(f"  line completion ({m['tasks']}): ES {a['es']:.1f} vs teacher {t['es']:.1f}, "
              f"EM {a['em']:.1f}% vs {t['em']:.1f}%; p50 {a['latency_ms_p50']:.0f} ms vs {t['latency_ms_p50']:.0f} ms")
    print("  active: yes (pocketpilot serve / complete use it)")
    return 0


def cmd_doctor(args) -> int:
    from pocketpilot.compression.recipe import (  # lazy: torch
        choose_recipe,
        probe_hardware,
        probe_speed,
    )

    profile = probe_hardware()
    print("probing kernel speeds of both engines (about a minute) ...", file=sys.stderr, flush=True)
    speed = probe_speed()
    decision = choose_recipe(profile, speed, args.budget_ms, warmup_budget_ms=args.warmup_budget_ms)
    if args.json:
        print(json.dumps({"profile": asdict(profile), "speed_probe": asdict(speed), "decision": decision.to_json()},
                         indent=2))
        return 0
    isa = ", ".join(k.upper() for k, v in profile.isa.items() if v) or "none detected"
    print(f"CPU       {profile.cpu_model}: {profile.cpus} usable cores; ISA {isa}; torch kernels {profile.torch_cpu_capability}")
    print(f"memory    {_human(profile.ram_total_bytes)} RAM, {_human(profile.ram_available_bytes)} available; "
          f"{_human(profile.disk_free_bytes)} free disk for the cache")
    gpus = "; ".join(f"{g['name']} ({_human(g['memory_bytes'])})" for g in profile.cuda) or "none"
    print(f"CUDA      {gpus}")
    print(f"MPS       {'yes' if profile.mps else 'no'}")
    print(f"optional  bitsandbytes {'installed' if profile.bitsandbytes else 'not installed (pip install bitsandbytes)'}; "
          f"llama.cpp engine {'installed' if profile.has_package('llama_cpp') else 'not installed (pip install llama-cpp-python)'}")
    print(f"speed     matmul {speed.gflops.get('float32')} GFLOP/s fp32, {speed.gflops.get('bfloat16')} bf16; "
          f"one-row weight streaming (GB/s): " + ", ".join(f"{k} {v}" for k, v in speed.weight_gbps.items())
          + f"  (probe took {speed.seconds} s)")
    print(f"\ncandidates (predicted: warm = a model run while typing, {KEYSTROKE_TOKENS} tokens prefilled + "
          f"{LINE_TOKENS} decoded; warm-up = {PROMPT_TOKENS}-token prefill of an opened file; cold = warm-up + "
          f"{LINE_TOKENS} decoded):")
    print(f"  {'teacher':20s} {'method':11s} {'engine':9s} {'warm ms':>8s} {'warm-up ms':>10s} {'decode ms/tok':>13s} "
          f"{'cold ms':>8s} {'weights':>9s}  note")
    for r in decision.candidates:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        note = "CHOSEN" if r["chosen"] else r.get("rejected", "")
        print(f"  {r['teacher']:20s} {r['method']:11s} {r['engine']:9s} {fmt(r['warm_ms'], '.0f'):>8s} "
              f"{fmt(r['warmup_ms'], '.0f'):>10s} {fmt(r['decode_ms_per_token'], '.1f'):>13s} {fmt(r['line_ms'], '.0f'):>8s} "
              f"{_human(r['weights_bytes']):>9s}  {note}")
    print(f"\nrecipe    {decision.teacher} {decision.method} on {decision.device}; budgets {decision.budget_ms:.0f} ms "
          f"while typing, {decision.warmup_budget_ms:.0f} ms warm-up ({'met' if decision.meets_budget else 'not met'}, "
          f"predicted)")
    print(f"why       {decision.reason}")
    extra = "".join(f" --{flag} {value:g}" for flag, value, default in (
        ("budget-ms", args.budget_ms, DEFAULT_BUDGET_MS), ("warmup-budget-ms", args.warmup_budget_ms, DEFAULT_WARMUP_MS))
        if value != default)
    print("build it  pocketpilot compress --for-this-machine" + extra)
    return 0


def cmd_search(args) -> int:
    from pocketpilot.compression import search  # lazy: torch, z3

    max_bytes = int(args.max_mb * 1e6) if args.max_mb is not None else None
    if args.max_mb is not None and args.max_mb <= 0:
        raise PocketPilotError(f"--max-mb must be positive; got {args.max_mb:g}")
    quants = tuple(q.strip() for q in args.methods.split(",") if q.strip()) if args.methods else None
    if args.explain:
        space = search.make_space(fetch_teacher(parse_spec(args.teacher), _stderr_progress), max_bytes=max_bytes,
                                  max_params=args.max_params, min_layers=args.min_layers, max_steps=args.max_steps,
                                  quants=quants)
        print(space.explain())
        print(f"valid configurations: {len(space.enumerate())}")
        return 0
    state = search.run_search(args.teacher, evaluate=args.evaluate, tasks=args.tasks, seed=args.seed,
                              max_bytes=max_bytes, max_params=args.max_params, min_layers=args.min_layers,
                              max_steps=args.max_steps, quants=quants, references=tuple(args.reference),
                              fresh=args.fresh, progress=_stderr_progress)
    pick = search.pick_for_budget(state, args.budget_ms, max_bytes)
    plot = search.plot(state, Path(args.plot) if args.plot else search.search_path(state["teacher_slug"]).with_suffix(".png"))
    built = search.materialize(state, pick, _stderr_progress) if args.compress else None
    if args.json:
        print(json.dumps({"pick": {k: getattr(pick, k) for k in ("key", "artifact_id", "meets_budget", "reason", "measured")},
                          "compressed": built.artifact_id if built else None, "plot": str(plot), "search": state},
                         indent=2))
        return 0
    sp, pr, le = state["space"], state["predictor"], state["latency_model_error"]
    print(f"search of {state['teacher']}: {sp['size']} valid configurations (Z3, {sp['enumerate_seconds']} s); "
          f"{len(state['evaluated'])} built and measured on {state['tasks']['n']} held-out tasks")
    print(search.table(state))
    print(f"* = Pareto front (one-line latency, size, ES); plot: {plot}")
    print(f"ES predictor ({pr['model']}): leave-one-out MAE {pr['loo_mae_es']}, out-of-sample MAE "
          f"{pr['out_of_sample_mae_es']} over {pr['out_of_sample_n']} points")
    print("latency model error (mean abs. %): " + ", ".join(f"{k.replace('_mape_pct', '')} {v}" for k, v in le.items()))
    for ref, r in (state.get("references") or {}).items():
        m = r["measured"]
        print(f"reference {ref}: ES {m['es']:.2f}, one-line {m['line_ms']:.0f} ms, {m['bytes'] / 1e6:.0f} MB")
    print(f"pick for {args.budget_ms:g} ms" + (f" and {args.max_mb:g} MB" if args.max_mb else "") + f": {pick.reason}")
    if built:
        print(f"artifact {built.artifact_id} is active (pocketpilot serve / complete use it)")
    else:
        print(f"build and activate it: pocketpilot search --teacher {state['teacher']} --evaluate 0 --budget-ms "
              f"{args.budget_ms:g}" + (f" --max-mb {args.max_mb:g}" if args.max_mb else "") + " --compress")
    return 0


def cmd_distill(args) -> int:
    from pocketpilot.compression.distill import distill  # lazy: torch

    budget = {"steps": args.steps} if args.steps is not None else {"minutes": args.minutes}
    res = distill(args.teacher, args.layers, corpus=args.corpus, workspace=args.workspace, then=args.then,
                  resume=args.resume, eval_tasks=args.eval_tasks, progress=_stderr_progress,
                  temperature=args.temperature, alpha=args.alpha, block_tokens=args.block_tokens,
                  batch_size=args.batch_size, lr=args.lr, top_k=args.top_k, **budget)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun: the main process reports
        return 0
    s, r = res.summary(), res.manifest.recipe
    keys = ("n_layers", "teacher_layers", "layer_map", "steps", "tokens_seen", "train_minutes", "train_loss",
            "val_before", "val_after", "teacher_val_ce", "resumed_from_step", "run_dir")
    s["distill"] = {k: r[k] for k in keys}
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"artifact {s['artifact_id']} (new): {s['folder']}")
    print(f"  {r['n_layers']} of {r['teacher_layers']} layers {r['layer_map']}; {r['steps']} steps, "
          f"{r['tokens_seen']} tokens, {r['train_minutes']} min"
          + (f" (resumed from step {r['resumed_from_step']})" if r["resumed_from_step"] else ""))
    print(f"  validation loss {r['val_before']['loss']:.3f} -> {r['val_after']['loss']:.3f} "
          f"(CE {r['val_after']['ce']:.3f} nats/token; teacher {r['teacher_val_ce']:.3f})")
    print(f"  size {_human(s['artifact_bytes'])} vs teacher {_human(s['teacher_fp32_bytes'])} in fp32")
    m = s["metrics"]
    if m:
        print(f"  line completion ({m['tasks']}): ES {m['artifact']['es']:.1f} vs teacher {m['teacher']['es']:.1f}")
    print("  active: yes (pocketpilot serve / complete use it)")
    return 0


def cmd_list(args) -> int:

    rows = list_artifacts()
    if args.json:
        print(json.dumps({"home": str(home()), "artifacts": rows}, indent=2))
        return 0
    if not rows:
        print(f"no artifacts in {home()}; create one with: pocketpilot compress")
        return 0
    for r in rows:
        mark = "*" if r["active"] else " "
        if not r["ok"]:
            print(f"{mark} {r['id']}  BROKEN: {r['error']}")
            continue
        es = r["metrics"].get("artifact", {}).get("es") if r["metrics"] else None
        print(f"{mark} {r['id']}  {r['method']:5s} {_human(r['artifact_bytes']):>9s}  teacher {r['teacher']}"
              + (f"  ES {es:.1f}" if es is not None else "") + f"  {r['folder']}")
    print("(* = active)")
    return 0


def read_position(path: Path, line: int, col: int) -> tuple[str, str]:
    """Split a file at a 1-based ``line`` and 1-based ``col`` (characters) into (prefix, suffix).

    Raises:
        PocketPilotError: the file cannot be read.
        PositionError: the position lies outside the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PocketPilotError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PocketPilotError(f"cannot read {path}: {exc}") from None
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise PositionError(f"line {line} is outside {path} (1..{len(lines)}; positions are 1-based)")
    if not 1 <= col <= len(lines[line - 1]) + 1:
        raise PositionError(
            f"column {col} is outside line {line} of {path} (1..{len(lines[line - 1]) + 1}; positions are 1-based)"
        )
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]


def cmd_complete(args) -> int:
    from pocketpilot.runtime import CompletionEngine, EngineSettings  # lazy: torch
    from pocketpilot.runtime.loader import load_any  # lazy: torch

    prefix, suffix = read_position(Path(args.file), args.line, args.col)
    if args.as_typed:
        rest, _, suffix = suffix.partition("\n")
        print(f"(as typed: the file continues this line with {rest!r})", file=sys.stderr)
    engine = CompletionEngine(load_any(args.model), EngineSettings(max_new_tokens=args.max_new_tokens))
    results = [engine.complete(prefix, suffix) for _ in range(max(1, args.repeat))]
    c = results[-1]
    if args.repeat > 1:
        lat = sorted(r.total_ms for r in results[1:] or results)
        print(f"{len(results)} runs: median {statistics.median(lat):.1f} ms (warm, first run excluded), "
              f"min {lat[0]:.1f} ms, max {lat[-1]:.1f} ms", file=sys.stderr)
    if args.json:
        print(json.dumps({"text": c.text, "raw": c.raw, "prompt_tokens": c.prompt_tokens,
                          "new_tokens": c.new_tokens, "prefill_ms": round(c.prefill_ms, 1),
                          "decode_ms": round(c.decode_ms, 1)}))
    else:
        print(c.text)
    return 0


def cmd_serve(args) -> int:
    from pocketpilot.lsp_server.server import run  # lazy: pygls, only serve needs it

    run(tcp_port=args.tcp, host=args.host, artifact=args.model)
    return 0


def _held_out(root: Path) -> list[Path]:
    """Files under ``root`` that distillation holds out for validation."""
    return held_out_files([root])


def cmd_eval(args) -> int:
    from pocketpilot.evaluation.tasks import (  # lazy: the evaluation package
        make_tasks,
        read_tasks,
        write_tasks,
    )
    from pocketpilot.runtime.loader import load_any  # lazy: torch

    if args.models and args.models[0] == "make-tasks":
        if len(args.models) != 2:
            raise PocketPilotError("usage: pocketpilot eval make-tasks DIR --n N --seed S --out FILE")
        root = Path(args.models[1])
        tasks = make_tasks(root, n=args.n, seed=args.seed, files=_held_out(root) if args.held_out else None)
        out = Path(args.out or "tasks.jsonl")
        write_tasks(tasks, out)
        print(f"wrote {len(tasks)} tasks to {out}", file=sys.stderr)
        return 0
    if args.speed:
        from pocketpilot.corpus import default_source_dir  # lazy: only --speed needs it
        from pocketpilot.evaluation.speed import measure_speed  # lazy: torch

        text = (default_source_dir() / "json" / "encoder.py").read_text() * 2
        for name in args.models or [None]:
            res = measure_speed(load_any(name), text, prompt_tokens=args.prompt_tokens)
            print(f"{name or 'active'}: prefill {res['prompt_tokens']} tokens {res['prefill_ms']} ms, "
                  f"decode {res['decode_ms_per_token']} ms/token")
        return 0
    from pocketpilot.evaluation.runner import parse_suites, run_eval  # lazy: torch

    if args.from_json:
        try:
            result = json.loads(Path(args.from_json).read_text())
        except (OSError, ValueError) as exc:
            raise PocketPilotError(f"cannot read results {args.from_json}: {exc}; pass a file written by eval --json") from None
        if not isinstance(result, dict) or "models" not in result:
            raise PocketPilotError(f"{args.from_json} is not a file written by pocketpilot eval --json")
        return _eval_output(args, result)
    suites = parse_suites(args.suite)
    models = (args.compare or []) + (args.models or [])
    summaries = None
    if args.tasks and "summarize" in suites:  # --tasks is then a file of summarize tasks
        from pocketpilot.evaluation.summarize import read_summary_tasks  # lazy: the evaluation package

        summaries = read_summary_tasks(Path(args.tasks))
    tasks = read_tasks(Path(args.tasks)) if args.tasks and summaries is None else None
    result = run_eval(models or [None], suites, tasks=tasks, tasks_label=f"{args.tasks}" if args.tasks else "",
                      n=args.n, seed=args.seed, limit=args.limit, held_out=args.held_out,
                      codexglue_lang=args.codexglue_lang, codexglue_n=args.codexglue_n,
                      recode_categories=args.recode_categories.split(",") if args.recode_categories else None,
                      cost_completions=args.cost_completions, baseline=args.baseline,
                      checkpoint=args.checkpoint, summary_tasks=summaries)
    return _eval_output(args, result)


def _eval_output(args, result: dict) -> int:
    from pocketpilot.evaluation.report import markdown, write_report  # lazy: matplotlib
    from pocketpilot.evaluation.runner import slim  # lazy: torch

    if args.json:
        _write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    written = write_report(result, Path(args.report) if args.report else None,
                           Path(args.plots) if args.plots else None) if args.report or args.plots else {}
    for name, path in written.items():
        print(f"plot {name}: {path}", file=sys.stderr)
    if args.report:
        print(f"report: {args.report}", file=sys.stderr)
    print(markdown(slim(result)))
    return 0


def _write_text(path: Path, text: str) -> None:
    """Write a file atomically; a full disk or bad path is a one-line error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise PocketPilotError(f"cannot write {path} ({exc.strerror or exc}); check the path and free disk space") from None


def method_help() -> str:
    """``--method`` help: every registered method with its description (the registry imports no torch)."""
    return "; ".join(f"{m.name}{' (default)' if m.name == 'int8' else ''}: {m.description}" for m in METHODS.values())


def _server_settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs (VALUE as JSON, else a string) as server settings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PocketPilotError(f"--setting wants KEY=VALUE (e.g. draftTokens=0), got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_bench(args) -> int:
    if args.which == "engines":
        return _bench_engines(args)
    from pocketpilot.evaluation.typing_replay import (
        run_typing_bench,  # lazy: starts the server (torch)
    )

    res = run_typing_bench(Path(args.source_dir) if args.source_dir else None, files=args.files, lines=args.lines,
                           seed=args.seed, cps=args.cps, debounce_ms=args.debounce_ms, artifact=args.model,
                           reuse_off=not args.no_reuse_off, settings=_server_settings(args.setting),
                           progress=lambda m: print(m, file=sys.stderr), open_pause_s=args.open_pause_s,
                           background_load=args.background_load)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    chars = sum(s["chars"] for s in res["stretches"])
    print(f"typing replay: {len(res['stretches'])} stretches, {chars} characters at {res['cps']:g} chars/s, "
          f"{res['debounce_ms']:g} ms debounce, model {res['on']['model']}")
    for name, label in (("on", "reuse on "), ("off", "reuse off"), ("loaded", f"{args.background_load} busy ")):
        r = res[name]
        if r is None:
            continue
        acc = "n/a" if r["acceptance"] is None else f"{100 * r['acceptance']:.0f}%"
        print(f"  {label}: {r['requests']} requests, p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms "
              f"(warm: p50 {r['warm_latency_ms_p50']} ms, p95 {r['warm_latency_ms_p95']} ms; first in a document: "
              f"p50 {r['first_latency_ms_p50']} ms, max {r['first_latency_ms_max']} ms; model runs: "
              f"{r['model_runs']}, p50 {r['model_run_latency_ms_p50']} ms); tokens prefilled p50 "
              f"{r['prefilled_tokens_p50']}, p95 {r['prefilled_tokens_p95']}; cache hits {100 * r['cache_hit_rate']:.0f}%, "
              f"{r['reused_tokens_mean']} tokens reused on average, {r['typed_ahead_hits']} typed-ahead, "
              f"{r['remembered_hits']} remembered, {r['cut']} cut; suggestions typed {r['accepted']}/{r['suggestions']} ({acc})")
    if res["p50_ratio_off_over_on"] is not None:
        print(f"  p50 reuse off / on: {res['p50_ratio_off_over_on']}x")
    if res["loaded_over_quiet"]:
        q = res["loaded_over_quiet"]
        print(f"  with {args.background_load} busy processes / quiet: p50 {q.get('p50')}x, p95 {q.get('p95')}x")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pocketpilot`` argument parser: one sub-parser per command, each with ``func`` set to its handler.

    Builds without importing torch (``--help`` and ``serve`` start fast; a test checks it).
    """
    p = argparse.ArgumentParser(prog="pocketpilot", description="On-device code completion from a model compressed for this machine.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_compress, _add_doctor, _add_distill, _add_search, _add_list, _add_complete, _add_serve,
                _add_eval, _add_bench):  # this order is the order ``--help`` lists them in
        add(sub)
    return p


def _add_compress(sub) -> None:
    c = sub.add_parser("compress", help="compress a teacher into a cached artifact and make it active")
    c.add_argument("--teacher", help=f"teacher spec (default {DEFAULT_TEACHER}): {ACCEPTED_FORMS}")
    c.add_argument("--method", help=method_help())
    c.add_argument("--for-this-machine", action="store_true",
                   help="probe this machine and choose teacher and method for --budget-ms and its memory "
                        "(see `pocketpilot doctor`); the decision is recorded in the manifest")
    _add_budgets(c, "--for-this-machine: ")
    c.add_argument("--force", action="store_true", help="rebuild even if the artifact is cached")
    c.add_argument("--eval-tasks", type=int, default=20, metavar="N",
                   help="score artifact and teacher on N stdlib line-completion tasks (0 skips; default 20)")
    c.add_argument("--json", action="store_true", help="print a JSON summary (sizes in bytes)")
    c.set_defaults(func=cmd_compress)


def _add_budgets(parser, lead: str) -> None:
    """The chooser's two budgets (``--budget-ms``, ``--warmup-budget-ms``), defaults from
    :mod:`pocketpilot.compression.shapes`."""
    parser.add_argument("--budget-ms", type=float, default=DEFAULT_BUDGET_MS,
                        help=f"{lead}budget of a model run while typing (a keystroke after the last request), ms "
                             f"(default {DEFAULT_BUDGET_MS:g})")
    parser.add_argument("--warmup-budget-ms", type=float, default=DEFAULT_WARMUP_MS,
                        help=f"{lead}budget of the background warm-up of an opened file ({PROMPT_TOKENS}-token prompt), "
                             f"ms (default {DEFAULT_WARMUP_MS:g})")


def _add_doctor(sub) -> None:
    dr = sub.add_parser("doctor", help="probe this machine (cores, ISA, RAM, CUDA, MPS) and say which recipe it would choose")
    _add_budgets(dr, "")
    dr.add_argument("--json", action="store_true", help="print the profile, speed probe and decision as JSON")
    dr.set_defaults(func=cmd_doctor)


def _add_distill(sub) -> None:
    d = sub.add_parser("distill", help="distil a teacher into a shallower student (knowledge distillation) and cache it")
    d.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"teacher spec (default {DEFAULT_TEACHER})")
    d.add_argument("--layers", type=int, required=True, metavar="N", help="student layers (2 .. the teacher's)")
    budget = d.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="training steps in total (a resumed run counts earlier steps)")
    budget.add_argument("--minutes", type=float, help="training minutes in total (resumes included)")
    d.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T of the soft loss (default 2)")
    d.add_argument("--alpha", type=float, default=0.5, help="weight of the soft loss vs next-token CE (default 0.5)")
    d.add_argument("--block-tokens", type=int, default=256, help="tokens per training block (default 256)")
    d.add_argument("--batch-size", type=int, default=4, help="blocks per step, per process (default 4)")
    d.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    d.add_argument("--corpus", help="folder of source files to train on (default: the Python standard library)")
    d.add_argument("--workspace", help="an extra folder of source files added to the corpus")
    d.add_argument("--top-k", type=int, metavar="K", help="soft loss on the teacher's top-K logits, cached per block")
    d.add_argument("--then", metavar="METHOD", help="quantize the student afterwards (e.g. int8)")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the run's checkpoint if any (default); --no-resume starts over")
    d.add_argument("--eval-tasks", type=int, default=20, metavar="N",
                   help="score student and teacher on N stdlib line-completion tasks (0 skips; default 20)")
    d.add_argument("--json", action="store_true", help="print a JSON summary (sizes in bytes, losses in nats/token)")
    d.set_defaults(func=cmd_distill)


def _add_search(sub) -> None:
    se = sub.add_parser("search", help="search pruned / quantized / distilled students (Z3 space, measured Pareto "
                                       "front) and pick one for a latency budget")
    se.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"teacher spec (default {DEFAULT_TEACHER})")
    se.add_argument("--budget-ms", type=float, default=300.0,
                    help="one-line completion latency budget for the pick, ms (default 300)")
    se.add_argument("--max-mb", type=float, help="size on disk limit, MB (constrains the space and the pick)")
    se.add_argument("--max-params", type=int, help="parameter count limit")
    se.add_argument("--min-layers", type=int, default=2, help="fewest decoder layers a student may keep (default 2)")
    se.add_argument("--max-steps", type=int, help="largest distillation step count to consider (0: no distillation)")
    se.add_argument("--methods", help="comma-separated quantization methods to consider (default: all installed)")
    se.add_argument("--evaluate", type=int, default=10, metavar="N",
                    help="configurations to build and measure in all, earlier runs included (default 10; 0: pick only)")
    se.add_argument("--tasks", type=int, default=100, help="held-out line-completion tasks per point (default 100)")
    se.add_argument("--seed", type=int, default=0, help="task seed (default 0)")
    se.add_argument("--reference", action="append", default=[], metavar="ARTIFACT",
                    help="also measure this cached artifact on the same tasks (repeatable)")
    se.add_argument("--explain", action="store_true", help="print the Z3 constraints and the size of the space, then stop")
    se.add_argument("--compress", action="store_true", help="build (if needed) and activate the picked student")
    se.add_argument("--plot", metavar="OUT.png", help="where to draw the front (default <home>/search/<teacher>.png)")
    se.add_argument("--fresh", action="store_true", help="forget the stored search of this teacher and start over")
    se.add_argument("--json", action="store_true", help="print the pick and the whole search state as JSON")
    se.set_defaults(func=cmd_search)


def _add_list(sub) -> None:
    ls = sub.add_parser("list", help="list cached artifacts (* = active)")
    ls.add_argument("--json", action="store_true", help="print JSON (sizes in bytes)")
    ls.set_defaults(func=cmd_list)


def _add_complete(sub) -> None:
    k = sub.add_parser("complete", help="print the completion at a position of a file")
    k.add_argument("file", help="source file")
    k.add_argument("--line", type=int, required=True, help="line number, 1-based (as editors show it)")
    k.add_argument("--col", type=int, required=True,
                   help="column, 1-based, in characters; the cursor sits before this character (len+1 = end of line)")
    k.add_argument("--model", help="artifact id or folder, or a teacher spec (default: the active artifact)")
    k.add_argument("--max-new-tokens", type=int, default=48)
    k.add_argument("--as-typed", action="store_true",
                   help="pretend the rest of the line after the cursor is not written yet (as evaluation tasks do)")
    k.add_argument("--repeat", type=int, default=1, help="run N times and report the median latency on stderr")
    k.add_argument("--json", action="store_true", help="print text, token counts and timings as JSON")
    k.set_defaults(func=cmd_complete)


def _add_serve(sub) -> None:
    s = sub.add_parser("serve", help="run the language server (stdio by default)")
    s.add_argument("--tcp", type=int, metavar="PORT",
                   help="listen on TCP instead of stdio; a client must send initializationOptions.token, the "
                        "session token written to <cache>/serve-PORT.token (0600)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model", help="artifact id or folder (default: the active artifact)")
    s.set_defaults(func=cmd_serve)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="measure models: line completion, CodeXGLUE, HumanEval, ReCode, summarize, cost; "
                                    "or: eval make-tasks DIR --n N --seed S --out FILE")
    e.add_argument("models", nargs="*", help="artifact ids/folders or teacher specs (default: the active artifact)")
    e.add_argument("--compare", nargs="+", metavar="MODEL",
                   help="models side by side, with ratios to the first (normally the teacher) and a Pareto plot")
    e.add_argument("--suite", default="lines",
                   help="comma-separated: lines, codexglue, humaneval, recode, summarize, cost; or all (default lines)")
    e.add_argument("--tasks", help="JSONL line-completion tasks (default: cut --n tasks from the Python standard library); "
                                   "with --suite summarize: JSONL of {id, code, reference, lang}")
    e.add_argument("--n", type=int, default=500, help="raw-code (and summarize) tasks to cut (default 500)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--limit", type=int, help="at most N items in every suite (quick runs)")
    e.add_argument("--held-out", action="store_true",
                   help="cut tasks only from the files `pocketpilot distill` holds out for validation")
    e.add_argument("--codexglue-lang", default="python", help="python (py150) or java (default python)")
    e.add_argument("--codexglue-n", type=int, default=1000, help="CodeXGLUE examples, a seeded sample (default 1000)")
    e.add_argument("--recode-categories", help="comma-separated ReCode categories (default all: format, func_name, "
                                               "natgen, nlaugmenter)")
    e.add_argument("--cost-completions", type=int, default=20, help="completions timed by the cost suite (default 20)")
    e.add_argument("--baseline", choices=["llama.cpp"],
                   help="also run the first model's teacher GGUF through llama.cpp (pip install 'pocketpilot[llamacpp]')")
    e.add_argument("--checkpoint", metavar="FILE",
                   help="keep every model output in FILE (JSONL) as it is made; the same command with the same "
                        "FILE reuses them, so a stopped or split evaluation continues where it stopped")
    e.add_argument("--from-json", metavar="FILE", help="run nothing: rewrite the report and plots from an eval --json file")
    e.add_argument("--out", help="make-tasks: output JSONL")
    e.add_argument("--json", metavar="OUT", help="write all results (with per-item predictions) as JSON")
    e.add_argument("--report", metavar="OUT.md", help="write a Markdown report (plots beside it)")
    e.add_argument("--plots", metavar="DIR", help="folder for the PNG plots (default: beside --report, else .)")
    e.add_argument("--speed", action="store_true",
                   help="instead: time a prefill and 32 decode steps on standard-library code (median of 3)")
    e.add_argument("--prompt-tokens", type=int, default=512, help="--speed: prompt length in tokens")
    e.set_defaults(func=cmd_eval)


def _bench_engines(args) -> int:
    from pocketpilot.evaluation.sidebyside import side_by_side  # lazy: torch

    if not args.models:
        raise PocketPilotError("bench engines needs --models MODEL [MODEL ...] (artifact ids, folders or teachers)")
    res = side_by_side(args.models, args.baseline_teacher, positions=args.positions, rounds=args.rounds,
                       log=lambda m: print(m, file=sys.stderr))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"engines side by side: {res['threads']} threads, read bandwidth {res['read_gbps']} GB/s, "
          f"{res['prompt_tokens']}-token prefill, {res['positions']} cold one-line positions, {res['rounds']} rounds")
    vs = " (x llama.cpp)" if res["baseline"] else ""
    print(f"{'model':44} {'engine':9} {'MB':>7} {'prefill ms' + vs:>24} {'decode ms/tok' + vs:>26} "
          f"{'floor':>6} {'cold p50 ms' + vs:>24}")
    for label, r in res["rows"].items():
        def cell(key):
            ratio = r.get(f"{key}_vs_llama_cpp")
            return f"{r[key]}" + (f" ({ratio}x)" if ratio is not None else "")
        print(f"{label:44} {r['engine']:9} {r['weight_bytes'] / 1e6:7.1f} {cell('prefill_ms'):>24} "
              f"{cell('decode_ms_per_token'):>26} {r['floor_ms_per_token']:>6} {cell('cold_p50_ms'):>24}")
    return 0


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks that print figures: bench typing, bench engines")
    b.add_argument("which", choices=["typing", "engines"],
                   help="typing: replay typing against the real server (stdio); engines: models and llama.cpp side by side")
    b.add_argument("--models", nargs="+", metavar="MODEL", help="engines: artifacts or teachers to time")
    b.add_argument("--baseline-teacher", metavar="TEACHER",
                   help="engines: also time llama.cpp on this teacher's shipped GGUF (needs llama-cpp-python)")
    b.add_argument("--positions", type=int, default=10, help="engines: cold one-line positions (default 10)")
    b.add_argument("--rounds", type=int, default=3, help="engines: timed rounds, alternating models (default 3)")
    b.add_argument("--source-dir", help="folder of .py files to type from (default: the Python standard library)")
    b.add_argument("--files", type=int, default=3, help="stretches to type, one per file (default 3)")
    b.add_argument("--lines", type=int, default=3, help="lines per stretch (default 3)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cps", type=float, default=10.0, help="typing speed, characters per second (default 10)")
    b.add_argument("--debounce-ms", type=float, default=100.0, help="client debounce, ms (default 100)")
    b.add_argument("--model", help="artifact id or folder (default: the active artifact)")
    b.add_argument("--no-reuse-off", action="store_true", help="skip the second run with KV-cache reuse off")
    b.add_argument("--open-pause-s", type=float, default=2.0,
                   help="typing: pause after opening each file before the first keystroke, s (default 2)")
    b.add_argument("--background-load", type=int, default=0, metavar="N",
                   help="typing: replay once more beside N CPU-bound processes and report the slowdown")
    b.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="server setting for both runs, camelCase as in initializationOptions (repeatable)")
    b.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    b.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except PocketPilotError as exc:
        print(f"pocketpilot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = getattr(args, "checkpoint", None)
        print("pocketpilot: interrupted; nothing half-written was kept"
              + (f"; the outputs so far are in {kept}: run the same command to continue" if kept else ""),
              file=sys.stderr)
        return 130

"""Building and measuring points: the artifact of a configuration, and its size, latency, ES and energy."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

# torch and transformers load with compression.build and prune anyway (the search is imported
# lazily by the CLI).
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pocketpilot.compression.api import compress
from pocketpilot.compression.build import Written, build_artifact, cached
from pocketpilot.compression.calibration import calibration_batches
from pocketpilot.compression.distill import distill, make_student
from pocketpilot.compression.methods import get_method
from pocketpilot.compression.prune import (
    block_influence,
    ffn_channel_importance,
    pick_layers,
    prune_ffn,
)
from pocketpilot.compression.search.space import StudentConfig
from pocketpilot.compression.shapes import LINE_TOKENS, PROMPT_TOKENS
from pocketpilot.corpus import CALIBRATION_FILES, default_source_dir
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.speed import measure_speed
from pocketpilot.runtime.engine import CompletionEngine
from pocketpilot.runtime.loader import load_model_folder
from pocketpilot.store import Progress, artifacts_dir, weight_files
from pocketpilot.teachers import Teacher

# --------------------------------------------------------------------------- building and measuring points


def _rapl_uj() -> int | None:
    """Package energy counter (µJ) from Linux powercap RAPL, or None where it cannot be read."""
    total, found = 0, False
    for p in Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj"):
        if p.parent.name.count(":") == 1:  # packages only, not sub-zones
            try:
                total += int(p.read_text())
                found = True
            except (OSError, ValueError):
                return None
    return total if found else None


class Builder:
    """Builds the artifact of a configuration (pruned, distilled, quantized) from one loaded teacher.

    Attributes:
        teacher_obj: the fetched teacher; model: it in float32; tokenizer: its tokenizer.
        calibration: token-id tensors ``[1, 512]`` (:func:`calibration_batches`) for pruning scores and int8 scales.
        n_params: the teacher's parameter count.
        distill_settings: extra :func:`distill` arguments for distilled points.
    """

    def __init__(self, teacher_obj: Teacher, progress: Progress, distill_settings: dict | None = None):
        self.teacher_obj = teacher_obj
        self.progress = progress
        # a short distillation reads a few hundred thousand tokens at most: tokenize no more than that
        self.distill_settings = {"max_tokens": 1 << 18, **(distill_settings or {})}
        self.model = AutoModelForCausalLM.from_pretrained(teacher_obj.folder, dtype=torch.float32, local_files_only=True, trust_remote_code=False)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_obj.folder, local_files_only=True, trust_remote_code=False)
        self.calibration = calibration_batches(self.tokenizer)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self._influence = None

    def influence(self) -> list[float]:
        """Block Influence of the teacher's layers (computed once)."""
        if self._influence is None:
            self._influence = block_influence(self.model, self.calibration)
        return self._influence

    def student(self, cfg: StudentConfig, teacher_model=None):
        """The pruned float32 student of ``cfg`` and its details (search key and configuration, layer map, FFN pruning)."""
        teacher_model = teacher_model or self.model
        n_teacher = teacher_model.config.num_hidden_layers
        infl = self.influence() if cfg.pick == "influence" else None
        layers = pick_layers(n_teacher, cfg.layers, cfg.pick, infl)
        student = make_student(teacher_model, cfg.layers, layers)
        student.eval()
        details = {"search_key": cfg.key(), "search_config": asdict(cfg), "layer_map": layers, "layer_pick": cfg.pick}
        if infl is not None:
            details["block_influence"] = infl
        if cfg.ffn < teacher_model.config.intermediate_size:
            details["ffn_pruning"] = prune_ffn(student, cfg.ffn, ffn_channel_importance(student, self.calibration))
        return student, details

    def is_plain(self, cfg: StudentConfig) -> bool:
        """``cfg`` is the teacher itself, only quantized (all layers, full FFN, no distillation)."""
        return (cfg.layers == self.model.config.num_hidden_layers and cfg.ffn == self.model.config.intermediate_size
                and cfg.steps == 0)

    def artifact_id(self, cfg: StudentConfig) -> str | None:
        """Artifact id of ``cfg``: ``<teacher>-<method>`` for the unpruned teacher, ``<teacher>-<key>`` otherwise;
        ``None`` for the teacher itself (float32, unpruned: measured from the teacher's folder)."""
        if self.is_plain(cfg):
            return None if cfg.quant == "none" else f"{self.teacher_obj.slug}-{cfg.quant}"
        return f"{self.teacher_obj.slug}-{cfg.key()}"

    def build(self, cfg: StudentConfig) -> tuple[str | None, Path]:
        """Build (or reuse) the artifact of ``cfg``; returns ``(artifact id or None, folder)``.

        The teacher itself has no artifact (its own folder is returned). A valid cached artifact of
        this teacher (:func:`cached`) is reused; otherwise the quantized teacher is built by
        :func:`compress`, a distilled student by :func:`distill`, a pruned one by :func:`build_artifact`.

        Raises:
            PocketPilotError: the errors of compress / distill / build_artifact (disk, missing packages).
        """
        aid = self.artifact_id(cfg)
        if aid is None:
            return None, self.teacher_obj.folder
        if cached(aid, self.teacher_obj, self.progress) is not None:
            return aid, artifacts_dir() / aid
        spec = self.teacher_obj.spec.spec
        if self.is_plain(cfg):
            return aid, compress(spec, cfg.quant, eval_tasks=0, activate=False, force=True, progress=self.progress).folder
        if cfg.steps:
            self.progress(f"distilling {cfg.key()} ({cfg.steps} steps)", None)
            res = distill(spec, cfg.layers, then=None if cfg.quant == "none" else cfg.quant, steps=cfg.steps,
                          temperature=cfg.temperature, alpha=cfg.alpha,
                          build_student=lambda teacher_model: self.student(cfg, teacher_model),
                          student_tag=cfg.key(), artifact_id=aid, activate=False, show_progress=False,
                          progress=self.progress, **{"eval_every": cfg.steps, "checkpoint_every": cfg.steps,
                                                     **self.distill_settings})
            return aid, res.folder
        self.progress(f"building {aid}", None)
        res = build_artifact(self.teacher_obj, aid, lambda tmp: self._write_pruned(cfg, tmp), reuse=False,
                             activate=False, progress=self.progress)
        return aid, res.folder

    def _write_pruned(self, cfg: StudentConfig, tmp: Path) -> Written:
        """Prune the teacher to ``cfg``, quantize it with ``cfg.quant`` and write it into ``tmp``."""
        student, details = self.student(cfg)
        qmethod = get_method(cfg.quant)
        student_params = sum(p.numel() for p in student.parameters())  # before the method replaces any layer
        quant = qmethod.apply(student, tmp, self.calibration or None)
        teacher_cfg = self.model.config
        recipe = {"method": f"prune+{qmethod.name}",
                  "description": f"{cfg.layers} of {teacher_cfg.num_hidden_layers} layers ({cfg.pick}), FFN "
                                 f"{cfg.ffn} of {teacher_cfg.intermediate_size}, then {qmethod.description}",
                  "student": details, "quantization": quant, "student_params": student_params}
        return Written(recipe, self.n_params)


def measure_point(folder: Path, tasks: list[dict]) -> dict:
    """Measure an artifact (or teacher) folder: size, prefill/decode/one-line latency, ES/EM, energy.

    Returns ``{"bytes", "prefill_ms", "decode_ms_per_token", "line_ms", "es", "em", "latency_ms_p50",
    "energy_j_per_completion", "energy_source"}``: bytes of weight files; ms; ES/EM 0-100 on ``tasks``;
    energy from RAPL over the task loop (``None`` and ``"unavailable (no RAPL)"`` where it cannot be read).
    """
    loaded = load_model_folder(folder)
    text = "".join((default_source_dir() / n).read_text(encoding="utf-8") for n in CALIBRATION_FILES[:2])
    max_pos = getattr(loaded.model.config, "max_position_embeddings", 2048) or 2048
    prompt = min(PROMPT_TOKENS, max_pos - 2 * LINE_TOKENS)
    speed = measure_speed(loaded, text, prompt_tokens=prompt, new_tokens=LINE_TOKENS, repeats=3)
    e0 = _rapl_uj()
    res = evaluate_lines(CompletionEngine(loaded), tasks)
    e1 = _rapl_uj()
    energy = (e1 - e0) / 1e6 / max(1, len(tasks)) if e0 is not None and e1 is not None and e1 >= e0 else None
    return {
        "bytes": sum(p.stat().st_size for p in weight_files(Path(folder))),
        "prefill_ms": speed["prefill_ms"], "decode_ms_per_token": speed["decode_ms_per_token"],
        "line_ms": round(speed["prefill_ms"] + LINE_TOKENS * speed["decode_ms_per_token"], 1),
        "prompt_tokens": prompt,
        "es": res["es"], "em": res["em"], "latency_ms_p50": res["latency_ms_p50"],
        "energy_j_per_completion": None if energy is None else round(energy, 3),
        "energy_source": "RAPL" if energy is not None else "unavailable (no RAPL on this machine)",
    }

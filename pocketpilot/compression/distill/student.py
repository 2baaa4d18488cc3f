"""The student: the teacher's architecture with fewer decoder layers, initialised from the teacher's."""

from __future__ import annotations

import copy

from accelerate import init_empty_weights
from torch import nn

from pocketpilot.errors import PocketPilotError


def student_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer index for each student layer: evenly spaced, first and last kept.

    Student layer ``i`` takes teacher layer ``round(i * (n_teacher - 1) / (n_student - 1))``
    (halves rounded up), e.g. 30 -> 10 gives ``[0, 3, 6, 10, 13, 16, 19, 23, 26, 29]``.

    Raises:
        PocketPilotError: ``n_student < 2`` or ``n_student > n_teacher``.
    """
    if n_student < 2 or n_student > n_teacher:
        raise PocketPilotError(
            f"a student needs between 2 and {n_teacher} layers (the teacher has {n_teacher}); got --layers {n_student}"
        )
    d = n_student - 1
    return [(2 * i * (n_teacher - 1) + d) // (2 * d) for i in range(n_student)]


def decoder_layers_path(model) -> str:
    """Dotted path of the model's list of decoder layers (``"model.layers"`` for Llama/Qwen2).

    Raises:
        PocketPilotError: no ``nn.ModuleList`` of ``config.num_hidden_layers`` modules.
    """
    n = model.config.num_hidden_layers
    for name, mod in model.named_modules():
        if name and isinstance(mod, nn.ModuleList) and len(mod) == n:
            return name
    raise PocketPilotError(f"cannot find the {n} decoder layers of {type(model).__name__}; "
                           "distillation needs a decoder-only model with a layer list")


def make_student(teacher_model, n_layers: int, layers: list[int] | None = None):
    """A student with the teacher's architecture and ``n_layers`` decoder layers, initialised from it.

    The config is the teacher's with ``num_hidden_layers = n_layers`` (and per-layer lists such as
    ``layer_types`` subset by the layer map). Embeddings, final norm, LM head and every mapped
    layer (:func:`student_layer_map`) are copied (cloned, so training the student never touches
    the teacher); a tied LM head stays tied.

    Args:
        teacher_model: a ``transformers`` causal LM (float weights, not quantized).
        n_layers: student depth, 2 .. teacher depth.
        layers: the teacher layers to copy, in order (``n_layers`` distinct indices; e.g. from
            :func:`pocketpilot.compression.prune.pick_layers`); default :func:`student_layer_map`.

    Returns:
        The student, a model of the teacher's class, float32 like the teacher, in train mode.
        ``student.config.pocketpilot_layer_map`` is not set; use :func:`student_layer_map`.

    Raises:
        PocketPilotError: bad ``n_layers``, or a model without a recognisable layer list.
    """
    mapping = _layer_mapping(teacher_model.config.num_hidden_layers, n_layers, layers)
    prefix = decoder_layers_path(teacher_model) + "."
    config = _student_config(teacher_model.config, mapping)
    with init_empty_weights(include_buffers=False):
        student = type(teacher_model)(config)
    _copy_weights(student, teacher_model.state_dict(), prefix, mapping)
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    leftover = [n for n, t in list(student.named_parameters()) + list(student.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise PocketPilotError(f"cannot build a student of {type(teacher_model).__name__}: no weights for {leftover[:3]}")
    if getattr(teacher_model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher_model.generation_config)
    student.train()
    return student


def _layer_mapping(n_teacher: int, n_layers: int, layers: list[int] | None) -> list[int]:
    """``layers`` checked (``n_layers`` distinct indices in ``0..n_teacher-1``), else :func:`student_layer_map`."""
    mapping = student_layer_map(n_teacher, n_layers)
    if layers is None:
        return mapping
    if len(layers) != n_layers or len(set(layers)) != n_layers or not all(0 <= i < n_teacher for i in layers):
        raise PocketPilotError(f"a student of {n_layers} layers needs {n_layers} distinct teacher layers in "
                               f"0..{n_teacher - 1}; got {layers}")
    return list(layers)


def _student_config(teacher_config, mapping: list[int]):
    """A copy of the teacher's config with ``len(mapping)`` layers (and ``layer_types`` subset by ``mapping``)."""
    n_teacher = teacher_config.num_hidden_layers
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(mapping)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_teacher:
        config.layer_types = [layer_types[i] for i in mapping]
    return config


def _copy_weights(student, teacher_state: dict, prefix: str, mapping: list[int]) -> None:
    """Load clones of the teacher's tensors into the (meta) ``student``: layer ``j`` from teacher layer ``mapping[j]``."""
    state = {}
    for key in student.state_dict():
        src = key
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{mapping[int(j)]}.{rest}"
        state[key] = teacher_state[src].detach().clone()
    student.load_state_dict(state, strict=True, assign=True)

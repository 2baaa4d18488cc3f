"""Knowledge distillation: a frozen teacher trains a shallower student of the same architecture.

Pre-training-style distillation (the teacher is frozen, as in Distil-CodeGPT, where it beat
in-training KD): the student is the teacher's architecture with fewer decoder layers,
initialised from the teacher's layers evenly spaced (first and last kept), with the teacher's
embeddings, final norm and LM head, and the same tokenizer (students initialised from
pretrained weights did best in Distil-CodeGPT and DistilBERT).

Loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"; the
soft + hard loss of DistilBERT and Distil-CodeGPT)::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, next token)

Data: ``.py`` files of a local corpus (default: the Python standard library, plus a
workspace folder if given) tokenized into fixed-length blocks; files whose relative path
hashes below ``val_fraction`` are held out for validation.

The student is written as an ordinary artifact (float32, or quantized afterwards with
``then="int8"``) through :func:`pocketpilot.compression.build.build_artifact`, with the same
manifest as :func:`pocketpilot.compression.api.compress` writes.

Modules:
    student     :func:`student_layer_map`, :func:`decoder_layers_path`, :func:`make_student`
    data        :func:`code_blocks` (corpus -> blocks, held-out files), :class:`TeacherTopKCache`, data order
    loss        :func:`kd_loss`, :func:`kd_loss_topk`
    config      :class:`DistillConfig`, the run key, the reproducing command line
    checkpoint  atomic checkpoints of the run folder, the free-space check
    run         :func:`distill` and :class:`DistillRun` (setup, step, validate, save)
"""

from pocketpilot.compression.distill.config import RUN_FORMAT, DistillConfig
from pocketpilot.compression.distill.data import (
    TOPK_CACHE_DTYPE,
    CodeBlocks,
    TeacherTopKCache,
    code_blocks,
)
from pocketpilot.compression.distill.loss import KDLoss, kd_loss, kd_loss_topk
from pocketpilot.compression.distill.run import DistillRun, distill
from pocketpilot.compression.distill.student import (
    decoder_layers_path,
    make_student,
    student_layer_map,
)

__all__ = [
    "RUN_FORMAT", "TOPK_CACHE_DTYPE", "CodeBlocks", "DistillConfig", "DistillRun", "KDLoss", "TeacherTopKCache",
    "code_blocks", "decoder_layers_path", "distill", "kd_loss", "kd_loss_topk", "make_student", "student_layer_map",
]

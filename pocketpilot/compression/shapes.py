"""What the chooser and the search know of a teacher without downloading it, and the shared budget facts.

Read by :mod:`pocketpilot.compression.recipe`, :mod:`pocketpilot.compression.search` and
:mod:`pocketpilot.compression.hardware`, so none of them imports another for these constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketpilot.runtime.settings import EngineSettings

#: prompt and completion length a one-line latency is predicted for (tokens): a cold completion
PROMPT_TOKENS = 512
LINE_TOKENS = 12
#: prompt tokens a warm model run (one keystroke after the last request) prefills, with the
#: engine's default settings (tokens)
KEYSTROKE_TOKENS = EngineSettings().keystroke_tokens
#: default budgets of ``compress --for-this-machine`` (ms): a warm model run in the editor
#: (:data:`KEYSTROKE_TOKENS` prefilled, then :data:`LINE_TOKENS` decoded), and the background
#: warm-up of a document's prompt when it is opened (:data:`PROMPT_TOKENS` prefilled)
DEFAULT_BUDGET_MS = 1000.0
DEFAULT_WARMUP_MS = 5000.0
#: memory kept free for the editor and the OS: at most this share of available RAM is planned
RAM_SHARE = 0.8
#: serving memory beyond the weights: runtime, tokenizer, KV caches at the default kvCacheMb (bytes)
SERVE_OVERHEAD_BYTES = 400_000_000


#: vocabulary of the speed probe's mini models (the LM head is timed on its own)
MINI_VOCAB = 256


@dataclass(frozen=True)
class TeacherShape:
    """What the chooser needs to know of a teacher without downloading it.

    Attributes:
        alias: packaged teacher alias.
        arch: ``model_type`` (``"llama"`` or ``"qwen2"``).
        layers, hidden, ffn, heads, kv_heads, head_dim, vocab: the decoder's shape.
        tied: the LM head shares the embedding.
        quality: measured ES on standard-library line completion, fp32 (0-100; higher is better).
    """

    alias: str
    arch: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    quality: float

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (count)."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.ffn + 2 * h

    @property
    def params(self) -> int:
        """All parameters (count)."""
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def mini_config(self, layers: int):
        """A ``transformers`` config of this shape with ``layers`` layers and a :data:`MINI_VOCAB`-token vocabulary."""
        from transformers import AutoConfig  # lazy: transformers (the chooser's tables are read torch-free)

        return AutoConfig.for_model(self.arch, vocab_size=MINI_VOCAB, hidden_size=self.hidden, intermediate_size=self.ffn,
                                    num_hidden_layers=layers, num_attention_heads=self.heads,
                                    num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
                                    max_position_embeddings=2048, tie_word_embeddings=True)

    @property
    def body_params(self) -> int:
        """Weights of all decoder layers (count)."""
        return self.layers * self.layer_params

    @property
    def head_params(self) -> int:
        """Weights of the token embedding and LM head (count; a tied head once)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)


#: the packaged teachers, best first (shapes from their config.json). ES: Qwen2.5-Coder-1.5B 68 vs
#: SmolLM2-135M 51 on the same stdlib line-completion tasks (first issue, fp32).
TEACHERS: tuple[TeacherShape, ...] = (
    TeacherShape("qwen2.5-coder-1.5b", "qwen2", 28, 1536, 8960, 12, 2, 128, 151936, False, 68.0),
    TeacherShape("smollm2-135m", "llama", 30, 576, 1536, 9, 3, 64, 49152, True, 51.0),
)

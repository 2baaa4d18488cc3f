"""A tiny Llama teacher built from a config and trained for a few seconds (no download).

The model memorises :data:`CORPUS`, so completions are predictable: after
``"def add(a, b):\n    return "`` it writes ``a + b``.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def greet(name):\n    print(\"hello \" + name)\n",
    "for item in items:\n    total = total + item\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\npath = os.path.join(root, name)\n",
]
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]


def make_tiny_teacher(out: Path, fim: bool = False, steps: int = 300, seed: int = 0, layers: int = 2) -> Path:
    """Write a tiny trained Llama model (``layers`` decoder layers) + tokenizer to ``out`` (a Hugging Face folder)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    specials = ["<|endoftext|>"] + (FIM_TOKENS if fim else [])
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    if fim:
        tok.add_special_tokens({"additional_special_tokens": FIM_TOKENS})
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    eos = tok.eos_token_id
    seqs = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        seqs.append(ids + [eos])
        if fim:  # teach FIM on every split point of the first line break
            fp, fs, fm = (tok.convert_tokens_to_ids(t) for t in FIM_TOKENS)
            cut = text.index("\n") + 1
            seqs.append([fp, *tok.encode(text[:cut], add_special_tokens=False), fs,
                         *tok.encode(text[cut + text[cut:].index("\n"):], add_special_tokens=False), fm,
                         *tok.encode(text[cut:cut + text[cut:].index("\n")], add_special_tokens=False), eos])
    width = max(map(len, seqs))
    batch = torch.full((len(seqs), width), eos)
    labels = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(s)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out

"""Tiny random models of real architectures, built offline, for tests and examples.

``save_tiny_model(path, arch="llama")`` writes an HF directory (config.json, model.safetensors, a byte-level
tokenizer) that every command accepts as MODEL. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_IDS = dict(bos_token_id=257, eos_token_id=258, pad_token_id=259)
_BASE = dict(vocab_size=260, max_position_embeddings=512, **_IDS)


def tiny_config(arch: str = "llama", **overrides: Any):
    """A small config of a real architecture (llama, mistral, qwen2, opt, gpt2)."""
    import transformers as tf

    arch = arch.lower()
    if arch in ("llama", "mistral", "qwen2"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[arch]
        kw = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, **_BASE)
    elif arch == "opt":
        cls = tf.OPTConfig
        kw = dict(hidden_size=64, ffn_dim=160, num_hidden_layers=2, num_attention_heads=4,
                  word_embed_proj_dim=64, **_BASE)
    elif arch == "gpt2":
        cls = tf.GPT2Config
        kw = dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=260, **_IDS)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    kw.update(overrides)
    return cls(**kw)


def byte_tokenizer():
    """A byte-level tokenizer (256 bytes + bos/eos/pad/unk = 260 ids) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in ("<unk>", "<s>", "</s>", "<pad>"):
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    model.eval()
    return model


def save_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0, max_shard_size: str | None = None,
                    dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """Write a tiny random model + byte tokenizer as an HF safetensors directory; returns the path."""
    path = Path(path)
    model = tiny_model(arch, seed=seed, dtype=dtype, **overrides)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kw)
    byte_tokenizer().save_pretrained(path)
    return path

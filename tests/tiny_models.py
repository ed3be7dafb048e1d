"""Tiny random decoder-only models of several architectures, built from configs (no network)."""

from __future__ import annotations

import torch
import transformers as tf

ARCHS = ["llama", "mistral", "qwen2", "gpt2", "gpt_neox", "opt", "phi", "gemma"]


def tiny_config(arch: str, n_layers: int = 3, vocab: int = 128):
    h, heads = 32, 4
    common = dict(vocab_size=vocab)
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=h,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        )
    if arch == "mistral":
        return tf.MistralConfig(
            hidden_size=h,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=256,
            sliding_window=None,
            **common,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(
            hidden_size=h,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        )
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=h, n_layer=n_layers, n_head=heads, n_positions=256, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=h,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            max_position_embeddings=256,
            **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=h,
            ffn_dim=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            max_position_embeddings=256,
            word_embed_proj_dim=h,
            **common,
        )
    if arch == "phi":
        return tf.PhiConfig(
            hidden_size=h,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            max_position_embeddings=256,
            **common,
        )
    if arch == "gemma":
        return tf.GemmaConfig(
            hidden_size=h,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=256,
            **common,
        )
    raise ValueError(arch)


def tiny_model(arch: str = "llama", n_layers: int = 3, seed: int = 0, vocab: int = 128):
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(arch, n_layers, vocab))
    model.eval()
    return model


class TinyTokenizer:
    """The two ids fine-tuning needs from a tokenizer, for models with a 128-token vocabulary."""

    pad_token_id, eos_token_id = 0, 1


def random_sft(n: int, seed: int, length: int = 20):
    """``n`` random token sequences as SFT data, the first 5 tokens of each masked as the prompt."""
    from layerscope.core.data import SFTData, SFTExample

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, 128, (length,), generator=g).tolist()
        out.append(SFTExample(input_ids=ids, labels=[-100] * 5 + ids[5:]))
    return SFTData(examples=out, stats={}, source=f"mem{seed}", format="text", fingerprint=f"fp{seed}")

"""Tiny random decoder-only models of several architectures, built from configs (no network)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    if arch in FAMILIES and FAMILIES[arch].model_type:
        f = FAMILIES[arch]
        # per-layer lists (Qwen3-Next's layer_types) are given for two blocks: repeated to n_layers
        options = {
            k: (v * n_layers)[:n_layers] if isinstance(v, list) and "layer" in k else v for k, v in f.options.items()
        }
        return tf.AutoConfig.for_model(f.model_type, vocab_size=vocab, **{f.layers_key: n_layers}, **options)
    raise ValueError(arch)


# ----------------------------------------------------------------------------- the architecture table
# Every decoder-only family tests/test_architectures.py runs (docs/architectures.md lists the results).
# The first eight are ARCHS above (built by hand); the others come from ``model_type`` and ``options``.


@dataclass(frozen=True)
class Family:
    model_type: str | None  # None: one of ARCHS, built above
    features: str  # what makes the family worth testing (shown in docs/architectures.md)
    options: dict = field(default_factory=dict)
    layers_key: str = "num_hidden_layers"
    refused_because: str = ""  # why layerscope refuses this family (empty: it works)


_H = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256
)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=1)  # inside a 128-token vocabulary
_GPT = dict(n_embd=32, n_head=4, n_positions=256, n_inner=64, bos_token_id=1, eos_token_id=1)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

FAMILIES: dict[str, Family] = {
    "llama": Family(None, "RoPE, GQA, SwiGLU"),
    "mistral": Family(None, "Llama-like"),
    "qwen2": Family(None, "q/k/v biases"),
    "gpt2": Family(None, "Conv1D, fused qkv (c_attn), learned positions"),
    "gpt_neox": Family(None, "parallel attention + MLP, fused qkv"),
    "opt": Family(None, "MLP on the block (fc1/fc2), pre-norm"),
    "phi": Family(None, "parallel attention + MLP, partial RoPE"),
    "gemma": Family(None, "scaled embeddings, (1 + w) RMSNorm"),
    "bloom": Family(
        "bloom",
        "ALiBi, fused qkv, residual added inside attention and MLP",
        dict(hidden_size=32, n_head=4, **_IDS),
        "n_layer",
    ),
    "mpt": Family(
        "mpt",
        "ALiBi, residual added inside the MLP",
        dict(d_model=32, n_heads=4, max_seq_len=256, expansion_ratio=2, **_IDS),
        "n_layers",
    ),
    "falcon": Family(
        "falcon",
        "parallel attention + MLP, fused qkv, new decoder architecture",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
            max_position_embeddings=256,
            **_IDS,
        ),
    ),
    "falcon_alibi": Family(
        "falcon",
        "ALiBi, sequential blocks, multi-query",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            alibi=True,
            parallel_attn=False,
            bias=True,
            max_position_embeddings=256,
            **_IDS,
        ),
    ),
    "gptj": Family("gptj", "parallel attention + MLP, partial rotary", dict(_GPT, rotary_dim=4), "n_layer"),
    "codegen": Family("codegen", "parallel attention + MLP, fused qkv", dict(_GPT, rotary_dim=4, n_ctx=256), "n_layer"),
    "gpt_bigcode": Family("gpt_bigcode", "multi-query, fused qkv (c_attn)", dict(_GPT), "n_layer"),
    "phi3": Family("phi3", "fused qkv_proj and gate_up_proj", dict(_H, **_IDS)),
    "gemma2": Family(
        "gemma2",
        "logit soft-capping, sliding window, sandwich norms",
        dict(_H, head_dim=8, final_logit_softcapping=2.0, attn_logit_softcapping=5.0, sliding_window=4, **_IDS),
    ),
    "gemma3_text": Family(
        "gemma3_text", "sliding window, q/k norm, sandwich norms", dict(_H, head_dim=8, sliding_window=4, **_IDS)
    ),
    "qwen3": Family("qwen3", "q/k norm", dict(_H, head_dim=8, **_IDS)),
    "starcoder2": Family("starcoder2", "LayerNorm with biases, plain MLP", dict(_H, **_IDS)),
    "olmo": Family("olmo", "non-parametric LayerNorm", dict(_H, **_IDS)),
    "olmo2": Family("olmo2", "norms after attention and MLP, q/k norm", dict(_H, **_IDS)),
    "stablelm": Family("stablelm", "partial RoPE, LayerNorm", dict(_H, partial_rotary_factor=0.5, **_IDS)),
    "cohere": Family("cohere", "parallel attention + MLP, logit scale", dict(_H, **_IDS)),
    "cohere2": Family("cohere2", "parallel attention + MLP, sliding window", dict(_H, sliding_window=4, **_IDS)),
    "persimmon": Family("persimmon", "q/k LayerNorm, fused qkv, relu^2 MLP", dict(_H, **_IDS)),
    "granite": Family(
        "granite",
        "residual / embedding / logit multipliers",
        dict(_H, residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=2.0, **_IDS),
    ),
    "nemotron": Family("nemotron", "(1 + w) LayerNorm, relu^2 MLP", dict(_H, head_dim=8, **_IDS)),
    "smollm3": Family("smollm3", "layers without RoPE (NoPE)", dict(_H, **_IDS)),
    "exaone4": Family(
        "exaone4",
        "sliding window, q/k norm, norms after attention and MLP",
        dict(_H, head_dim=8, sliding_window=4, **_IDS),
    ),
    "opt_postnorm": Family(
        "opt",
        "post-norm blocks (do_layer_norm_before=False)",
        dict(
            hidden_size=32,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=32,
            do_layer_norm_before=False,
            **_IDS,
        ),
        refused_because='a post-norm block is never "input + contributions"',
    ),
    "qwen2_moe": Family(
        "qwen2_moe",
        "mixture of experts with a gated shared expert",
        dict(_H, shared_expert_intermediate_size=32, **_MOE, **_IDS),
    ),
    "deepseek_v3": Family(
        "deepseek_v3",
        "mixture of experts, multi-head latent attention",
        dict(
            _H,
            num_key_value_heads=4,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=0,
            kv_lora_rank=16,
            q_lora_rank=16,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
            n_group=1,
            topk_group=1,
            **_IDS,
        ),
    ),
    "jetmoe": Family(
        "jetmoe",
        "mixture of experts in attention and MLP",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            kv_channels=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            intermediate_size=64,
            max_position_embeddings=256,
            **_IDS,
        ),
    ),
    "granitemoeshared": Family(
        "granitemoeshared",
        "mixture of experts beside a shared MLP",
        dict(_H, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=32, **_IDS),
    ),
    "mixtral": Family(
        "mixtral",
        "mixture of experts (fused expert weights)",
        dict(_H, num_local_experts=4, num_experts_per_tok=2, **_IDS),
    ),
    "olmoe": Family(
        "olmoe",
        "mixture of experts (fused expert weights), q/k norm",
        dict(_H, **_MOE, **_IDS),
    ),
    # ---- found by experiments/architecture_sweep.py (every causal-LM family transformers ships)
    "qwen3_moe": Family("qwen3_moe", "mixture of experts, q/k norm", dict(_H, **_MOE, **_IDS)),
    "gpt_oss": Family(
        "gpt_oss",
        "attention sinks, sliding window, mixture of experts (fused, biased)",
        dict(_H, head_dim=8, num_local_experts=4, num_experts_per_tok=2, **_IDS),
    ),
    "llama4_text": Family(
        "llama4_text",
        "mixture of experts whose router subclasses nn.Linear (not a linear map: no LoRA target)",
        dict(_H, head_dim=8, num_local_experts=4, num_experts_per_tok=2, **_IDS),
    ),
    "phimoe": Family(
        "phimoe",
        "mixture of experts whose router subclasses nn.Linear",
        dict(_H, num_local_experts=4, num_experts_per_tok=2, **_IDS),
    ),
    "glm4_moe": Family(
        "glm4_moe",
        "mixture of experts with a shared expert, grouped routing",
        dict(
            _H,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=0,
            n_group=1,
            topk_group=1,
            **_IDS,
        ),
    ),
    "ernie4_5_moe": Family(
        "ernie4_5_moe",
        "mixture of experts with shared experts",
        dict(
            _H,
            moe_num_experts=4,
            moe_k=2,
            moe_intermediate_size=32,
            moe_num_shared_experts=1,
            moe_layer_start_index=0,
            **_IDS,
        ),
    ),
    "qwen3_next": Family(
        "qwen3_next",
        "hybrid: linear-attention (gated delta) and full-attention blocks, mixture of experts",
        dict(
            _H,
            head_dim=8,
            **_MOE,
            shared_expert_intermediate_size=32,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            layer_types=["linear_attention", "full_attention"],
            **_IDS,
        ),
    ),
    "inkling_text": Family(
        "inkling_text",
        "shared experts held as fused weights (no linear module), sliding-window heads",
        dict(
            _H,
            head_dim=8,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            mlp_layer_types=["sparse", "sparse"],
            swa_num_attention_heads=4,
            swa_num_key_value_heads=2,
            swa_head_dim=8,
            unpadded_vocab_size=512,
            **_IDS,
        ),
    ),
    "ctrl": Family(
        "ctrl",
        "MLP linears named 0 and 2 (nn.Sequential), as the blocks h.0 / h.2 are: LoRA targets as full paths",
        dict(n_embd=32, dff=64, n_head=4, n_positions=256, **_IDS),
        "n_layer",
    ),
    "gemma4_text": Family(
        "gemma4_text",
        "per-layer input branch beside attention and MLP, layer scalar",
        dict(_H, head_dim=8, vocab_size_per_layer_input=512, hidden_size_per_layer_input=8, **_IDS),
        refused_because="a per-layer input projection adds to the residual stream outside attention and MLP",
    ),
    "rwkv": Family(
        "rwkv",
        "linear-recurrent time mixing, a cache state written in place (ILA's eval-mode stage 2 must not build it)",
        dict(hidden_size=32, intermediate_size=64, context_length=256, **_IDS),
        refused_because="time mixing is not attention: removing it does not leave the residual stream intact",
    ),
}
FAMILY_NAMES = list(FAMILIES)


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

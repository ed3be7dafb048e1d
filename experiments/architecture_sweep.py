"""Sweep the causal-LM families transformers ships that tests/tiny_models.FAMILIES does not cover.

Each family gets a tiny random 2-block model (``AutoConfig.for_model`` with small sizes plus per-family
overrides) and runs, step by step (each timed and caught), the checks of
``tests/test_architectures.py: run_family``: layer map, multiple-choice evaluation, the removal check,
the coalition engine vs plain hooked forwards (sub-layer and block), similarity, experts, and the
training checks (``tests/training_checks.py``). The test helpers are imported, not rewritten; a swept
family is registered in ``tiny_models.FAMILIES`` at run time (in the child process only) so that the
training checks' fresh copies of the model are built from the same config.

    python experiments/architecture_sweep.py                # every family, resumable, one subprocess each
    python experiments/architecture_sweep.py --one qwen3_moe  # one family, in this process
    python experiments/architecture_sweep.py --probe        # configs only (meta device): sizes, errors
    python experiments/architecture_sweep.py --report       # rewrite results.md from results.jsonl

Outputs: /tmp/archsweep/results.jsonl (one JSON object per family), /tmp/archsweep/results.md.
Classes: works, refused (a layerscope ModelError), config (no tiny model), BUG (anything else), timeout.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
OUT = Path("/tmp/archsweep")
PARTIAL = OUT / "partial"
RESULTS = OUT / "results.jsonl"
TABLE = OUT / "results.md"
TIMEOUT_S = 180

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# ----------------------------------------------------------------------------- which families

# Not decoder-only text LMs: encoders with an LM head, encoder-decoders, audio / vision / multimodal
# wrappers (their text decoders are swept under the *_text model types where transformers has one).
SKIP = {
    # bert-likes (bidirectional encoders with a causal-LM head option)
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie",
    "megatron-bert", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm",
    "xlm-roberta", "xlm-roberta-xl", "xmod", "xlnet",
    # encoder-decoder (decoder halves)
    "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus",
    "plbart", "prophetnet", "trocr", "whisper",
    # audio / vision / multimodal composites
    "musicgen", "musicgen_melody", "moshi", "moss_transcribe_diarize", "git", "fuyu", "got_ocr2",
    "mllama", "emu3", "phi4_multimodal", "gemma3", "gemma3n", "gemma4", "gemma4_unified", "llama4",
    "qwen3_5", "qwen3_5_moe", "qwen4_exp", "dots3_note",
}  # fmt: skip

PRIORITY = [
    "gpt_oss", "qwen3_moe", "llama4_text", "gemma4_text", "qwen3_5_text", "qwen3_next", "glm4", "glm4_moe",
    "deepseek_v2", "ernie4_5", "phimoe", "dbrx", "granitemoe", "minimax", "seed_oss", "olmo3", "ministral",
    "helium", "apertus", "arcee", "falcon_h1", "jamba", "lfm2", "bamba", "nemotron_h", "mamba",
    "recurrent_gemma", "internlm3", "exaone", "hunyuan_v1_dense", "hunyuan_v1_moe", "dots1", "vaultgemma",
    "bitnet", "doge", "diffllama", "gpt_neo", "xglm", "biogpt", "ctrl", "openai-gpt",
]  # fmt: skip


def candidates() -> list[str]:
    from tiny_models import FAMILIES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    covered = {f.model_type or name for name, f in FAMILIES.items()}
    rest = [mt for mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if mt not in covered and mt not in SKIP]
    return [mt for mt in PRIORITY if mt in rest] + [mt for mt in rest if mt not in PRIORITY]


# ----------------------------------------------------------------------------- tiny configs

BASE = dict(
    num_hidden_layers=2,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=1,
)
# a canonical key -> the names configs use for it (when neither it nor its attribute_map name is a parameter)
ALIASES = {
    "num_hidden_layers": ["n_layer", "num_layers", "n_layers"],
    "hidden_size": ["n_embd", "d_model", "dim"],
    "intermediate_size": ["ffn_dim", "dff", "n_inner", "d_ff", "ffn_hidden_size"],
    "num_attention_heads": ["n_head", "n_heads", "num_heads", "attention_heads"],
    "num_key_value_heads": ["num_kv_heads", "n_kv_heads", "multi_query_group_num"],
    "max_position_embeddings": ["n_positions", "max_seq_len", "context_length", "n_ctx"],
}
# Small MoE / MLA / state-space / linear-attention sizes, each set only where the config takes the key.
GENERIC = dict(
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    moe_topk=2,
    moe_k=2,
    top_k_experts=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    n_shared_experts=1,
    num_shared_experts=1,
    moe_num_shared_experts=1,
    first_k_dense_replace=0,
    num_dense_layers=0,
    n_group=1,
    topk_group=1,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=8,
    mamba_d_state=8,
    mamba_n_heads=8,
    mamba_d_head=8,
    mamba_head_dim=8,
    mamba_n_groups=1,
    mamba_expand=2,
    state_size=8,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
)
# Per-family options (passed as given, after BASE and GENERIC). Hybrids get one layer of each kind.
_TEXT = dict(BASE, vocab_size=512)  # a tiny text_config for composite configs
_HYBRID = dict(
    layer_types=["linear_attention", "full_attention"]
)  # one linear-attention / mamba layer, one attention layer
OVERRIDES: dict[str, dict] = {
    # hybrids: block 0 of the non-attention kind, block 1 attention
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                  use_mamba_kernels=False),
    "lfm2": dict(layer_types=["conv", "full_attention"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "bamba": dict(attn_layer_indices=[1]),
    "nemotron_h": dict(layers_block_type=["linear_attention", "full_attention"], ssm_state_size=8, mamba_num_heads=8,
                       mamba_head_dim=8, n_groups=1, moe_shared_expert_intermediate_size=32, use_mamba_kernels=False),
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8),
    "qwen3_next": _HYBRID,
    "qwen3_5_text": _HYBRID,
    "qwen3_5_moe_text": _HYBRID,
    "qwen4_exp_text": _HYBRID,
    "granitemoehybrid": dict(_HYBRID, shared_intermediate_size=32),
    "bailing_hybrid": _HYBRID,
    "kimi_linear": dict(_HYBRID, linear_head_dim=8, linear_num_heads=4, mlp_layer_types=["sparse", "sparse"]),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    # zamba: a single hybrid layer breaks transformers' shared-weight tying regex; both layers hybrid
    "zamba": dict(layers_block_type=["hybrid", "hybrid"], n_mamba_heads=2, use_mamba_kernels=False),
    "zamba2": dict(layers_block_type=["linear_attention", "hybrid"], n_mamba_heads=2, use_mamba_kernels=False),
    "mamba2": dict(num_heads=8, head_dim=8, n_groups=1, expand=2),
    # other config needs
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    # dbrx: clip_qkv=None (the default) makes the attention call torch.clamp(min=None, max=None)
    "dbrx": dict(attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(ffn_hidden_size=64, moe_num_experts=4, moe_top_k=2)),
    "gemma4_text": dict(vocab_size_per_layer_input=512, hidden_size_per_layer_input=8),
    "gemma3n_text": dict(num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"],
                         vocab_size_per_layer_input=512, hidden_size_per_layer_input=8,
                         activation_sparsity_pattern=[0.0, 0.0]),
    "zaya": dict(num_experts_per_tok=1),
    # MoE families whose block 0 is dense by default (the experts check removes block 0's experts)
    "dots3_note_text": dict(num_key_value_heads=4, mlp_layer_types=["sparse", "sparse"]),
    "axk1": dict(mlp_layer_types=["sparse", "sparse"]),
    "axk2": dict(mlp_layer_types=["sparse", "sparse"]),
    "hy_v4": dict(mlp_layer_types=["sparse", "sparse"]),
    "ernie4_5_moe": dict(moe_layer_start_index=0),
    "glm4_moe_lite": dict(mlp_layer_types=["sparse", "sparse"]),
    "hy_v3": dict(mlp_layer_types=["sparse", "sparse"]),
    "laguna": dict(mlp_layer_types=["sparse", "sparse"]),
    # longcat_flash: the rotary tables follow head_dim, which must then equal qk_rope_head_dim
    "longcat_flash": dict(zero_expert_num=1, expert_ffn_hidden_size=32, ffn_hidden_size=64, head_dim=4),
    "lfm3": dict(layer_types=["conv", "full_attention"]),
    "hrm_text": dict(H_cycles=1, L_cycles=1),
    "cohere_compass_text": dict(rope_parameters={t: dict(rope_type="default", rope_theta=10000.0)
                                                 for t in ("full_attention", "sliding_attention")}),
    "inkling_text": dict(swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8, unpadded_vocab_size=512),
    "inkling2_text": dict(swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8,
                          unpadded_vocab_size=512),
    "inkling2_loop_text": dict(swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8,
                               unpadded_vocab_size=512),
    "cpmant": dict(dim_head=8, dim_ff=64),
    # Gemma-4 assistants (drafters): the sizes live in text_config
    "gemma4_assistant": dict(text_config=dict(_TEXT, hidden_size_per_layer_input=0, vocab_size_per_layer_input=0),
                             backbone_hidden_size=32, num_centroids=16, centroid_intermediate_top_k=4),
    "gemma4_unified_assistant": dict(text_config=dict(_TEXT, hidden_size_per_layer_input=0,
                                                      vocab_size_per_layer_input=0),
                                     backbone_hidden_size=32, num_centroids=16, centroid_intermediate_top_k=4),
    "reformer": dict(is_decoder=True, attn_layers=["local", "lsh"], axial_pos_shape=[16, 16],
                     axial_pos_embds_dim=[16, 16], attention_head_size=8, feed_forward_size=64),
}  # fmt: skip
REMOVE: dict[str, set] = {"hrm_text": set()}  # keys BASE/GENERIC must not set for a family
LAYERS = {"hrm_text": 1}  # layer-count value where the config multiplies it (HRM: per stack x cycles)


def _params(cls) -> set[str]:
    try:
        return set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return set()


def tiny_kwargs(model_type: str) -> tuple[dict, str]:
    """(kwargs for AutoConfig.for_model without vocab_size and the layer count, name of the layer-count key)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    params, amap = _params(cls), getattr(cls, "attribute_map", {}) or {}
    kwargs, layers_key = {}, "num_hidden_layers"
    drop = REMOVE.get(model_type, set())
    for key, value in BASE.items():
        if key in drop:
            continue
        names = [key, amap.get(key, key), *ALIASES.get(key, [])]
        name = next((n for n in names if n in params), None)
        if name is None:
            continue
        if key == "num_hidden_layers":
            layers_key = name
        else:
            kwargs[name] = value
    for key, value in GENERIC.items():
        if key in params and key not in drop:
            kwargs[key] = value
    if "kv_lora_rank" in params:  # multi-head latent attention: as many kv heads as heads (tiny_models' deepseek_v3)
        kv = next((n for n in ["num_key_value_heads", *ALIASES["num_key_value_heads"]] if n in kwargs), None)
        if kv:
            kwargs[kv] = BASE["num_attention_heads"]
    if "mlp_layer_types" in params and model_type not in ("deepseek_v4",):  # block 0 a MoE too (default: dense)
        kwargs["mlp_layer_types"] = ["sparse", "sparse"]
    kwargs.update(OVERRIDES.get(model_type, {}))
    return kwargs, layers_key


def tiny_config(model_type: str):
    from transformers import AutoConfig

    kwargs, layers_key = tiny_kwargs(model_type)
    return AutoConfig.for_model(model_type, vocab_size=512, **{layers_key: LAYERS.get(model_type, 2)}, **kwargs)


def meta_size(model_type: str) -> tuple[int, str]:
    """(parameter count, model class) of the tiny model, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(model_type)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters()), type(model).__name__


# ----------------------------------------------------------------------------- one family


def _frames(exc: BaseException) -> dict:
    tb = traceback.extract_tb(exc.__traceback__)
    src = [f for f in tb if "/layerscope/" in f.filename and "/tests/" not in f.filename]
    tst = [f for f in tb if f.filename.startswith(str(TESTS))]

    def fmt(f):
        name = f.filename
        for marker in ("/src/", "/site-packages/", str(ROOT) + "/"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        return f"{name}:{f.lineno} ({f.name})"

    return {
        "layerscope_frame": fmt(src[-1]) if src else "",
        "tests_frame": fmt(tst[-1]) if tst else "",
        "innermost_frame": fmt(tb[-1]) if tb else "",
        "source_line": (tb[-1].line or "") if tb else "",
    }


def run_one(model_type: str) -> dict:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    sys.path.insert(0, str(TESTS))
    import test_architectures as ta
    import tiny_models
    from training_checks import TRAINING_STEPS, check_training
    from transformers import AutoTokenizer

    from layerscope.core.errors import ModelError

    rec: dict = {"model_type": model_type, "steps": [], "result": None}
    part = PARTIAL / f"{model_type}.json"

    def save():
        PARTIAL.mkdir(parents=True, exist_ok=True)
        part.write_text(json.dumps(rec))

    def step(name, fn):
        """Run one step; returns (ok, value). Records time and outcome."""
        t0 = time.time()
        entry = {"step": name, "status": "running"}
        rec["steps"].append(entry)
        save()
        try:
            value = fn()
            entry.update(status="ok", note=value if isinstance(value, str) else "")
            return True, value
        except ModelError as e:
            entry.update(status="ModelError", message=str(e), **_frames(e))
            return False, e
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
            entry.update(status="error", type=type(e).__name__, message=msg, **_frames(e))
            entry["traceback"] = traceback.format_exc()[-3000:]
            return False, e
        finally:
            entry["seconds"] = round(time.time() - t0, 2)
            save()

    tok = AutoTokenizer.from_pretrained(ta.STORIES)
    kwargs, layers_key = tiny_kwargs(model_type)
    rec["options"] = {k: v for k, v in kwargs.items()}
    rec["layers_key"] = layers_key

    # the family, registered so tiny_model(model_type, 2, vocab=512) builds it (the training checks do)
    tiny_models.FAMILIES[model_type] = tiny_models.Family(model_type, "sweep", kwargs, layers_key)

    def build():
        n, cls = meta_size(model_type)
        rec["params"], rec["model_class"] = n, cls
        if n > 3_000_000:
            raise RuntimeError(f"not tiny: {n} parameters with the tiny options (a size key was not applied)")
        model = tiny_models.tiny_model(model_type, n_layers=2, vocab=512)
        dtypes = {str(p.dtype) for p in model.parameters()}
        if dtypes != {"torch.float32"}:
            raise RuntimeError(f"parameters in {dtypes}, not float32")
        with torch.no_grad():
            ids = torch.randint(2, 512, (2, 9), generator=torch.Generator().manual_seed(0))
            logits = model(input_ids=ids).logits
        if not torch.isfinite(logits).all():
            raise RuntimeError("non-finite logits from the tiny model")
        mask = torch.ones_like(ids)
        mask[0, :3] = 0
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
        except Exception as e:  # transformers' own forward, before any layerscope code
            raise RuntimeError(
                f"the tiny model's own forward fails on a left-padded batch: {type(e).__name__}: {e}"
            ) from e
        return model

    ok, model = step("config", build)
    if not ok:
        rec["result"] = "config"
        save()
        return rec

    from layerscope.core.layermap import build_layer_map

    ok, lm = step("layer_map", lambda: build_layer_map(model))
    if not ok:
        rec["result"] = "refused" if isinstance(lm, ModelError) else "BUG"
        save()
        return rec
    rec["layer_map"] = {
        "n_blocks": lm.n_blocks,
        "sublayers": [f"{s.name}:{s.kind}" for s in lm.sublayers],
        "linears": len(lm.linears),
        "experts": bool(lm.experts),
    }

    def structure():
        kinds = [s.kind for s in lm.sublayers]
        assert lm.n_blocks == 2 and kinds == ["attn", "mlp", "attn", "mlp"], f"blocks={lm.n_blocks} kinds={kinds}"
        assert lm.players("block") == [lm.block_name(0), lm.block_name(1)], lm.players("block")
        return ""

    step("structure", structure)

    def evaluator():
        return ta.mc_evaluator(tok, ta.toy_task(), 4, model)

    ok, ev = step("mc_evaluator", evaluator)
    removal_refused = False
    if ok:
        ok_r, err = step("check_removal", lambda: ta.check_removal(model, lm))
        if not ok_r and isinstance(err, ModelError):
            removal_refused = True
            rec["refusal"] = ta._without_numbers(str(err))

            def engine_refuses():
                try:
                    ta.CoalitionEngine(model, lm, ev, "block")
                except ModelError as e:
                    same = "does not leave the residual stream intact" in str(e) or "breaks the block's forward" in str(
                        e
                    )
                    assert same, f"engine refused otherwise: {e}"
                    return ""
                raise AssertionError("check_removal refused, but CoalitionEngine(block) did not")

            step("engine_refuses", engine_refuses)
        elif ok_r:
            step("eval_packed_vs_plain", lambda: ta._check_eval(model, tok, ev))
            for granularity in ("sublayer", "block"):
                step(f"engine_{granularity}", lambda g=granularity: ta._check_engine(model, lm, ev, g))

            def similarity():
                import numpy as np

                sim = ta.block_influence(model, lm, [list(range(2, 14)), list(range(20, 29))])
                assert len(sim.scores) == lm.n_blocks and all(np.isfinite(sim.scores)), sim.scores
                return ""

            step("block_influence", similarity)
            if lm.experts:
                step("experts", lambda: ta._check_experts(model, lm))

    def training():
        outcome, notes = check_training(model_type, model, lm, tok)
        rec["training"] = {s: outcome.get(s) for s in TRAINING_STEPS}
        return notes

    step("training", training)

    failures = [s for s in rec["steps"] if s["status"] == "error"]
    model_errors = [s for s in rec["steps"] if s["status"] == "ModelError" and s["step"] != "check_removal"]
    if failures:
        rec["result"] = "BUG"
    elif removal_refused or model_errors:
        rec["result"] = "refused"
    else:
        rec["result"] = "works"
    save()
    return rec


# ----------------------------------------------------------------------------- the sweep


def done() -> dict[str, dict]:
    out = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[r["model_type"]] = r
    return out


def run_child(model_type: str) -> dict:
    part = PARTIAL / f"{model_type}.json"
    part.unlink(missing_ok=True)
    t0 = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", model_type]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child we started, and its own children
        output, _ = proc.communicate()
        timed_out = True
    rec = json.loads(part.read_text()) if part.exists() else {"model_type": model_type, "steps": []}
    rec["seconds"] = round(time.time() - t0, 1)
    if timed_out:
        rec["result"] = "timeout"
        running = [s["step"] for s in rec["steps"] if s.get("status") == "running"]
        rec["timeout_step"] = running[-1] if running else "?"
    elif rec.get("result") is None:
        rec["result"] = "BUG"
        rec["crash"] = f"child exited {proc.returncode}: " + (output or "")[-1500:]
    return rec


def sweep(only: list[str] | None) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    have = done()
    todo = [mt for mt in (only or candidates()) if mt not in have]
    print(f"{len(have)} done, {len(todo)} to run", flush=True)
    for i, mt in enumerate(todo, 1):
        rec = run_child(mt)
        with RESULTS.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        first = next((s for s in rec["steps"] if s["status"] not in ("ok",)), None)
        why = (
            f" [{first['step']}: {first.get('type', first['status'])}: {first.get('message', '')[:120]}]"
            if first
            else ""
        )
        print(f"[{i}/{len(todo)}] {mt}: {rec['result']} ({rec['seconds']} s){why}", flush=True)
        write_table()
    write_table()
    print("done", flush=True)


def _cell(text: str, n: int = 220) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def write_table() -> None:
    recs = done()
    counts: dict[str, int] = {}
    for r in recs.values():
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    lines = [
        "# Architecture sweep (families not in tests/tiny_models.FAMILIES)",
        "",
        "Counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        "",
        "| model_type | class | result | first failing step | detail (message; innermost layerscope frame) "
        "| ILA / finetune / exports | notes | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"BUG": 0, "timeout": 1, "refused": 2, "config": 3, "works": 4}
    for r in sorted(recs.values(), key=lambda r: (order.get(r["result"], 9), r["model_type"])):
        bad = [s for s in r["steps"] if s["status"] not in ("ok",)]
        first = bad[0] if bad else None
        if r["result"] == "timeout":
            detail, step_name = f"timed out after {TIMEOUT_S} s", r.get("timeout_step", "?")
        elif first:
            step_name = first["step"] + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
            kind = first.get("type", first["status"])
            detail = f"{kind}: {first.get('message', '')}"
            if first.get("layerscope_frame"):
                detail += f"; at {first['layerscope_frame']}"
            elif first.get("innermost_frame"):
                detail += f"; at {first['innermost_frame']}"
        else:
            step_name, detail = "", r.get("crash", "")
        tr = r.get("training") or {}
        training = " / ".join(str(tr.get(s, "-")) for s in ("ILA", "finetune", "exports")) if tr else ""
        notes = "; ".join(s.get("note", "") for s in r["steps"] if s.get("note"))
        lines.append(
            f"| `{r['model_type']}` | {r.get('model_class', '')} | {r['result']} | {step_name} | {_cell(detail, 300)} "
            f"| {training} | {_cell(notes, 160)} | {r.get('seconds', '')} |"
        )
    TABLE.write_text("\n".join(lines) + "\n")


def probe() -> None:
    """Configs only, on the meta device: which tiny configs build, and how big they are."""
    warnings.simplefilter("ignore")
    for mt in candidates():
        try:
            n, cls = meta_size(mt)
            flag = "" if n <= 3_000_000 else "  <-- NOT TINY"
            print(f"{mt:28s} ok {n:>12,d} {cls}{flag}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{mt:28s} ERR {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")


def main() -> None:
    sys.path.insert(0, str(TESTS))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", help="run one model_type in this process (what the sweep's subprocesses do)")
    ap.add_argument("--probe", action="store_true", help="build every tiny config on the meta device")
    ap.add_argument("--report", action="store_true", help="rewrite results.md from results.jsonl")
    ap.add_argument("--only", nargs="*", help="sweep only these model types")
    ap.add_argument("--redo", nargs="*", help="drop these model types from results.jsonl first (rerun them)")
    args = ap.parse_args()
    if args.one:
        rec = run_one(args.one)
        print(json.dumps({k: rec[k] for k in ("model_type", "result")}))
    elif args.probe:
        probe()
    elif args.report:
        write_table()
    else:
        if args.redo:
            keep = [r for mt, r in done().items() if mt not in set(args.redo)]
            RESULTS.write_text("".join(json.dumps(r) + "\n" for r in keep))
        sweep(args.only)


if __name__ == "__main__":
    main()

"""Benchmark: the evaluator against plain forwards of the same batches, and the coalition engine's
ablation sweep against the uncached path, on any device and dtype (issue 18's GPU measurements).

Three timings, each the best of ``--repeats`` (CUDA synchronised around every one):

- **evaluator**: ``MCEvaluator.evaluate`` over the task's items (packing, scored positions only,
  log-softmax and the answer choice included);
- **plain forward**: ``model(input_ids, attention_mask, position_ids)`` over the very same batches
  (the evaluator's padded / packed tensors, moved to the device the same way), full logits, nothing
  scored. Tokens/s of both count every position of those batches, so the ratio evaluator / plain is
  the evaluator's own cost (target >= 0.9x);
- **ablation sweep**: every block removed in turn (block granularity), by the coalition engine
  (cached prefixes; its capture pass timed apart) and by the uncached path (hooks, whole forwards).

``--config NAME`` builds a model with random weights from a published configuration (throughput
does not depend on the weights; the values then mean nothing), on the device directly, with the
tokenizer of ``--tokenizer`` (token ids must fit the config's vocabulary). Peak CUDA memory is
reported per timing.

    python bench/evaluator_throughput.py --threads 1                                   # stories260K, CPU
    python bench/evaluator_throughput.py --model default --device cuda --dtype bfloat16
    python bench/evaluator_throughput.py --config llama-3.2-1b --device cuda --dtype bfloat16
    python bench/evaluator_throughput.py --config llama-3.2-1b --layers 2 --threads 1  # a CPU dry run

A shared CPU makes times noisy: compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from layerscope.core.layermap import build_layer_map
from layerscope.core.tasks import load_task
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.scoring.multiple_choice import mc_evaluator
from layerscope.scoring.runner import _accepts_logits_to_keep

# Published config.json values (hub: meta-llama/Llama-3.2-1B; Qwen/Qwen2.5-1.5B; HuggingFaceTB/SmolLM2-135M),
# without rope scaling, which changes no shape or cost at these lengths.
CONFIGS = {
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-1.5b": (
        "qwen2",
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
    ),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, repeats: int) -> tuple[float, float | None, object]:
    """(best seconds, peak MiB of CUDA memory or None, the last result) of ``fn()``."""
    best, out, peak = float("inf"), None, None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
    return best, peak, out


def build(args):
    """(model, tokenizer, name): a saved model, or random weights from a published config."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from layerscope.core.devices import resolve_dtype
    from layerscope.core.models import load_model

    if args.config is None:
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        return loaded.model, loaded.tokenizer, loaded.name
    model_type, values = CONFIGS[args.config]
    values = dict(values, **({"num_hidden_layers": args.layers} if args.layers else {}))
    config = AutoConfig.for_model(model_type, **values)
    dtype = resolve_dtype(args.dtype, args.device)
    with torch.device(args.device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"--tokenizer {args.tokenizer} has {len(tokenizer)} tokens, the config {config.vocab_size}")
    params = sum(p.numel() for p in model.parameters()) / 1e9
    return model, tokenizer, f"{args.config} ({config.num_hidden_layers} layers, {params:.2f}B params, random weights)"


def plain_forwards(model, batches, device: str, keep: bool) -> None:
    """Forwards of the evaluator's own batches, nothing scored: full logits, or (``keep``) only the
    last ``logits_to_keep`` positions', as the evaluator asks the model for."""
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for b in batches:
            b = b.to(device, dtype)
            kwargs = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            if b.position_ids is not None:
                kwargs["position_ids"] = b.position_ids
            if keep:
                kwargs["logits_to_keep"] = b.logits_to_keep
            model(**kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="../shared/models/stories260K")
    p.add_argument("--config", default=None, choices=sorted(CONFIGS), help="random weights from a published config")
    p.add_argument("--layers", type=int, default=None, help="with --config: fewer layers (a dry run)")
    p.add_argument("--tokenizer", default="../shared/models/stories260K", help="with --config (default stories260K)")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-sweep", action="store_true", help="skip the ablation sweep (the slowest part)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, name = build(args)
    ev = mc_evaluator(
        tokenizer, load_task(args.task, limit=args.limit), args.batch_size, model
    )  # plain rows if packing fails
    positions = sum(b.input_ids.numel() for b in ev.batches)
    ev.evaluate(model)  # warm-up: kernels, allocator, packing probe
    t_eval, m_eval, result = timed(args.device, lambda: ev.evaluate(model), args.repeats)
    t_plain, m_plain, _ = timed(
        args.device, lambda: plain_forwards(model, ev.batches, args.device, False), args.repeats
    )
    rows = {
        "evaluator": {"seconds": t_eval, "tokens_per_s": positions / t_eval, "peak_mib": m_eval},
        "plain_forward": {"seconds": t_plain, "tokens_per_s": positions / t_plain, "peak_mib": m_plain},
    }
    if _accepts_logits_to_keep(model):  # the like-for-like baseline: the same logits the evaluator asks for
        t_keep, m_keep, _ = timed(
            args.device, lambda: plain_forwards(model, ev.batches, args.device, True), args.repeats
        )
        rows["plain_forward_kept_logits"] = {"seconds": t_keep, "tokens_per_s": positions / t_keep, "peak_mib": m_keep}
    if not args.no_sweep:
        lm = build_layer_map(model)
        sweep = [frozenset(range(lm.n_blocks)) - {i} for i in range(lm.n_blocks)]
        t0 = time.perf_counter()
        engine = CoalitionEngine(model, lm, ev, "block")
        sync(args.device)
        capture = time.perf_counter() - t0
        t_cached, m_cached, cached = timed(args.device, lambda: engine.values(sweep), 1)
        plain_engine = CoalitionEngine(model, lm, ev, "block", uncached=True)
        t_uncached, m_uncached, uncached = timed(args.device, lambda: plain_engine.values(sweep), 1)
        diff = max(abs(a - b) for a, b in zip(cached, uncached))
        rows["sweep_engine"] = {"seconds": t_cached, "capture_seconds": capture, "peak_mib": m_cached}
        rows["sweep_uncached"] = {"seconds": t_uncached, "peak_mib": m_uncached, "max_value_diff": diff}
    where = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"{name}; {args.task} {result.n_items} items, batch {args.batch_size}; {args.dtype} on {where}")
    print(
        f"{len(ev.batches)} batches, {positions} positions; acc_norm {result.metrics.get('acc_norm', float('nan')):.4f}"
    )
    print("| timing | seconds | tokens/s | peak MiB |")
    print("|---|---:|---:|---:|")
    for key in (k for k in ("evaluator", "plain_forward", "plain_forward_kept_logits") if k in rows):
        r = rows[key]
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(f"| {key} | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | {peak} |")
    print(f"evaluator / plain forward: {t_plain / t_eval:.2f}x the tokens/s (target >= 0.9x)")
    if "plain_forward_kept_logits" in rows:
        like = rows["plain_forward_kept_logits"]["seconds"] / t_eval
        print(f"evaluator / plain forward asking for the same logits: {like:.2f}x (the evaluator's own cost)")
    if "sweep_engine" in rows:
        e, u = rows["sweep_engine"], rows["sweep_uncached"]
        print(
            f"ablation sweep ({len(sweep)} blocks): engine {e['seconds']:.2f} s "
            f"(+ capture {e['capture_seconds']:.2f} s), uncached {u['seconds']:.2f} s: "
            f"{u['seconds'] / e['seconds']:.2f}x; largest value difference {diff:.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": name, "args": vars(args), "positions": positions, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pruning curves per ranking, and what pruning saves (parameters, file size, forward and generation speed).

The curves are `layerscope prune-curve`'s (``cli/prune_curve.task_curves``): for each --task, one
coalition engine at block granularity; rankings from block influence and the angular window (on
--data), ablation and Shapley on that task (exact up to 10 blocks, else proximity), every
--importance LABEL=PATH given (e.g. ILA, aggregated to blocks), greedy, last-K and random (3
seeds). Writes OUT/<task>/ (curves.json, one <label>/pruning.json per curve for `layerscope
report`, curve.png, table.md) and, added here, OUT/savings.json: the model pruned by --savings-k
blocks of the first task's greedy order against the full model, measured in this run.

    python experiments/pruning_curve.py --model ../shared/models/stories260K --task arc_easy \\
        --task loss:src/layerscope/resources/demo_instructions.json --limit 200 \\
        --importance ila=runs/stories-ila --out runs/stories-pruning --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from layerscope.cli import prune_curve as cli
from layerscope.cli.common import load_from_args, seed_everything
from layerscope.cli.prune_curve import task_curves, task_folder
from layerscope.core.atomic import write_json
from layerscope.core.errors import ConfigError
from layerscope.core.layermap import build_layer_map
from layerscope.pruning import prune, write_curves
from layerscope.pruning.save import file_bytes, save_pruned


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_arguments(p)  # the options of `layerscope prune-curve`, checked as it checks them
    p.set_defaults(device="cpu", dtype="float32", threads=1, out=None, no_progress=True)
    p.add_argument("--savings-k", type=int, default=2)
    p.add_argument(
        "--savings-from", default=None, help="the curve whose K = --savings-k set is measured (default greedy/ablation)"
    )
    p.add_argument(
        "--savings-only",
        default=None,
        metavar="BLOCKS",
        help="no curves: measure only what removing these blocks saves (comma-separated, e.g. layers.13,layers.15)",
    )
    p.add_argument("--generate-tokens", type=int, default=64, help="new tokens per timed generation (default 64)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds of each model, alternating (default 7)")
    p.add_argument(
        "--reuse",
        default=None,
        metavar="DIR",
        help="an earlier run's output folder: curves in DIR/<task>/curves.json are not measured again but merged "
        "in (refused unless model, items, K_max and the full model's value match; DIR must not be --out)",
    )
    args = p.parse_args()
    try:
        given = check(args)
    except ConfigError as e:
        p.error(str(e))
    seed_everything(args.seed)
    loaded = load_from_args(args)
    lm = build_layer_map(loaded.model)
    if args.savings_only:
        savings = measure_savings(loaded, lm, args.savings_only.split(","), args)
        write_json(Path(args.out) / "savings.json", savings)
        print(json.dumps(savings, indent=2))
        return 0
    cli.check_rankings(args, given, loaded, lm)
    try:
        check_reuse(args, loaded, lm)
    except ConfigError as e:
        p.error(str(e))
    out = Path(args.out)
    savings_blocks: list[str] | None = None  # from the first task's curve; every task is measured regardless
    for i, (spec, curves) in enumerate(curves_per_task(loaded, lm, args, given)):
        write_curves(curves, out / task_folder(spec))
        print(f"== {spec}: full {curves['baseline']['full']:.4f}, chance {curves['baseline']['chance']:.4f}")
        print((out / task_folder(spec) / "table.md").read_text())
        if i == 0:
            chosen = next((c for c in curves["curves"] if c["label"] == savings_label(args)), None)
            if chosen is None or len(chosen["removed"]) <= args.savings_k:
                print(f"savings not measured: no K = {args.savings_k} of {savings_label(args)!r}", file=sys.stderr)
            else:
                savings_blocks = chosen["removed"][args.savings_k]
    if savings_blocks is None:
        return 0
    savings = measure_savings(loaded, lm, savings_blocks, args)
    write_json(out / "savings.json", savings)
    print(json.dumps(savings, indent=2))
    return 0


def check(args) -> dict:
    """prune-curve's checks (unless --savings-only), and this experiment's own; the --importance rankings."""
    if args.out is None:
        raise ConfigError("--out is required")
    given = {} if args.savings_only else cli.check_arguments(args)
    if args.savings_k < 1 or (args.k_max is not None and args.savings_k > args.k_max):
        raise ConfigError(f"--savings-k {args.savings_k}: give 1..--k-max")
    if args.savings_from is not None and args.savings_from not in given and not cli.own_label(args.savings_from):
        raise ConfigError(f"--savings-from {args.savings_from!r}: not a curve of this run")
    if args.reuse and Path(args.reuse).resolve() == Path(args.out).resolve():
        raise ConfigError("--reuse DIR must not be --out: a refused merge would overwrite the earlier curves")
    return given


def check_reuse(args, loaded, lm) -> None:
    """Before any work: an earlier run's curves that cannot be merged into this one's (another model,
    K_max, or items) are refused here, not found out once the new curves are measured (a refused
    merge then left only the new curves in curves.json)."""
    from layerscope.cli.ablate import build_evaluator, fields_for
    from layerscope.core.importance import model_info

    if not args.reuse:
        return
    k_max = args.k_max if args.k_max is not None else lm.n_blocks - 1
    model = json.loads(json.dumps(model_info(loaded.model, lm, loaded.name)))  # as curves.json holds it
    for spec in args.task:
        path = Path(args.reuse) / task_folder(spec) / "curves.json"
        if not path.exists():
            continue
        try:
            earlier = json.loads(path.read_text())
            then = {k: earlier[k] for k in ("model", "k_max", "data", "granularity")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--reuse {path}: not a complete curves.json ({e})") from None
        # the items as prune-curve reads them (cli/prune_curve.py's _evaluators): its --fields, --subject, --append-eos
        kw = dict(fields=fields_for(spec, args.fields), subject=args.subject)
        _, data = build_evaluator(loaded, spec, args.limit, args.batch_size, args.max_length, args.append_eos, **kw)
        differs = [
            what
            for what, was, now in (
                ("K_max", then["k_max"], k_max),
                ("items", then["data"], data),
                ("granularity", then["granularity"], "block"),
            )
            if was != now
        ]
        if not same_model(then["model"], model, loaded.model):
            differs.insert(0, "model (weights, name or placement)")
        if differs:
            raise ConfigError(f"--reuse {path}: its {', '.join(differs)} differ from this run's; run without --reuse")


FINGERPRINT_KEYS = ("fingerprint", "fingerprint_precision")


def same_model(was, now: dict, model) -> bool:
    """Whether an earlier curves.json's model record ``was`` is this run's ``now`` (of ``model``): all but
    the fingerprint alike, and the fingerprint ``model``'s. One written before fingerprints were read at
    bfloat16's precision has no ``fingerprint_precision`` and holds the exact hash, which
    ``weights_fingerprint(model, like=...)`` still recognises as this model's."""
    from layerscope.core.models import weights_fingerprint

    if not isinstance(was, dict) or not isinstance(now, dict):
        return was == now
    if {k: v for k, v in was.items() if k not in FINGERPRINT_KEYS} != {
        k: v for k, v in now.items() if k not in FINGERPRINT_KEYS
    }:
        return False
    recorded = was.get("fingerprint")
    if recorded == now.get("fingerprint"):
        return True
    return isinstance(recorded, str) and weights_fingerprint(model, like=recorded) == recorded


def savings_label(args) -> str:
    return args.savings_from or ("greedy" if args.greedy else "ablation")


def curves_per_task(loaded, lm, args, given: dict):
    """task_curves, or with --reuse one task at a time: the curves DIR/<task>/curves.json has are
    skipped and merged into the new ones, so a costly order (greedy, Shapley) can be added to an
    earlier run without measuring the rest again."""
    if not args.reuse:
        yield from task_curves(loaded, lm, args, given)
        return
    for spec in list(args.task):
        path = Path(args.reuse) / task_folder(spec) / "curves.json"
        earlier = json.loads(path.read_text()) if path.exists() else None
        if earlier and (args.selection_items or earlier.get("chosen_on", "the scored items") != "the scored items"):
            # the curves whose blocks were chosen on other items than this run's: only those that do not depend on it
            earlier["curves"] = [c for c in earlier["curves"] if not chosen_on_task(c["label"])]
        if earlier:  # --importance rankings are measured again: a label says nothing of which file it was
            earlier["curves"] = [c for c in earlier["curves"] if c["label"] not in given]
        args.task = [spec]
        skip = frozenset(c["label"] for c in earlier["curves"]) if earlier else frozenset()
        for spec_, curves in task_curves(loaded, lm, args, given, skip):
            yield spec_, merged(earlier, curves, path, loaded.model) if earlier else curves


def chosen_on_task(label: str) -> bool:
    return label in ("ablation", "greedy") or label.startswith("shapley-")


def merged(earlier: dict, new: dict, path: Path, model) -> dict:
    """``new`` with ``earlier``'s curves in front. Curves measured on something else are not merged
    (only known once the new ones are measured, so those are kept and written alone). ``model``: the
    model ``new`` was measured on, which an older fingerprint in ``earlier`` is checked against."""
    differs = [] if same_model(earlier["model"], new["model"], model) else ["model"]
    differs += [key for key in ("data", "granularity", "k_max") if earlier[key] != new[key]]
    full_then, full_now = earlier["baseline"]["full"], new["baseline"]["full"]
    if abs(full_then - full_now) > 1e-6 * max(1.0, abs(full_now)):
        differs.append(f"full model's value ({full_then} then, {full_now} now)")
    if differs:
        print(f"--reuse {path}: not merged, its {', '.join(differs)} differ from this run's", file=sys.stderr)
        return new
    out = dict(new, curves=earlier["curves"] + new["curves"])
    out["seconds"] = {"this run": new["seconds"], "reused": earlier["seconds"], "reused_from": str(path)}
    return out


def measure_savings(loaded, lm, removed: list[str], args) -> dict:
    """Parameters, weight-file bytes, forward tokens/s (8 rows of --max-length) and greedy
    generation tokens/s (one row: a 64-token prompt, --generate-tokens new) of the full and the
    pruned model. The timings alternate between the two models over --rounds (median of each),
    so a shared machine's load changes weigh on both alike."""
    model = loaded.model
    pruned = prune(model, removed, lm)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (8, args.max_length), generator=torch.Generator().manual_seed(0))
    prompt, rounds = ids[:1, :64], args.rounds
    out = {"removed": removed, "threads": args.threads, "batch": list(ids.shape), "rounds": rounds}
    models = {"full": model, "pruned": pruned}
    with tempfile.TemporaryDirectory() as tmp:
        for label, m in models.items():
            out[label] = {
                "n_blocks": build_layer_map(m).n_blocks,
                "parameters": sum(p.numel() for p in m.parameters()),
                "weights_bytes": file_bytes(save_pruned(m, None, Path(tmp) / label, {})),
            }
    timings = {label: {"forward": [], "generate": []} for label in models}
    with torch.no_grad():
        for r in range(rounds + 1):  # round 0 warms up
            for label, m in models.items() if r % 2 else reversed(models.items()):
                forward, generate = forward_seconds(m, ids), generation_seconds(m, prompt, args.generate_tokens)
                if r:
                    timings[label]["forward"].append(forward)
                    timings[label]["generate"].append(generate)
    for label in models:
        out[label]["forward_tokens_per_s"] = ids.numel() / median(timings[label]["forward"])
        out[label]["generate_tokens_per_s"] = args.generate_tokens / median(timings[label]["generate"])
        out[label]["seconds_per_round"] = timings[label]
    return out


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def forward_seconds(model, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - t0


def generation_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds of a greedy generation (KV cache on) of exactly ``new_tokens`` from one ``prompt`` row."""
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    t0 = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)
    seconds = time.perf_counter() - t0
    assert out.shape[1] - prompt.shape[1] == new_tokens
    return seconds


if __name__ == "__main__":
    sys.exit(main())

"""Zero-shot evaluator vs lm-evaluation-harness (HF backend), same model, items and batch size.

Runs both in ONE process on the same items and prints items/s of each, the speed ratio, the
agreement of chosen answers, the accuracies and the largest log-likelihood difference, as a
markdown table (also written to ``--out`` if given).

lm-eval side: ``HFLM(pretrained=<model object>, tokenizer=<tok>, batch_size=N)`` and its
``loglikelihood`` on the task's (context, " " + choice) requests: the scoring core that
``simple_evaluate`` calls for multiple-choice tasks, without its task building (so, if
anything, this flatters lm-eval). Its logits cache is on, as by default.
layerscope side: ``MCEvaluator(tok, task, N)`` built once (tokenization + batching, timed
separately), then ``evaluate`` timed as it runs inside ablation loops (mean of --repeat runs).

    python bench/eval_vs_lm_eval.py --task arc_easy --limit 200 --batch-size 16
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time

import numpy as np
import torch


def lm_eval_logliks(model, tok, task, batch_size: int) -> tuple[np.ndarray, float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    reqs = []
    for i, it in enumerate(task.items):  # (context, continuation) per option: ordinary MC or partial scoring
        for j, pair in enumerate(it.requests(task.target_delimiter)):
            reqs.append(Instance(request_type="loglikelihood", doc={"i": i}, idx=j, arguments=pair))
    t0 = time.perf_counter()
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    dt = time.perf_counter() - t0
    return np.array([ll for ll, _ in out], dtype=np.float64), dt


def where(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name()}"
    return f"{platform.machine()} CPU x{os.cpu_count()} threads={torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2, help="timed layerscope evaluate() runs (default 2)")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--config", default=None, help="random weights from a published config (evaluator_throughput.py's)")
    p.add_argument("--layers", type=int, default=None, help="with --config: fewer layers (a dry run)")
    p.add_argument("--tokenizer", default="../shared/models/stories260K", help="with --config (default stories260K)")
    args = p.parse_args(argv)

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from layerscope.core.models import load_model
    from layerscope.core.tasks import load_task
    from layerscope.scoring import MCEvaluator

    if args.config:  # same chosen answers hold for any weights; speed needs only the shapes
        from evaluator_throughput import build

        model, tok, name = build(args)
    else:
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        model, tok, name = loaded.model, loaded.tokenizer, loaded.name
    task = load_task(args.task, limit=args.limit)
    n = len(task.items)
    n_req = sum(it.n_options for it in task.items)

    with torch.inference_mode():  # warm-up: first-call allocations and kernel selection
        model(input_ids=torch.tensor([tok.encode("Warm up the model once.")], device=model.device))

    t0 = time.perf_counter()
    ev = MCEvaluator(tok, task, args.batch_size, model=model)
    t_build = time.perf_counter() - t0
    print(
        f"[bench] layerscope prepared {n} items ({n_req} requests, {len(ev.batches)} batches, "
        f"{ev.n_tokens} tokens) in {t_build:.2f}s",
        file=sys.stderr,
    )

    print(f"[bench] lm-eval HFLM.loglikelihood on {n_req} requests, batch size {args.batch_size} ...", file=sys.stderr)
    lm_ll, t_lm = lm_eval_logliks(model, tok, task, args.batch_size)
    lm_res = ev.result_from_loglikelihoods(lm_ll)
    print(f"[bench] lm-eval: {t_lm:.1f}s", file=sys.stderr)

    times, res = [], None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        res = ev.evaluate(model)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(f"[bench] layerscope evaluate: {times[-1]:.1f}s", file=sys.stderr)
    t_ls = float(np.mean(times))

    ours_ll = np.concatenate([np.array(x) for x in res.loglikelihoods])
    pred_ours, pred_lm = res.predictions, lm_res.predictions
    agree = float(np.mean([a == b for a, b in zip(pred_ours, pred_lm)]))
    acc_agree = float(
        np.mean([int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(res.loglikelihoods, lm_res.loglikelihoods)])
    )
    max_diff = float(np.max(np.abs(ours_ll - lm_ll)))
    metric = task.metric
    padded = sum(b.input_ids.numel() for b in ev.batches)
    lm_tokens = sum(len(c) + len(t) - 1 for item in ev.requests for c, t in item)

    rows = [
        ("lm-eval 0.4 HFLM.loglikelihood", t_lm, lm_res),
        ("layerscope MCEvaluator.evaluate", t_ls, res),
    ]
    lines = [
        f"Task `{task.name}` ({n} items, {n_req} requests), model {name}, batch size {args.batch_size}, "
        f"{where(args.device)}, {args.dtype}, torch {torch.__version__}.",
        "",
        f"| evaluator | seconds | items/s | {metric} | acc |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t, r in rows:
        lines.append(
            f"| {name} | {t:.1f} | {n / t:.2f} | {r.metrics[metric]:.3f} ± {r.metrics[metric + '_stderr']:.3f} "
            f"| {r.metrics['acc']:.3f} |"
        )
    lines += [
        "",
        f"- speed ratio (layerscope / lm-eval items/s): **{t_lm / t_ls:.2f}x** "
        f"({t_lm / (t_ls + t_build):.2f}x counting layerscope's one-off preparation of {t_build:.2f}s)",
        f"- same chosen answer ({metric}): {agree * 100:.1f}% of items; by acc: {acc_agree * 100:.1f}%",
        f"- largest |log-likelihood difference| over {n_req} requests: {max_diff:.2e}",
        f"- tokens through the model: layerscope {ev.n_tokens} ({padded} with padding) in {len(ev.batches)} "
        f"forward passes, each context once; lm-eval {lm_tokens} (each context once per choice)",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        from layerscope.core.atomic import write_text

        write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

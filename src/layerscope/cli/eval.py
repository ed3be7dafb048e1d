"""``layerscope eval``: zero-shot multiple-choice accuracy, or held-out SFT loss with ``--data``.

Under torchrun / accelerate launch the evaluator's batches are shared among the processes, as
``ablate --shard items`` shares them (``core/distributed.py``): every process ends with the
single-process numbers, and the main process prints them."""

from __future__ import annotations

import math
import time

from layerscope.cli.common import (
    add_fields_arg,
    add_model_args,
    add_sft_only_args,
    add_subject_arg,
    check_at_least,
    check_data_file,
    check_sft_only_options,
    check_threads,
    load_from_args,
    nonempty,
    parse_fields,
    refuse_mc_options_on_sft,
    task_spec,
)
from layerscope.core.errors import ConfigError


def add_arguments(p) -> None:

    add_model_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--task",
        type=task_spec,
        default=None,
        help="known task (arc_easy, arc_challenge, boolq, piqa, openbook_qa, hellaswag, mmlu or mmlu:SUBJECT) or an "
        "MC file (JSONL with query/choices/gold, contexts/continuation/gold or WinoGrande's fields, HellaSwag JSONL, "
        "MMLU zip/folder/CSV), or loss:<SFT file> (as --data); default arc_easy",
    )
    src.add_argument(
        "--data", type=nonempty, default=None, help="SFT file: print the loss/perplexity on its response tokens instead"
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=None,
        help="use the first N items / examples, in file order (default all)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    add_subject_arg(p)
    add_fields_arg(p)
    add_sft_only_args(p, "--data or loss:<file>")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def with_stderr(value: float, stderr: float, n: int) -> str:
    """``0.5000 ± 0.0500``; where the standard error is undefined (under two items) no ``± nan``."""
    if n < 2 or not math.isfinite(stderr):
        return f"{value:.4f} ({n} item{'' if n == 1 else 's'}: no standard error)"
    return f"{value:.4f} ± {stderr:.4f}"


def run(args) -> int:
    from layerscope.core.distributed import is_main_process, join_from_env
    from layerscope.core.tasks import load_task
    from layerscope.scoring import LossEvaluator, evaluate_task

    check_threads(args)
    check_at_least(args, 1, batch_size="--batch-size", limit="--limit")
    check_at_least(args, 2, max_length="--max-length")
    progress = not args.no_progress
    from layerscope.scoring.sources import LOSS_PREFIX

    loss_flag = "--data"  # what the messages call the option that asked for a loss
    if args.task and args.task.startswith(LOSS_PREFIX):  # as ablate / shapley / prune-curve name a loss
        args.data, args.task, loss_flag = args.task[len(LOSS_PREFIX) :], None, "--task loss:"
        if not args.data:
            raise ConfigError("--task loss:<file>: give an SFT file after 'loss:'")
    task = "arc_easy" if args.task is None else args.task
    check_sft_only_options(args, args.data is not None, task, "--data, --task loss:<file>")
    if args.data is not None:
        refuse_mc_options_on_sft(loss_flag, {"--subject": args.subject, "--fields": args.fields})
        from layerscope.core.data import load_sft
        from layerscope.core.models import context_length

        check_data_file(args.data)  # before the model loads
        args.device = join_from_env(args.device)  # under torchrun: each process scores its share of the batches
        loaded = load_from_args(args)
        data = load_sft(
            args.data,
            loaded.tokenizer,
            max_length=args.max_length,
            limit=args.limit,
            append_eos=args.append_eos,
            context_length=context_length(loaded.model),
        )
        t0 = time.perf_counter()
        res = LossEvaluator(loaded.tokenizer, data.examples, batch_size=args.batch_size).evaluate(
            loaded.model, progress=progress
        )
        if not is_main_process():
            return 0  # every process holds the same sums; one says them
        m = res.metrics
        print(f"{data.source}: {res.n_items} examples, {int(m['n_tokens'])} response tokens")
        print(f"loss {m['loss']:.4f}  ppl {m['ppl']:.2f}  ({time.perf_counter() - t0:.1f}s)")
        return 0

    task = load_task(task, limit=args.limit, fields=parse_fields(args.fields), subject=args.subject)
    args.device = join_from_env(args.device)  # as above: the items are shared, the numbers are one process's
    loaded = load_from_args(args)
    t0 = time.perf_counter()
    res = evaluate_task(loaded.model, loaded.tokenizer, task, batch_size=args.batch_size, progress=progress)
    dt = time.perf_counter() - t0
    if not is_main_process():
        return 0
    m = res.metrics
    print(f"{task.name}: {res.n_items} items from {task.source} ({dt:.1f}s, {res.n_items / dt:.1f} items/s)")
    n = res.n_items
    for metric in task.reported:  # acc, and acc_norm where it is the headline or reported too (a custom MC file)
        headline = "   <- headline" if metric == task.metric else ""
        print(f"{metric:<8} {with_stderr(m[metric], m[metric + '_stderr'], n)}{headline}")
    print(f"chance   {m['chance']:.4f}")
    return 0

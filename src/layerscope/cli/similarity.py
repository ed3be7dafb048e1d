"""``layerscope similarity``: ShortGPT block influence and angular distance between block states.

One pass over a few sequences: under torchrun / accelerate launch the main process runs it and
writes the results, the others check the options with it and end (exit 0)."""

from __future__ import annotations

from pathlib import Path

from layerscope.cli.common import (
    add_append_eos_arg,
    add_format_arg,
    add_model_args,
    add_seed_arg,
    add_seq_len_alias,
    check_at_least,
    check_output,
    check_threads,
    default_out,
    load_from_args,
    nonempty,
    seed_everything,
)

DEFAULT_OUT = default_out("similarity")


def add_arguments(p) -> None:
    from layerscope.core.data import DEFAULT_MAX_LENGTH

    add_model_args(p)
    p.add_argument(
        "--data",
        type=nonempty,
        default="arc_easy",
        help="plain .txt file (cut into --max-length chunks), SFT file, or task name / MC file "
        "(its contexts); prefix text:, sft: or task: to force the kind (default arc_easy)",
    )
    add_format_arg(p, "SFT --data", more="; a format other than auto reads the file as SFT records, never as a task")
    add_append_eos_arg(p, "SFT data")
    p.add_argument(
        "--limit", metavar="N", type=int, default=64, help="the first N sequences / chunks of --data (default 64)"
    )
    p.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help=f"tokens per sequence (default {DEFAULT_MAX_LENGTH})"
    )
    add_seq_len_alias(p)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--window", type=int, default=1, help="angular distance d(l, l+n) with this n (default 1)")
    p.add_argument(
        "--out",
        type=nonempty,
        default=DEFAULT_OUT,
        help="output folder: one subfolder per method (block_influence/, angular_distance/), each with "
        f"importance.json and bar.png; plot and compare read the folder whole or one subfolder (default {DEFAULT_OUT})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed_arg(p, uses="recorded only, similarity draws nothing at random")


def run(args) -> int:
    from layerscope.cli.plot import write_figures
    from layerscope.core.errors import ConfigError
    from layerscope.core.layermap import build_layer_map
    from layerscope.methods.sequences import load_sequences
    from layerscope.methods.similarity import similarity

    check_threads(args)
    check_at_least(args, 1, window="--window")  # used only once every sequence has run, as --out is
    check_at_least(args, 1, limit="--limit", batch_size="--batch-size")  # else refused only once the model loads
    check_at_least(args, 2, max_length="--max-length")
    check_output(args.out)
    _check_sft_options(args, None)
    seed_everything(args.seed)
    loaded = load_from_args(args)
    lm = build_layer_map(loaded.model)
    if args.window > lm.n_blocks:  # the method's own message, before the forward passes rather than after
        raise ConfigError(
            f"window must be an integer in 1..{lm.n_blocks} (the model has {lm.n_blocks} blocks), got {args.window}"
        )
    append_eos = True if args.append_eos is None else args.append_eos
    from layerscope.core.models import context_length

    seqs, data = load_sequences(
        args.data,
        loaded.tokenizer,
        max_length=args.max_length,
        limit=args.limit,
        append_eos=append_eos,
        context_length=context_length(loaded.model),
        format=args.format,
    )
    _check_sft_options(args, data["kind"])
    results = similarity(
        loaded.model,
        lm,
        seqs,
        window=args.window,
        batch_size=args.batch_size,
        model_name=loaded.name,
        data=data,
        tokenizer=loaded.tokenizer,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    print(f"{data['source']}: {len(seqs)} sequences ({data['kind']}), {lm.n_blocks} blocks")
    for name, imp in results.items():  # one folder per method: the layout every command writes and reads
        imp.seed = args.seed
        path = imp.save(out / name / "importance.json")
        chart = ", ".join(str(c) for c in write_figures(imp, out / name))  # bar.png, as plot names it
        low = imp.ranking()[::-1][:5]
        print(f"{imp.method}: least important blocks {', '.join(low)}; wrote {path} and {chart}")
    pw = results["angular_distance"].extras["prune_window"]
    print(
        f"angular distance: the {pw['n']}-block window with the smallest distance starts at block {pw['start']} "
        f"(d = {pw['distance']:.4f})"
    )
    return 0


def _check_sft_options(args, read_as: str | None) -> None:
    """--append-eos and --format shape SFT records only: refused where --data names text or a task, before the
    model loads; a file whose kind shows only once it is read (``read_as``) is refused then."""
    from layerscope.cli.common import append_eos_flag
    from layerscope.core.errors import ConfigError
    from layerscope.methods.sequences import sequence_kind

    given = [append_eos_flag(args.append_eos)] if args.append_eos is not None else []
    given += [f"--format {args.format}"] if args.format != "auto" else []
    if not given:
        return
    kind = read_as or sequence_kind(args.data)[0]
    if kind not in ("sft", "auto"):
        one = len(given) == 1
        what = "plain text" if kind == "text" else "a task's contexts" if kind.startswith("task") else kind
        raise ConfigError(
            f"{' and '.join(given)} appl{'ies' if one else 'y'} to SFT data; --data {args.data} is read as {what}: "
            f"drop {'it' if one else 'them'}"
        )

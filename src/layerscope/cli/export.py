"""``layerscope export``: write a ranking's module selection as a peft / axolotl / LLaMA-Factory config."""

from __future__ import annotations

import sys

from layerscope.cli.common import add_selection_args, check_output, check_selection_args, finite_float


def add_arguments(p) -> None:
    from layerscope.training.choices import FORMATS

    p.add_argument("file", help="importance result (JSON, or a folder holding importance.json)")
    p.add_argument("--to", required=True, choices=FORMATS, help="config format")
    add_selection_args(p)
    p.add_argument(
        "--model",
        default=None,
        help="load this model to resolve full module paths and check the ranking belongs to it (optional)",
    )
    p.add_argument("--ignore-fingerprint", action="store_true", help="with --model: accept a fingerprint mismatch")
    p.add_argument("--lora-dropout", type=finite_float, default=0.0, help="LoRA dropout (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for --mode random and random-matched (default 0)")
    p.add_argument(
        "--out",
        default=None,
        help="file (.json/.yaml) or folder (gets adapter_config.json / <format>.yaml); default stdout",
    )


def run(args) -> int:
    from layerscope.core.errors import ConfigError
    from layerscope.training.export import LoraParams, describe, export_selection, write_export
    from layerscope.training.inputs import choose_modules, load_ranking

    importance = load_ranking(args.file, args.mode)
    check_selection_args(args)
    if not 0 <= args.lora_dropout < 1:
        raise ConfigError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout:g}")
    check_output(args.out, kind="either")  # before --model loads
    model = None
    if args.model:
        from layerscope.core.models import load_model

        model = load_model(args.model).model
    selection, layer_map = choose_modules(
        importance,
        args.mode,
        args.fraction,
        args.seed,
        model=model,
        min_block=args.min_block,
        ignore_fingerprint=args.ignore_fingerprint,
        where=str(args.file),
    )
    ex = export_selection(
        selection,
        layer_map,
        args.to,
        args.method,
        LoraParams(args.lora_r, args.lora_alpha, args.lora_dropout),
        header=describe(selection, layer_map, str(args.file)),
    )
    if args.out:
        path = write_export(ex, args.out)
        print(
            f"wrote {path}: {len(selection.modules)} of {selection.n_modules_total} modules "
            f"({'exact' if ex.exact else 'APPROXIMATE, see the comments in the file'})"
        )
    else:
        sys.stdout.write(ex.text)
    for note in ex.notes if (args.out or args.to == "peft") else []:
        print(f"note: {note}", file=sys.stderr)
    return 0

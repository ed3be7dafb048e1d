"""``layerscope export``: write a ranking's module selection as a peft / axolotl / LLaMA-Factory config."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from layerscope.cli.common import (
    add_hidden_alias,
    add_model_args,
    add_selection_args,
    check_output,
    check_selection_args,
    check_threads,
    nonempty,
)

# --out NAME ending in a config suffix is a file (of the format's own kind); anything else, a folder
FILE_SUFFIXES = {"peft": (".json",), "axolotl": (".yaml", ".yml"), "llama-factory": (".yaml", ".yml")}
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# what loads the model: given without --model they would do nothing (flag, attribute, value when not given)
_LOAD_OPTIONS = (
    ("--dtype", "dtype", "auto"),
    ("--device", "device", "auto"),
    ("--device-map", "device_map", None),
    ("--max-memory", "max_memory", None),
    ("--offload-folder", "offload_folder", None),
    ("--load-in", "load_in", None),
    ("--trust-remote-code", "trust_remote_code", False),
    ("--threads", "threads", None),
)
_PLAIN_DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(p) -> None:
    from layerscope.training.choices import FORMATS

    p.add_argument(
        "file",
        type=nonempty,
        metavar="IMPORTANCE",
        help="importance result (JSON, or a folder holding importance.json)",
    )
    p.add_argument("--to", required=True, choices=FORMATS, help="config format")
    add_selection_args(p)
    add_model_args(
        p,
        model_default=None,
        model_help="load this model to resolve full module paths and check the ranking belongs to it "
        "(optional). It loads as --dtype etc. say; --dtype auto (the default) loads it in the dtype the "
        "ranking records, so its weights fingerprint matches",
    )
    p.add_argument("--ignore-fingerprint", action="store_true", help="with --model: accept a fingerprint mismatch")
    p.add_argument(  # None: not given; refused with a mode that draws nothing
        "--seed", type=int, default=None, help="seed for --mode random and random-matched (default 0)"
    )
    # finetune's name for the same draw (its --seed also seeds training), so its selection can be exported as given
    add_hidden_alias(p, "--selection-seed", "seed", type=int)
    p.add_argument(
        "--out",
        type=nonempty,
        default=None,
        help="a file, named with the format's suffix (.json for peft, .yaml or .yml for axolotl and "
        "llama-factory), or a folder: an existing one, or any other name (gets adapter_config.json / "
        "<format>.yaml); default stdout. An existing file is refused unless --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the file --out names if it exists (an adapter_config.json beside trained adapter "
        "weights is refused even so)",
    )


def run(args) -> int:
    from layerscope.training.export import (
        LoraParams,
        check_target,
        config_filename,
        describe,
        export_selection,
        write_export,
    )
    from layerscope.training.inputs import choose_modules, load_ranking, ranking_at_chance_note

    importance = load_ranking(args.file, args.mode)
    if note := ranking_at_chance_note(importance, args.mode):
        print(f"note: {note}", file=sys.stderr)
    check_selection_args(args, seed=("--seed", "seed"))
    _check_load_options(args)
    out = _out_target(args.out, args.to)  # before --model loads
    if out is not None:  # the file written: an existing one is not replaced unasked, nor an adapter's config
        out = out[0] / config_filename(args.to) if out[1] else out[0]
        check_target(out, args.overwrite, where=f"--out {args.out}")
    if args.mode == "all" and args.fraction is not None:
        print(f"note: --mode all uses every module: --fraction {args.fraction:g} has no effect", file=sys.stderr)
    model = _load(args, importance, quiet_stdout=out is None).model if args.model else None
    selection, layer_map = choose_modules(
        importance,
        args.mode,
        args.fraction,
        args.seed or 0,
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
        model=model,
    )
    if out is not None:
        path = write_export(ex, out, overwrite=args.overwrite)
        where = "the notes below" if args.to == "peft" else "the comments in the file"
        print(
            f"wrote {path}: {len(selection.modules)} of {selection.n_modules_total} modules "
            f"({'exact' if ex.exact else f'APPROXIMATE or not checked, see {where}'})"
        )
    else:
        sys.stdout.write(ex.text)
    for note in ex.notes if (out is not None or args.to == "peft") else []:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _check_load_options(args) -> None:
    """The model-loading options act only with --model: given without it, refused (they would do nothing)."""
    from layerscope.core.errors import ConfigError

    if args.model:
        check_threads(args)
        return
    given = [flag for flag, attr, unset in _LOAD_OPTIONS if getattr(args, attr, unset) != unset]
    if given:
        raise ConfigError(f"{given[0]} applies to the model export loads: give --model too, or drop {given[0]}")


def _out_target(out: str | None, fmt: str) -> tuple[Path, bool] | None:
    """(path, is a folder) of --out, checked writable: an existing folder, or a name ending in a config
    suffix (.json / .yaml / .yml: a file, which must be the format's own), else a folder to create
    (``runs/Llama-3.1-8B`` too). None: stdout."""
    from layerscope.core.errors import ConfigError

    if out is None or str(out) in ("", "-"):
        return None
    path = Path(out).expanduser()
    if path.is_dir():
        check_output(out)
        return path, True
    suffix = path.suffix.lower()
    if suffix in CONFIG_SUFFIXES and suffix not in FILE_SUFFIXES[fmt]:
        raise ConfigError(
            f"--out {out}: --to {fmt} writes a {' or '.join(FILE_SUFFIXES[fmt])} file, not {suffix}: name it so, "
            "or give a folder"
        )
    if suffix in FILE_SUFFIXES[fmt]:
        check_output(out, kind="file")
        return path, False
    check_output(out)
    return path, True


def _load(args, importance, quiet_stdout: bool):
    """The model as the ranking was computed: --dtype auto takes the ranking's recorded dtype (a plain one,
    not quantised), so a bfloat16 ranking is checked against bfloat16 weights. Where it loads is said on
    stdout, or on stderr when stdout is the exported config (``quiet_stdout``: no --out)."""
    from layerscope.cli.common import load_from_args

    recorded = (importance.model or {}) if importance is not None else {}
    dtype = recorded.get("dtype")
    say = sys.stderr if quiet_stdout else sys.stdout
    if args.dtype == "auto" and args.load_in is None and dtype in _PLAIN_DTYPES and not recorded.get("quantization"):
        args.dtype = dtype
        print(f"loading --model in {dtype}, the dtype the ranking was computed in (--dtype overrides)", file=say)
    with contextlib.redirect_stdout(say):
        return load_from_args(args)

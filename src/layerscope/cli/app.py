"""``layerscope`` command line: thin subcommands over the Python API.

Each subcommand lives in ``layerscope.cli.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its command runs. ``add_arguments`` must not
import torch, transformers, peft or matplotlib (the defaults it shows come from torch-free config
modules; the heavy imports sit inside ``run``), so ``--help`` and parsing stay fast;
tests/test_cli.py checks it and bench/cli_startup.py times it.
A ``LayerscopeError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("layerscope.cli.demo", "the main job on the default model and shipped data (a few minutes on CPU)"),
    "models": ("layerscope.cli.models", "fetch the default model, convert a GGUF, show a model's layer map"),
    "eval": ("layerscope.cli.eval", "zero-shot multiple-choice accuracy or held-out SFT loss"),
    "ila": ("layerscope.cli.ila", "ILA: learn which LoRA-adapted modules matter for alignment"),
    "compare": ("layerscope.cli.compare", "Jaccard of top-K sets and Spearman between importance results"),
    "ablate": ("layerscope.cli.ablate", "remove one player at a time and measure the drop"),
    "shapley": ("layerscope.cli.shapley", "Shapley values of layers (exact, proximity, permutation, owen)"),
    "similarity": ("layerscope.cli.similarity", "ShortGPT block influence and angular distance"),
    "plot": ("layerscope.cli.plot", "plot an importance result (bar chart or module heatmap)"),
    "finetune": ("layerscope.cli.finetune", "fine-tune only the modules an importance ranking picks (LoRA or full)"),
    "export": (
        "layerscope.cli.export",
        "write a ranking's module selection as a peft / axolotl / LLaMA-Factory config",
    ),
    "prune": ("layerscope.cli.prune", "remove the least important layers and save a plain Hugging Face model"),
    "prune-curve": (
        "layerscope.cli.prune_curve",
        "which ranking prunes best: the value as 1..K blocks are removed, one curve per ranking",
    ),
    "report": ("layerscope.cli.report", "one self-contained HTML page (or Markdown) of a model's results"),
}


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other layerscope error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="layerscope", description="Which transformer layers of a causal LM matter.")
    parser.add_argument("--version", action="version", version=f"layerscope {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand ``args`` chose (``layerscope models show``'s, say)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def _version() -> str:
    try:
        import importlib.metadata as md

        return md.version("layerscope")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(only=command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the (sub)command's own parser, which names the help that lists its options
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 0
    from layerscope.cli.common import one_line_warnings
    from layerscope.core.errors import LayerscopeError

    ended_well = False
    try:
        with one_line_warnings(args.command):
            code = int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
        ended_well = code == 0
        return code
    except LayerscopeError as e:
        from layerscope.core.distributed import is_main_process

        if is_main_process():  # under torchrun every process meets the same bad input: say it once
            print(f"layerscope {args.command}: error: {e}", file=sys.stderr)
        elif getattr(e, "report_on_every_process", False):  # met by this process alone: nobody else can say it
            from layerscope.core.distributed import rank

            who = rank() or os.environ.get("RANK", "?")  # the launcher's rank if the group is already gone
            print(f"layerscope {args.command}: error (process {who}): {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write that failed outside atomic_path (disk full, permissions)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"layerscope {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerscope {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from layerscope.core.distributed import finish

        finish(meet=ended_well)  # leave a torchrun process group cleanly; nothing when run alone


if __name__ == "__main__":
    sys.exit(main())

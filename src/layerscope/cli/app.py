"""``layerscope`` command line: thin subcommands over the Python API.

Each subcommand lives in ``layerscope.cli.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its command runs. ``add_arguments`` must not
import torch, transformers, peft or matplotlib (the defaults it shows come from torch-free config
modules; the heavy imports sit inside ``run``), so ``--help`` and parsing stay fast;
tests/test_cli.py checks it and bench/cli_startup.py times it.
A ``LayerscopeError`` becomes one line on stderr and exit code 2; Ctrl-C (exit 130) and SIGTERM
(exit 143) one line too, after the run unwound (``cli/signals.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys

from layerscope.cli.signals import StopOnSignals

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
# the commands whose processes share the work under torchrun / accelerate launch (core/distributed.py);
# any other runs on the main process alone (cli.launcher.main_process_runs_alone)
SHARE_WORK = frozenset({"eval", "ila", "ablate", "shapley", "finetune", "prune-curve"})


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines wrapped between words only: argparse's default also breaks at hyphens, which splits
    flag names and paths (``--no-`` / ``append-eos``) that a reader copies."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other layerscope error. Every (sub)command
    is built with it. Options are taken only in full (``--lim`` is not ``--limit``): an abbreviation that
    works today would change meaning when a flag sharing its prefix is added."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # what error() reads for _data_option_hint
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        hint = _data_option_hint(self, getattr(self, "_argv", []), message) or _method_hint(self, message)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


def _data_option_hint(parser: argparse.ArgumentParser, argv: list[str], message: str = "") -> str:
    """``; similarity takes its data as --data ...`` where ``argv`` gives ``--task`` to a command that reads
    its data with ``--data`` alone, or the other way round: the commands name their data option for what it
    reads (a task to score, or SFT / text data), so the other name is read as an unknown option. What the
    option takes is read from the parser: its help names tasks, or ``loss:`` files. Empty where no such
    option was given, or the command has both or neither. Where ``message`` (the error) does not name that
    option (another error came first), the hint says that the command has none."""
    options = {s: a for a in parser._actions for s in a.option_strings}
    command = parser.prog.split()[-1]
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        flag, eq, value = arg.partition("=")
        other = {"--task": "--data", "--data": "--task"}.get(flag)
        if other is None or flag in options or other not in options:
            continue
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else ""
        takes = options[other].help or ""
        none = "" if flag in message else f" ({command} has no {flag})"
        if flag == "--data":  # to a command that scores a task
            if value and not _names_a_file(value):  # a task's name given as --data
                return f"; {command} scores a task: --task {value}{none}"
            loss = f", or --task loss:{value or 'FILE'} for an SFT file's held-out loss" if "loss:" in takes else ""
            return f"; {command} scores a task: --task NAME{loss}{none}"
        if value.startswith("loss:"):  # a loss file: the SFT file itself is the data
            return f"; {command} takes its data as --data (e.g. --data {value[len('loss:') :] or 'FILE'}){none}"
        if re.search(r"\btask\b", takes):  # a task's texts are data too
            return f"; {command} takes its data as --data (e.g. --data {value or 'NAME'}){none}"
        return f"; {command} takes its data as --data FILE (SFT data), not a task{none}"
    return ""


# the rankings a layerscope command writes (by method name, and by the command's name), as a slip for
# finetune's / export's --method; "random" has its own place there (--mode random)
RESULT_METHODS = ("ablation", "ablate", "shapley", "ila", "similarity", "block-influence", "angular")


def _method_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """``--method`` names what a command varies: in finetune and export how the selected modules train
    (lora / full), in prune the ranking that orders the layers. A value of the other kind gets the option
    that takes it: prune heals with ``--heal-method``, finetune and export read their ranking from a result
    (or pick modules at random with ``--mode random``)."""
    m = re.match(r"argument --method: invalid choice: '([^']*)'", message)
    if m is None:
        return ""
    value, command = m[1], parser.prog.split()[-1]
    options = {s for a in parser._actions for s in a.option_strings}
    trains = "--heal-method" not in options  # finetune / export: --method is lora or full
    if value in ("lora", "full") and not trains:
        return (
            f"; {command}'s --method is the ranking that orders the layers; healing trains with --heal-method {value}"
        )
    if not trains:
        return ""
    if value == "random" and "--mode" in options:
        return f"; {command}'s --method is how the selected modules train (lora or full); --mode random picks them"
    if value in RESULT_METHODS:
        source = "--importance" if "--importance" in options else "the IMPORTANCE file"
        return (
            f"; {command}'s --method is how the selected modules train (lora or full); the ranking comes from "
            f"{source}, a result of ablate, shapley, ila or similarity"
        )
    return ""


def _names_a_file(value: str) -> bool:
    """Whether ``value`` reads as a file (a folder or a suffix), not a name (core.tasks.registry's rule)."""
    return "/" in value or os.sep in value or value.startswith("~") or "." in os.path.basename(value)


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


def _takes_many_paths(parser: argparse.ArgumentParser) -> bool:
    """Whether a (sub)command takes a list of positionals (compare's results, report's paths)."""
    return any(not a.option_strings and a.nargs in ("+", "*") for a in parser._actions)


def _version() -> str:
    try:
        import importlib.metadata as md

        return md.version("layerscope")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    from layerscope.core.quantization import quiet_bitsandbytes

    quiet_bitsandbytes()  # peft imports bitsandbytes where it is installed, which logs a line on a CPU machine
    with StopOnSignals(speaks=lambda: _launcher_rank() == 0) as stop:
        try:
            code = _main(argv, stop)
            sys.stdout.flush()  # what is still buffered: a reader that has gone shows here, not at exit
            return code
        except BrokenPipeError:
            return _reader_gone()
        except KeyboardInterrupt as e:  # before the command ran (importing its module, say) or after it
            return stop.said(e)
        except Exception as e:
            if stop.first is None or not _from_the_stop(e):
                raise  # a bug: its traceback
            # what a signal cut short failed after it: numpy interrupted inside torch's import is
            # imported again and raises ImportError. The run was stopped; it says so, in one line
            return stop.said_signal(stop.first)


def other_bars_off(off: bool):
    """With ``--no-progress``, the progress bars other libraries draw with tqdm are off too (transformers'
    GGUF conversion bar has no switch of its own): tqdm takes its defaults from ``TQDM_*`` variables when it
    is first imported, which in a ``layerscope`` process is inside the command's run (parsing imports no
    tqdm). A bar given ``disable`` explicitly, as layerscope's own are, is unaffected. The variable is
    restored afterwards, for callers of :func:`main` in a longer-lived process (where tqdm may be imported
    already, and the variable then changes nothing)."""
    from unittest import mock

    return mock.patch.dict(os.environ, TQDM_DISABLE="1") if off else contextlib.nullcontext()


def _from_the_stop(e: BaseException) -> bool:
    """Whether ``e`` followed from the stop: an import the interrupt cut short, or an error raised while
    the interrupt itself was being handled (a bug elsewhere keeps its traceback)."""
    chain, seen = e, set()
    while chain is not None and id(chain) not in seen:
        if isinstance(chain, (ImportError, KeyboardInterrupt)):
            return True
        seen.add(id(chain))
        chain = chain.__cause__ or chain.__context__
    return False


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``layerscope ... | head``): nothing wrong with the run's input,
    so no error line; the command stops quietly, as Unix tools do. stdout then points to /dev/null so
    that Python's own flush at exit does not complain."""
    with contextlib.suppress(OSError, ValueError):  # no real file behind stdout (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_EXIT


def _main(argv: list[str] | None, stop) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    if command is not None:
        stop.prog = f"layerscope {command}"
    parser = build_parser(only=command)
    args, unknown = parser.parse_known_args(argv)
    if unknown and _takes_many_paths(_innermost(parser, args)):
        # `compare a --level block b`: a subcommand's parser reads its positionals in one run, so paths
        # after an option are left over; read the command's own arguments again, intermixed
        rest = argv[argv.index(args.command) + 1 :]
        args = _innermost(parser, args).parse_intermixed_args(rest, namespace=argparse.Namespace(command=command))
        unknown = []
    if unknown:  # said by the (sub)command's own parser, which names the help that lists its options
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 0
    from layerscope.cli.common import one_line_warnings
    from layerscope.cli.launcher import main_process_runs_alone, notes_from_main_process_only
    from layerscope.cli.output_lock import output_held
    from layerscope.core.errors import LayerscopeError

    prog = stop.prog = f"layerscope {args.command}"
    if args.command not in SHARE_WORK and not main_process_runs_alone(args.command):
        return 0  # under a launcher: the main process does it all, this one has no share of it
    stop.resumable = hasattr(args, "resume")  # the commands with --resume continue where a stop left them
    stop.unsaved = _nothing_to_resume(args)
    ended_well = False
    try:
        out = getattr(args, "out", None) if _launcher_rank() == 0 else None  # the main process holds --out
        with (
            one_line_warnings(args.command),
            notes_from_main_process_only(),
            output_held(args.command, out),
            other_bars_off(getattr(args, "no_progress", False)),
        ):
            code = int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
        ended_well = code == 0
        return code
    except LayerscopeError as e:
        _say_error(prog, str(e) + _fields_hint(args, e), e)
        return e.exit_code
    except BrokenPipeError:
        raise  # stdout's reader went away: not a failed write of ours (main stops quietly)
    except OSError as e:  # a write that failed outside atomic_path (disk full, permissions)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _say_error(prog, f"{where}{e.strerror or e}", e)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): the run unwound, its files consistent
        return stop.said(e)
    except RuntimeError as e:
        dist = _distributed()
        if dist is None or not dist.lost_a_peer(e):
            raise  # a bug: its traceback
        if _launcher_rank() == 0:  # the others were left waiting with it: one line is enough
            say = f"{prog}: error: another process of this launch stopped (its error, if any, is above)"
            _say(say)
        return 1
    finally:
        _leave_process_group(ended_well)


def _fields_hint(args: argparse.Namespace, e: BaseException) -> str:
    """How to read an MC file whose fields have other common names (``fields_hint``, set by the task reader:
    ``query=question,choices=options,gold=answer``): with --fields where the command has it, else by renaming
    them. Empty where the error has no such mapping or its message already names one."""
    mapping = getattr(e, "fields_hint", None)
    if not mapping or "--fields" in str(e):
        return ""
    if hasattr(args, "fields"):
        return f"; pass --fields {mapping}"
    renames = ", ".join(f"{name} to {key}" for key, name in (pair.split("=", 1) for pair in mapping.split(",")))
    return f"; rename its fields ({renames}): layerscope {args.command} reads no --fields"


def _nothing_to_resume(args: argparse.Namespace) -> str | None:
    """What a stopped run says instead of "rerun with --resume" where its options keep nothing to resume
    from: finetune without --save-checkpoints (or --resume, which implies it), ila with --checkpoint-every 0.
    None where the run keeps its progress (or the command has no --resume)."""
    if not hasattr(args, "resume"):
        return None
    if getattr(args, "save_checkpoints", None) is False and not args.resume:
        return "nothing was checkpointed (run with --save-checkpoints to be able to --resume)"
    if getattr(args, "checkpoint_every", None) == 0:
        return "nothing was checkpointed (--checkpoint-every 0; give N > 0 to be able to --resume)"
    return None


def _distributed():
    """``layerscope.core.distributed`` if a command imported it (torch with it), else None: the error
    and interrupt paths must not import torch (slow; after Ctrl-C during torch's own import it fails
    or crashes), and without that module no process group was joined."""
    return sys.modules.get("layerscope.core.distributed")


def _launcher_rank() -> int:
    """This process's rank: the process group's, else the launcher's RANK (0 when run alone)."""
    dist = _distributed()
    if dist is not None and dist.world_size() > 1:
        return dist.rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _say(line: str) -> None:
    """``line`` on stderr in one write: processes of one launch share the stream, and print's two writes
    (the text, then its newline) let another process's line land between them on an unbuffered stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _say_error(prog: str, message: str, e: BaseException) -> None:
    """One stderr line for an error. Under torchrun / accelerate launch the main process says it;
    another process says it too, prefixed by its rank, unless the error is known to be the main
    process's own: every process runs the same checks before the group is joined, so an error met
    then is met by all; after that, the collective helpers mark what they know
    (``distributed.mark_reporting``), and of an unmarked one the group's store tells whether the main
    process met the same (``distributed.same_error_as_main``)."""
    who = _launcher_rank()
    dist = _distributed()
    joined = dist is not None and dist.working_together()
    if who == 0:
        if joined:
            dist.same_error_as_main(message)  # posted for the others to compare with
        _say(f"{prog}: error: {message}")
        return
    alone = getattr(e, "report_on_every_process", None)
    if alone is None:
        alone = joined and not dist.same_error_as_main(message)
    if alone:
        _say(f"{prog}: error (process {who}): {message}")


def _leave_process_group(ended_well: bool) -> None:
    dist = _distributed()
    if dist is None:
        return  # never imported: no group to leave
    try:
        dist.finish(meet=ended_well)  # leave a torchrun process group cleanly; nothing when run alone
    except KeyboardInterrupt:  # stopped while leaving: the run itself is over
        pass


if __name__ == "__main__":
    sys.exit(main())

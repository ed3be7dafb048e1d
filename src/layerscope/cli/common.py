"""Arguments shared by several subcommands, so they are spelled the same everywhere.

Nothing here imports torch, transformers or numpy at module level: every command's ``--help`` and
argument parsing go through this module, and must stay fast (docs/performance.md, "CLI start-up").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from layerscope.cli.launcher import launched_processes, launcher_main_process
from layerscope.core.errors import ConfigError, percent_hint
from layerscope.core.quantization import LOAD_IN
from layerscope.engine.settings import DEFAULT_CACHE_MB


def finite_float(text: str) -> float:
    """argparse type of every real-valued option: "inf" and "nan" parse as floats, and would then pass
    range checks such as ``value >= 0`` and fail late (``--cache-mb inf``) or not at all."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nonempty(text: str) -> str:
    """argparse type of every option that names a task, a data file, a ranking or an output (``--task``,
    ``--data``, ``--heldout``, ``--importance``, ``--out``, ...): an empty value, as an unset shell
    variable gives (``--task "$TASK"``), is refused by name before anything loads, rather than read as
    the current folder (written into, for ``--out``; ``--out .`` says so) or replaced by the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty value")
    return text


def task_spec(text: str) -> str:
    """argparse type of a ``--task``: :func:`nonempty`, with the spaces around the file of ``loss:FILE`` dropped
    (``"loss: f.jsonl"`` reads f.jsonl, not a file called " f.jsonl")."""
    head, colon, rest = nonempty(text).partition(":")
    return f"loss:{rest.strip()}" if colon and head.strip() == "loss" else text


def name_list(text: str) -> list[str]:
    """argparse type of a comma-separated list of names (``finetune --eval-tasks``): the names, stripped; an empty
    value or an empty entry (``arc_easy,,piqa``) is refused, as :func:`nonempty` refuses one name."""
    names = [name.strip() for name in nonempty(text).split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty entry in {text!r}")
    return names


def add_model_args(
    p: argparse.ArgumentParser, model_default: str | None = "default", model_help: str = "", quantized: bool = True
) -> None:
    """The model and how it loads. ``model_default`` / ``model_help``: a command whose model is optional
    (``export``) gives None and says what the model is for. ``quantized=False``: a command that cannot
    work on quantised weights (pruning) keeps ``--load-in`` out of its help; given anyway, the command
    refuses it saying why."""
    p.add_argument(
        "--model",
        type=nonempty,
        default=model_default,
        help=model_help or "hub id, local HF folder, .gguf file, or 'default' (SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="auto | float32 | bfloat16 | float16 (default auto: bfloat16 on a GPU that supports it, else float32)",
    )
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto: CUDA when present, else cpu)"
    )
    p.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="spread one model over devices with accelerate: auto | balanced | balanced_low_0 | sequential, or a JSON "
        "{module: device} (a GPU index, cpu or disk); what does not fit is offloaded (docs/large-models.md)",
    )
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="LIMITS",
        help="memory each device may hold for --device-map, e.g. 0=20GiB,1=20GiB,cpu=60GiB (implies --device-map auto)",
    )
    p.add_argument(
        "--offload-folder",
        default=None,
        metavar="DIR",
        help="where --device-map puts weights offloaded to disk (default: a temporary folder, removed at exit)",
    )
    p.add_argument(
        "--load-in",
        default=None,
        choices=LOAD_IN,
        help="quantise the weights with bitsandbytes: 4bit (NF4, QLoRA's recipe) or 8bit (LLM.int8()); scores "
        "then belong to the quantised model. On a CUDA GPU; on the CPU too (bitsandbytes >= 0.50), where "
        "it saves neither time nor memory: for checking a run (docs/large-models.md)"
        if quantized
        else argparse.SUPPRESS,
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model's own Python code from the hub (off unless asked)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads torch computes with (default: torch's choice, one per core); on a machine busy "
        "with other work, fewer (even 1) can be many times faster",
    )


def add_seed_arg(p: argparse.ArgumentParser, default: int = 0, uses: str = "") -> None:
    """``uses``: what the seed draws in this command (a deterministic method says it draws nothing)."""
    p.add_argument(
        "--seed", type=int, default=default, help=f"random seed{': ' + uses if uses else ''} (default {default})"
    )


def load_from_args(args):
    from layerscope.core.distributed import chosen_automatically, is_main_process, local_device, together
    from layerscope.core.models import load_model

    apply_threads(getattr(args, "threads", None))
    check_offload_folder(args)
    check_device_map_alone(args)
    with together("loading the model"):  # in a joined group one process may fail alone (its own GPU's memory)
        loaded = load_model(
            args.model,
            dtype=args.dtype,
            device=local_device(args.device),  # under a launcher, auto / cuda is this process's own GPU
            trust_remote_code=args.trust_remote_code,
            device_map=getattr(args, "device_map", None),
            max_memory=getattr(args, "max_memory", None),
            offload_folder=getattr(args, "offload_folder", None),
            load_in=getattr(args, "load_in", None),
        )
    placement = getattr(loaded, "placement", None)
    if placement is not None and "device" not in placement.auto and chosen_automatically(args.device):
        # under a launcher --device auto reached the loader as the device it became: it was still auto's choice
        loaded.placement = dataclasses.replace(placement, auto=("device", *placement.auto))
    if is_main_process():  # what auto chose, once (results record it too: model_info); on stdout with the
        print(loaded.describe())  # run's other lines (notes, warnings and errors: "where output goes", below)
    return loaded


def apply_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads (and inter-op threads, where torch still allows
    setting them: only before its first parallel work). None leaves torch's choice."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads!r}")
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # "cannot set number of interop threads after parallel work"
        torch.set_num_interop_threads(threads)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lora_alpha(text: str) -> int | float:
    """LoRA alpha as ila takes it (any finite number, "16.0" too), kept a whole number where it is one, so
    exported configs say 16 rather than 16.0."""
    value = finite_float(text)
    return int(value) if value.is_integer() else value


def add_selection_args(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    """How a ranking becomes a module selection: the same options for ``finetune`` and ``export``.
    ``seed_flag``: the option that seeds the random modes' draw, as the command's help names it."""
    from layerscope.training.choices import DEFAULT_FRACTION, MODES
    from layerscope.training.config import METHODS, FinetuneConfig

    d = FinetuneConfig()
    p.add_argument(
        "--mode",
        choices=MODES,
        default="top",
        help="all: every linear module (--fraction has no effect); freeze-bottom: all but the least important "
        f"F; top: only the most important F; random: F at random under {seed_flag} (the control); "
        "random-matched: as random, with as many modules of each type as top picks (the same parameter "
        "count). Default top",
    )
    p.add_argument(
        "--fraction",
        type=finite_float,
        default=None,
        help=f"F in (0, 1], of the ranking's players (default {DEFAULT_FRACTION['freeze-bottom']:g} for "
        f"freeze-bottom, {DEFAULT_FRACTION['top']:g} otherwise)",
    )
    p.add_argument(
        "--min-block",
        type=int,
        default=None,
        metavar="B",
        help="train nothing below block B: the backward pass then stops at B, which is where "
        "selective tuning saves time (F still counts the whole ranking; default no cut)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=d.method,
        help=f"LoRA adapters on the selected modules, or full fine-tuning of their weights (default {d.method})",
    )
    # --rank / --alpha: ila's spelling of the same two options. Their default None: not given, so one given
    # with --method full (which trains no adapter) is refused by check_selection_args, which fills them in
    p.add_argument("--lora-r", "--rank", type=int, default=None, help=f"LoRA rank (default {d.lora_r})")
    p.add_argument(
        "--lora-alpha", "--alpha", type=lora_alpha, default=None, help=f"LoRA alpha (default {d.lora_alpha})"
    )
    p.add_argument("--lora-dropout", type=finite_float, default=None, help=f"LoRA dropout (default {d.lora_dropout:g})")


# ----------------------------------------------------------------------------- checks before any work
# Options used only at the end of a run (where results go, what is evaluated after training) are
# checked here, before a model loads, so a typo costs a second rather than the whole run.


def check_threads(args) -> None:
    """``--threads`` in range (applied later, by :func:`load_from_args`), and ``--offload-folder``
    used (every command that loads a model checks this first)."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    check_offload_folder(args)
    check_device_map_alone(args)


def check_device_map_alone(args) -> None:
    """``--device-map`` / ``--max-memory`` spread one model over the devices from one process; under
    torchrun / accelerate launch every process holds a whole model of its own (on its LOCAL_RANK GPU),
    so the two do not combine. Refused before anything loads (once a launcher's ``--device auto`` has
    become this process's device, the loader could only say that --device and --device-map clash)."""
    flags = (("--device-map", "device_map"), ("--max-memory", "max_memory"))
    flag = next((f for f, attr in flags if getattr(args, attr, None)), None)
    if flag and launched_processes() > 1:
        raise ConfigError(
            f"{flag} spreads one model over the devices from a single process, and torchrun / accelerate launch "
            "runs a whole model in each process: run it without the launcher, or drop it (--device cuda gives "
            "each process its own GPU)"
        )


def check_offload_folder(args) -> None:
    """``--offload-folder`` only holds what a device map offloads: without one it would do nothing. And it
    must be a folder that can be made or written: accelerate creates it during the load, whose failure
    would read as the model's ("failed to load ([Errno 17] File exists)")."""
    folder = getattr(args, "offload_folder", None)
    if folder and not (getattr(args, "device_map", None) or getattr(args, "max_memory", None)):
        raise ConfigError("--offload-folder applies with --device-map (or --max-memory): give one, or drop it")
    if folder and Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
        raise ConfigError(f"--offload-folder {folder}: a file is in the way, not a folder")
    check_output(folder, "--offload-folder")  # a file above it, or a folder that cannot be written


def learning_rate_text(x: float) -> str:
    """2e-4 rather than 0.0002: learning rates read as powers of ten (finetune's and prune's --lr help)."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def add_hidden_alias(p: argparse.ArgumentParser, alias: str, dest: str, **kwargs) -> None:
    """``alias``: an older or another command's spelling of the option stored in ``dest``, still accepted
    but kept out of ``--help``, so each command shows one name for one setting. ``kwargs``: the shown
    option's ``type`` / ``choices``. Added after the shown option, whose default it repeats (``get_default``
    reads the first action of ``dest`` that has one)."""
    p.add_argument(alias, dest=dest, default=p.get_default(dest), help=argparse.SUPPRESS, **kwargs)


def add_seq_len_alias(p: argparse.ArgumentParser, dest: str = "max_length") -> None:
    """--seq-len, the training commands' former name of --max-length, accepted by every command that has one."""
    add_hidden_alias(p, "--seq-len", dest, type=int)


def add_seq_len_arg(p: argparse.ArgumentParser) -> None:
    """--max-length, the tokens kept per example, of a training command (dest ``seq_len``, as the training
    configs name it); --seq-len, its former name there, stays a hidden alias."""
    from layerscope.core.data import DEFAULT_MAX_LENGTH

    p.add_argument(
        "--max-length",
        dest="seq_len",
        metavar="MAX_LENGTH",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help=f"tokens kept per example (default {DEFAULT_MAX_LENGTH})",
    )
    add_seq_len_alias(p, dest="seq_len")


def add_fields_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fields",
        type=nonempty,
        default=None,
        help="field names of a custom MC JSONL, e.g. 'query=question,choices=options,gold=answer' or a JSON object "
        "(contexts, continuation, gold for a partial-scoring file)",
    )


def parse_fields(text: str | None) -> dict | None:
    """``a=b,c=d`` or a JSON object -> dict. A key given twice is refused: in a dict the last would win
    unsaid (``query=question,query=options`` reads options as the query)."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("{"):
        pairs: list = []  # the whole object's pairs, repeats kept (the hook sees inner objects first)
        try:
            obj = json.loads(text, object_pairs_hook=lambda found: pairs.append(found) or dict(found))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--fields: invalid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise ConfigError("--fields: expected an object of field names")
        _refuse_repeated_keys(pairs[-1])
        return obj
    found = []
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(f"--fields: expected key=name pairs, got {part!r}")
        found.append(tuple(x.strip() for x in part.split("=", 1)))
    _refuse_repeated_keys(found)
    return dict(found)


def _refuse_repeated_keys(pairs: list) -> None:
    for i, (key, name) in enumerate(pairs):
        earlier = next((n for k, n in pairs[:i] if k == key), None)
        if earlier is not None:
            raise ConfigError(f"--fields maps {key} twice (to {earlier} and to {name}): give each key once")


def add_subject_arg(p: argparse.ArgumentParser) -> None:
    """``--subject``: the MMLU subjects or category a task is read for (``load_task``'s ``subject``), in every
    command that scores a multiple-choice task; the loader refuses it with a task that is not MMLU."""
    p.add_argument(
        "--subject",
        type=nonempty,
        default=None,
        help="MMLU subject(s) or category, e.g. anatomy, STEM, 'anatomy,virology' (with an MMLU --task)",
    )


def refuse_mc_options_on_sft(sft_flag: str, given: dict[str, str | None]) -> None:
    """``given`` (``--subject`` / ``--fields`` -> value) pick and rename multiple-choice items: where ``sft_flag``
    (``--data``, ``--task loss:``) scores SFT data instead they would have no effect, so a given one is refused."""
    named = [flag for flag, value in given.items() if value]
    if named:
        one = len(named) == 1
        raise ConfigError(
            f"{sft_flag} evaluates loss on SFT data; {' and '.join(named)} appl{'ies' if one else 'y'} to a "
            f"multiple-choice --task only: drop {'it' if one else 'them'}"
        )


def add_append_eos_arg(p: argparse.ArgumentParser, sft_flags: str | None = None) -> None:
    """``--append-eos`` / ``--no-append-eos``, with one help text everywhere. ``sft_flags``: in a command that
    may read no SFT data, the options whose data it shapes (``loss:<file>``); its default is then None, so a
    given one can be told apart (and refused where it would have no effect) and the default filled in later."""
    from layerscope.core.data import APPEND_EOS_HELP

    p.add_argument(
        "--append-eos",
        action=argparse.BooleanOptionalAction,
        default=None if sft_flags else True,
        help=f"with {sft_flags}: {APPEND_EOS_HELP}" if sft_flags else APPEND_EOS_HELP,
    )


def append_eos_flag(append_eos: bool) -> str:
    """The spelling of a given ``--append-eos`` / ``--no-append-eos``, as messages name it."""
    return "--append-eos" if append_eos else "--no-append-eos"


def settle_append_eos(args, reads_sft, sft_read: str) -> None:
    """``--append-eos`` of a command that may read no SFT data (default None, :func:`add_append_eos_arg`): left
    out, on; given where the run reads none (``reads_sft()`` False; ``sft_read`` names what it would have to
    read), refused, since it would have no effect. ``args.append_eos_given`` keeps whether it was given, for
    :func:`check_append_eos_read`."""
    args.append_eos_given = args.append_eos is not None
    if args.append_eos is None:
        args.append_eos = True
    elif not reads_sft():
        raise ConfigError(f"{append_eos_flag(args.append_eos)} applies to {sft_read}; this run reads none: drop it")


def may_read_sft(tasks: list[str], sequences: str | None) -> bool:
    """Whether a run may read SFT records, as far as names tell before anything is read: a ``loss:<file>`` among
    ``tasks``, or ``sequences`` (the --data of block-influence / angular; None where they do not run) named as
    SFT data or as a file, which is read as SFT records where it holds them and else as a task's contexts
    (:func:`check_append_eos_read` refuses --append-eos once such a file has been read as a task)."""
    from layerscope.methods.sequences import sequence_kind
    from layerscope.scoring.sources import LOSS_PREFIX

    loss = any(spec.startswith(LOSS_PREFIX) for spec in tasks)
    return loss or (sequences is not None and sequence_kind(sequences)[0] in ("sft", "auto"))


def read_data_sequences(args, loaded, other_sft: bool, sft_read: str) -> tuple[list[list[int]], dict]:
    """The token sequences of --data that block-influence / angular measure (``load_sequences`` with the run's
    --max-length, --limit and --append-eos, cut to the model's context) and their description; a given
    --append-eos is refused once --data reads as other than SFT records (:func:`check_append_eos_read`)."""
    from layerscope.core.models import context_length
    from layerscope.methods.sequences import load_sequences

    sequences, read = load_sequences(
        args.data,
        loaded.tokenizer,
        args.max_length,
        args.limit,
        append_eos=args.append_eos,
        context_length=context_length(loaded.model),
    )
    # a file named as --data shows only now whether it holds SFT records or a task's items
    check_append_eos_read(args, read, other_sft, sft_read)
    return sequences, read


def check_append_eos_read(args, read_as: dict, other_sft: bool, sft_read: str) -> None:
    """A given ``--append-eos`` (:func:`settle_append_eos`) refused once ``--data`` has been read (``read_as``:
    ``load_sequences``' description) as something other than SFT records, where it was the only SFT data the
    run might have read (``other_sft`` False): a file only shows what it holds once read, and the option would
    have had no effect. As similarity refuses it."""
    if not getattr(args, "append_eos_given", False) or other_sft or read_as["kind"] == "sft":
        return
    what = "plain text" if read_as["kind"] == "text" else "a task's contexts"
    raise ConfigError(
        f"{append_eos_flag(args.append_eos)} applies to {sft_read}; --data {args.data} is read as {what}: drop it"
    )


def add_format_arg(p: argparse.ArgumentParser, of: str = "--data", more: str = "") -> None:
    """``--format``: the format of SFT records, forced (``load_sft``'s ``format``) rather than detected from
    the first record; ``of`` names the options whose records it reads, ``more`` adds what it does beyond that."""
    from layerscope.core.data import FORMATS

    p.add_argument(
        "--format",
        default="auto",
        type=data_format,
        metavar="FORMAT",
        help=f"format of {of}: {' | '.join(FORMATS)} (default auto: detected from the records){more}",
    )


def data_format(text: str) -> str:
    """argparse type of ``--format``: checked as it is parsed, not after the model has loaded."""
    from layerscope.core.data import FORMAT_ALIASES, FORMATS

    if text != "auto" and text not in FORMATS and text not in FORMAT_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown data format {text!r}; use auto or one of {', '.join(FORMATS)}")
    return text


def add_sft_only_args(p: argparse.ArgumentParser, sft_flags: str) -> None:
    """``--max-length`` and ``--append-eos`` of a command that scores SFT examples only where ``sft_flags``
    (``--data or loss:<file>``) gives them: default None, so :func:`check_sft_only_options` can tell a
    given one (refused with a multiple-choice task, where it has no effect) and fill in the defaults."""
    from layerscope.core.data import DEFAULT_MAX_LENGTH

    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help=f"with {sft_flags} only: tokens kept per example (default {DEFAULT_MAX_LENGTH})",
    )
    add_seq_len_alias(p)
    add_append_eos_arg(p, sft_flags)


def check_sft_only_options(args, sft: bool, task: str, sft_flags: str = "--task loss:<file>") -> None:
    """``--max-length`` / ``--append-eos`` shape SFT examples (``sft_flags``: ``--data``, ``--task
    loss:<file>``) alone: given where ``sft`` is False (``task``, a multiple-choice task, is scored) they
    would have no effect, and are refused; left out (their argparse default is None), they get their
    defaults."""
    from layerscope.core.data import DEFAULT_MAX_LENGTH

    given = [
        flag
        for flag, value in (
            ("--max-length", args.max_length),
            (append_eos_flag(args.append_eos), args.append_eos),
        )
        if value is not None
    ]
    if given and not sft:
        one = len(given) == 1
        raise ConfigError(
            f"{' and '.join(given)} appl{'ies' if one else 'y'} to SFT examples ({sft_flags}) only; "
            f"--task {task} is multiple choice: drop {'it' if one else 'them'}"
        )
    if args.max_length is None:
        args.max_length = DEFAULT_MAX_LENGTH
    if args.append_eos is None:
        args.append_eos = True


def add_cache_arg(p) -> None:
    p.add_argument(
        "--cache-mb",
        type=finite_float,
        default=DEFAULT_CACHE_MB,
        help=f"memory for cached hidden states in MiB (default {DEFAULT_CACHE_MB:g}; 0 recomputes prefixes)",
    )


def check_at_least(args, minimum: int = 1, **flags: str) -> None:
    """Each ``args.<attr>`` (named ``--flag`` in the message) is None or >= ``minimum``."""
    for attr, flag in flags.items():
        value = getattr(args, attr, None)
        if value is not None and value < minimum:
            raise ConfigError(f"{flag} must be >= {minimum}, got {value}")


def check_fraction(value: float | None, flag: str = "--fraction") -> None:
    if value is not None and not 0 < value <= 1:
        raise ConfigError(f"{flag} {value:g} must be in (0, 1]{percent_hint(value)}")


# Where a command that computes something writes when --out is not given: one folder per command under
# one root, so every run's output is found in the same place (commands that read results - compare, plot,
# export, report - print, or write beside what they read, instead).
OUT_ROOT = "layerscope-out"


def default_out(command: str) -> str:
    """The --out a command uses when none is given: ``layerscope-out/<command>``."""
    return f"{OUT_ROOT}/{command}"


def check_output(path: str | os.PathLike | None, flag: str = "--out", kind: str = "folder") -> None:
    """Refuse an output that cannot be written, before any work: it must not be blocked by a file
    (``kind`` "folder"), not be a folder (``kind`` "file"), and the nearest existing folder above it
    must be writable. Nothing is created."""
    if path is None or str(path) in ("", "-"):
        return
    target = Path(path).expanduser()
    if kind == "folder" and target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {path}: a file is in the way, not a directory")
    if kind == "file" and target.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    above = target if target.is_dir() else target.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ConfigError(f"{flag} {path}: {above} is a file, not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {above} is not writable")


def check_data_file(source: str | None) -> None:
    """A local SFT file found and its JSON read now (tokenizing needs the model's tokenizer, later;
    the records' format is checked then, on the records the run keeps)."""
    if source is None:
        return
    from layerscope.core.data.sources import DEMO_DATA, _looks_like_path, read_source

    path = DEMO_DATA if source == "demo" else os.path.expanduser(str(source))
    if Path(path).exists() or _looks_like_path(str(source)):  # else a hub id, fetched once, by the loader
        read_source(str(source), None)  # the loader's own messages: not found, a folder, invalid JSON, empty


LORA_OPTIONS = (("--lora-r", "lora_r"), ("--lora-alpha", "lora_alpha"), ("--lora-dropout", "lora_dropout"))
RANDOM_MODES = ("random", "random-matched")


def check_selection_args(args, seed: tuple[str, str] | None = None) -> None:
    """The module-selection options (``add_selection_args``), checked before any work, and the LoRA
    options' defaults filled in. An option this selection would not use is refused, not recorded as
    if used: a LoRA option with --method full, and the random draw's seed (``seed``: its flag and
    attribute, None when not given) with a mode that draws nothing."""
    from layerscope.training.config import FinetuneConfig

    check_fraction(args.fraction)
    check_at_least(args, 0, min_block="--min-block")
    if args.method == "full":
        given = [flag for flag, dest in LORA_OPTIONS if getattr(args, dest) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} has no effect with --method full (no adapter is trained); drop it")
    if seed is not None and getattr(args, seed[1]) is not None and args.mode not in RANDOM_MODES:
        raise ConfigError(
            f"{seed[0]} has no effect with --mode {args.mode}: it seeds the draw of --mode random / random-matched; "
            "drop it"
        )
    d = FinetuneConfig()
    for _, dest in LORA_OPTIONS:
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(d, dest))
    check_at_least(args, 1, lora_r="--lora-r", lora_alpha="--lora-alpha")
    if not 0 <= args.lora_dropout < 1:
        raise ConfigError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout:g}")


def check_exact_fits(n: int, unit: str, flag: str, instead: str) -> None:
    """Exact Shapley over ``n`` players (``unit``: "blocks", ...), refused before any work where 2**n is
    more than it takes; ``flag`` names the option that asked for it, ``instead`` the one to use."""
    from layerscope.methods.shapley import EXACT_MAX_PLAYERS

    if n > EXACT_MAX_PLAYERS:
        raise ConfigError(
            f"{flag}: the model has {n} {unit}, 2**{n} = {2**n} coalitions; exact Shapley takes at most "
            f"{EXACT_MAX_PLAYERS} players (use {instead})"
        )


# ----------------------------------------------------------------------------- where output goes
# stdout: the run's results and the lines that describe it (the model's device and dtype, the data read,
# what was written), so that ``> file`` keeps a record of the run. stderr: progress bars, and one line
# for each of
#   note: ...                      a fact about the run worth knowing (data cut or dropped, a model at
#                                  chance, what a standard error rests on, a run starting afresh);
#   layerscope CMD: warning: ...   the result may not be what was asked for (one_line_warnings below);
#   layerscope CMD: error: ...     the run stopped (cli/app.py).


# ----------------------------------------------------------------------------- warnings


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """layerscope's own warnings as one stderr line (``layerscope CMD: warning: ...``) while a command
    runs, like its errors; other libraries' warnings keep Python's format. Under torchrun / accelerate
    launch only the main process says them: every process meets the same ones."""
    import warnings

    default = warnings.showwarning
    quiet = not launcher_main_process()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "layerscope" in Path(str(filename)).parts:
            if not quiet:
                print(f"layerscope {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield

"""The token sequences similarity measures read (:func:`load_sequences`): a plain ``.txt`` file cut into
chunks of ``max_length`` tokens (ShortGPT used 256-token PG19 chunks), an SFT file
(``layerscope.core.data.load_sft``), or an evaluation task (its contexts); :func:`sequence_kind` tells
which from the name where it can."""

from __future__ import annotations

import numbers
import sys
from pathlib import Path

from layerscope.core.data import DEFAULT_MAX_LENGTH  # every command's --max-length: API runs measure the same
from layerscope.core.data.in_memory import in_memory_records
from layerscope.core.errors import ConfigError, DataError


def sequence_kind(source: str) -> tuple[str, str]:
    """(kind, spec) of a :func:`load_sequences` source, as far as its name tells: "text" (a ``text:``
    prefix or a ``.txt`` file), "task" (``task:`` or a known task name), "sft" (``sft:``), or "auto" (a
    file read as SFT records if it holds them, else as a task)."""
    source = str(source)
    kind, spec = "auto", source
    if ":" in source and source.split(":", 1)[0] in ("task", "sft", "text"):
        kind, spec = source.split(":", 1)
    from layerscope.core.data.decoding import logical_suffix

    if kind == "auto" and logical_suffix(Path(spec)) == ".txt":  # .txt.gz too
        kind = "text"
    if kind == "auto":
        from layerscope.core.tasks import known_tasks

        name = spec.lower().split(":", 1)[0]
        kind = "task" if name in known_tasks() or name in ("mmlu",) else "auto"
    return kind, spec


def load_sequences(
    source: str | list,
    tokenizer,
    max_length: int = DEFAULT_MAX_LENGTH,
    limit: int | None = 64,
    append_eos: bool = True,
    context_length: int | None = None,
    format: str = "auto",
) -> tuple[list[list[int]], dict]:
    """Token sequences for similarity measures, and a description of where they came from.

    ``source``: a ``.txt`` file (cut into ``max_length``-token chunks), ``task:<spec>`` or a known
    task name / MC file (the contexts), ``sft:<file>`` or any other SFT file (the full examples;
    ``append_eos``: ``text`` records end with the eos token, as ``load_sft`` has it; ``format``: their
    format, forced as ``load_sft`` forces it: a file is then read as SFT records, never as a task). In
    memory: a list of strings (each a ``text`` record: one sequence), or a list of SFT records or task items
    (dicts) or a ``datasets.Dataset`` of them, told apart and checked as a file's records are.
    ``context_length``: the model's (``core.models.context_length``); a ``max_length`` past it is cut
    to it, with a note, as ``load_sft`` does (``similarity`` refuses longer sequences).
    """
    if not isinstance(max_length, numbers.Integral) or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2 (got {max_length!r})")
    if context_length is not None and max_length > context_length:
        print(
            f"note: --max-length {max_length} is past the model's context of {context_length} positions; "
            f"sequences are cut to {context_length} tokens",
            file=sys.stderr,
        )
        max_length = context_length
    if limit is not None and (not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"limit must be a positive integer (got {limit!r})")
    if isinstance(source, str) and not source.strip():  # Path("") is the current folder
        raise DataError("no sequences given (an empty name); give a .txt file, an SFT file or a task")
    memory = in_memory_records(
        source,
        "sequences come from a file name, a known task name, a list of texts, a list of records (dicts) "
        "or a datasets.Dataset",
    )
    if memory is None:
        kind, spec = sequence_kind(source)
        name = spec
    elif all(isinstance(r, str) for r in memory.records):  # texts: each one sequence, as a text record is
        kind, spec, name = "sft", [{"text": t} for t in memory.records], str(memory)
    else:  # SFT records or task items, told apart as in a file
        kind, spec, name = "auto", memory.records, str(memory)
    kind = _kind_with_format(kind, format, name)
    if kind == "text":
        return _text_chunks(Path(spec), tokenizer, max_length, limit)
    sft_error: Exception | None = None
    if kind in ("sft", "auto"):
        from layerscope.core.data import SFTRecordError, load_sft
        from layerscope.core.data.formats import MultipleChoiceItemsError

        try:  # load long (so response-only labelling keeps examples), then keep the first max_length tokens
            data = load_sft(
                spec, tokenizer, max_length=max(max_length, 4096), format=format, limit=limit, append_eos=append_eos
            )
        except SFTRecordError:
            raise  # recognisably SFT records: a task reader's error beside it would only contradict it
        except MultipleChoiceItemsError:
            if kind == "sft":
                raise
            kind = "task"  # recognisably a task: its reader's error alone names the item at fault
        except DataError as e:
            if kind == "sft":
                raise
            sft_error = e  # not an SFT file: maybe a multiple-choice file
        else:
            seqs = [list(ex.input_ids)[:max_length] for ex in data.examples]
            return _check(seqs, name), {
                "source": str(data.source),
                "kind": "sft",
                "format": data.format,  # detected, or forced with ``format``: as ila's result records it
                "fingerprint": data.fingerprint,
                "n_sequences": len(seqs),
                "max_length": max_length,
                "append_eos": append_eos,  # text records end with eos or not: other sequences
            }
    from layerscope.core.tasks import load_task

    try:
        task = load_task(spec, limit=limit)
    except DataError as e:
        if kind == "auto":
            sft, plain = ("an SFT file", f"give text:{spec}") if memory is None else ("SFT records", "give strings")
            raise DataError(f"{name}: neither {sft} ({sft_error}) nor a task ({e}); for plain text, {plain}") from None
        raise
    seqs = [list(tokenizer.encode(it.prompt_text))[-max_length:] for it in task.items if it.prompt_text]
    return _check(seqs, name), {
        "source": str(task.source),
        "task": task.name,
        "kind": "task contexts",
        "fingerprint": task.fingerprint,
        "n_sequences": len(seqs),
        "max_length": max_length,
    }


def _kind_with_format(kind: str, format: str, name) -> str:
    """The kind a source is read as once ``format`` is known: a forced SFT format says the records are SFT
    (a file is not tried as a task after them); plain text and a task have no records to force it on."""
    if format == "auto":
        return kind
    if kind in ("text", "task"):
        what = "plain text" if kind == "text" else "a task"
        raise ConfigError(f"format {format!r} reads SFT records; {name} is read as {what}: leave format auto")
    return "sft"


def _text_chunks(path: Path, tokenizer, max_length: int, limit: int | None) -> tuple[list[list[int]], dict]:
    from layerscope.core.data.decoding import read_text
    from layerscope.core.data.special_text import text_ids

    if path.is_dir():
        raise DataError(f"{path}: a folder, not a text file")
    if not path.exists():  # a pipe (text:/dev/stdin) is read as a file is
        raise DataError(f"{path}: text file not found")
    text, _ = read_text(path)  # as every data file: gzip read, a byte-order mark dropped, binary named
    # a file saved on Windows (CRLF) or old Mac (CR) is the same text: its \r would be tokens of their own
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # one long text, cut into chunks below: transformers' warning that it exceeds the model's length does not apply
    ids = text_ids(tokenizer, text, as_text=_reads_special_text(tokenizer, text, path))
    chunks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    chunks = [c for c in chunks if len(c) >= 2][:limit]
    import hashlib

    return _check(chunks, str(path)), {
        "source": str(path),
        "kind": "text chunks",
        "n_sequences": len(chunks),
        "max_length": max_length,
        "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def _reads_special_text(tokenizer, text: str, path: Path) -> bool:
    """Whether ``text`` spells a special token ("</s>" in a book about HTML) that is to be read as text, as every
    other character of a plain text is; where the tokenizer cannot, a note says it is read as the token."""
    from layerscope.core.data.special_text import special_pattern, splits_special_tokens

    specials = [s for s in getattr(tokenizer, "all_special_tokens", []) if s]
    pattern = special_pattern(specials)
    found = pattern.search(text) if pattern is not None else None
    if found is None:
        return False
    if splits_special_tokens(tokenizer, specials):
        return True
    print(f"note: {path}: the text spells {found.group()!r}, which this tokenizer reads as that token", file=sys.stderr)
    return False


def _check(seqs: list[list[int]], where: str) -> list[list[int]]:
    seqs = [s for s in seqs if len(s) >= 1]
    if not seqs:
        raise DataError(f"{where}: no token sequences to measure similarity on")
    return seqs

"""Where SFT records come from: a local JSON / JSON Lines file (gzipped or not), the demo file, a hub dataset id,
or records handed over in memory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerscope.core.data.decoding import (
    GZIP_MAGIC,
    decode_text,
    json_error,
    json_kind,
    json_lines,
    logical_suffix,
    may_hold_lone_surrogates,
    read_bytes,
    refuse_lone_surrogates,
)
from layerscope.core.data.in_memory import in_memory_records
from layerscope.core.errors import DataError, error_line

# this file is src/layerscope/core/data/sources.py; the resources folder sits under src/layerscope/
DEMO_DATA: str = str(Path(__file__).resolve().parents[2] / "resources" / "demo_instructions.json")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Tabular / plain-text files people hand over as SFT data: refused by name, with the formats that are read.
_NOT_JSON = {".csv": "CSV", ".tsv": "TSV", ".parquet": "Parquet", ".xlsx": "Excel", ".txt": "plain text"}


def _refuse_unsupported(path: Path) -> None:
    kind = _NOT_JSON.get(logical_suffix(path))
    if kind is None:
        return
    from layerscope.core.data.formats import EXPECTED  # formats reads through this module

    raise DataError(
        f"{path}: {kind} is not a supported SFT data format; give JSON or JSON Lines (.json, .jsonl, "
        f"either optionally .gz) with records in one of: {EXPECTED}"
    )


def _looks_like_path(source: str) -> bool:
    """A missing local file must say 'not found', not fall through to the hub."""
    lower = source.lower()
    return (
        lower.endswith((".json", ".jsonl", ".ndjson", ".gz", *_NOT_JSON))
        or source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


class SFTRecordError(DataError):
    """Bad data in a file whose records are recognisably SFT records (a format was found or given): a caller
    that tries other readers on the file (similarity: SFT, then a task) shows this error alone."""


# Keys under which a JSON object holds its list of records (SFT files and task files alike); a
# dataset's splits are among them.
CONTAINER_KEYS = ("data", "train", "examples", "records", "validation", "valid", "dev", "test")


def read_file(path: Path) -> tuple[list, list[str], str]:
    """Parse a JSON list (or one object holding a list under ``data``/``train``/...) or JSON Lines; ``.gz``
    is read too. Returns (records, where each record is in the file, sha256 hex).

    Each record's place is ``line N`` (JSON Lines, the physical line) or ``record N`` (a JSON list,
    1-based), what an error names whatever a later shuffle or limit does. The fingerprint is the
    sha256 of the file's bytes, of the decompressed bytes for a ``.gz`` (so recompressing the same
    records does not change it).
    """
    _refuse_unsupported(path)
    raw = read_bytes(path)  # a pipe (/dev/stdin) read once, for the check before the model loads and the load
    text = decode_text(path, raw)
    if not text.strip():
        raise DataError(f"{path}: empty file, no records")
    # a .jsonl holding one JSON array is a common slip: read as a list, as the task reader does
    if logical_suffix(path) in (".jsonl", ".ndjson") and not text.lstrip().startswith("["):
        records, places = json_lines_records(path, text)
    else:
        records, places = json_document_records(path, text)
    if not records:
        raise DataError(f"{path}: empty list, no records")
    if may_hold_lone_surrogates(text):
        error = _fault_in(records)
        for rec, place in zip(records, places):
            refuse_lone_surrogates(rec, f"{path}: {place}", error)
    return records, places, sha256_hex(text.encode("utf-8") if raw.startswith(GZIP_MAGIC) else raw)


def loads_json(path: Path, text: str, place: str = "") -> Any:
    """``json.loads``, with a document nested past Python's recursion limit refused in one line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply{' on ' + place if place else ''}") from None


def json_lines_records(path: Path, text: str) -> tuple[list, list[str]]:
    """(records, places) of JSON Lines: one value per non-blank line, each at ``line N`` (the physical line).
    Pretty-printed values one after another (``jq '.[]'`` output) are read too, each at ``record N``."""
    records, places = [], []
    for n, line in enumerate(json_lines(text), 1):
        if not line.strip():
            continue
        try:
            records.append(loads_json(path, line, f"line {n}"))
        except json.JSONDecodeError as e:
            stream, fault, pretty = _value_stream(text)
            if fault is None:
                return stream, [f"record {i}" for i in range(1, len(stream) + 1)]
            if pretty or line.strip() in ("{", "["):  # pretty-printed records: the fault is where reading them stops
                where = f"line {fault.lineno} column {fault.colno} ({json_error(fault)})"
                raise _fault_in(stream)(f"{path}: invalid JSON on {where}") from e
            raise _fault_in(records)(f"{path}: invalid JSON on line {n} column {e.colno} ({json_error(e)})") from e
        places.append(f"line {n}")
    return records, places


def _value_stream(text: str) -> tuple[list, json.JSONDecodeError | None, bool]:
    """The JSON values of ``text`` written one after another, separated by whitespace alone: (the values read,
    the error where reading stopped or None at the end of the text, whether a value read spans several lines,
    as pretty-printed records do and JSON Lines never)."""
    decoder, values, at, pretty = json.JSONDecoder(), [], 0, False
    while True:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        if at == len(text):
            return values, None, pretty
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as e:
            return values, e, pretty
        except RecursionError:
            return values, json.JSONDecodeError("JSON nested too deeply", text, at), pretty
        pretty = pretty or "\n" in text[at:end] or "\r" in text[at:end]
        values.append(value)
        at = end


def json_document_records(path: Path, text: str) -> tuple[list, list[str]]:
    """(records, places) of one JSON document: a list, or an object holding one (``held_records``; else the
    object is one record), each at ``record N``; JSON Lines after all when more values follow the first."""
    try:
        doc = loads_json(path, text)
    except json.JSONDecodeError as e:
        # Several values, one per line, in a .json file (or after a .jsonl's "["): read it as JSON Lines.
        if not (text.lstrip()[:1] in ("{", "[") and e.msg == "Extra data"):
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({json_error(e)})") from e
        return json_lines_records(path, text)
    if isinstance(doc, dict):
        doc = _records_of_object(path, doc)
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON list of records or JSON Lines, found {json_kind(doc)}")
    return doc, [f"record {i}" for i in range(1, len(doc) + 1)]


def _records_of_object(path: Path, obj: dict) -> list:
    """The list an object holds under one of ``CONTAINER_KEYS``, else the object as one record."""
    held = held_records(path, obj, lambda split: _fault_in(obj[split]))
    return [obj] if held is None else held


def held_records(
    path: Path, obj: dict, error: Callable[[str], type[DataError]] = lambda split: DataError
) -> list | None:
    """The list ``obj`` holds under one of ``CONTAINER_KEYS``; None when it holds none. An object of several
    splits is refused (``error(first split)``: the class to raise): reading one of them (train, say) where
    another was meant would score the wrong records without a word, and a local file cannot name a split."""
    named = [k for k in CONTAINER_KEYS if isinstance(obj.get(k), list)]
    if not named:
        return None
    splits = [k for k, v in obj.items() if k in named or _is_record_list(v)]
    if len(splits) > 1:
        raise error(splits[0])(
            f"{path}: a JSON object holding several splits ({', '.join(splits)}); "
            "save the split to use as its own file (its list of records) and give that"
        )
    return obj[named[0]]


def _is_record_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _fault_in(records: list) -> type[DataError]:
    """The error for a bad record among ``records``: once the first one has an SFT format's fields, the
    fault is in SFT data (not a sign that the file is some other kind of data)."""
    from layerscope.core.data.formats import detect_format  # formats reads through this module

    if not records or not isinstance(records[0], dict):
        return DataError
    try:
        detect_format(records[0], "")
    except DataError:
        return DataError
    return SFTRecordError


def saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder ``datasets``' ``save_to_disk`` wrote (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _saved_dataset_spec(source: str) -> tuple[Path | None, str]:
    """(folder, split) when ``source`` is a ``save_to_disk`` folder, or ``FOLDER:split``; else (None, "")."""
    path = Path(os.path.expanduser(source))
    if saved_dataset(path):
        return path, ""
    head, _, split = source.rpartition(":")
    folder = Path(os.path.expanduser(head))
    return (folder, split) if head and saved_dataset(folder) else (None, "")


def read_saved(path: Path, split: str, limit: int | None) -> tuple[list, str]:
    """The records of a ``save_to_disk`` folder (``FOLDER:split`` picks a split of a DatasetDict; default
    ``train``), hashed as a hub dataset's are."""
    try:
        import datasets  # optional: pip install layerscope[hub]
    except ImportError as e:
        raise DataError(f"{path}: a save_to_disk folder; reading it needs `pip install layerscope[hub]`") from e
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged folder: datasets raises many types
        raise DataError(f"{path}: cannot load this save_to_disk folder ({error_line(e)})") from e
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; it has {', '.join(ds)} (pick one as {path}:SPLIT)")
        ds = ds[split]
    elif split:
        raise DataError(f"{path}: a single dataset, no splits: give the folder without :{split}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return _hashed_records(path, [dict(r) for r in ds])


def _hashed_records(source, records: list) -> tuple[list, str]:
    if not records:
        raise DataError(f"{source}: empty dataset, no records")
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode()
    return records, sha256_hex(blob)


def read_hub(source: str, limit: int | None) -> tuple[list, str]:
    """``owner/name`` or ``owner/name:split`` (default split ``train``) via ``datasets``."""
    try:
        import datasets  # optional: pip install layerscope[hub]
    except ImportError as e:
        raise DataError(f"{source}: no such file, and loading hub datasets needs `pip install layerscope[hub]`") from e
    from layerscope.core.hub import hub_reachable, offline_datasets

    name, _, split = source.partition(":")
    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else offline_datasets():
            ds = datasets.load_dataset(name, split=split or "train")
            if limit is not None:
                ds = ds.select(range(min(limit, len(ds))))
            records = [dict(r) for r in ds]
    except Exception as e:  # datasets raises many unrelated types (network, missing config, ...)
        if not online:
            raise DataError(
                f"{source}: not a local file, not in the datasets cache, and the hub cannot be reached (offline?)"
            ) from e
        raise DataError(f"{source}: cannot load hub dataset ({error_line(e)})") from e
    return _hashed_records(source, records)


def read_source(source: str | list, limit: int | None) -> tuple[list, str, str, list[str]]:
    """Return (raw records, sha256 hex, resolved source name, each record's place: ``line N`` / ``record N``).

    ``source`` may be the records themselves (a list of dicts, a ``datasets.Dataset``: :mod:`.in_memory`), read
    as a JSON list file's; anything else that is no name (str / PathLike) is refused by type, never looked
    up as a file name it cannot be."""
    memory = in_memory_records(
        source, "SFT data is a file name, a hub dataset id, a list of records (dicts) or a datasets.Dataset"
    )
    if memory is not None:
        records, sha = _hashed_records(memory, memory.records)  # hashed as a hub dataset's records are
        return records, sha, str(memory), memory.places()
    source = str(source)
    if source == "demo":
        source = DEMO_DATA
    path = Path(os.path.expanduser(source))
    folder, split = _saved_dataset_spec(source)
    if folder is not None:
        records, sha = read_saved(folder, split, limit)
        return records, sha, source, [f"record {i}" for i in range(1, len(records) + 1)]
    if path.is_dir():
        raise DataError(f"{source}: is a directory, expected a .json or .jsonl file")
    if path.exists():
        records, places, sha = read_file(path)
        return records, sha, source, places
    if _looks_like_path(source):
        raise DataError(f"{source}: data file not found")
    records, sha = read_hub(source, limit)
    return records, sha, source, [f"record {i}" for i in range(1, len(records) + 1)]

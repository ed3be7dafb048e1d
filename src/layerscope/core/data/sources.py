"""Where SFT records come from: a local JSON / JSON Lines file (gzipped or not), the demo file, or a hub dataset id."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from layerscope.core.data.decoding import (
    GZIP_MAGIC,
    decode_text,
    json_lines,
    logical_suffix,
    may_hold_lone_surrogates,
    refuse_lone_surrogates,
)
from layerscope.core.errors import DataError

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


def read_file(path: Path) -> tuple[list, str]:
    """Parse a JSON list (or one object holding a list under ``data``/``train``) or JSON Lines; ``.gz`` is read too.

    The fingerprint is the sha256 of the file's bytes, of the decompressed bytes for a ``.gz``
    (so recompressing the same records does not change it).
    """
    _refuse_unsupported(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    text = decode_text(path, raw)
    if not text.strip():
        raise DataError(f"{path}: empty file, no records")
    jsonl = logical_suffix(path) in (".jsonl", ".ndjson")
    records: Any = None
    if not jsonl:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            # Several objects, one per line, in a .json file: read it as JSON Lines.
            if not (text.lstrip().startswith("{") and e.msg == "Extra data"):
                raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from e
            jsonl = True
    if jsonl:
        records = []
        for n, line in enumerate(json_lines(text), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON on line {n} column {e.colno} ({e.msg})") from e
    if isinstance(records, dict):
        nested = [records[k] for k in ("data", "train", "examples", "records") if isinstance(records.get(k), list)]
        records = nested[0] if len(nested) == 1 else [records]
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records or JSON Lines, found a JSON {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: empty list, no records")
    if may_hold_lone_surrogates(text):
        for n, rec in enumerate(records, 1):
            refuse_lone_surrogates(rec, f"{path}: record {n}")
    return records, sha256_hex(text.encode("utf-8") if raw.startswith(GZIP_MAGIC) else raw)


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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DataError(f"{source}: cannot load hub dataset ({first})") from e
    if not records:
        raise DataError(f"{source}: empty dataset, no records")
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode()
    return records, sha256_hex(blob)


def read_source(source: str, limit: int | None) -> tuple[list, str, str]:
    """Return (raw records, sha256 hex, resolved source name)."""
    source = str(source)
    if source == "demo":
        source = DEMO_DATA
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        raise DataError(f"{source}: is a directory, expected a .json or .jsonl file")
    if path.exists():
        records, sha = read_file(path)
        return records, sha, source
    if _looks_like_path(source):
        raise DataError(f"{source}: data file not found")
    records, sha = read_hub(source, limit)
    return records, sha, source

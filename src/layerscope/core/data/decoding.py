"""Bytes of a data or task file to text: gzip is read transparently, any other binary is named in one line.

Users bring what they have: ``.jsonl.gz`` dumps, a zip of the dataset, a Parquet export from
the hub, a UTF-16 file saved by a spreadsheet. Decoding those as UTF-8 gives a traceback or a
"bad byte at offset 1" that does not say what the file is; here the file's first bytes name it.
"""

from __future__ import annotations

import gzip
import json
import re
import stat
import zlib
from pathlib import Path
from typing import Any

from layerscope.core.errors import DataError

_ONLY_GZ = "only .gz is read directly"
# (leading bytes, what the file is and what to do): formats read only after a conversion
_SIGNATURES = (
    (b"PK\x03\x04", f"a zip archive, not JSON / JSON Lines text; unzip it first ({_ONLY_GZ})"),
    (b"BZh", f"bzip2-compressed; decompress it first ({_ONLY_GZ})"),
    (b"\xfd7zXZ\x00", f"xz-compressed; decompress it first ({_ONLY_GZ})"),
    (b"(\xb5/\xfd", f"zstd-compressed; decompress it first ({_ONLY_GZ})"),
    (b"7z\xbc\xaf\x27\x1c", f"a 7-Zip archive, not JSON / JSON Lines text; extract it first ({_ONLY_GZ})"),
    (b"PAR1", "a Parquet file, not JSON / JSON Lines; convert it (pandas: read_parquet, then to_json with lines=True)"),
    (b"ARROW1", "an Arrow file, not JSON / JSON Lines; convert it (datasets: Dataset.to_json)"),
    (b"SQLite format 3\x00", "an SQLite database, not JSON / JSON Lines; export its records as JSON Lines"),
    (b"GGUF", "a GGUF model file, not data; give it as --model"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8"),
)
GZIP_MAGIC = b"\x1f\x8b"
# a \uD800-\uDFFF escape: half of a UTF-16 pair (an emoji is two); alone, JSON reads it into a string no tokenizer takes
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _gunzip(path: Path, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off file is an EOFError
        raise DataError(f"{path}: gzip file is truncated or corrupt ({e})") from None


def decode_text(path: Path, raw: bytes) -> str:
    """The UTF-8 text of ``raw`` (gunzipped when it is gzip), or a DataError naming what the file really is."""
    if raw.startswith(GZIP_MAGIC):
        raw = _gunzip(path, raw)
    for magic, what in _SIGNATURES:
        if raw.startswith(magic):
            raise DataError(f"{path}: {what}")
    if _looks_like_utf16(raw[:8192]):  # before decoding: ASCII in UTF-16 is valid UTF-8, every other byte a NUL
        raise DataError(f"{path}: UTF-16 text (no byte-order mark); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if b"\x00" in raw[:8192]:
            raise DataError(f"{path}: a binary file, not JSON / JSON Lines text") from None
        line = raw.count(b"\n", 0, e.start) + 1  # where an editor shows it (a latin-1 "é" mid-file)
        raise DataError(
            f"{path}: not valid UTF-8 (bad byte 0x{raw[e.start]:02x} on line {line}, at offset {e.start}); "
            "save it as UTF-8"
        ) from None


def _looks_like_utf16(head: bytes) -> bool:
    """Mostly ASCII saved as UTF-16 without a byte-order mark: every other byte is zero (the high byte of
    each code unit, after it in little-endian, before it in big-endian); a binary format's zeros fall
    anywhere."""
    pairs = len(head) // 2
    if pairs < 4 or b"\x00" not in head:
        return False
    for zeros, chars in ((head[1::2], head[0::2]), (head[0::2], head[1::2])):
        if zeros[:pairs].count(0) >= 0.9 * pairs and chars[:pairs].count(0) <= 0.05 * pairs:
            return True
    return False


_STREAMED: dict[tuple[int, int], bytes] = {}  # pipes read so far (/dev/stdin, <(zcat f)), by device and inode


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``. A pipe or other file that is not a regular one (``--data /dev/stdin``, a shell's
    ``<(zcat f)``) is read once and kept: a command reads its data more than once (a check before the model
    loads, then the load), and a second read of a pipe finds it empty. Kept by the pipe itself, not its name:
    ``/dev/fd/12`` names another pipe once that one is closed."""
    try:
        info = path.stat()
        key = None if stat.S_ISREG(info.st_mode) else (info.st_dev, info.st_ino)
        if key in _STREAMED:
            return _STREAMED[key]
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if key is not None:
        _STREAMED[key] = raw
    return raw


def read_text(path: Path) -> tuple[str, bytes]:
    """(decoded text, the file's bytes as stored) of ``path``; see :func:`decode_text` and :func:`read_bytes`."""
    raw = read_bytes(path)
    return decode_text(path, raw), raw


def logical_name(path: Path) -> str:
    """The file name without a trailing ``.gz``: ``mmlu_test.csv`` for ``mmlu_test.csv.gz``."""
    return path.name[:-3] if path.suffix.lower() == ".gz" else path.name


def logical_suffix(path: Path) -> str:
    """The suffix that says what the content is: ``.jsonl`` for ``x.jsonl.gz``, lower case."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def json_kind(value: Any) -> str:
    """What a value read from a JSON file is, as JSON names it, for messages about the user's data:
    ``null``, ``a boolean``, ``a number``, ``a string``, ``a list``, ``an object`` (not Python's
    ``NoneType`` / ``int`` / ``dict``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: JSON's true is no number
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__} value"  # not from JSON (a hub dataset's column type)


def json_text(value: Any) -> str:
    """A value of the user's file as JSON spells it (``null``, ``true``, ``"B"``), for messages."""
    return json.dumps(value, ensure_ascii=False, default=str)


def may_hold_lone_surrogates(text: str) -> bool:
    """Whether ``text`` (JSON) has a surrogate escape at all: only then are its records checked."""
    return _SURROGATE_ESCAPE.search(text) is not None


def refuse_lone_surrogates(record: Any, where: str, error: type[DataError] = DataError) -> None:
    """A JSON record whose strings hold a lone surrogate (e.g. ``"\\ud83d"``, an emoji cut in half)
    is not text: refused here, by line, rather than as a tokenizer's TypeError (an ``error``)."""
    try:
        # default=str: a hub dataset's rows may hold values JSON has no type for (a date)
        json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{where}: a string holds half of a UTF-16 surrogate pair (an emoji cut in half?)") from None


def json_error(e: json.JSONDecodeError) -> str:
    """What is wrong in a JSON error, for a one-line message that names the line itself: Python's advice
    for a byte-order mark ("decode using utf-8-sig") is about its own API, not the user's file."""
    if e.msg.startswith("Unexpected UTF-8 BOM"):
        return "a UTF-8 byte-order mark inside the text: files joined together?"
    return e.msg


def json_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text: split at \\n, \\r\\n or \\r only. ``str.splitlines`` also splits at
    U+2028, U+2029 and U+0085, which ``json.dumps(ensure_ascii=False)`` leaves raw inside strings
    (a raw \\r cannot be inside a JSON string, so splitting there is safe)."""
    return re.split(r"\r\n?|\n", text)

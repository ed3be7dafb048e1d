"""Multiple-choice records from JSON Lines, a JSON list or an object wrapping one (.gz too): field mapping and
checks, one line per error."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from layerscope.core.data.decoding import (
    json_kind,
    json_text,
    logical_suffix,
    may_hold_lone_surrogates,
    read_text,
    refuse_lone_surrogates,
)
from layerscope.core.data.sources import CONTAINER_KEYS, held_records, json_document_records, json_lines_records
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks.types import MCItem

MC_FIELDS = ("query", "choices", "gold")  # the keys a field mapping of an ordinary MC file may rename


def read_json_records(path: Path, limit: int | None = None) -> Iterable[tuple[str, Any]]:
    """Yield (place, record) from a JSONL file, a JSON list, or one object holding that list under one
    of ``CONTAINER_KEYS`` (``data``, ``test``, ...), read as the SFT reader reads them
    (:func:`layerscope.core.data.sources.read_file`).

    The place is what an error names: ``line N`` (JSON Lines, the physical line) or ``record N`` (a JSON
    list or a wrapped one, 1-based). A gzipped file is read transparently; other binary files are refused
    by name (:func:`layerscope.core.data.decoding.read_text`).
    """
    text, _ = read_text(path)
    records, places = _records(path, text)
    if limit is not None:
        records, places = records[:limit], places[:limit]
    check = may_hold_lone_surrogates(text)
    for rec, place in zip(records, places):
        if check:
            refuse_lone_surrogates(rec, f"{path}: {place}")
        yield place, rec


def _records(path: Path, text: str) -> tuple[list, list[str]]:
    """(records, places) as the SFT reader decides: by suffix (.jsonl / .ndjson are JSON Lines unless the
    text opens a list), else one JSON document, read as JSON Lines when more values follow the first. A
    .jsonl opening an object is tried as one document first: a pretty-printed {"test": [...]} there loaded
    before the readers were shared, and one-line records fall back to JSON Lines at the first "Extra data".

    One rule is the task reader's own: an object that holds no list under ``CONTAINER_KEYS`` is a record
    on one line (a JSON Lines file of one), but spread over several lines it is no item (its items under
    some other key, most likely), where the SFT reader takes it as one record.
    """
    body = text.strip()
    if not body:
        return [], []
    start = body[:1]
    jsonl = logical_suffix(path) in (".jsonl", ".ndjson")
    one_line = "\n" not in body and "\r" not in body  # json_lines' separators, without splitting the text
    if jsonl and (start != "[" and (start != "{" or one_line)):
        return json_lines_records(path, text)  # JSON Lines (a record of one line is a record, not a wrapper)
    if start != "{":
        return json_document_records(path, text)  # a list, JSON Lines after all, or a refusal naming the line
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data" and not jsonl:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from e
        return json_lines_records(path, text)  # several records, one a line (a broken one named by its line)
    held = held_records(path, value)
    if held is None and jsonl:
        return json_lines_records(path, text)  # pretty-printed, yet no wrapper: name the line at fault
    if held is None and not one_line:
        raise DataError(
            f"{path}: a JSON object; expected JSON lines or a list of items (or one object holding the list "
            f"under one of {', '.join(CONTAINER_KEYS)})"
        )
    records = [value] if held is None else held
    return records, [f"record {i}" for i in range(1, len(records) + 1)]


def get_field(rec: Any, dotted: str, where: str) -> Any:
    """``rec[dotted]``, where dots reach into nested objects (``"choices.text"``)."""
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            have = f"has: {', '.join(sorted(rec))}" if isinstance(rec, dict) else f"the record is {json_kind(rec)}"
            raise DataError(f"{where}: missing field {dotted!r} ({have})")
        cur = cur[part]
    return cur


def text_field(rec: Any, dotted: str, where: str) -> str:
    """``get_field`` for a field that must be a string."""
    value = get_field(rec, dotted, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {dotted!r} must be a string, got {json_kind(value)}")
    return value


def as_gold(value: Any, choices: list[str], where: str) -> int:
    """The gold index from an index, a digit string, one of the choices, or a letter (``"B"``)."""
    if isinstance(value, bool):
        raise DataError(f"{where}: gold must be an index, got {json_text(value)}")
    as_index = _integer(value)
    if isinstance(value, str) and value in choices and as_index not in (None, choices.index(value)):
        # choices "1".."4" with gold "2": lm-eval reads a choice's text as that choice, a template's digits as
        # an index; the two disagree, and either guess would score every item of such a file silently wrong
        raise DataError(
            f"{where}: gold {json_text(value)} is both the text of choice {choices.index(value)} and the index "
            f"{as_index}; give the index as a JSON number"
        )
    if isinstance(value, int):
        gold = value
    elif isinstance(value, str) and value in choices:
        gold = choices.index(value)
    elif as_index is not None:
        gold = as_index
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        gold = ord(value.strip().upper()) - ord("A")
    else:
        raise DataError(f"{where}: gold {json_text(value)} is not an index, a letter, or one of the choices")
    if not 0 <= gold < len(choices):
        raise DataError(f"{where}: gold {gold} out of range for {len(choices)} choices")
    return gold


def _integer(value: Any) -> int | None:
    """``value`` as an index when it is an int or a string of decimal digits (e.g. ``"2"``, ``" -1"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if text.lstrip("-").isdecimal() else None


def labelled_gold(choices: Any, gold: Any, where: str) -> int | None:
    """The gold index of HF ARC-style choices ``{"text": [...], "label": [...]}`` with a string gold
    (an answer key): the position of its label, as lm-eval reads it (labels "1".."4" with answerKey
    "1" mean the first choice, not index 1). None where the choices carry no labels or the gold is
    not a string (a JSON number is an index, as everywhere)."""
    labels = choices.get("label") if isinstance(choices, dict) else None
    if labels is not None and type(gold) is int and str(gold) in map(str, labels):
        at = [str(label) for label in labels].index(str(gold))
        if at != gold:  # labels "1".."4" and a numeric answer key 1: the first choice, or index 1?
            raise DataError(
                f"{where}: gold {gold} is both the label of choice {at} and the index {gold}; "
                f'write it as the string "{gold}" to mean that label'
            )
    if labels is None or not isinstance(gold, str):
        return None
    if not isinstance(labels, list) or len(labels) != len(choices.get("text") or []):
        raise DataError(f"{where}: choices' label must be a list with one label per choice")
    key = gold.strip().upper()
    matches = [j for j, label in enumerate(labels) if str(label).strip().upper() == key]
    if len(matches) != 1:
        raise DataError(f"{where}: gold {json_text(gold)} is not one of the choices' labels {json_text(labels)}")
    return matches[0]


def labels_beside(rec: dict, dotted: str, choices: Any) -> Any:
    """The choices as HF ARC's ``{"text", "label"}`` when a dotted path (``choices.text``) reaches them
    in an object that holds their labels too: the answer key is then read against those labels, as for
    the undotted ``choices``, not as an index (labels "1".."4" with answerKey "1" mean the first choice)."""
    parent, _, leaf = dotted.rpartition(".")
    if not parent or leaf == "label":
        return choices
    holder = get_field(rec, parent, "")  # found: the choices were reached through it
    if isinstance(holder, dict) and "label" in holder:
        return {"text": choices, "label": holder["label"]}
    return choices


def repeats_option(options: list[str], gold: int, where: str, what: str, first: int = 0) -> bool:
    """Whether an item lists one of its options (``what``: choice, context) twice; ``first``: the number
    the file gives its first option (WinoGrande's option1 / option2: 1), for the message.

    Identical options get identical requests, whose scores differ only by numeric noise: with the
    gold among the copies, whether the item counts as right is that noise, so it is refused. A
    repeated wrong option only ever ties with itself: it is scored, and the caller warns.
    """
    copy = next((j for j, o in enumerate(options) if o == options[gold] and j != gold), None)
    if copy is not None:
        raise DataError(
            f"{where}: the gold {what} {gold + first} is the same text as {what} {copy + first} ({options[gold]!r}): "
            "no well-defined answer"
        )
    return len(set(options)) < len(options)


def warn_repeats(path: Path, places: list[str], what: str, shipped: bool = False) -> None:
    """One warning per file for the items that list a wrong option twice (:func:`repeats_option`): maybe a
    slip where another option was meant. Not for the shipped copy of a published set (ARC repeats a few wrong
    choices): its repeats are upstream's, scored as lm-eval scores them, and nothing a user can fix."""
    if places and not shipped:
        warnings.warn(
            f"{path}: {len(places)} item(s) list a wrong {what} twice (first at {places[0]}); "
            "scored as written: which copy scores higher cannot change the accuracy",
            stacklevel=3,
        )


_told_spaced: set[Path] = set()  # files already named in a leading-space note (a command loads its task twice)


def note_leading_space(path: Path, spaced: list[tuple[str, str]], n_choices: int, shipped: bool = False) -> None:
    """One ``note:`` line per file whose choices start with whitespace (``spaced``: (place, choice), in file
    order). lm-eval's target delimiter, one space, always joins query and choice, so ``" girl"`` is scored as
    ``"  girl"``: a token the model rarely sees, which lowers its log-likelihood
    and, where only some choices carry it, favours the others. Any one such choice is said, not only a file
    of them: the mixed case is the worse one. Scored as written, as lm-eval would. Not for a known task's
    own file, which is upstream's, scored as lm-eval scores it."""
    resolved = path.resolve()
    if not spaced or shipped or resolved in _told_spaced:
        return
    _told_spaced.add(resolved)
    place, choice = spaced[0]
    print(
        f"note: {path}: {len(spaced)} of {n_choices} choices start with whitespace (first: {place}, {choice!r}); "
        f"query and choice are joined with one space, as lm-eval does, so it is scored as {' ' + choice!r}, "
        "which lowers its log-likelihood: drop the leading space",
        file=sys.stderr,
    )


def as_choices(value: Any, where: str) -> list[str]:
    if isinstance(value, dict) and "text" in value:  # HF ARC style {"text": [...], "label": [...]}
        value = value["text"]
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: choices must be a list of at least 2 strings")
    empty = [j for j, c in enumerate(value) if not c.strip()]
    if empty:  # it would be scored as a bare space, a choice the model can pick that no one wrote
        raise DataError(f"{where}: choice {empty[0]} is empty")
    return list(value)


def field_names(fields: dict | None, keys: tuple[str, ...]) -> dict[str, str]:
    """``{key: field name}`` for a record kind whose own names are ``keys``, renamed by ``fields``."""
    names = {k: k for k in keys}
    if fields:
        unknown = set(fields) - set(names)
        if unknown:
            raise ConfigError(f"fields: unknown key(s) {sorted(unknown)}; use {', '.join(keys)}")
        names.update(fields)
    return names


def read_mc(
    path: Path, fields: dict | None, prompt: Callable[[str], str], limit: int | None, shipped: bool = False
) -> list[MCItem]:
    """Items of a ``{"query", "choices", "gold"}`` file; ``fields`` renames those three. ``shipped``: the
    file of a known task (see :func:`warn_repeats`). Choices that start with whitespace are noted
    (:func:`note_leading_space`)."""
    names = field_names(fields, MC_FIELDS)
    items, repeats, spaced = [], [], []
    for place, rec in read_json_records(path, limit):
        where = f"{path}: {place}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {json_kind(rec)}")
        query = text_field(rec, names["query"], where)
        raw_choices, raw_gold = get_field(rec, names["choices"], where), get_field(rec, names["gold"], where)
        choices = as_choices(raw_choices, where)
        gold = labelled_gold(labels_beside(rec, names["choices"], raw_choices), raw_gold, where)
        if gold is None:
            gold = as_gold(raw_gold, choices, where)
        if repeats_option(choices, gold, where, "choice"):
            repeats.append(place)
        spaced += [(place, c) for c in choices if c[:1].isspace()]
        items.append(MCItem(context=prompt(query), choices=choices, gold=gold))
    warn_repeats(path, repeats, "choice", shipped)
    note_leading_space(path, spaced, sum(it.n_options for it in items), shipped)
    return items

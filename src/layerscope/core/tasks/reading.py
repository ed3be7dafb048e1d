"""Multiple-choice records from JSON Lines or a JSON list (.gz too): field mapping and checks, one line per error."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from layerscope.core.data.decoding import json_lines, may_hold_lone_surrogates, read_text, refuse_lone_surrogates
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks.types import MCItem

MC_FIELDS = ("query", "choices", "gold")  # the keys a field mapping of an ordinary MC file may rename


def read_json_records(path: Path, limit: int | None = None) -> Iterable[tuple[int, Any]]:
    """Yield (line number, record) from a JSONL file, or (index+1, record) from a JSON list.

    A gzipped file is read transparently; other binary files are refused by name
    (:func:`layerscope.core.data.decoding.read_text`).
    """
    text, _ = read_text(path)
    check = may_hold_lone_surrogates(text)
    if text.lstrip().startswith("["):  # a JSON list
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from e
        for i, rec in enumerate(records[:limit] if limit else records):
            if check:
                refuse_lone_surrogates(rec, f"{path}: record {i + 1}")
            yield i + 1, rec
        return
    n = 0
    for lineno, line in enumerate(json_lines(text), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from e
        if check:
            refuse_lone_surrogates(rec, f"{path}: line {lineno}")
        yield lineno, rec
        n += 1
        if limit is not None and n >= limit:
            return


def get_field(rec: Any, dotted: str, where: str) -> Any:
    """``rec[dotted]``, where dots reach into nested objects (``"choices.text"``)."""
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            have = ", ".join(sorted(rec)) if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"{where}: missing field {dotted!r} (has: {have})")
        cur = cur[part]
    return cur


def text_field(rec: Any, dotted: str, where: str) -> str:
    """``get_field`` for a field that must be a string."""
    value = get_field(rec, dotted, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {dotted!r} must be a string, got {type(value).__name__}")
    return value


def as_gold(value: Any, choices: list[str], where: str) -> int:
    """The gold index from an index, a digit string, one of the choices, or a letter (``"B"``)."""
    if isinstance(value, bool):
        raise DataError(f"{where}: gold must be an index, got {value!r}")
    as_index = _integer(value)
    if isinstance(value, str) and value in choices and as_index not in (None, choices.index(value)):
        # choices "1".."4" with gold "2": lm-eval reads a choice's text as that choice, a template's digits as
        # an index; the two disagree, and either guess would score every item of such a file silently wrong
        raise DataError(
            f"{where}: gold {value!r} is both the text of choice {choices.index(value)} and the index {as_index}; "
            "give the index as a JSON number"
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
        raise DataError(f"{where}: gold {value!r} is not an index, a letter, or one of the choices")
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
        raise DataError(f"{where}: gold {gold!r} is not one of the choices' labels {labels}")
    return matches[0]


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


def read_mc(path: Path, fields: dict | None, prompt: Callable[[str], str], limit: int | None) -> list[MCItem]:
    """Items of a ``{"query", "choices", "gold"}`` file; ``fields`` renames those three."""
    names = field_names(fields, MC_FIELDS)
    items = []
    for lineno, rec in read_json_records(path, limit):
        where = f"{path}: line {lineno}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        query = text_field(rec, names["query"], where)
        raw_choices, raw_gold = get_field(rec, names["choices"], where), get_field(rec, names["gold"], where)
        choices = as_choices(raw_choices, where)
        gold = labelled_gold(raw_choices, raw_gold, where)
        if gold is None:
            gold = as_gold(raw_gold, choices, where)
        items.append(MCItem(context=prompt(query), choices=choices, gold=gold))
    return items

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
    json_error,
    json_kind,
    json_text,
    logical_suffix,
    may_hold_lone_surrogates,
    read_text,
    refuse_lone_surrogates,
)
from layerscope.core.data.in_memory import InMemoryRecords
from layerscope.core.data.sources import (
    CONTAINER_KEYS,
    held_records,
    json_document_records,
    json_lines_records,
    loads_json,
)
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks.types import MCItem

MC_FIELDS = ("query", "choices", "gold")  # the keys a field mapping of an ordinary MC file may rename
# the names hub exports of ARC, MMLU, OpenBookQA and CommonsenseQA give those keys (choices: a list or {text, label})
HUB_FIELDS = {"query": ("question", "question_stem"), "choices": ("choices",), "gold": ("answerKey", "answer")}
# other common names of those keys, tried after the hub's: a record they fit whole is named with the mapping
COMMON_FIELDS = {
    "query": ("prompt", "input"),
    "choices": ("options", "endings", "answers"),
    "gold": ("label", "gold", "target"),
}


def read_json_records(path: Path | InMemoryRecords, limit: int | None = None) -> Iterable[tuple[str, Any]]:
    """Yield (place, record) from a JSONL file, a JSON list, or one object holding that list under one
    of ``CONTAINER_KEYS`` (``data``, ``test``, ...), read as the SFT reader reads them
    (:func:`layerscope.core.data.sources.read_file`); or from records handed over in memory, read as a
    JSON list's (checked when they were taken: :func:`layerscope.core.data.in_memory.in_memory_records`).

    The place is what an error names: ``line N`` (JSON Lines, the physical line) or ``record N`` (a JSON
    list or a wrapped one, 1-based). A gzipped file is read transparently; other binary files are refused
    by name (:func:`layerscope.core.data.decoding.read_text`).
    """
    if isinstance(path, InMemoryRecords):
        yield from list(zip(path.places(), path.records))[:limit]
        return
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
        value = loads_json(path, text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data" and not jsonl:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({json_error(e)})") from e
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
            raise _missing(rec, dotted, where)
        cur = cur[part]
    return cur


def _missing(rec: Any, dotted: str, where: str, hint: str = "") -> DataError:
    """The error for a record without field ``dotted``, naming the fields it has."""
    have = f"has: {', '.join(sorted(rec))}" if isinstance(rec, dict) else f"the record is {json_kind(rec)}"
    return DataError(f"{where}: missing field {dotted!r} ({have}){hint}")


def text_field(rec: Any, dotted: str, where: str) -> str:
    """``get_field`` for a field that must be a string."""
    value = get_field(rec, dotted, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {dotted!r} must be a string, got {json_kind(value)}")
    return value


def as_gold(value: Any, choices: list[str], where: str, field: str = "gold") -> int:
    """The gold index from an index, a digit string, one of the choices, or a letter (``"B"``); ``field``: the
    name the file gives it (HellaSwag's ``label``), which the messages use."""
    if isinstance(value, bool):
        raise DataError(f"{where}: {field} must be an index, got {json_text(value)}")
    if isinstance(value, float) and value.is_integer():
        # pandas writes an int column that has a missing value as floats; refused all the same, as a float
        # may be a score or a probability as well as an index
        raise DataError(
            f"{where}: {field} {json_text(value)} is no integer: write the index as {int(value)} "
            "(pandas writes 1.0 for an integer column that has a missing value)"
        )
    as_index, as_letter = _integer(value), _letter(value)
    if isinstance(value, str) and value in choices:
        _refuse_two_readings(value, choices, as_index, as_letter, where)
    if isinstance(value, int):
        gold = value
    elif isinstance(value, str) and value in choices:
        gold = choices.index(value)
    elif as_index is not None:
        gold = as_index
    elif as_letter is not None:
        gold = as_letter
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():  # "é", a fullwidth "Ｂ"
        raise DataError(f"{where}: {field} {json_text(value)} is not a letter A-Z, an index, or one of the choices")
    else:
        raise DataError(f"{where}: {field} {json_text(value)} is not an index, a letter, or one of the choices")
    if not 0 <= gold < len(choices):
        wrote = str(gold) if isinstance(value, int) else f"{json_text(value)} (index {gold})"  # "E": what was written
        raise DataError(f"{where}: {field} {wrote} out of range for {len(choices)} choices")
    return gold


def _refuse_two_readings(
    value: str, choices: list[str], as_index: int | None, as_letter: int | None, where: str
) -> None:
    """A gold that is the text of one choice and, as an index or a letter, names another.

    choices "1".."4" with gold "2", or "B", "A" with gold "A": lm-eval reads a choice's text as that choice, a
    template's digits as an index and its letters as A, B, ...; the two disagree, and either guess would score
    every item of such a file silently wrong. A letter past the last choice is no reading ("T" / "F" choices).
    """
    at = choices.index(value)
    if as_index not in (None, at):
        raise DataError(
            f"{where}: gold {json_text(value)} is both the text of choice {at} and the index "
            f"{as_index}; give the index as a JSON number"
        )
    if as_letter is not None and as_letter != at and as_letter < len(choices):
        raise DataError(
            f"{where}: gold {json_text(value)} is both the text of choice {at} and the letter "
            f"{value.strip().upper()} (choice {as_letter}); give the index as a JSON number"
        )


def _integer(value: Any) -> int | None:
    """``value`` as an index when it is an int or a string of decimal digits (e.g. ``"2"``, ``" -1"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if text.lstrip("-").isdecimal() else None


def _letter(value: Any) -> int | None:
    """``value`` as an index when it is one letter A-Z, either case (``"b"``: 1)."""
    text = value.strip().upper() if isinstance(value, str) else ""
    return ord(text) - ord("A") if len(text) == 1 and "A" <= text <= "Z" else None


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


def note_leading_space(
    path: Path,
    spaced: list[tuple[str, str]],
    n_options: int,
    shipped: bool = False,
    what: str = "choice",
    after: str = "query",
) -> None:
    """One ``note:`` line per file whose ``what`` (choices, or a partial-scoring file's continuations) start with
    whitespace (``spaced``: (place, text), in file order; ``after``: what they are scored after). lm-eval's target
    delimiter, one space, always joins query and choice, so ``" girl"`` is scored as ``"  girl"``: a token the
    model rarely sees, which lowers its log-likelihood
    and, where only some choices carry it, favours the others. Any one such choice is said, not only a file
    of them: the mixed case is the worse one. Scored as written, as lm-eval would. Not for a known task's
    own file, which is upstream's, scored as lm-eval scores it."""
    if not spaced or shipped:
        return
    if isinstance(path, Path):  # records in memory are noted each time: keeping them here would keep them alive
        if path.resolve() in _told_spaced:
            return
        _told_spaced.add(path.resolve())
    place, text = spaced[0]
    print(
        f"note: {path}: {len(spaced)} of {n_options} {what}s start with whitespace (first: {place}, {text!r}); "
        f"{after} and {what} are joined with one space, as lm-eval does, so it is scored as {' ' + text!r}, "
        "which lowers its log-likelihood: drop the leading space",
        file=sys.stderr,
    )


def as_choices(value: Any, where: str) -> list[str]:
    if isinstance(value, dict) and "text" in value:  # HF ARC style {"text": [...], "label": [...]}
        value = value["text"]
    return text_options(value, where, "choice")


def text_options(value: Any, where: str, what: str) -> list[str]:
    """``value`` as a list of at least 2 options (``what``: choice, context), each a string with some text."""
    if isinstance(value, dict):  # {"A": "...", "B": "..."}: which order the labels mean is the file's to say
        keys = ", ".join(json_text(k) for k in list(value)[:4]) + (", ..." if len(value) > 4 else "")
        raise DataError(
            f"{where}: {what}s are an object ({{{keys}}}: labels to texts); a list is needed: write the texts as a "
            "list, in label order"
        )
    if not isinstance(value, list) or len(value) < 2:
        raise DataError(f"{where}: {what}s must be a list of at least 2 strings")
    bad = next((j for j, o in enumerate(value) if not isinstance(o, str)), None)
    if bad is not None:
        raise DataError(f"{where}: {what} {bad} is {json_kind(value[bad])}, not a string")
    refuse_empty(value, where, what)
    return list(value)


def refuse_empty(options: list[str], where: str, what: str, after: str = "") -> None:
    """Refuse an option that is only whitespace (``after``: how it came to be, e.g. " after cleaning"): it
    would be scored as a bare space, an option the model can pick that no one wrote."""
    empty = [j for j, o in enumerate(options) if not o.strip()]
    if empty:
        raise DataError(f"{where}: {what} {empty[0]} is empty{after}")


def field_names(fields: dict | None, keys: tuple[str, ...]) -> dict[str, str]:
    """``{key: field name}`` for a record kind whose own names are ``keys``, renamed by ``fields``."""
    names = {k: k for k in keys}
    if fields:
        unknown = set(fields) - set(names)
        if unknown:
            raise ConfigError(f"fields: unknown key(s) {sorted(unknown)}; use {', '.join(keys)}")
        names.update(fields)
    return names


def _refuse_hub_export(rec: dict, names: dict[str, str], where: str, shipped: bool = False) -> None:
    """A hub export (:data:`HUB_FIELDS`) holds the items under other names, and ``fields`` reads it, label-based
    answer keys included: its missing field is named with the mapping that reads it. A record whose missing
    fields all have other common names (:data:`COMMON_FIELDS`: question/options/answer, ...) is refused with
    that mapping as the error's ``fields_hint`` (``query=question,choices=options,gold=answer``), which the CLI
    offers as --fields where the command has it. Any other record missing a field is left to :func:`get_field`.
    A known task's own file (``shipped``) is read by its own names, and --fields is refused for it: the mapping
    is then given as the renames that make the file readable, never as --fields."""
    missing = [k for k in MC_FIELDS if "." not in names[k] and names[k] not in rec]
    if not missing:
        return
    mapping = {k: v for k, v in names.items() if v != k}
    taken = {names[k] for k in MC_FIELDS if k not in missing}
    for key in missing:
        found = next(
            (n for n in HUB_FIELDS[key] + COMMON_FIELDS[key] if n in rec and n not in taken and _fits(key, rec[n])),
            None,
        )
        if found is None:
            return
        mapping[key] = found
        taken.add(found)
    hint = ",".join(f"{k}={mapping[k]}" for k in MC_FIELDS if k in mapping)
    if shipped:  # the file at a known task's path (LAYERSCOPE_DATA/arc_easy.jsonl) in another layout
        renames = ", ".join(f"{mapping[k]} to {k}" for k in missing)
        raise _missing(
            rec,
            names[missing[0]],
            where,
            f"; a known task's file is read by the names {', '.join(MC_FIELDS)} (--fields maps custom files "
            f"only): rename its fields ({renames})",
        )
    if all(mapping[k] in HUB_FIELDS[k] for k in missing):
        error = _missing(
            rec,
            names[missing[0]],
            where,
            f"; read it with --fields {hint} (finetune --eval-tasks reads no --fields: rename the fields to "
            f"{', '.join(MC_FIELDS)})",
        )
    else:
        error = _missing(rec, names[missing[0]], where)
    error.fields_hint = hint
    raise error


def _fits(key: str, value: Any) -> bool:
    """Whether ``value`` can be the ``key`` of an MC item: a text query, a list of choices (or the hub's
    ``{text, label}``), a gold that is neither."""
    if key == "query":
        return isinstance(value, str)
    if key == "choices":
        return isinstance(value, (list, dict))
    return not isinstance(value, (list, dict))


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
        _refuse_hub_export(rec, names, where, shipped)
        query = text_field(rec, names["query"], where)
        raw_choices, raw_gold = get_field(rec, names["choices"], where), get_field(rec, names["gold"], where)
        choices = as_choices(raw_choices, where)
        gold = labelled_gold(labels_beside(rec, names["choices"], raw_choices), raw_gold, where)
        if gold is None:
            gold = as_gold(raw_gold, choices, where, field=names["gold"])
        if repeats_option(choices, gold, where, "choice"):
            repeats.append(place)
        spaced += [(place, c) for c in choices if c[:1].isspace()]
        items.append(MCItem(context=prompt(query), choices=choices, gold=gold, place=where))
    warn_repeats(path, repeats, "choice", shipped)
    note_leading_space(path, spaced, sum(it.n_options for it in items), shipped)
    return items

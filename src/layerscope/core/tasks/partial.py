"""Partial-scoring items (lm-eval's ``multiple_input``): ``{"contexts", "continuation", "gold"}`` and WinoGrande.

A WinoGrande record (``sentence`` with a ``_``, ``option1``, ``option2``, ``answer`` "1" or "2")
becomes an item exactly as lm-eval's ``winogrande`` task builds it: context i is the sentence
up to the ``_`` with option i filled in, the continuation is the rest after the ``_``, stripped
(the task's target delimiter, a space, goes in front of it when scored).

Read as ordinary multiple choice, such a file would score the options after the shared text:
the wrong way round, and with plausible-looking numbers. :func:`kind_under_fields` therefore
refuses a field mapping that would read a partial-scoring file that way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerscope.core.data.decoding import json_kind, json_text
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks.reading import (
    as_gold,
    field_names,
    get_field,
    note_leading_space,
    read_json_records,
    repeats_option,
    text_options,
    warn_repeats,
)
from layerscope.core.tasks.types import PartialItem

PARTIAL_FIELDS = ("contexts", "continuation", "gold")  # the keys a field mapping of a partial file may rename
WINOGRANDE_FIELDS = ("sentence", "option1", "option2", "answer")
_WINOGRANDE_ANSWERS = {"1": 0, "2": 1}  # lm-eval's preprocess_winogrande.doc_to_text


def partial_shape(rec: Any) -> str | None:
    """``"winogrande"``, ``"partial"`` (contexts and a continuation) or None for a record of neither shape."""
    if not isinstance(rec, dict):
        return None
    if {"sentence", "option1", "option2"} <= set(rec):
        return "winogrande"
    if {"contexts", "continuation"} <= set(rec):
        return "partial"
    return None


def kind_under_fields(path: Path, fields: dict, first: Any) -> str:
    """The reader a field mapping asks for (``"partial"`` or ``"mc_jsonl"``), refusing one that would mislead.

    ``first`` is the file's first record. Mapping ``query`` / ``choices`` onto a partial-scoring
    file would score it as ordinary multiple choice, the wrong way round: refused, naming the
    partial keys to map instead.
    """
    keys = set(fields)
    partial_keys, mc_keys = keys & {"contexts", "continuation"}, keys & {"query", "choices"}
    if partial_keys and mc_keys:
        raise ConfigError(
            f"fields: {sorted(partial_keys)} are partial-scoring keys, {sorted(mc_keys)} multiple-choice keys; "
            "map either query, choices, gold or contexts, continuation, gold"
        )
    if partial_keys:
        return "partial"
    shape = partial_shape(first)
    if shape is not None and mc_keys:
        raise DataError(
            f"{path}: partial-scoring items (several contexts, one continuation); fields {sorted(mc_keys)} would "
            "score them as ordinary multiple choice, the wrong way round; map contexts, continuation, gold instead"
        )
    if shape == "winogrande":
        raise ConfigError(
            f"{path}: WinoGrande records are read by their own fields ({', '.join(WINOGRANDE_FIELDS)}); "
            "drop fields, or map contexts, continuation, gold"
        )
    return "partial" if shape == "partial" else "mc_jsonl"


def _as_continuation(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: continuation must be a string, got {json_kind(value)}")
    if not value.strip():
        raise DataError(f"{where}: empty continuation (nothing to score under the contexts)")
    return value


def read_partial(path: Path, fields: dict | None, limit: int | None) -> list[PartialItem]:
    """Items of a ``{"contexts", "continuation", "gold"}`` file; ``fields`` renames those three.

    The continuation is used verbatim (the target delimiter goes in front of it); ``gold`` is a
    0-based index into ``contexts`` (or one of the contexts, or a letter).
    """
    names = field_names(fields, PARTIAL_FIELDS)
    items, repeats, spaced = [], [], []
    for place, rec in read_json_records(path, limit):
        where = f"{path}: {place}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {json_kind(rec)}")
        # an empty context: the continuation would be scored after nothing, an option no one wrote
        contexts = text_options(get_field(rec, names["contexts"], where), where, "context")
        continuation = _as_continuation(get_field(rec, names["continuation"], where), where)
        gold = as_gold(get_field(rec, names["gold"], where), contexts, where, field=names["gold"])
        if repeats_option(contexts, gold, where, "context"):
            repeats.append(place)
        if continuation[:1].isspace():  # joined to each context with one space too, as an MC choice to its query
            spaced.append((place, continuation))
        items.append(PartialItem(contexts=contexts, continuation=continuation, gold=gold, place=where))
    warn_repeats(path, repeats, "context")
    note_leading_space(path, spaced, len(items), what="continuation", after="context")
    return items


def winogrande_item(rec: Any, where: str) -> PartialItem:
    """One WinoGrande record as lm-eval's winogrande task scores it."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {json_kind(rec)}")
    sentence = get_field(rec, "sentence", where)
    options = [get_field(rec, "option1", where), get_field(rec, "option2", where)]
    answer = get_field(rec, "answer", where)
    if not isinstance(sentence, str) or "_" not in sentence:
        raise DataError(f"{where}: sentence must be a string with a '_' where an option goes")
    if not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: option1 and option2 must be strings")
    empty = [j + 1 for j, o in enumerate(options) if not o.strip()]
    if empty:  # the sentence would be scored with nothing in the blank, an option no one wrote
        raise DataError(f"{where}: option{empty[0]} is empty")
    key = str(answer).strip() if isinstance(answer, (str, int)) and not isinstance(answer, bool) else None
    if key == "":
        raise DataError(f"{where}: no answer (WinoGrande's test split has none; use train or validation)")
    if key not in _WINOGRANDE_ANSWERS:
        raise DataError(f'{where}: answer must be "1" or "2", got {json_text(answer)}')
    gold = _WINOGRANDE_ANSWERS[key]
    repeats_option(options, gold, where, "option", first=1)  # two options: a copy is always the gold's twin, refused
    blank = sentence.index("_")  # the first '_', as lm-eval
    continuation = sentence[blank + 1 :].strip()
    if not continuation:
        raise DataError(f"{where}: nothing after the '_' to score under the options")
    contexts = [sentence[:blank] + o for o in options]
    return PartialItem(contexts=contexts, continuation=continuation, gold=gold, place=where)


def read_winogrande(path: Path, limit: int | None) -> list[PartialItem]:
    """Items of a WinoGrande JSONL / JSON list (the Hugging Face ``allenai/winogrande`` fields)."""
    return [winogrande_item(rec, f"{path}: {place}") for place, rec in read_json_records(path, limit)]

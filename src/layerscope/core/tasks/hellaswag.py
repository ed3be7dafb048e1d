"""HellaSwag in its original schema (``ctx_a``, ``ctx_b``, ``endings``, ``label``), cleaned as lm-eval does."""

from __future__ import annotations

import re
from pathlib import Path

from layerscope.core.data.decoding import json_kind
from layerscope.core.errors import DataError
from layerscope.core.tasks.reading import (
    as_gold,
    get_field,
    read_json_records,
    refuse_empty,
    repeats_option,
    text_field,
    text_options,
    warn_repeats,
)
from layerscope.core.tasks.types import MCItem


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag cleanup: WikiHow " [title]" artifacts and bracketed tags removed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: Path, limit: int | None, shipped: bool = False) -> list[MCItem]:
    items, repeats = [], []
    for place, rec in read_json_records(path, limit):
        where = f"{path}: {place}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {json_kind(rec)}")
        label = text_field(rec, "activity_label", where)
        ctx_a, ctx_b = text_field(rec, "ctx_a", where), text_field(rec, "ctx_b", where)
        endings = text_options(get_field(rec, "endings", where), where, "ending")  # messages name them so
        ctx = ctx_a + " " + ctx_b.capitalize()
        choices = [hellaswag_preprocess(e) for e in endings]
        refuse_empty(choices, where, "ending", " after cleaning")  # "[step] " cleans to nothing: a bare space
        gold = as_gold(get_field(rec, "label", where), choices, where, field="label")
        if repeats_option(choices, gold, where, "ending"):  # as cleaned: two endings may clean alike
            repeats.append(place)
        items.append(MCItem(context=hellaswag_preprocess(label + ": " + ctx), choices=choices, gold=gold, place=where))
    warn_repeats(path, repeats, "ending", shipped)
    return items

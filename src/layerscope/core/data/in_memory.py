"""Records handed over in memory instead of a file's name: a list of dicts (or, for similarity sequences,
of strings) or a ``datasets.Dataset``. They are read as a JSON list file's records are, by the same
parsers with the same checks, each named ``record N`` (1-based, as in a file) in an error."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from layerscope.core.data.decoding import refuse_lone_surrogates
from layerscope.core.errors import DataError

IN_MEMORY = "in-memory records"  # what an error and a result's ``source`` name the records by


@dataclass(frozen=True, eq=False)  # compared by identity: two lists of the same records are two sources
class InMemoryRecords:
    """Records to read in place of a file's; stands where readers take a file's path, and prints as the
    name an error gives the source (``in-memory records: record 3: missing field 'gold'``)."""

    records: list

    def __str__(self) -> str:
        return IN_MEMORY

    def places(self) -> list[str]:
        """Where each record is, as a JSON list file names its records: ``record 1``, ``record 2``, ..."""
        return [f"record {i}" for i in range(1, len(self.records) + 1)]


def in_memory_records(source: Any, accepted: str) -> InMemoryRecords | None:
    """The records of ``source`` when it is data rather than a name: a list or tuple, or a ``datasets.Dataset``
    (each row a dict); None for a name or a path (str / PathLike), read as before. Anything else is refused
    in one line, saying what the caller takes (``accepted``: "SFT data is a file name, ..."); so are an empty
    list and a string that is not text (a lone surrogate), as in a file, before a tokenizer fails on it.
    The records themselves are checked by the parser the caller hands them to."""
    if isinstance(source, (str, os.PathLike)):
        return None
    if isinstance(source, (list, tuple)):
        records = list(source)
    elif _is_dataset(source):
        records = [dict(row) for row in source]
    elif _is_dataset_dict(source):
        # which split is meant cannot be guessed: reading train where test was meant would score the wrong records
        raise DataError(f"{IN_MEMORY}: a DatasetDict of splits ({', '.join(source)}); give one, e.g. ds['train']")
    else:
        raise DataError(f"{accepted}, not {type(source).__name__}")
    if not records:
        raise DataError(f"{IN_MEMORY}: empty list, no records")
    records = [_as_json_values(rec) for rec in records]
    data = InMemoryRecords(records)
    for rec, place in zip(records, data.places()):
        refuse_lone_surrogates(rec, f"{IN_MEMORY}: {place}")
    return data


def _as_json_values(record: Any) -> Any:
    """``record`` with the values a JSON file would hold: numpy and torch numbers and arrays (a pandas
    ``to_dict("records")`` row holds ``np.int64``) as Python numbers and lists, so a gold of ``np.int64(1)``
    reads as 1 and the records hash as the same records in a file do; other objects (a date) as their text."""
    plain = json.dumps(record, ensure_ascii=False, default=_json_value)
    return json.loads(plain)


def _json_value(value: Any) -> Any:
    to_list = getattr(value, "tolist", None)  # numpy scalars and arrays, tensors
    return to_list() if callable(to_list) else str(value)


def _is_dataset(source: Any) -> bool:
    datasets = sys.modules.get("datasets")  # not imported: no Dataset can exist, and importing it is slow
    return datasets is not None and isinstance(source, datasets.Dataset)


def _is_dataset_dict(source: Any) -> bool:
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(source, datasets.DatasetDict)

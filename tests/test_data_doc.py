"""docs/data.md loads as written: every ```json sft / ```json task block, record by record and as one file, is
read by the loader it documents (a task block's info string may carry ``--fields``, as ``a=b,c=d``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layerscope.cli.common import parse_fields
from layerscope.core.data import load_records
from layerscope.core.tasks import load_task

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"
BLOCK = re.compile(r"^```json (sft|task)(?: (\S+))?\n(.*?)^```$", re.M | re.S)


def records() -> list[tuple[str, str | None, str]]:
    found = [
        (kind, fields, line) for kind, fields, body in BLOCK.findall(DOC.read_text()) for line in body.splitlines()
    ]
    assert len(found) >= 12, "docs/data.md lost its examples"
    return found


@pytest.mark.parametrize("kind, fields, line", records(), ids=lambda x: str(x)[:30])
def test_every_example_loads(tmp_path, kind, fields, line):
    path = tmp_path / "example.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    if kind == "sft":
        convs, _ = load_records(str(path))
        assert len(convs) == 1 and any(m["role"] == "assistant" and m["content"].strip() for m in convs[0])
    else:
        task = load_task(str(path), fields=parse_fields(fields))
        assert len(task.items) == 1


@pytest.mark.parametrize("kind, fields, body", BLOCK.findall(DOC.read_text()), ids=lambda x: str(x)[:30])
def test_every_block_loads_as_one_file(tmp_path, kind, fields, body):
    """A block is one file's layout: copied whole into a file, it loads, every record of it."""
    path = tmp_path / "example.jsonl"
    path.write_text(body, encoding="utf-8")
    n = len(body.splitlines())
    if kind == "sft":
        assert len(load_records(str(path))[0]) == n
    else:
        assert len(load_task(str(path), fields=parse_fields(fields)).items) == n


def test_the_formats_named_are_the_ones_read():
    from layerscope.core.data.formats import FORMATS

    text = DOC.read_text()
    assert all(f"**{fmt}**" in text for fmt in FORMATS)

"""MMLU from the hendrycks CSVs (a zip, a folder, or one CSV), by subject or category, with lm-eval's prompt."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import zipfile
from pathlib import Path

from layerscope.core.data.decoding import decode_text, logical_name, logical_suffix, read_text
from layerscope.core.errors import DataError
from layerscope.core.tasks.types import MCItem

MMLU_LETTERS = ["A", "B", "C", "D"]


def mmlu_prompt(subject: str, question: str, options: list[str]) -> str:
    """lm-eval's default zero-shot MMLU prompt (description + doc_to_text)."""
    head = f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"
    body = question.strip() + "".join(f"\n{letter}. {opt}" for letter, opt in zip(MMLU_LETTERS, options))
    return head + body + "\nAnswer:"


class MMLUSource:
    """The CSVs of one split, from a zip, a folder (any depth), or a single CSV (``.csv.gz`` too)."""

    def __init__(self, path: Path, split: str = "test"):
        self.path = path
        self.files: dict[str, str] = {}  # subject -> member / file path
        suffix = f"_{split}.csv"
        if path.is_file() and logical_suffix(path) == ".csv":  # one CSV, gzipped or not
            # the subject is the name without its split: anatomy_test.csv, anatomy_val.csv, anatomy_dev.csv
            name = Path(logical_name(path)).stem
            stem = re.sub(r"_(test|val|dev|train)$", "", name)
            self.files[stem] = str(path)
            if stem == name:  # not named as MMLU's files are: the prompt's subject may be a surprise
                _note_subject_from_name(path, stem)
        elif path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{path}: not a readable zip file ({e})") from e
            for n in self.zip.namelist():
                parts = n.split("/")
                if n.endswith(suffix) and (len(parts) < 2 or parts[-2] == split):
                    self.files[parts[-1][: -len(suffix)]] = n
        elif path.is_dir():
            for p in sorted(path.rglob(f"*{suffix}")):
                self.files[p.name[: -len(suffix)]] = str(p)
        if not self.files:
            raise DataError(f"{path}: no MMLU '<subject>{suffix}' files found")

    def where(self, subject: str) -> str:
        """What messages call a subject's CSV: its path, or ``ZIP:member`` in a zip."""
        name = self.files[subject]
        return f"{self.path}:{name}" if getattr(self, "zip", None) is not None else name

    def rows(self, subject: str) -> list[list[str]]:
        name, where = self.files[subject], Path(self.where(subject))
        if getattr(self, "zip", None) is not None:
            text = decode_text(where, self.zip.read(name))
        else:
            text = read_text(where)[0]  # gzipped or not; not UTF-8: one line naming the file
        try:
            return list(csv.reader(io.StringIO(text)))
        except csv.Error as e:
            raise DataError(f"{where}: not a readable CSV ({e})") from None


_told_subject: set[Path] = set()  # CSVs whose subject from the file name was said (a command reads twice)


def _note_subject_from_name(path: Path, subject: str) -> None:
    """One ``note:`` per CSV not named ``SUBJECT_test.csv``: lm-eval's prompt names the subject, taken from
    the file name, so renaming the file changes the prompt and the scores."""
    resolved = path.resolve()
    if resolved in _told_subject:
        return
    _told_subject.add(resolved)
    print(
        f'note: {path}: the prompt names the subject from the file name ("... (with answers) about '
        f'{" ".join(subject.split("_"))}."), so renaming the file changes the scores; name it SUBJECT_test.csv '
        "(e.g. high_school_physics_test.csv) for the subject you mean",
        file=sys.stderr,
    )


def mmlu_categories(path: Path) -> dict[str, str]:
    """subject -> category from a ``mapping.json`` beside or inside ``path``; empty when there is none."""
    for cand in (path.parent / "mapping.json", path / "mapping.json"):
        if cand.is_file():
            try:
                return {k: v.get("category", "") for k, v in json.loads(cand.read_text()).items()}
            except (json.JSONDecodeError, AttributeError):
                return {}
    return {}


def subject_names(text: str) -> tuple[str, ...]:
    """The subjects or categories of a comma-separated ``--subject`` as they are matched: ``High School Biology``
    and ``high_school_biology`` are one subject."""
    return tuple(_subject_key(s) for s in text.split(",") if s.strip())


def _subject_key(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def select_subjects(src: MMLUSource, subject: str | None, categories: dict[str, str]) -> list[str]:
    """Subjects named by a comma-separated list of subjects and categories (all when ``subject`` is empty)."""
    subjects = sorted(src.files)
    if not subject:
        return subjects
    chosen: list[str] = []
    for want in subject_names(subject):
        if want in src.files:
            chosen.append(want)
            continue
        in_cat = [s for s in subjects if _subject_key(categories.get(s, "")) == want]
        if not in_cat:
            cats = sorted({c for c in categories.values() if c})
            raise DataError(
                f"{src.path}: unknown MMLU subject {want!r}; subjects: {', '.join(subjects[:5])}, ... "
                f"({len(subjects)} in all){'; categories: ' + ', '.join(cats) if cats else ''}"
            )
        chosen += in_cat
    return list(dict.fromkeys(chosen))


def read_mmlu(path: Path, subject: str | None, limit: int | None) -> tuple[list[MCItem], str]:
    """The items (first ``limit`` overall, in subject order) and a source label naming the subjects."""
    src = MMLUSource(path)
    subjects = select_subjects(src, subject, mmlu_categories(path))
    source = f"{path} [{subject or 'all'}]"
    items: list[MCItem] = []
    for subj in subjects:
        for rowno, row in enumerate(src.rows(subj), start=1):
            where = f"{src.where(subj)}: row {rowno}"  # the CSV's own path: a folder's or a file's, once
            if not any(cell.strip() for cell in row):  # a blank line (e.g. at the end of the file)
                continue
            if rowno == 1 and len(row) == 6 and row[5].strip().lower() in ("answer", "target", "label", "gold"):
                continue  # a header row (question,A,B,C,D,answer / input,...,target): the hendrycks files have none
            if len(row) != 6:
                raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            answer = row[5].strip().upper()
            if answer not in MMLU_LETTERS:
                raise DataError(f"{where}: answer {row[5]!r} is not one of A, B, C, D")
            items.append(
                MCItem(
                    context=mmlu_prompt(subj, row[0], row[1:5]),
                    choices=list(MMLU_LETTERS),
                    gold=MMLU_LETTERS.index(answer),
                    place=where,
                )
            )
            if limit is not None and len(items) >= limit:
                return items, source
    return items, source

"""Zero-shot multiple-choice evaluation sets, as lm-evaluation-harness builds them.

A :class:`Task` is a list of :class:`MCItem` (a context, its answer choices, the gold index)
plus how to score it (``acc`` or ``acc_norm``, as lm-eval reports for that task) and the
random-guess level. The evaluator (``layerscope.evaluate``) scores the continuation
``target_delimiter + choice`` after ``context``, exactly like lm-eval's ``multiple_choice``.

Sources understood by :func:`load_task`:

- a known name (``arc_easy``, ``arc_challenge``, ``boolq``, ``piqa``, ``openbook_qa``,
  ``hellaswag``, ``mmlu``; ``mmlu:<subject or category>`` also works) mapped to the files in
  ``../shared/data/eval``. Known names rebuild lm-eval's prompts from those files (e.g. ARC
  ``"Question: ...\\nAnswer:"``), so numbers are comparable with published lm-eval results;
- a ``{"query", "choices", "gold"}`` JSONL file (the query is used verbatim);
- an original-schema HellaSwag JSONL (``ctx_a``, ``ctx_b``, ``endings``, ``label``);
- MMLU: ``mmlu.zip``, a folder of the hendrycks CSVs, or one ``<subject>_<split>.csv``;
- any other multiple-choice JSONL/JSON list whose field names are given with ``fields``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.core.errors import ConfigError, DataError

METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: list[str]
    gold: int


@dataclass
class Task:
    name: str
    items: list[MCItem]
    chance: float  # expected accuracy of uniform guessing: mean of 1/n_choices
    metric: str  # "acc_norm" or "acc": the headline metric (what lm-eval reports for it)
    source: str  # file (and subject) the items came from
    fingerprint: str  # sha256[:16] of name, prompts, choices, golds: equal iff the same items
    target_delimiter: str = " "  # put between context and choice, as lm-eval's default
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


# ----------------------------------------------------------------------------- registry
# name -> (file under data/eval, reader, prompt adapter, metric)
# The shared JSONL files carry lightly different prompts from lm-eval's; the adapters
# rebuild lm-eval's doc_to_text so a known name means "what lm-eval would score".


def _arc_prompt(q: str) -> str:  # lm-eval arc_*: "Question: {{question}}\nAnswer:"
    return q.rstrip() + "\nAnswer:"


def _piqa_prompt(q: str) -> str:  # lm-eval piqa: "Question: {{goal}}\nAnswer:"; file has "Question: goal\n"
    return q.rstrip("\n") + "\nAnswer:"


def _boolq_prompt(q: str) -> str:  # lm-eval boolq: "{{passage}}\nQuestion: {{question}}?\nAnswer:"
    return q.removeprefix("Passage: ") + "\nAnswer:"


def _same(q: str) -> str:
    return q


@dataclass(frozen=True)
class _Known:
    file: str
    kind: str  # "mc_jsonl" | "hellaswag" | "mmlu"
    prompt: Callable[[str], str]
    metric: str


KNOWN: dict[str, _Known] = {
    "arc_easy": _Known("arc_easy.jsonl", "mc_jsonl", _arc_prompt, "acc_norm"),
    "arc_challenge": _Known("arc_challenge.jsonl", "mc_jsonl", _arc_prompt, "acc_norm"),
    "boolq": _Known("boolq.jsonl", "mc_jsonl", _boolq_prompt, "acc"),
    "piqa": _Known("piqa.jsonl", "mc_jsonl", _piqa_prompt, "acc_norm"),
    "openbook_qa": _Known("openbook_qa.jsonl", "mc_jsonl", _same, "acc_norm"),
    "hellaswag": _Known("hellaswag_val_1000.jsonl", "hellaswag", _same, "acc_norm"),
    "mmlu": _Known("mmlu/mmlu.zip", "mmlu", _same, "acc"),
}
ALIASES = {"openbookqa": "openbook_qa", "obqa": "openbook_qa", "arc_e": "arc_easy", "arc_c": "arc_challenge"}


def known_tasks() -> list[str]:
    return sorted(KNOWN)


def data_roots() -> list[Path]:
    """Folders searched for the shared eval files, in order.

    ``$LAYERSCOPE_DATA`` (either the eval folder itself or a ``shared`` root), then the
    current directory's ``../shared`` and the repository's ``../shared``.
    """
    roots: list[Path] = []
    env = os.environ.get("LAYERSCOPE_DATA")
    if env:
        e = Path(env).expanduser()
        roots += [e, e / "eval", e / "data" / "eval"]
    roots.append(Path.cwd().parent / "shared" / "data" / "eval")
    roots.append(Path(__file__).resolve().parents[4] / "shared" / "data" / "eval")
    return roots


def _find_known_file(name: str, rel: str) -> Path:
    roots = data_roots()
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    raise DataError(
        f"task {name!r}: {rel} not found (looked in {', '.join(str(r) for r in roots)}); "
        "set LAYERSCOPE_DATA to the folder holding the eval files"
    )


# ----------------------------------------------------------------------------- public API


def load_task(spec: str, limit: int | None = None, fields: dict | None = None, subject: str | None = None) -> Task:
    """Load a known task name or a file as a :class:`Task` (first ``limit`` items).

    ``fields`` maps ``query``/``choices``/``gold`` to other field names of an MC JSONL
    (dotted paths reach into objects, e.g. ``"choices.text"``). ``subject`` picks MMLU
    subjects: a subject (``anatomy``), a category (``STEM``), or a comma list; default all.
    For MMLU the limit counts items overall, in subject order, not per subject.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"limit must be a positive number of items, got {limit!r}")
    spec = str(spec)
    key = spec.lower()
    if ":" in key and key.split(":", 1)[0] in ("mmlu", *KNOWN):
        key, sub = key.split(":", 1)
        subject = subject or sub
    key = ALIASES.get(key, key)
    if key.startswith("mmlu_") and key[5:]:
        key, subject = "mmlu", subject or key[5:]

    if key in KNOWN and not Path(spec).exists():
        known = KNOWN[key]
        path = _find_known_file(key, known.file)
        task = _load_path(path, key, known.kind, known.prompt, known.metric, fields, subject, limit)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if os.sep in spec or spec.endswith((".jsonl", ".json", ".csv", ".zip")):
                raise DataError(f"{spec}: evaluation file not found")
            raise DataError(f"unknown task {spec!r}; known tasks: {', '.join(known_tasks())} (or give a file path)")
        kind = _sniff_kind(path, fields)
        task = _load_path(path, path.stem, kind, _same, None, fields, subject, limit)
    return task


def _sniff_kind(path: Path, fields: dict | None) -> str:
    if path.is_dir() or path.suffix.lower() in (".zip", ".csv"):
        return "mmlu"
    if fields:
        return "mc_jsonl"
    first = next(_read_json_records(path, limit=1), None)
    if first is None:
        raise DataError(f"{path}: empty file (no items)")
    _, rec = first
    if isinstance(rec, dict) and {"endings", "ctx_a", "ctx_b"} <= set(rec):
        return "hellaswag"
    return "mc_jsonl"


def _load_path(
    path: Path,
    name: str,
    kind: str,
    prompt: Callable[[str], str],
    metric: str | None,
    fields: dict | None,
    subject: str | None,
    limit: int | None,
) -> Task:
    if subject is not None and kind != "mmlu":
        raise ConfigError(f"--subject only applies to MMLU, not {path}")
    if kind == "mmlu":
        items, source = _read_mmlu(path, subject, limit)
        metric = metric or "acc"
        if subject:
            name = f"mmlu:{subject}"
    elif kind == "hellaswag":
        items, source = _read_hellaswag(path, limit), str(path)
        metric = metric or "acc_norm"
    else:
        items, source = _read_mc(path, fields, prompt, limit), str(path)
        metric = metric or "acc"
    if not items:
        raise DataError(f"{source}: no items")
    chance = sum(1.0 / len(it.choices) for it in items) / len(items)
    task = Task(name=name, items=items, chance=chance, metric=metric, source=source, fingerprint="")
    task.fingerprint = task_fingerprint(task)
    return task


def task_fingerprint(task: Task) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([task.target_delimiter, task.metric]).encode())
    for it in task.items:
        h.update(json.dumps([it.context, it.choices, it.gold], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- JSONL readers


def _read_json_records(path: Path, limit: int | None = None) -> Iterable[tuple[int, Any]]:
    """Yield (line number, record) from a JSONL file, or (index+1, record) from a JSON list."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    with f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":  # a JSON list
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from e
            for i, rec in enumerate(records[:limit] if limit else records):
                yield i + 1, rec
            return
        n = 0
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from e
            yield lineno, rec
            n += 1
            if limit is not None and n >= limit:
                return


def _get(rec: Any, dotted: str, where: str) -> Any:
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            have = ", ".join(sorted(rec)) if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"{where}: missing field {dotted!r} (has: {have})")
        cur = cur[part]
    return cur


def _as_gold(value: Any, choices: list[str], where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: gold must be an index, got {value!r}")
    if isinstance(value, int):
        gold = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        gold = int(value.strip())
    elif isinstance(value, str) and value in choices:
        gold = choices.index(value)
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        gold = ord(value.strip().upper()) - ord("A")
    else:
        raise DataError(f"{where}: gold {value!r} is not an index, a letter, or one of the choices")
    if not 0 <= gold < len(choices):
        raise DataError(f"{where}: gold {gold} out of range for {len(choices)} choices")
    return gold


def _as_choices(value: Any, where: str) -> list[str]:
    if isinstance(value, dict) and "text" in value:  # HF ARC style {"text": [...], "label": [...]}
        value = value["text"]
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: choices must be a list of at least 2 strings")
    return list(value)


def _read_mc(path: Path, fields: dict | None, prompt: Callable[[str], str], limit: int | None) -> list[MCItem]:
    names = {"query": "query", "choices": "choices", "gold": "gold"}
    if fields:
        unknown = set(fields) - set(names)
        if unknown:
            raise ConfigError(f"fields: unknown key(s) {sorted(unknown)}; use query, choices, gold")
        names.update(fields)
    items = []
    for lineno, rec in _read_json_records(path, limit):
        where = f"{path}: line {lineno}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        query = _get(rec, names["query"], where)
        if not isinstance(query, str):
            raise DataError(f"{where}: field {names['query']!r} must be a string")
        choices = _as_choices(_get(rec, names["choices"], where), where)
        gold = _as_gold(_get(rec, names["gold"], where), choices, where)
        items.append(MCItem(context=prompt(query), choices=choices, gold=gold))
    return items


# ----------------------------------------------------------------------------- HellaSwag


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag cleanup: WikiHow " [title]" artifacts and bracketed tags removed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _read_hellaswag(path: Path, limit: int | None) -> list[MCItem]:
    items = []
    for lineno, rec in _read_json_records(path, limit):
        where = f"{path}: line {lineno}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object")
        label, ctx_a, ctx_b = _get(rec, "activity_label", where), _get(rec, "ctx_a", where), _get(rec, "ctx_b", where)
        endings = _as_choices(_get(rec, "endings", where), where)
        ctx = ctx_a + " " + ctx_b.capitalize()
        choices = [hellaswag_preprocess(e) for e in endings]
        gold = _as_gold(_get(rec, "label", where), choices, where)
        items.append(MCItem(context=hellaswag_preprocess(label + ": " + ctx), choices=choices, gold=gold))
    return items


# ----------------------------------------------------------------------------- MMLU

MMLU_LETTERS = ["A", "B", "C", "D"]


def mmlu_prompt(subject: str, question: str, options: list[str]) -> str:
    """lm-eval's default zero-shot MMLU prompt (description + doc_to_text)."""
    head = f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"
    body = question.strip() + "".join(f"\n{letter}. {opt}" for letter, opt in zip(MMLU_LETTERS, options))
    return head + body + "\nAnswer:"


class _MMLUSource:
    """The CSVs of one split, from a zip, a folder (any depth), or a single CSV."""

    def __init__(self, path: Path, split: str = "test"):
        self.path = path
        self.files: dict[str, str] = {}  # subject -> member / file path
        suffix = f"_{split}.csv"
        if path.is_file() and path.suffix.lower() == ".csv":
            stem = path.name[: -len(suffix)] if path.name.endswith(suffix) else path.stem
            self.files[stem] = str(path)
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

    def rows(self, subject: str) -> list[list[str]]:
        name = self.files[subject]
        if getattr(self, "zip", None) is not None:
            text = self.zip.read(name).decode("utf-8")
        else:
            text = Path(name).read_text(encoding="utf-8")
        return list(csv.reader(io.StringIO(text)))


def _mmlu_categories(path: Path) -> dict[str, str]:
    for cand in (path.parent / "mapping.json", path / "mapping.json"):
        if cand.is_file():
            try:
                return {k: v.get("category", "") for k, v in json.loads(cand.read_text()).items()}
            except (json.JSONDecodeError, AttributeError):
                return {}
    return {}


def _select_subjects(src: _MMLUSource, subject: str | None, categories: dict[str, str]) -> list[str]:
    subjects = sorted(src.files)
    if not subject:
        return subjects
    chosen: list[str] = []
    for want in (s.strip().lower().replace(" ", "_") for s in subject.split(",") if s.strip()):
        if want in src.files:
            chosen.append(want)
            continue
        in_cat = [s for s in subjects if categories.get(s, "").lower().replace(" ", "_") == want]
        if not in_cat:
            cats = sorted({c for c in categories.values() if c})
            raise DataError(
                f"{src.path}: unknown MMLU subject {want!r}; subjects: {', '.join(subjects[:5])}, ... "
                f"({len(subjects)} in all){'; categories: ' + ', '.join(cats) if cats else ''}"
            )
        chosen += in_cat
    return list(dict.fromkeys(chosen))


def _read_mmlu(path: Path, subject: str | None, limit: int | None) -> tuple[list[MCItem], str]:
    src = _MMLUSource(path)
    subjects = _select_subjects(src, subject, _mmlu_categories(path))
    items: list[MCItem] = []
    for subj in subjects:
        for rowno, row in enumerate(src.rows(subj), start=1):
            where = f"{path}: {src.files[subj]} row {rowno}"
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
                )
            )
            if limit is not None and len(items) >= limit:
                return items, f"{path} [{subject or 'all'}]"
    return items, f"{path} [{subject or 'all'}]"

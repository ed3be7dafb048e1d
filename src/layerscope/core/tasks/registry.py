"""Known task names, their lm-eval prompts and files, and :func:`load_task` (a name or a file -> :class:`Task`).

The shared JSONL files carry lightly different prompts from lm-eval's; the adapters below
rebuild lm-eval's ``doc_to_text`` so a known name means "what lm-eval would score".
"""

from __future__ import annotations

import difflib
import json
import numbers
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from layerscope.core.data.decoding import logical_name, logical_suffix
from layerscope.core.data.in_memory import InMemoryRecords, in_memory_records
from layerscope.core.data.sources import saved_dataset
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks.hellaswag import read_hellaswag
from layerscope.core.tasks.mmlu import read_mmlu, subject_names
from layerscope.core.tasks.partial import kind_under_fields, partial_shape, read_partial, read_winogrande
from layerscope.core.tasks.reading import read_json_records, read_mc
from layerscope.core.tasks.types import Task, task_fingerprint


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
    file: str  # under the eval data folder
    kind: str  # "mc_jsonl" | "hellaswag" | "mmlu" (files may also sniff as "partial" | "winogrande")
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
    # this file is <repo>/src/layerscope/core/tasks/registry.py: parents[5] is the folder holding the repository
    roots.append(Path(__file__).resolve().parents[5] / "shared" / "data" / "eval")
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


def _known_key(spec: str, subject: str | None) -> tuple[str, str | None]:
    """(the known-task key ``spec`` would name, the MMLU subject it names): ``ARC_E`` -> arc_easy,
    ``mmlu:anatomy`` / ``mmlu_anatomy`` -> mmlu and anatomy. A key not in KNOWN names a file.

    A known name wins over a file or folder of that name in the current folder (an output folder called
    ``piqa`` must not replace the task); ``./piqa`` names the file."""
    key = spec.lower()
    head, colon, sub = key.partition(":")
    if colon and ALIASES.get(head, head) in KNOWN and ALIASES.get(head, head) != "mmlu":
        # the hub's arc_easy:validation: a known task is one shared file, and only MMLU has parts to pick
        raise ConfigError(
            f"{spec}: a known task takes no :SPLIT ({ALIASES.get(head, head)} is one shared file, read whole); "
            "only mmlu:SUBJECT picks a part of a task"
        )
    if colon and head == "mmlu":
        key, subject = head, _one_subject(spec, sub, subject)
    key = ALIASES.get(key, key)
    if key.startswith("mmlu_") and key[5:] and not _names_a_file(spec):  # mmlu_anatomy; mmlu_mine.jsonl is a file
        key, subject = "mmlu", _one_subject(spec, key[5:], subject)
    return key, subject


def _one_subject(spec: str, named: str, subject: str | None) -> str | None:
    """The subjects of ``spec`` (``named``: those it names, as ``mmlu:anatomy`` does; empty: none) and of a
    ``subject`` given beside it: the one given, or the task's where both name the same subjects (so the run is
    the run of the task alone). Two different ones are refused: either would replace the other without a word."""
    if not named or not subject:
        return subject or named
    if subject_names(named) != subject_names(subject):
        plural = "," in named.strip(",")
        raise ConfigError(
            f"--task {spec} names its subject{'s' if plural else ''}; --subject {subject} would replace "
            f"{'them' if plural else 'it'}: give one"
        )
    return named


def names_known_task(spec: str) -> bool:
    """Whether ``spec`` names a known task (read from the shared files by its own fields), not a file."""
    return _known_key(str(spec), None)[0] in KNOWN


def split_task_list(names: list[str]) -> list[str]:
    """A comma-separated list of tasks (``finetune --eval-tasks``), already split at every comma, with MMLU's own comma
    lists joined again: ``mmlu:anatomy,virology,piqa`` is ``mmlu:anatomy,virology`` and ``piqa``. A name after an
    MMLU item with a subject (``mmlu:X`` / ``mmlu_X``) that is no known task and names no file is one more
    subject or category of it (an unknown one is then refused by the MMLU reader, with the subjects it has)."""
    tasks: list[str] = []
    for name in names:
        key, subject = _known_key(tasks[-1], None) if tasks else ("", None)
        if key == "mmlu" and subject and _bare_word(name):
            tasks[-1] = f"{tasks[-1]},{name}"
        else:
            tasks.append(name)
    return tasks


def _bare_word(name: str) -> bool:
    """A name that is neither a known task, nor a file, nor a ``loss:`` / ``mmlu:`` spec: an MMLU subject."""
    return ":" not in name and not _names_a_file(name) and _known_key(name, None)[0] not in KNOWN


def load_task(
    spec: str | list, limit: int | None = None, fields: dict | None = None, subject: str | None = None
) -> Task:
    """Load a known task name or a file as a :class:`Task` (first ``limit`` items).

    ``spec`` may also be the items themselves: a list of dicts (or a ``datasets.Dataset``) of any record
    kind a JSON task file holds, read and checked as that file's records, each named ``record N`` in errors.

    ``fields`` maps ``query``/``choices``/``gold`` to other field names of an MC JSONL
    (dotted paths reach into objects, e.g. ``"choices.text"``), or ``contexts``/``continuation``/
    ``gold`` of a partial-scoring file. ``subject`` picks MMLU
    subjects: a subject (``anatomy``), a category (``STEM``), or a comma-separated list; default all.
    For MMLU the limit counts items overall, in subject order, not per subject.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit <= 0):
        raise ConfigError(f"limit must be a positive number of items, got {limit!r}")
    memory = in_memory_records(
        spec, "a task is a known task name, a file name, a list of items (dicts) or a datasets.Dataset"
    )
    if memory is not None:
        kind = _record_kind(memory, memory.records[0], fields)
        return _load_path(memory, "in-memory", kind, _same, None, fields, subject, limit)
    spec = str(spec)
    if not spec.strip():  # Path("") is the current folder: an unset variable must not read whatever is there
        raise DataError("no task given (an empty name); give a task name or a file path")
    key, subject = _known_key(spec, subject)
    if key in KNOWN:
        if fields:  # its file is read by its own field names: a mapping meant for another file would break it
            raise ConfigError(f"fields rename a custom file's fields; {spec} is a known task, read as it is: drop them")
        _note_shadowed(spec)
        known = KNOWN[key]
        path = _find_known_file(key, known.file)
        return _load_path(path, key, known.kind, known.prompt, known.metric, fields, subject, limit, shipped=True)
    path = Path(spec).expanduser()
    if not path.exists():
        if _names_a_file(spec):
            raise DataError(f"{spec}: evaluation file not found")
        raise DataError(
            f"unknown task {spec!r}{_did_you_mean(spec)}; known tasks: {', '.join(known_tasks())} (or give a file path)"
        )
    kind = _sniff_kind(path, fields)
    if fields and kind == "mmlu":  # read by column position: a mapping would be dropped without a word
        what = "an MMLU CSV" if path.is_file() and logical_suffix(path) == ".csv" else "MMLU CSVs"
        raise ConfigError(
            f"fields rename a JSON task file's fields; {path} is {what} (question, four choices, answer letter), "
            "read by their columns: drop them"
        )
    stem = Path(logical_name(path)).stem  # mmlu_test.csv.gz: mmlu_test
    task = _load_path(path, stem, kind, _same, None, fields, subject, limit)
    if kind == "mc_jsonl":
        _note_verbatim(spec, path, task)
    return task


def _did_you_mean(spec: str) -> str:
    """``; did you mean arc_easy?`` for a misspelt task name (``arc_esay``), aliases leading to their task;
    empty where no known name is close."""
    names = {**{k: k for k in KNOWN}, **ALIASES}
    close = difflib.get_close_matches(spec.lower(), names, n=3, cutoff=0.7)
    close = list(dict.fromkeys(names[c] for c in close))  # arc_e and arc_easy: one task
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _names_a_file(spec: str) -> bool:
    """Whether ``spec`` is a file (there or not): it has a folder or a suffix, which no task name or MMLU
    subject (``mmlu_anatomy``) has. A bare name is a task even where a file of that name exists."""
    return os.sep in spec or "/" in spec or spec.startswith("~") or bool(Path(spec).suffix)


_told: set[Path] = set()  # custom MC files already named in a note (a command loads its task twice)
_told_shadowed: set[str] = set()  # known names said to be read over a file of that name, once each


def _note_shadowed(spec: str) -> None:
    """A known name read while a file or folder of that name sits in the current folder: the task is read,
    and the note says how to read the file instead, so neither reading is a surprise."""
    here = Path(spec)
    if spec in _told_shadowed or not here.exists():
        return
    _told_shadowed.add(spec)
    what = "folder" if here.is_dir() else "file"
    print(
        f"note: {spec} is a known task, read from the shared eval files, not the {what} ./{spec} here "
        f"(give ./{spec} to read the {what})",
        file=sys.stderr,
    )


# lm-eval's prompt per known multiple-choice task, as a note shows it (openbook_qa's is the file's query)
_PROMPT_SHAPES = {
    "arc_easy": "Question: ...\\nAnswer:",
    "arc_challenge": "Question: ...\\nAnswer:",
    "piqa": "Question: ...\\nAnswer:",
    "boolq": "PASSAGE\\nQuestion: ...?\\nAnswer:",
}


def _note_verbatim(spec: str, path: Path, task: Task) -> None:
    """Say, once per file, that a custom multiple-choice file which is, or copies items of, a known task's file
    is scored as written (``query + " " + choice``, headline acc), while the known name rebuilds lm-eval's prompt
    from its shipped file (and reports its metric): the same items score differently by name and by path, and
    the note says how to score them with the name's prompt. A file of other items gets none: there is no name
    to compare with, and a run that works keeps stderr clear (a refusal, one line); docs/data.md says how any
    file is scored."""
    resolved = path.resolve()
    if resolved in _told:
        return
    _told.add(resolved)
    copied = _copied_task(resolved, task.items[:3])
    if copied is None:
        return
    written = 'scored as written (query + " " + choice; headline acc, acc_norm reported too)'
    name, known, shipped, rebuilt = copied
    if shipped:
        holds, how = f"is the file --task {name} reads", f"give --task {name} for those"
    else:
        holds = f"holds items of {name} (from its file, {known.file})"
        how = (
            f"give --task {name} (--limit N: its first N items), or for other items save this file as {known.file} "
            "in a folder and set LAYERSCOPE_DATA to that folder"
        )
    prompt = f'lm-eval\'s prompt ("{_PROMPT_SHAPES.get(name, "...")}")' if rebuilt else "the same prompt"
    print(
        f"note: {spec} {holds}; as a file its items are {written}, by name with {prompt} and metric "
        f"({known.metric}), as published results are: {how}",
        file=sys.stderr,
    )


def _copied_task(resolved: Path, items: list) -> tuple[str, _Known, bool, bool] | None:
    """(known task, its entry, whether ``resolved`` is its very file, whether its prompt differs from the query)
    for a file that is, or holds one of ``items`` (its first few) of, a known multiple-choice task's file; None
    otherwise. An item is looked for by its query as JSON text, enough for a note."""
    for name, known in KNOWN.items():
        if known.kind != "mc_jsonl":
            continue
        try:
            own = _find_known_file(name, known.file)
            shipped = own.resolve() == resolved
            text = "" if shipped else own.read_text(encoding="utf-8", errors="replace")
        except (DataError, OSError):
            continue  # that task's files are not here
        found = items[:1] if shipped else [it for it in items if _quoted_in(it.context, text)][:1]
        if found:
            return name, known, shipped, known.prompt(found[0].context) != found[0].context
    return None


def _quoted_in(query: str, text: str) -> bool:
    """Whether ``query`` is a JSON string of ``text`` (written with or without escapes for non-ASCII)."""
    return any(json.dumps(query, ensure_ascii=ascii_only) in text for ascii_only in (True, False))


TASK_FILES = (
    "a known task name, a JSONL / JSON file of {query, choices, gold} items (optionally .gz), "
    "partial-scoring items ({contexts, continuation, gold} or WinoGrande's), "
    "a HellaSwag JSONL, or MMLU CSVs (zip, folder or one CSV)"
)


def _sniff_kind(path: Path, fields: dict | None) -> str:
    if path.is_dir():
        return _folder_kind(path)
    if logical_suffix(path) in (".zip", ".csv"):  # .csv.gz too
        return "mmlu"
    first = next(read_json_records(path, limit=1), None)
    if first is None:  # nothing, or a JSON list with nothing in it (as the SFT reader words it)
        empty = not path.read_bytes().strip()
        raise DataError(f"{path}: empty file (no items)" if empty else f"{path}: holds no items (e.g. an empty list)")
    return _record_kind(path, first[1], fields)


def _record_kind(path: Path | InMemoryRecords, rec, fields: dict | None) -> str:
    """The kind of task items whose first record is ``rec``: HellaSwag's, partial scoring's, or multiple choice."""
    if fields:
        return kind_under_fields(path, fields, rec)
    if isinstance(rec, dict) and {"endings", "ctx_a", "ctx_b"} <= set(rec):
        return "hellaswag"
    shape = partial_shape(rec)
    if shape is not None:
        return shape
    _refuse_sft_records(path, rec)
    return "mc_jsonl"


def _folder_kind(path: Path) -> str:
    """A folder is MMLU when it holds CSVs; anything else is named for what it is."""
    if any(path.rglob("*.csv")):
        return "mmlu"
    if (path / "config.json").is_file():
        raise DataError(f"{path}: a model folder, not a task; give it as --model")
    if saved_dataset(path):
        raise DataError(f"{path}: a datasets save_to_disk folder; write its items as JSON Lines (Dataset.to_json)")
    # a folder is a task only as MMLU's CSVs: JSON items in it are files to give one by one
    items = sorted(
        p.name for p in path.iterdir() if p.is_file() and logical_suffix(p) in (".jsonl", ".json", ".ndjson")
    )
    looked_for = "a folder is read as MMLU CSVs (SUBJECT_test.csv) and this one holds no .csv"
    if items:
        raise DataError(
            f"{path}: a folder with no task files: {looked_for}; give one of its files as the task "
            f"(e.g. {path / items[0]})"
        )
    raise DataError(f"{path}: a folder with no task files: {looked_for}; --task takes {TASK_FILES}")


def _refuse_sft_records(path: Path, rec) -> None:
    """SFT data given where multiple-choice items are expected: point to where it belongs."""
    if not isinstance(rec, dict) or {"choices", "endings", "options"} & set(rec):
        return
    from layerscope.core.data.formats import detect_format

    try:
        fmt = detect_format(rec, str(path))
    except DataError:
        return  # not SFT either: the MC reader names the missing field
    raise DataError(
        f"{path}: SFT records ({fmt} format), not multiple-choice items; give SFT data as --data "
        "(eval, similarity, ila, finetune) or as --task loss:FILE (eval, ablate, shapley, prune, prune-curve)"
    )


def _load_path(
    path: Path | InMemoryRecords,
    name: str,
    kind: str,
    prompt: Callable[[str], str],
    metric: str | None,
    fields: dict | None,
    subject: str | None,
    limit: int | None,
    shipped: bool = False,  # the file of a known task: a published set as lm-eval scores it
) -> Task:
    if subject is not None and kind != "mmlu":
        raise ConfigError(f"--subject only applies to MMLU, not {path}")
    if kind == "mmlu":
        items, source = read_mmlu(path, subject, limit)
        metric = metric or "acc"
        if subject:
            name = f"mmlu:{subject}"
    elif kind == "hellaswag":
        items, source = read_hellaswag(path, limit, shipped), str(path)
        metric = metric or "acc_norm"
    elif kind in ("partial", "winogrande"):  # lm-eval's winogrande reports acc only
        items = read_winogrande(path, limit) if kind == "winogrande" else read_partial(path, fields, limit)
        source, metric = str(path), metric or "acc"
    else:
        items, source = read_mc(path, fields, prompt, limit, shipped), str(path)
        metric = metric or "acc"
    if not items:
        raise DataError(f"{source}: no items")
    chance = sum(1.0 / it.n_options for it in items) / len(items)
    # a custom multiple-choice file reports acc_norm beside its headline acc, as lm-eval's multiple_choice does
    # where a task lists no metrics; a known task reports what lm-eval's config for it lists (boolq: acc only)
    also = ("acc_norm",) if kind == "mc_jsonl" and not shipped and metric != "acc_norm" else ()
    task = Task(name=name, items=items, chance=chance, metric=metric, source=source, fingerprint="", also_reported=also)
    task.fingerprint = task_fingerprint(task)
    return task

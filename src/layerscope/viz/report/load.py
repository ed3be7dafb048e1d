"""Read what a report shows: importance results, fine-tuning reports and pruning curves.

Each path is a result file, a run folder (``importance.json`` / ``report.json`` /
``pruning.json`` inside) or a folder holding several runs (searched below, two levels deep).
A ``prune-curve`` output met there (``OUT/<task>/curves.json``) brings its curves, the
``OUT/<task>/<label>/pruning.json`` files it lists, even where they lie a level deeper than the search
(``report runs`` with ``prune-curve --out runs/curves``); a ``curves.json`` named on the command line
does the same.
A file is recognised by its keys, never by its name alone; a file passed by name that is
none of the three is refused, while unrecognised files met during a folder search (adapter
configs, comparison.json) are skipped.

A pruning curve is the JSON object ``{"kind": "pruning-curve", "model": {...}, "baseline":
{"full": v, "chance": c}, "points": [{"n_removed": n, "value": v, "removed": [players]}, ...]}``
(``ranking``: the method whose order was followed, optional).
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.core.errors import ConfigError, DataError, error_line
from layerscope.core.importance import SCHEMA_VERSION, SEARCH_DEPTH, LayerImportance, data_label
from layerscope.pruning.save import NOTE as PRUNING_NOTE

RUN_FILES = ("importance.json", "report.json", "pruning.json")
FINETUNE_KEYS = ("selection", "trainable_params", "heldout_loss", "model")


@dataclass
class FinetuneRun:
    label: str
    source: str
    report: dict[str, Any]  # a FinetuneReport as saved (report.json)

    @property
    def model(self) -> dict[str, Any]:
        return self.report.get("model") or {}


@dataclass
class PruningCurve:
    label: str
    source: str
    model: dict[str, Any]
    n_removed: list[int]
    values: list[float]
    baseline: dict[str, float] = field(default_factory=dict)
    ranking: str = ""  # the method whose order was pruned in
    removed: list[list[str]] = field(default_factory=list)
    granularity: str = ""  # what was removed: block, sublayer, ... ("" when the file does not say)
    measured_on: str = ""  # the task or data the values are of (``data_label``; "" when the file does not say)
    data: dict[str, Any] = field(default_factory=dict)  # the file's ``data`` record (task, source, metric, ...)

    @property
    def metric(self) -> str:
        """What the values measure (``acc_norm``, ``-loss``); "" when the file does not say."""
        metric = self.data.get("metric")
        return str(metric) if metric else ("-loss" if self.data.get("task") == "loss" else "")

    @property
    def unit(self) -> str:
        """What the x axis counts: "blocks", "sublayers", ... or "players" when unknown."""
        return f"{self.granularity}s" if self.granularity else "players"


@dataclass
class Inputs:
    """Everything read, labelled (labels are unique: each run's path below the folder all the runs share,
    ``relative_labels``)."""

    results: list[tuple[str, str, LayerImportance]] = field(default_factory=list)  # (label, source, result)
    finetunes: list[FinetuneRun] = field(default_factory=list)
    prunings: list[PruningCurve] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<file>: <why>" for each unreadable run left out


# Why report has nothing to draw from what `layerscope prune` writes (a model, and its note: PRUNING_NOTE)
PRUNED_MODEL = (
    "a pruned model (layerscope prune), not a result report draws; report reads the pruning curves of "
    "layerscope prune-curve (its --out folder), and the ranking the pruning followed"
)


def load_inputs(paths: str | os.PathLike | list[str | os.PathLike]) -> Inputs:
    """Read every path (one path, or a list of them; see the module docstring); one-line DataError for
    anything unreadable."""
    paths = _path_list(paths)
    if not paths:
        raise DataError("report needs at least one result file or run folder")
    found: list[tuple[Path, Any]] = []
    skipped: list[str] = []
    deeper: dict[Path, list[Path]] = {}  # folder -> run files below its search depth
    for p in map(Path, paths):
        if p.is_dir():
            before = len(skipped)
            files, deeper[p] = _search(p, skipped)
            if not files and len(skipped) > before:
                raise DataError(f"{p}: no result in this folder can be read: {skipped[before]}")
            if not files and (p / PRUNING_NOTE).is_file():
                raise DataError(f"{p}: {PRUNED_MODEL}")
            if not files:
                raise DataError(f"{p}: no importance, fine-tuning or pruning result in this folder")
            for why in skipped[before:]:
                warnings.warn(f"skipped {why}", stacklevel=2)
            found += [(f, kind_and_data) for f, kind_and_data in files]
        elif p.is_file():
            kind, data = _read(p)
            if kind is None and p.name == PRUNING_NOTE:
                raise DataError(f"{p}: {PRUNED_MODEL}")
            if kind is None:
                raise DataError(f"{p}: not an importance result, fine-tuning report or pruning curve")
            if kind == "curves":  # prune-curve's summary, named: its curves, each of which must read
                found += _listed_curves(p, data, None)
            else:
                found.append((p, (kind, data)))
        else:
            raise DataError(f"{p}: no such file or folder")
    _note_deeper(deeper, [Path(p) for p in paths], {f.resolve() for f, _ in found})
    inputs = _build(found)
    inputs.skipped = skipped
    return inputs


def _path_list(paths) -> list[str | os.PathLike]:
    """``paths`` as a list: one path is one run (iterating a string would read its characters)."""
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    if isinstance(paths, (bytes, Mapping)) or not isinstance(paths, Iterable):
        raise ConfigError(f"paths must be a path or a list of paths (got a {type(paths).__name__})")
    paths = list(paths)
    bad = next((p for p in paths if not isinstance(p, (str, os.PathLike))), None)
    if bad is not None:
        raise ConfigError(f"paths must be a path or a list of paths (got a {type(bad).__name__} among them)")
    return paths


def _search(folder: Path, skipped: list[str]) -> tuple[list[tuple[Path, tuple[str, Any]]], list[Path]]:
    """Recognised JSON files at most SEARCH_DEPTH folders below ``folder``, in name order, and the run
    files lying deeper (not read). A run file below the folder's own that cannot be read is left out and
    its reason appended to ``skipped``."""
    out = []
    summaries = []  # prune-curve's curves.json met: (file, data)
    for depth in range(SEARCH_DEPTH + 1):
        for f in sorted(folder.glob("/".join(["*"] * depth + ["*.json"]))):
            if not f.is_file() or f.name.startswith("."):
                continue
            strict = f.name in RUN_FILES  # a run file that cannot be read is an error, not noise
            try:
                kind, data = _read(f, strict=strict)
            except DataError as e:
                if depth == 0:  # the folder's own run: named by the caller
                    raise
                skipped.append(error_line(e))  # one damaged run below should not hide the others
                continue
            if kind == "curves":
                summaries.append((f, data))
            elif kind is not None:
                out.append((f, (kind, data)))
    read = {f.resolve() for f, _ in out}
    for f, data in summaries:  # its curves, where the search did not reach them (a level deeper)
        out += [(c, kd) for c, kd in _listed_curves(f, data, skipped) if c.resolve() not in read]
    read = {f.resolve() for f, _ in out}
    deeper = [f for name in RUN_FILES for f in folder.glob("/".join(["*"] * (SEARCH_DEPTH + 1) + [name]))]
    return out, sorted(f for f in deeper if f.resolve() not in read)


def _listed_curves(
    summary: Path, data: dict[str, Any], skipped: list[str] | None
) -> list[tuple[Path, tuple[str, Any]]]:
    """The curves a prune-curve summary (``OUT/<task>/curves.json``) lists, read from their own files beside
    it (``OUT/<task>/<label>/pruning.json``, as ``pruning.curve.write_curves`` writes them): only those, so no
    other file lying that deep is picked up. One that cannot be read (or is gone) is appended to ``skipped``;
    with ``skipped`` None (the summary was named) it is an error."""
    out = []
    for c in data.get("curves") or []:
        label = c.get("label") if isinstance(c, dict) else None
        if not isinstance(label, str) or not label or Path(label).name != label or label in (".", ".."):
            continue  # not a folder name this summary's run wrote
        f = summary.parent / label / "pruning.json"
        try:
            if not f.is_file():
                raise DataError(f"{f}: missing ({summary} lists the curve {label!r})")
            kind, curve = _read(f)
            if kind != "pruning":
                raise DataError(f"{f}: not a pruning curve ({summary} lists it)")
        except DataError as e:
            if skipped is None:
                raise
            skipped.append(error_line(e))
            continue
        out.append((f, (kind, curve)))
    return sorted(out, key=lambda fc: fc[0])  # in name order, as a folder search finds them


NAMED_FOLDERS = 3  # folders named in the note on files lying too deep; the rest are counted


def _note_deeper(deeper: dict[Path, list[Path]], given: list[Path], read: set[Path]) -> None:
    """Say which run files lie below a folder's search depth (e.g. OUT/<task>/<label>/pruning.json of a
    prune-curve run whose curves.json is gone, under a parent folder): not skipped silently. A file another
    given path reaches (its folder passed too), or that was read (``read``: resolved paths; a prune-curve
    summary's curves), is not named."""
    for folder, files in deeper.items():
        unread = [f for f in files if f.resolve() not in read and not any(_reaches(g, f) for g in given)]
        if not unread:
            continue
        folders = list(dict.fromkeys(str(f.parent.parent) for f in unread))
        named = ", ".join(folders[:NAMED_FOLDERS])
        if len(folders) > NAMED_FOLDERS:
            named += f" and {len(folders) - NAMED_FOLDERS} more"
        one = len(unread) == 1
        lie, are, their = ("file lies", "is", "its") if one else ("files lie", "are", "their")
        print(
            f"note: {len(unread)} result {lie} deeper than {SEARCH_DEPTH} folders below {folder} and {are} not "
            f"read (e.g. {unread[0]}); pass {their} {'folder' if len(folders) == 1 else 'folders'} ({named}) too",
            file=sys.stderr,
        )


def _reaches(path: Path, file: Path) -> bool:
    """Whether reading ``path`` (a file, or a folder searched SEARCH_DEPTH folders down) reads ``file``."""
    path, file = path.resolve(), file.resolve()
    if path == file:
        return True
    try:
        below = file.relative_to(path)
    except ValueError:
        return False
    return path.is_dir() and len(below.parts) - 1 <= SEARCH_DEPTH


def _read(path: Path, strict: bool = True) -> tuple[str | None, Any]:
    """("importance" | "finetune" | "pruning" | "curves", parsed) or (None, None) when the JSON is something
    else. "curves" is prune-curve's summary (curves.json), whose curves are read from their own files."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not text.strip():
        if strict:
            raise DataError(f"{path}: empty file")
        return None, None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        if strict:
            raise DataError(f"{path}: invalid JSON ({e})") from None
        return None, None
    if not isinstance(d, dict):
        return None, None
    if "players" in d and "scores" in d or "schema_version" in d and "method" in d and "granularity" in d:
        version = d.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise DataError(
                f"{path}: schema_version {version} is newer than this layerscope reads ({SCHEMA_VERSION}); "
                "upgrade layerscope"
            )
        return "importance", LayerImportance.from_dict(d, str(path))
    if d.get("kind") == "pruning-curve":
        return "pruning", _pruning(path, d)
    if d.get("kind") == "pruning-curves" and isinstance(d.get("curves"), list):
        return "curves", d  # prune-curve's summary: its curves are read from their own files (_listed_curves)
    if all(k in d for k in FINETUNE_KEYS):
        return "finetune", d
    return None, None


def _pruning(path: Path, d: dict[str, Any]) -> dict[str, Any]:
    points = d.get("points")
    if not isinstance(points, list) or not points:
        raise DataError(f"{path}: pruning curve has no points")
    try:
        n = [int(p["n_removed"]) for p in points]
        v = [float(p["value"]) for p in points]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: every pruning point needs a whole n_removed and a numeric value") from None
    if not all(math.isfinite(x) for x in v):
        raise DataError(f"{path}: pruning curve has a non-finite value")
    if not isinstance(d.get("model"), dict):
        raise DataError(f"{path}: pruning curve names no model")
    return {**d, "n_removed": n, "values": v}


def relative_labels(paths: list[Path]) -> list[str]:
    """One rule for every input's label: its run (the folder of a run file, else the file without its
    suffix) as a path relative to the folder all the runs share, ``runs/ila``, ``sim/angular_distance``,
    ``curves/arc_easy/greedy``; a run alone is its folder's (or file's) name. Mixing the bare folder name
    of some runs with ``folder/name`` for others (where two names clashed) read as two naming schemes."""
    runs = [Path(os.path.abspath(p.parent if p.name in RUN_FILES else p.with_suffix(""))) for p in paths]
    if not runs:
        return []
    root = Path(os.path.commonpath([r.parent for r in runs]))
    return [r.relative_to(root).as_posix() for r in runs]


def _build(found: list[tuple[Path, tuple[str, Any]]]) -> Inputs:
    seen: set[Path] = set()
    unique = []
    for path, kd in found:
        if path.resolve() not in seen:  # a folder and a file inside it both given
            seen.add(path.resolve())
            unique.append((path, kd))
    labels = _unique_labels(relative_labels([p for p, _ in unique]))
    out = Inputs()
    for label, (path, (kind, data)) in zip(labels, unique):
        if kind == "importance":
            out.results.append((label, str(path), data))
        elif kind == "finetune":
            out.finetunes.append(FinetuneRun(label, str(path), data))
        else:
            out.prunings.append(
                PruningCurve(
                    label=label,
                    source=str(path),
                    model=data["model"],
                    n_removed=data["n_removed"],
                    values=data["values"],
                    baseline={k: float(v) for k, v in (data.get("baseline") or {}).items() if is_number(v)},
                    ranking=_ranking_name(data.get("ranking")),
                    removed=[list(p.get("removed") or []) for p in data["points"]],
                    granularity=data["granularity"] if isinstance(data.get("granularity"), str) else "",
                    measured_on=data_label(data["data"]) if isinstance(data.get("data"), dict) else "",
                    data=dict(data["data"]) if isinstance(data.get("data"), dict) else {},
                )
            )
    return out


def _ranking_name(ranking: Any) -> str:
    """The method a pruning curve followed: ``{"method": ...}`` or a plain name."""
    if isinstance(ranking, dict):
        return str(ranking.get("method", ""))
    return str(ranking or "")


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what a result's numeric fields must hold to be shown."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number_or_none(v: Any) -> float | None:
    return float(v) if is_number(v) else None


def _unique_labels(labels: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    out = []
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab}#{counts[lab]}")
    return out


def curve_full(curve: PruningCurve) -> float | None:
    """The full model's value: the curve's baseline, else its point with nothing removed."""
    full = number_or_none(curve.baseline.get("full"))
    if full is None:
        full = next((v for n, v in zip(curve.n_removed, curve.values) if n == 0), None)
    return full

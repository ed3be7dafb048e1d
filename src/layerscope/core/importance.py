"""``LayerImportance``: the one result type every importance method writes and every
comparison, plot and fine-tuning selection reads.

Saved as versioned JSON (``schema_version``). Two results are comparable only when their
model fingerprints and granularities agree; ``core.levels.to_level`` brings a finer result to a
coarser granularity first. ``model["name"]`` is the model's own name, never a path.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.core import atomic
from layerscope.core.data.decoding import json_kind
from layerscope.core.errors import ConfigError, DataError, error_line
from layerscope.core.layermap import GRANULARITIES, Player, records_from_names
from layerscope.core.player_names import split_name, with_article
from layerscope.core.ties import levelled, tie_groups

SCHEMA_VERSION = 1


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("layerscope", "torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class LayerImportance:
    method: str  # "ila", "ablation", "shapley-proximity", "block-influence", ...
    granularity: str  # block | sublayer | module | expert
    players: list[str]  # stable names, forward order
    scores: list[float]  # higher = more important
    model: dict[str, Any]  # name, architecture, n_blocks, fingerprint
    data: dict[str, Any] = field(default_factory=dict)  # path/id, n_items, hash, task
    method_config: dict[str, Any] = field(default_factory=dict)
    stderr: list[float] | None = None
    n_evaluations: int | None = None
    baseline: dict[str, float] = field(default_factory=dict)  # full-model value, chance
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in ("scores", "stderr"):  # numpy arrays and tensors, as computed in a notebook: plain lists
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) and callable(getattr(value, "tolist", None)):
                setattr(self, name, value.tolist())
        self.validate()

    def __repr__(self) -> str:
        """One line a notebook can show: what ranked which model, and its top players (the dataclass's
        own repr lists every field, several KB)."""
        top = ", ".join(f"{p} {self.score_of()[p]:+.4g}" for p in self.ranking()[:3])
        more = ", ..." if len(self.players) > 3 else ""
        return (
            f"LayerImportance({self.method}, {self.granularity}, model {self.model.get('name')!r}, "
            f"{len(self.players)} players: {top}{more})"
        )

    # ---- validation --------------------------------------------------------------
    def validate(self) -> None:
        for name in ("model", "data", "method_config", "baseline", "timings", "extras"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a JSON object, got {json_kind(value)}")
        if not isinstance(self.players, list) or not all(isinstance(p, str) for p in self.players):
            raise ConfigError("players must be a list of names (strings)")
        if not isinstance(self.scores, (list, tuple)):
            raise ConfigError("scores must be a list of numbers")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity {self.granularity!r} is not one of {GRANULARITIES}")
        if len(self.players) != len(self.scores):
            raise ConfigError(f"{len(self.players)} players but {len(self.scores)} scores")
        if len(set(self.players)) != len(self.players):
            raise ConfigError("duplicate player names")
        if self.stderr is not None and (
            not isinstance(self.stderr, (list, tuple)) or any(v is not None and not _is_number(v) for v in self.stderr)
        ):
            raise ConfigError(f"stderr must be a list of numbers (or nulls), one per player, not {self.stderr!r:.60}")
        if self.stderr is not None and len(self.stderr) != len(self.scores):
            raise ConfigError(f"{len(self.scores)} scores but {len(self.stderr)} stderr values")
        if not self.players:
            raise ConfigError("an importance result needs at least one player")
        bad = next((i for i, v in enumerate(self.scores) if not _is_number(v)), None)
        if bad is not None:
            raise ConfigError(f"the score of {self.players[bad]!r} is not a number ({self.scores[bad]!r})")
        bad = next((i for i, v in enumerate(self.scores) if math.isinf(v)), None)
        if bad is not None:  # JSON cannot hold it: saved as null, it would come back NaN and rank last
            raise ConfigError(
                f"the score of {self.players[bad]!r} is {self.scores[bad]}; scores are finite (NaN: unknown)"
            )
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(f"method must be a name (a non-empty string), not {self.method!r}")
        _check_names_fit(self.players, self.granularity)

    # ---- queries -------------------------------------------------------------------
    def score_of(self) -> dict[str, float]:
        return dict(zip(self.players, self.scores))

    def ranking(self) -> list[str]:
        """Players from most to least important; ties (scores equal to 5 digits, :func:`tie_groups`)
        broken by forward order."""
        values = levelled(self.scores)
        order = sorted(range(len(self.players)), key=lambda i: (-values[i], i))
        return [self.players[i] for i in order]

    def top(self, fraction: float) -> list[str]:
        """The ceil(fraction * N) most important players."""
        k = top_k_count(fraction, len(self.players))
        return self.ranking()[:k]

    def bottom(self, fraction: float) -> list[str]:
        k = top_k_count(fraction, len(self.players))
        return self.ranking()[::-1][:k]

    def aggregate(self, key) -> dict[Any, float]:
        """Mean score per group, ``key(player) -> group`` (e.g. per block or per module type)."""
        groups: dict[str, list[float]] = {}
        for p, s in zip(self.players, self.scores):
            groups.setdefault(key(p), []).append(s)
        return {g: float(np.mean(v)) for g, v in groups.items()}

    def player_records(self) -> list[Player]:
        """The players as layer-map records (block, kind, ...), rebuilt from their names; same order."""
        return records_from_names(self.players, self.granularity)

    def tied_fraction(self) -> float:
        """Share of players whose score ties another player's (see :func:`tie_groups`): 1.0 when the
        ranking carries no order at all, e.g. an ILA run stopped after too few gate steps."""
        return sum(len(g) for g in tie_groups(self.scores)) / len(self.scores)

    def by_block(self) -> dict[int, float]:
        """Mean score per block, ascending block order."""
        block = {p.name: p.block for p in self.player_records()}
        return dict(sorted(self.aggregate(block.__getitem__).items()))

    # ---- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"schema_version": d.pop("schema_version"), **d}
        return jsonable(d)

    def save(self, path: str | Path) -> Path:
        self.validate()  # fields changed since construction (a score appended, a list made an array)
        path = Path(path)
        if path.suffix.lower() != ".json":  # "x.JSON" is a file too, not a folder to create
            path = path / "importance.json"
        atomic.write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> LayerImportance:
        if not isinstance(d, dict):
            raise DataError(f"{source}: not an importance result (expected a JSON object)")
        if "schema_version" not in d and (other := _other_result_kind(d)):
            raise DataError(f"{source}: {other}, not an importance result")
        if "schema_version" not in d and not {"method", "players", "scores"} & d.keys():
            raise DataError(
                f"{source}: not a layerscope importance result (no schema_version, method, players or scores)"
            )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"{source}: schema_version {version!r} not supported (expected {SCHEMA_VERSION})")
        missing = [k for k in ("method", "granularity", "players", "scores", "model") if k not in d]
        if missing:
            raise DataError(f"{source}: importance file lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        d = dict(d)
        if isinstance(d["scores"], list):  # a score that was NaN is saved as null (JSON has no NaN): NaN again
            d["scores"] = [math.nan if v is None else v for v in d["scores"]]
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except ConfigError as e:
            raise DataError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> LayerImportance:
        if not isinstance(path, (str, os.PathLike)):  # e.g. a result already loaded: pathlib names no argument
            raise ConfigError(f"LayerImportance.load takes a path (a file or a run folder), not {type(path).__name__}")
        path = Path(path)
        if path.is_dir() and not (path / "importance.json").exists():
            inside = sorted(d.name for d in path.iterdir() if (d / "importance.json").is_file())
            if len(inside) > 1:  # e.g. similarity's folder: one result per measure
                raise DataError(
                    f"{path}: holds {len(inside)} results ({', '.join(inside)}); pass one, e.g. {path / inside[0]}"
                )
            if inside:
                path = path / inside[0]
            else:  # another command's output folder: say which (its file is read below)
                path = next((path / n for n in OTHER_OUTPUTS if (path / n).is_file()), path)
        if path.is_dir():
            path = path / "importance.json"
        if not path.is_file():
            raise DataError(f"{path}: importance file not found")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: invalid JSON ({e})") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        return cls.from_dict(d, str(path))


OTHER_OUTPUTS = ("report.json", "curves.json", "pruning_note.json", "comparison.json")


def _other_result_kind(d: dict[str, Any]) -> str | None:
    """What another layerscope output is, for a message when one is passed as a ranking."""
    if d.get("kind") in ("pruning-curve", "pruning-curves"):
        return "pruning curves (layerscope prune-curve)"
    if d.get("kind") == "pruned-model" or "n_blocks_after" in d:
        return "a pruning note (layerscope prune)"
    if "trainable_modules" in d and "steps" in d:
        return "a fine-tuning report (layerscope finetune)"
    if "jaccard" in d and "spearman" in d:
        return "a comparison (layerscope compare)"
    if "peft_type" in d or "target_modules" in d:
        return "a peft adapter config (the adapter ila or finetune trained; the ranking is importance.json)"
    return None


# How far below a folder given to compare, plot and report results are looked for: a run folder's own
# result, a several-method run's subfolders (similarity, demo), and those of a folder of such runs.
SEARCH_DEPTH = 2


def result_paths(path: str | Path) -> list[Path]:
    """The importance results ``path`` holds: itself (a file, or a folder with an importance.json), and
    every importance.json up to ``SEARCH_DEPTH`` folders below it (a run of several methods, e.g.
    ``similarity``'s or ``demo``'s output, or a folder of runs), shallower first, then in name order.
    A folder with none is refused."""
    path = Path(path)
    if not path.is_dir():
        return [path]  # a missing file is reported by LayerImportance.load
    found = [path] if (path / "importance.json").is_file() else []
    for depth in range(1, SEARCH_DEPTH + 1):
        found += sorted(f for f in path.glob("/".join(["*"] * depth + ["importance.json"])) if f.is_file())
    if not found:
        raise DataError(
            f"{path}: no importance results (no importance.json in it or up to {SEARCH_DEPTH} folders below)"
        )
    return found


@dataclass
class FoundResults:
    """The results some paths hold, loaded (``load_found``)."""

    files: list[Path] = field(default_factory=list)
    results: list[LayerImportance] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<file>: <why>" for each unreadable result left out


def load_found(paths: list[str | Path]) -> FoundResults:
    """Every result ``paths`` hold (``result_paths``), loaded. A result the caller named (a file, or a
    run folder's own importance.json) must load. One found *below* a given folder that cannot be read
    (a damaged file, a newer schema) is left out with a warning and listed in ``skipped``, since one
    bad run should not hide a folder of good ones. A folder none of whose results can be read is
    refused."""
    found = FoundResults()
    for path in map(Path, paths):
        errors = []
        files = result_paths(path)
        for f in files:
            try:
                result = LayerImportance.load(f)
            except DataError as e:
                if not path.is_dir() or f == path:  # named, or the folder's own importance.json
                    raise
                errors.append(error_line(e))
                continue
            found.files.append(f)
            found.results.append(result)
        if len(errors) == len(files) == 1:
            raise DataError(errors[0])
        if len(errors) == len(files):
            raise DataError(f"{path}: none of its {len(files)} results can be read: {errors[0]} (and others)")
        for why in errors:
            warnings.warn(f"skipped {why}", stacklevel=2)
        found.skipped += errors
    return found


def top_k_count(fraction: float, n: int) -> int:
    # numbers.Real: a NumPy float32 is a fraction too (it is no Python float, unlike float64)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ConfigError(f"fraction {fraction!r} must be in (0, 1]")
    return max(1, math.ceil(fraction * n - 1e-9))


def cpu_threads() -> int:
    """torch's CPU threads now; recorded with a result's timings, which depend on it (``--threads``)."""
    import torch

    return torch.get_num_threads()


def recorded_model_name(model, name: str | None = None) -> str:
    """The name a result records for ``model``: ``name`` when given, else the name it was loaded under
    (``config.name_or_path``), else its class; never a path (``core.models.model_name``)."""
    from layerscope.core.models import model_name

    if name is not None and not isinstance(name, (str, os.PathLike)):  # e.g. the LoadedModel, not its .name
        raise ConfigError(f"model_name must be a name (a string), not {type(name).__name__}")
    if not name or name == "model":  # "model": the methods' old placeholder default
        name = getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
    return model_name(str(name))


def model_info(model, layer_map, name: str | None = None) -> dict[str, Any]:
    """The model block of a result: its own name (never a path: see ``core.models.model_name``;
    without ``name``, the name the model was loaded under), its weights fingerprint, and where it
    ran (device and dtype; accelerate's device map when the model was dispatched)."""
    from layerscope.core.devices import placement_record
    from layerscope.core.models import FINGERPRINT_PRECISION, weights_fingerprint

    return {
        "name": recorded_model_name(model, name),
        "architecture": layer_map.architecture,
        "model_type": layer_map.model_type,
        "n_blocks": layer_map.n_blocks,
        "fingerprint": weights_fingerprint(model),
        "fingerprint_precision": FINGERPRINT_PRECISION,
        **placement_record(model),
    }


def data_label(data: dict) -> str:
    """What a result was measured on, for titles and reports: the task, or ``loss:<file>`` for a held-out
    loss (its ``task`` is "loss" alone, and two loss runs on other files would read the same)."""
    task, source = data.get("task"), data.get("source")
    if task == "loss" and source:
        return f"loss:{source}"
    return str(task or source or data.get("path") or data.get("id") or "")


def _check_names_fit(players: list[str], granularity: str) -> None:
    """A block player is named ``<prefix>.<i>``; sub-layer, module and expert players go below a block.
    A name of another level (``layers.1.mlp`` as a block) would be read as its block by plots,
    compare and pruning: refused here, once."""
    for name in players:
        parsed = split_name(name)
        if parsed is None:
            raise ConfigError(f"player {name!r} names no block (expected '<prefix>.<i>...', e.g. 'layers.3')")
        if (granularity == "block") != (parsed[2] == ""):
            level = "a block" if parsed[2] == "" else "below a block"
            raise ConfigError(f"player {name!r} names {level}, not {with_article(granularity)} player")


def _is_number(v: Any) -> bool:
    """A real number, not a bool (JSON's true would otherwise pass as 1)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def jsonable(x):
    """``x`` as strict JSON holds it: numpy numbers as Python ones, NaN and infinities as null."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x

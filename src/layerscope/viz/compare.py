"""Compare importance results of one model: Jaccard overlap of top-K sets and Spearman rank
correlation, pairwise, at one fraction and over a sweep of fractions.

Results of different granularities are first aggregated to one level (``core.levels.to_level``;
by default the coarsest of the inputs), so e.g. a module-level ILA ranking, a sub-layer ablation
and a block-level ShortGPT ranking compare block by block.

Two random top-K sets of N players already overlap: the expected Jaccard of two uniformly
random K-subsets is printed beside every overlap (``random_jaccard``) so that e.g. "0.5" can
be read against chance (about 0.18 for K = 30% of N).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from layerscope.core import atomic
from layerscope.core.agreement import check_comparable, models_differ, scored_count, spearman, top_jaccard
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, jsonable, load_found, top_k_count
from layerscope.core.levels import coarsest, to_level
from layerscope.core.ties import short_window_note, tie_warning

SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Comparison:
    labels: list[str]
    sources: list[str]
    methods: list[str]
    n_players: int
    fraction: float
    k: int
    jaccard: list[list[float]]
    spearman: list[list[float]]
    sweep: dict[str, list[list[float]]]  # fraction -> Jaccard matrix
    sweep_mean: dict[str, float]  # fraction -> mean off-diagonal Jaccard
    random_jaccard: dict[str, float]  # fraction -> expected Jaccard of random top-K sets
    level: str = ""  # the granularity compared at
    granularities: list[str] | None = None  # each input's own granularity (aggregated to ``level``)
    notes: list[str] = field(default_factory=list)  # orders that ties or windows, not scores, set (``tie_notes``)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))  # a Spearman over < 2 finite pairs is NaN: null, as strict JSON has it

    def pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(len(self.labels)), 2))

    def format_text(self) -> str:
        f = _fkey(self.fraction)
        w = max(8, *(len(x) for x in self.labels))
        lines = [
            f"{len(self.labels)} results, {self.n_players} players; top {self.fraction:.0%} = {self.k} players "
            f"(random sets would give Jaccard ~{self.random_jaccard[f]:.2f})",
        ]
        moved = [f"{lab} ({g})" for lab, g in zip(self.labels, self.granularities or []) if g != self.level]
        if moved:
            lines.append(f"compared at {self.level} level; aggregated by mean score: {', '.join(moved)}")
        lines += [
            "",
            f"Jaccard of top-{self.fraction:.0%} sets:",
        ]
        lines += _table(self.labels, self.jaccard, w)
        lines += ["", "Spearman rank correlation:"]
        lines += _table(self.labels, self.spearman, w)
        lines += ["", "pair" + " " * (2 * w + 1) + "".join(f"  J@{k:<5}" for k in self.sweep) + "  spearman"]
        for i, j in self.pairs():
            row = f"{self.labels[i]:<{w}} {self.labels[j]:<{w}}    "
            row += "".join(f"  {self.sweep[k][i][j]:<7.2f}" for k in self.sweep)
            lines.append(row + f"  {self.spearman[i][j]:.2f}")
        lines.append(f"{'mean':<{2 * w + 1}}    " + "".join(f"  {self.sweep_mean[k]:<7.2f}" for k in self.sweep))
        lines.append(f"{'random':<{2 * w + 1}}    " + "".join(f"  {self.random_jaccard[k]:<7.2f}" for k in self.sweep))
        return "\n".join(lines)


def _fkey(x: float) -> str:
    return f"{x:g}"


def _table(labels: list[str], m: list[list[float]], w: int) -> list[str]:
    """Rows "label [i]", columns headed [i]: unambiguous however long the labels are."""
    out = [" " * (w + 5) + "".join(f" {f'[{i + 1}]':>6}" for i in range(len(labels)))]
    for i, (lab, row) in enumerate(zip(labels, m)):
        out.append(f"{lab:<{w}} {f'[{i + 1}]':>4}" + "".join(f" {v:6.2f}" for v in row))
    return out


def expected_random_jaccard(k: int, n: int) -> float:
    """E[|A∩B| / |A∪B|] for two independent uniformly random k-subsets of n items (hypergeometric)."""
    if k >= n:
        return 1.0
    total = 0.0
    denom = math.comb(n, k)
    for i in range(max(0, 2 * k - n), k + 1):
        p = math.comb(k, i) * math.comb(n - k, k - i) / denom
        total += p * i / (2 * k - i)
    return total


def result_label(path: str | Path, qualified: bool = False) -> str:
    """The result's folder name (its file stem for a file not named importance.json); ``qualified``:
    prefixed with the folder holding it ("run/ila")."""
    p = Path(path)
    if p.is_dir() or p.name == "importance.json":
        p = (p if p.is_dir() else p.parent).resolve()
        label = p.name
    else:
        p = p.resolve()
        label = p.stem
    return f"{p.parent.name}/{label}" if qualified else label


def load_results(paths: list[str | Path]) -> tuple[list[str], list[LayerImportance]]:
    """Load result files, run folders, or folders holding several results (one subfolder each; an
    unreadable one below a folder is skipped with a warning: ``core.importance.load_found``); labels
    are folder names (or file stems), made unique with the parent folder's name, then a number."""
    found = load_found(paths)
    return result_labels(found.files), found.results


def common_level(
    results: list[LayerImportance], labels: list[str], level: str | None = None
) -> tuple[str, list[LayerImportance]]:
    """``results`` aggregated to ``level`` (default: the coarsest of their granularities)."""
    level = level or coarsest(r.granularity for r in results)
    out = []
    for lab, r in zip(labels, results):
        try:
            out.append(to_level(r, level))
        except ConfigError as e:
            raise ConfigError(f"{lab}: {e}") from None
    return level, out


def _as_results(
    given: list[LayerImportance | str | os.PathLike], labels: list[str] | None, sources: list[str] | None
) -> tuple[list[LayerImportance], list[str] | None, list[str] | None]:
    """``given`` as results: a path (an importance.json or its run folder) is loaded with
    ``LayerImportance.load``. Without ``labels``, a loaded one is labelled as ``layerscope compare``
    labels it (its folder name) and its source is its path; a result object is ``r1``, ``r2``, ..."""
    if isinstance(given, (str, os.PathLike, LayerImportance)):  # one result, not a list: len() would mislead
        raise ConfigError("compare: results= must be a list of at least two results or paths")
    results, paths = [], []
    for i, r in enumerate(given):
        if isinstance(r, (str, os.PathLike)):
            results.append(LayerImportance.load(r))
            paths.append(Path(r))
        elif isinstance(r, LayerImportance):
            results.append(r)
            paths.append(None)
        else:
            raise ConfigError(
                f"compare: result {i + 1} is a {type(r).__name__}; pass LayerImportance objects or paths to "
                "importance.json files / result folders"
            )
    if labels is None and any(p is not None for p in paths):
        labels = result_labels(paths)
        if sources is None:
            sources = [str(p) if p is not None else lab for p, lab in zip(paths, labels)]
    return results, labels, sources


def result_labels(paths: list[Path | None]) -> list[str]:
    """Folder names (file stems) for loaded results, ``r<i>`` for objects (None); made unique with the
    parent folder's name, then a number."""
    labels = [f"r{i + 1}" if p is None else result_label(p) for i, p in enumerate(paths)]
    if len(set(labels)) < len(labels):
        labels = [f"r{i + 1}" if p is None else result_label(p, qualified=True) for i, p in enumerate(paths)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab}#{i + 1}" for i, lab in enumerate(labels)]
    return labels


def compare(
    results: list[LayerImportance | str | os.PathLike],
    labels: list[str] | None = None,
    fraction: float = 0.3,
    sweep: tuple[float, ...] = SWEEP,
    sources: list[str] | None = None,
    level: str | None = None,
    ignore_fingerprint: bool = False,
) -> Comparison:
    """Pairwise top-K Jaccard (at ``fraction`` and over ``sweep``) and Spearman of the scores, at
    ``level`` (default: the coarsest granularity among ``results``; see ``common_level``).
    ``results``: ``LayerImportance`` objects or paths to them (files or run folders, loaded). Results of
    models with other weights are refused; ``ignore_fingerprint``: compare them (one model in two dtypes)."""
    results, labels, sources = _as_results(results, labels, sources)
    if ignore_fingerprint:  # compared as one model's: the fingerprints are set aside, not the results
        results = [replace(r, model={**r.model, "fingerprint": None}) for r in results]
    if len(results) < 2:
        raise ConfigError(f"compare needs at least two results, got {len(results)}")
    labels = [f"r{i + 1}" for i in range(len(results))] if labels is None else list(labels)
    for name, given in (("labels", labels), ("sources", sources)):
        if given is not None and len(given) != len(results):
            raise ConfigError(f"{name}: {len(given)} given for {len(results)} results (one per result)")
    granularities = [r.granularity for r in results]
    _check_same_model(results, labels)
    twins = same_result_notes(results, labels)
    level, results = common_level(results, labels, level)
    n = len(results[0].players)
    k = top_k_count(fraction, n)
    for f in sweep:
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 < f <= 1:
            raise ConfigError(f"sweep: fraction {f!r} must be in (0, 1]")
    for i in range(1, len(results)):
        try:
            check_comparable(results[0], results[i])
        except ConfigError as e:
            raise ConfigError(f"cannot compare {labels[0]} with {labels[i]}: {e}") from None
    fractions = sorted(set(sweep) | {fraction})

    def matrix(fn) -> list[list[float]]:
        m = np.ones((len(results), len(results)))
        for i, j in itertools.combinations(range(len(results)), 2):
            m[i, j] = m[j, i] = fn(results[i], results[j])
        return [[float(v) for v in row] for row in m]

    sweep_m = {_fkey(f): matrix(lambda a, b, f=f: top_jaccard(a, b, f)) for f in fractions}
    pairs = list(itertools.combinations(range(len(results)), 2))
    return Comparison(
        labels=list(labels),
        sources=list(sources or labels),
        methods=[r.method for r in results],
        n_players=n,
        fraction=fraction,
        k=k,
        jaccard=sweep_m[_fkey(fraction)],
        spearman=matrix(spearman),
        sweep=sweep_m,
        sweep_mean={f: _mean_of_known([m[i][j] for i, j in pairs]) for f, m in sweep_m.items()},
        random_jaccard={_fkey(f): expected_random_jaccard(top_k_count(f, n), n) for f in fractions},
        level=level,
        granularities=granularities,
        notes=twins + tie_notes(results, labels, fraction),
    )


def _mean_of_known(values: list[float]) -> float:
    """The mean over the pairs that have a Jaccard (a result with unscored players has none): NaN if none."""
    known = [v for v in values if math.isfinite(v)]
    return float(np.mean(known)) if known else math.nan


def same_result_notes(results: list[LayerImportance], labels: list[str]) -> list[str]:
    """One line per result given twice (one file under two names, a folder and its importance.json): its
    perfect agreement with itself would read as two methods agreeing."""
    notes, seen = [], {}
    for label, r in zip(labels, results):
        key = (r.method, r.granularity, tuple(r.players), tuple(map(repr, r.scores)), r.created)
        if key in seen:
            notes.append(f"{label} is the same result as {seen[key]} (given twice?): their agreement says nothing")
        else:
            seen[key] = label
    return notes


def tie_notes(results: list[LayerImportance], labels: list[str], fraction: float) -> list[str]:
    """One line per result whose top-``fraction`` set was cut inside a group of tied scores (layer order
    chose which of them count as top, and every Jaccard with that result moves with that choice), and per
    angular distance whose last blocks were scored over shorter windows (``core.ties.short_window_note``),
    after a line per result with players that have no score."""
    notes = []
    for label, r in zip(labels, results):
        unknown = len(r.players) - scored_count(r)
        if unknown:  # NaN ranks last; a top set that needs them has no Jaccard (NaN), and Spearman skips them
            notes.append(
                f"{label}: {unknown} of its {len(r.players)} players have no score (NaN): they rank last, a top set "
                "that would need them gets no Jaccard (nan), and Spearman leaves them out"
            )
            if unknown == len(r.players):
                continue  # no ties or windows to speak of
        warning = tie_warning(r, r.top(fraction))
        if warning:
            notes.append(f"{label}: top {fraction:.0%}: {warning}")
        short = short_window_note(r)
        if short:
            notes.append(f"{label}: {short}")
    return notes


def _check_same_model(results: list[LayerImportance], labels: list[str]) -> None:
    """Refuse results of different models before aggregating (that message beats any level error)."""
    for lab, r in zip(labels[1:], results[1:]):
        differ = models_differ(results[0].model, r.model)
        if differ:
            raise ConfigError(f"cannot compare {labels[0]} with {lab}: results are from different models ({differ})")


def write_comparison(comp: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """comparison.json, jaccard.png (matrix at the main fraction) and sweep.png (Jaccard vs K)."""
    from layerscope.viz.heatmap import plot_lines, plot_matrix

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "comparison.json", "jaccard": out / "jaccard.png", "sweep": out / "sweep.png"}
    atomic.write_json(paths["json"], comp.to_dict())
    plot_matrix(
        comp.labels,
        comp.jaccard,
        paths["jaccard"],
        title=f"Jaccard of top-{comp.fraction:.0%} sets ({comp.k} of {comp.n_players} {comp.level or 'player'}s)",
    )
    xs = [float(f) for f in comp.sweep]
    series: dict[str, list[float]] = {}
    if len(comp.pairs()) <= 10:
        for i, j in comp.pairs():
            series[f"{comp.labels[i]} vs {comp.labels[j]}"] = [comp.sweep[f][i][j] for f in comp.sweep]
    else:
        series["mean over pairs"] = [comp.sweep_mean[f] for f in comp.sweep]
    series["random sets"] = [comp.random_jaccard[f] for f in comp.sweep]
    plot_lines(
        xs,
        series,
        paths["sweep"],
        title="top-K overlap vs K",
        xlabel="K (fraction of players)",
        ylabel="Jaccard",
        dashed={"random sets"},
    )
    return paths

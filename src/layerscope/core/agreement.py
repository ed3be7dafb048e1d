"""How far two rankings of the same model agree: the overlap of their top sets (Jaccard) and the
correlation of their scores (Spearman), refused for results that do not score the same players."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from layerscope.core.errors import ConfigError
from layerscope.core.ties import tie_groups

if TYPE_CHECKING:
    from layerscope.core.importance import LayerImportance


def same_model_hint(record: dict, flag: str, loaded: bool = False) -> str:
    """What to say when a fingerprint differs though the model may be the same. A result an older layerscope
    wrote holds the exact weights' fingerprint (no ``fingerprint_precision``), which another dtype changes and
    which only a model ``loaded`` in the dtype it was made in matches; since, only float16 changes it."""
    if record.get("fingerprint_precision"):
        return f"the same model in float16? pass {flag}"
    dtype = record.get("dtype")
    if loaded and dtype:
        how = f"load the model with --dtype {dtype}, or " if flag.startswith("--") else f"load it in {dtype}, or "
        return f"a ranking an older layerscope wrote in {dtype}? {how}pass {flag}"
    return f"the same model in another dtype? pass {flag}"


def models_differ(a: dict, b: dict, flag: str = "--ignore-fingerprint") -> str | None:
    """How two results' model records differ in weights (None: same fingerprint, or one unknown). The
    same name loaded in float16 hashes as other weights (float32 and bfloat16 loads hash alike): said so,
    with the option that accepts it (``flag``)."""
    fa, fb = a.get("fingerprint"), b.get("fingerprint")
    if not (fa and fb) or fa == fb:
        return None
    if a.get("fingerprint_precision") != b.get("fingerprint_precision"):
        # one written before fingerprints read the weights at bfloat16's precision: they cannot tell, the names may
        if a.get("name") == b.get("name"):
            return None
        return (
            f"{a.get('name')} vs {b.get('name')}: fingerprints of two kinds (one result is an older layerscope's) "
            f"cannot tell, and the names differ; the same model? pass {flag}"
        )
    text = f"{a.get('name')} {fa} vs {b.get('name')} {fb}"
    if a.get("name") == b.get("name"):
        dtypes = f" ({a.get('dtype')} vs {b.get('dtype')})" if a.get("dtype") != b.get("dtype") else ""
        text += f": same name, other weights{dtypes}; {same_model_hint(a, flag)}"  # a and b: one kind
    return text


def check_comparable(a: LayerImportance, b: LayerImportance) -> None:
    """Raise unless a and b score the same players of the same model."""
    differ = models_differ(a.model, b.model, "ignore_fingerprint=True")
    if differ:
        raise ConfigError(f"results are from different models ({differ})")
    if a.granularity != b.granularity:
        raise ConfigError(f"results have different granularities ({a.granularity} vs {b.granularity})")
    if a.players != b.players:
        raise ConfigError(f"results score different players: {_player_difference(a, b)}")


def _player_difference(a: LayerImportance, b: LayerImportance) -> str:
    """What differs between two results' players, and the likely cause, for one error line."""
    in_a, in_b = set(a.players), set(b.players)
    only_a, only_b = [p for p in a.players if p not in in_b], [p for p in b.players if p not in in_a]
    if not only_a and not only_b:
        return "the same players in another order (a result written by hand?)"
    sides = [
        f"{len(only)} only in {which} (e.g. {only[0]})"
        for only, which in ((only_a, "the first"), (only_b, "the second"))
        if only
    ]
    froms = {(r.extras.get("aggregated_from") or {}).get("granularity") for r in (a, b)}
    cause = (
        "an expert-level result scores only the blocks that have experts (dense blocks of the model have none)"
        if "expert" in froms
        else "different models or layer maps"
    )
    return f"{', '.join(sides)}; {cause}"


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def top_jaccard(a: LayerImportance, b: LayerImportance, fraction: float = 0.3) -> float:
    """Jaccard of the two top-``fraction`` sets; NaN where a set would need players with no score
    (NaN ranks last: two all-unknown results would otherwise agree perfectly)."""
    check_comparable(a, b)
    if min(scored_count(a), scored_count(b)) < len(a.top(fraction)):
        return math.nan
    return jaccard(set(a.top(fraction)), set(b.top(fraction)))


def scored_count(imp: LayerImportance) -> int:
    """How many players have a score (NaN: unknown)."""
    return sum(1 for s in imp.scores if math.isfinite(s))


def spearman(a: LayerImportance, b: LayerImportance) -> float:
    from scipy.stats import spearmanr

    check_comparable(a, b)
    x, y = np.asarray(a.scores, dtype=float), np.asarray(b.scores, dtype=float)
    both = np.isfinite(x) & np.isfinite(y)  # a player without a score in either has no rank to compare
    if both.sum() < 3:  # two points are always +-1
        return math.nan
    # scores tied to within TIE_RTOL share one rank: -1/30 summed from 4 or from 5 terms differs in the last
    # bit, and scipy would rank those apart
    x, y = _ties_made_equal(x[both]), _ties_made_equal(y[both])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0  # constant scores: no order, so no relation (and no scipy ConstantInputWarning)
    return float(spearmanr(x, y).statistic)


def _ties_made_equal(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    for group in tie_groups(values.tolist()):
        out[group] = out[group].min()
    return out

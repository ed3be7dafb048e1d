"""Counters of a :class:`~layerscope.engine.coalitions.CoalitionEngine`: the work it did and saved,
and the memory it held (recorded in result files through ``describe()``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    evaluations: int = 0  # coalitions computed (memo misses)
    memo_hits: int = 0
    block_forwards: int = 0  # block calls run for coalitions (whole blocks or some of their sub-layers, per batch)
    stage_runs: int = 0  # stages those calls computed (engine/stages.py: blocks, or sub-layers where split)
    block_forwards_full: int = 0  # block calls plain full forwards would have needed for the same coalitions
    path_hits: int = 0  # batch forwards that started from a cached path (trie) state
    path_refused: int = 0  # path states not stored for lack of cache memory
    base_blocks_cached: int = 0  # per batch, how many block inputs of the full model are kept
    cache_bytes: int = 0  # hidden-state bytes held now (base + path states): bounded by cache_mb
    peak_cache_bytes: int = 0
    kwargs_bytes: int = 0  # block arguments (masks, position embeddings): always kept, not in the bound
    capture_seconds: float = 0.0
    resumed: int = 0  # values read back from a coalition log (an interrupted run's work)
    stacked_recomputed: int = 0  # stacked members' batches recomputed alone: their states did not fit cache_mb

    def work(self) -> dict[str, int]:
        """The counters of work done (:data:`WORK`), which processes sharing coalitions add up."""
        return {k: getattr(self, k) for k in WORK}

    def add_work(self, work: dict[str, int]) -> None:
        for k in WORK:
            setattr(self, k, getattr(self, k) + work.get(k, 0))

    def as_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in self.__dict__.items()}


# Work one process does alone when processes share a batch's coalitions (engine/sharding.py): summed over the
# processes at the batch's gather, so a result counts the whole run's work. The rest is the same in every
# process (memo_hits, resumed: every process looks up and reads the same values) or its own memory (cache
# bytes: each holds its own cache).
WORK = (
    "evaluations",
    "block_forwards",
    "stage_runs",
    "block_forwards_full",
    "path_hits",
    "path_refused",
    "stacked_recomputed",
)

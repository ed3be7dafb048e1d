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

    def as_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in self.__dict__.items()}

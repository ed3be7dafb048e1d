"""Scoring a model with players (layers) removed.

``removal.py`` defines what removing a player means (its outputs are zeroed, so the residual stream
passes through) and ``removed()`` is the reference; ``hooks.py`` holds every hook the package puts on
a model. ``CoalitionEngine`` (``coalitions.py``) evaluates many removals fast and checks itself against
the reference; its parts are ``stubs.py``, ``prefix_cache.py``, ``forward.py``, ``capture.py`` and
``stats.py``; ``coalition_log.py`` is what lets a run resume.
"""

from layerscope.engine.coalitions import DEFAULT_CACHE_MB, CoalitionEngine, EngineStats
from layerscope.engine.removal import (
    check_granularity,
    player_blocks,
    player_kinds,
    removal_targets,
    removed,
    resolve_players,
)

__all__ = [
    "DEFAULT_CACHE_MB",
    "CoalitionEngine",
    "EngineStats",
    "check_granularity",
    "player_blocks",
    "player_kinds",
    "removal_targets",
    "removed",
    "resolve_players",
]

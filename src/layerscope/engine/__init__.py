"""Scoring a model with players (layers) removed.

``removal.py`` defines what removing a player means (it contributes nothing: the residual stream
passes through) and ``removed()`` is the reference; ``removal_check.py`` refuses a model on which
that does not hold; ``hooks.py`` holds every hook the package puts on a model.
``CoalitionEngine`` (``coalitions.py``) evaluates many removals fast and checks itself against
the reference; its parts are ``stubs.py``, ``prefix_cache.py``, ``stages.py`` (the trie walk's
stages), ``forward.py``, ``capture.py`` and ``stats.py``; ``coalition_log.py`` is what lets a run resume.
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
from layerscope.engine.removal_check import check_removal

__all__ = [
    "DEFAULT_CACHE_MB",
    "CoalitionEngine",
    "EngineStats",
    "check_granularity",
    "check_removal",
    "player_blocks",
    "player_kinds",
    "removal_targets",
    "removed",
    "resolve_players",
]

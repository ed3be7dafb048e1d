"""Scoring a model with players (layers) removed.

``removal.py`` defines what removing a player means (it contributes nothing: the residual stream
passes through) and ``removed()`` is the reference; ``removal_check.py`` refuses a model on which
that does not hold; ``hooks.py`` holds every hook the package puts on a model.
``CoalitionEngine`` (``coalitions.py``) evaluates many removals fast and checks itself against
the reference; its parts are ``stubs.py``, ``prefix_cache.py``, ``stages.py`` (the trie walk's
stages), ``forward.py``, ``capture.py`` and ``stats.py``; ``coalition_log.py`` is what lets a run resume;
``sharding.py`` shares a batch of coalitions among processes under a launcher.
"""

from layerscope._lazy import lazy_attributes

# imported on first use: the CLI reads settings.DEFAULT_CACHE_MB for --help without loading torch
_PUBLIC: dict[str, str] = {
    "DEFAULT_CACHE_MB": "settings",
    "CoalitionEngine": "coalitions",
    "EngineStats": "coalitions",
    "check_granularity": "removal",
    "player_blocks": "removal",
    "player_kinds": "removal",
    "removal_targets": "removal",
    "removed": "removal",
    "resolve_players": "removal",
    "check_removal": "removal_check",
}

__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

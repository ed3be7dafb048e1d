"""Layer pruning: take the least important layers out of a model and save it as a plain HF model.

Rooms: ``blocks`` (a new model without some decoder blocks, config lists kept consistent, checked
against in-place removal), ``sublayers`` (attention / MLP sub-layers zeroed, layer count kept),
``rankings`` (which players to remove: least important of a ranking, Gromov et al.'s angular
window, greedy, last, random), ``choose`` (a method name or a saved ranking -> players, what the
CLI runs), ``save`` (the Hugging Face folder, written atomically), ``heal`` (a short fine-tuning
of the pruned model) and ``curve`` (value against the number of players removed, per order).
docs/pruning.md has the rules and measurements.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("prune", "pruned_config", "removed_blocks"), "blocks"),
    **dict.fromkeys(("prune_sublayers",), "sublayers"),
    **dict.fromkeys(("pruning_curve", "write_curves", "summary"), "curve"),
    **dict.fromkeys(("save_pruned",), "save"),
    **dict.fromkeys(("heal", "load_heal_data"), "heal"),
    **dict.fromkeys(
        ("least_important", "angular_window", "greedy_players", "last_players", "random_players"), "rankings"
    ),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:  # torch loads on first use, not on ``import layerscope.pruning``
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])

"""Layer pruning: take the least important layers out of a model and save it as a plain HF model.

Rooms: ``blocks`` (a new model without some decoder blocks, config lists kept consistent, checked
against in-place removal), ``sublayers`` (attention / MLP sub-layers zeroed, layer count kept),
``rankings`` (which players to remove: the least important of a ranking, at its level or as
blocks, Gromov et al.'s angular window, greedy, last, random), ``choose`` (a method name or a
saved ranking -> players, what the CLI runs: ``from_ranking``), ``save`` (the Hugging Face
folder, written atomically), ``heal`` (a short fine-tuning of the pruned model) and ``curve``
(value against the number of players removed, per order).
docs/pruning.md has the rules and measurements.
"""

from __future__ import annotations

from layerscope._lazy import lazy_attributes

_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("prune", "pruned_config", "removed_blocks"), "blocks"),
    **dict.fromkeys(("prune_sublayers",), "sublayers"),
    **dict.fromkeys(("pruning_curve", "write_curves", "summary"), "curve"),
    **dict.fromkeys(("save_pruned",), "save"),
    **dict.fromkeys(("heal", "load_heal_data"), "heal"),
    **dict.fromkeys(
        (
            "least_important",
            "least_important_blocks",
            "least_players",
            "angular_window",
            "greedy_players",
            "last_players",
            "random_players",
        ),
        "rankings",
    ),
    **dict.fromkeys(("from_ranking", "Choice"), "choose"),
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

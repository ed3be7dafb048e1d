"""Healing: a short fine-tuning of a pruned model on SFT data, to win back some of what it lost.

It is the package's own fine-tuning (``training.finetune``) on every linear module of the
pruned model, LoRA (merged into the weights before saving, so the folder is a plain model) or
full. The value reported before and after is the held-out loss on the healing data's held-out
split (lower is better); the data is loaded before anything is pruned, so bad data fails fast.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from layerscope.core.data import DEFAULT_MAX_LENGTH
from layerscope.core.errors import ConfigError, DataError


@dataclass
class HealResult:
    model: Any  # the healed model (LoRA merged: a plain model of the pruned model's class)
    loss_before: float | None  # held-out loss of the pruned model
    loss_after: float
    steps: int
    method: str
    data: dict[str, Any]
    frozen_sublayers: list[str] = field(default_factory=list)  # zeroed sub-layers left out of training

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "heldout_loss_before": self.loss_before,
            "heldout_loss_after": self.loss_after,
            "frozen_sublayers": self.frozen_sublayers,
            "data": self.data,
        }


def load_heal_data(
    data: str,
    tokenizer,
    seq_len: int = DEFAULT_MAX_LENGTH,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    context_length: int | None = None,
    append_eos: bool = True,
):
    """(train, held-out) SFT data for healing; a file that does not load raises DataError.
    ``context_length``: the model's; a ``seq_len`` past it is cut to it, with a note. ``append_eos``: text
    records end with the eos token (``load_sft``)."""
    from layerscope.training.inputs import load_train_heldout

    try:
        return load_train_heldout(
            data,
            tokenizer,
            seq_len,
            split_seed=seed,
            heldout_fraction=heldout_fraction,
            append_eos=append_eos,
            context_length=context_length,
        )
    except DataError as e:
        raise DataError(f"--heal {e}") from None


def heal(
    model,
    tokenizer,
    train,
    heldout,
    *,
    max_steps: int,
    method: str = "lora",
    lr: float | None = None,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = False,
    removed_sublayers: Iterable | None = None,
    freeze_zeroed: bool = True,
) -> HealResult:
    """Fine-tune every linear module of ``model`` for ``max_steps``; LoRA is merged afterwards.

    ``model`` itself is trained, in place, and returned (``HealResult.model is model``, LoRA merged
    into its weights): copy it first to keep the unhealed model.

    Pruned sub-layers (``prune_sublayers`` zeroed their output projections) are left out of training,
    so healing cannot bring them back (a merged LoRA update or a trained bias on a zeroed projection
    would). ``removed_sublayers`` names them as ``prune_sublayers`` takes them (sub-layer names or
    indices) or as it returns them (the zeroed parameter names); anything else is refused. With
    ``freeze_zeroed`` (the default) a sub-layer whose output projection's weight is all zero, as a
    pruned one's is, is frozen too, with a warning when it was not named: leaving ``removed_sublayers``
    out never revives a pruned sub-layer. ``freeze_zeroed=False`` trains such sub-layers (a model
    whose zero-initialised projections are meant to learn)."""
    from layerscope.core.layermap import build_layer_map
    from layerscope.pruning.sublayers import zeroed_sublayers
    from layerscope.training import FinetuneConfig, finetune, select_modules

    config = FinetuneConfig(
        method=method,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        out_dir=None,  # nothing written: the caller saves the healed model
        eval_limit=None,
        progress=progress,
    )
    layer_map = build_layer_map(model)
    named = _removed_indices(model, layer_map, removed_sublayers)
    found = zeroed_sublayers(model, layer_map) if freeze_zeroed else []
    unnamed = [layer_map.sublayers[i].name for i in found if i not in named]
    if unnamed:
        warnings.warn(
            f"heal: {', '.join(unnamed)} {'has' if len(unnamed) == 1 else 'have'} an all-zero output projection, "
            "as a pruned sub-layer has: kept frozen so that healing does not train it back",
            UserWarning,
            stacklevel=2,
        )
    frozen = sorted(set(named) | set(found))
    selection = select_modules(layer_map, None, "all")
    if frozen:
        gone = {lin for i in frozen for lin in layer_map.sublayers[i].linears}
        kept = [m for m in selection.modules if m not in gone]
        selection = replace(selection, modules=kept, players=kept, n_players=len(kept))
    report = finetune(model, tokenizer, train, heldout, selection, config)
    healed = report.trained_model
    if method == "lora":
        healed = healed.merge_and_unload()
    healed.eval()
    for p in healed.parameters():
        p.requires_grad_(False)
    return HealResult(
        model=healed,
        loss_before=report.heldout_loss_before,
        loss_after=report.heldout_loss,
        steps=report.steps,
        method=method,
        data={"train": _info(train), "heldout": _info(heldout)},
        frozen_sublayers=[layer_map.sublayers[i].name for i in frozen],
    )


def _removed_indices(model, layer_map, removed_sublayers: Iterable | None) -> list[int]:
    """Sub-layer indices from what ``prune_sublayers`` takes (indices, sub-layer names) or returns (the
    zeroed parameter names); an entry that is none of these is refused, never skipped (skipping it
    would train that sub-layer back)."""
    from layerscope.engine.removal import resolve_players

    if removed_sublayers is None:
        return []
    if isinstance(removed_sublayers, (str, int)):
        removed_sublayers = [removed_sublayers]
    if not isinstance(removed_sublayers, Iterable):
        raise ConfigError(
            f"removed_sublayers: a {type(removed_sublayers).__name__}; give a list of sub-layer names or indices"
        )
    names = layer_map.players("sublayer")  # the order of layer_map.sublayers, as prune_sublayers indexes them
    params = {
        f"{sub.output_path}.{pname}": i
        for i, sub in enumerate(layer_map.sublayers)
        for pname, _ in model.get_submodule(sub.output_path).named_parameters(recurse=False)
    }
    out: set[int] = set()
    for p in removed_sublayers:
        if isinstance(p, str) and p in params:
            out.add(params[p])
        elif isinstance(p, str) and p not in names:
            example = next(iter(params), "")
            raise ConfigError(
                f"removed_sublayers: {p!r} is neither a sub-layer of the model (e.g. {names[0]}) nor a parameter "
                f"prune_sublayers zeroes (e.g. {example})"
            )
        else:
            try:
                out.update(resolve_players([p], names))
            except ConfigError as e:
                raise ConfigError(f"removed_sublayers: {e}") from None
    return sorted(out)


def _info(data) -> dict[str, Any]:
    return {"source": str(data.source), "examples": len(data.examples), "fingerprint": data.fingerprint}

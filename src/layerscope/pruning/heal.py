"""Healing: a short fine-tuning of a pruned model on SFT data, to win back some of what it lost.

It is the package's own fine-tuning (``training.finetune``) on every linear module of the
pruned model, LoRA (merged into the weights before saving, so the folder is a plain model) or
full. The value reported before and after is the held-out loss on the healing data's held-out
split (lower is better); the data is loaded before anything is pruned, so bad data fails fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from layerscope.core.errors import DataError


@dataclass
class HealResult:
    model: Any  # the healed model (LoRA merged: a plain model of the pruned model's class)
    loss_before: float | None  # held-out loss of the pruned model
    loss_after: float
    steps: int
    method: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "heldout_loss_before": self.loss_before,
            "heldout_loss_after": self.loss_after,
            "data": self.data,
        }


def load_heal_data(data: str, tokenizer, seq_len: int = 512, heldout_fraction: float = 0.1, seed: int = 0):
    """(train, held-out) SFT data for healing; a file that does not load raises DataError."""
    from layerscope.training.inputs import load_train_heldout

    try:
        return load_train_heldout(data, tokenizer, seq_len, split_seed=seed, heldout_fraction=heldout_fraction)
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
    removed_sublayers: list[str] | None = None,
) -> HealResult:
    """Fine-tune every linear module of ``model`` for ``max_steps``; LoRA is merged afterwards.

    ``removed_sublayers`` (sub-layer pruning: their output projections are zeroed) are left out of
    training, so healing cannot bring them back (a merged LoRA update or a trained bias on a zeroed
    projection would)."""
    from layerscope.core.layermap import build_layer_map
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
    selection = select_modules(layer_map, None, "all")
    if removed_sublayers:
        gone = {lin for s in layer_map.sublayers if s.name in set(removed_sublayers) for lin in s.linears}
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
    )


def _info(data) -> dict[str, Any]:
    return {"source": str(data.source), "examples": len(data.examples), "fingerprint": data.fingerprint}

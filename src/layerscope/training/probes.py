"""Does the backward pass stop at the lowest trainable block? A check on the autograd graph.

Autograd only records operations on tensors that require grad. With the embeddings and all
lower blocks frozen, the hidden state entering the lowest block that holds a trainable module
does not require grad, so no graph is built below it and the backward pass stops there.
"""

from __future__ import annotations

from typing import Any

import torch

from layerscope.core.devices import input_device
from layerscope.core.layermap import LayerMap
from layerscope.engine.hooks import BlockCall, on_block_inputs
from layerscope.training.freezing import block_modules, trainable_blocks


def lowest_trainable_block(model: torch.nn.Module, layer_map: LayerMap) -> int | None:
    return min(trainable_blocks(model, layer_map), default=None)


def probe_grad_flow(model: torch.nn.Module, layer_map: LayerMap, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One forward in training mode: does the hidden state entering each block require grad?

    With nothing trainable below block L, the inputs of blocks 0..L must not require grad
    (autograd builds no graph there, so backward stops inside block L) and the inputs of the
    blocks above L must. ``truncated`` says whether that holds.
    """
    seen: dict[int, bool] = {}

    def record(i: int, call: BlockCall) -> None:
        if isinstance(call.hidden, torch.Tensor):
            seen[i] = bool(call.hidden.requires_grad)

    was_training = model.training
    model.train()
    try:
        device = input_device(model)
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with on_block_inputs(block_modules(model, layer_map), record), torch.enable_grad():
            model(**inputs)
    finally:
        model.train(was_training)
    lowest = lowest_trainable_block(model, layer_map)
    needs = [seen.get(i, False) for i in range(layer_map.n_blocks)]
    expected = [lowest is not None and i > lowest for i in range(layer_map.n_blocks)]
    return {
        "lowest_trainable_block": lowest,
        "input_requires_grad": needs,
        "blocks_in_backward": (layer_map.n_blocks - lowest) if lowest is not None else 0,
        "n_blocks": layer_map.n_blocks,
        "truncated": needs == expected,
    }

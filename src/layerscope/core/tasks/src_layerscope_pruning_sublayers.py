"""Sub-layer pruning: attention or MLP sub-layers taken out of blocks that stay.

A block cannot lose only its attention in a Hugging Face checkpoint (the block class builds
both), so the model keeps its layer count and a removed sub-layer is saved as a sub-layer that
adds nothing: its output projection's weight and bias (``SubLayer.output_path``: ``o_proj``,
``down_proj``, ``dense``, ``c_proj``, ``fc2``) are set to zero. For a sub-layer whose output is
that projection's output, that is exactly the removal rule of ``engine/removal.py`` (and on
BLOOM / MPT, whose modules add the residual themselves, it leaves the residual). Parameter count
and file size do not change; the saving is in what the model computes, not in what it stores.

Where zeroing the output projection is not the whole sub-layer (a mixture of experts whose
shared expert and routed experts both add to the output), the logits check refuses.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from layerscope.core.errors import ConfigError
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.engine.removal import resolve_players
from layerscope.engine.removal_check import ensure_removal_ok
from layerscope.pruning.blocks import check_equals_removal, check_torch_model


def prune_sublayers(
    model: nn.Module, sublayers: Iterable, layer_map: LayerMap | None = None, *, check: bool = True
) -> tuple[nn.Module, list[str]]:
    """(a copy of ``model`` with ``sublayers`` zeroed, the names of the zeroed parameters).

    ``sublayers``: indices into ``layer_map.players("sublayer")`` or sub-layer names. ``check``
    compares the copy's logits with the original's sub-layers removed in place.
    """
    check_torch_model(model)
    layer_map = layer_map or build_layer_map(model)
    names = layer_map.players("sublayer")
    idx = resolve_players(list(sublayers), names)
    if not idx:
        raise ConfigError("no sub-layer to remove")
    if len(idx) >= len(names):
        raise ConfigError(f"cannot remove all {len(names)} sub-layers: at least one must stay")
    ensure_removal_ok(model, layer_map)
    pruned = copy.deepcopy(model)
    zeroed = []
    for i in idx:
        path = layer_map.sublayers[i].output_path
        module = pruned.get_submodule(path)
        with torch.no_grad():
            for pname, param in module.named_parameters(recurse=False):
                param.zero_()
                zeroed.append(f"{path}.{pname}")
    if check:
        check_equals_removal(model, pruned, layer_map, idx, "sublayer")
    return pruned, zeroed

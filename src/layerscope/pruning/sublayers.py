"""Sub-layer pruning: attention or MLP sub-layers taken out of blocks that stay.

A block cannot lose only its attention in a Hugging Face checkpoint (the block class builds
both), so the model keeps its layer count and a removed sub-layer is saved as a sub-layer that
adds nothing: its output projection's weight and bias (``SubLayer.output_path``: ``o_proj``,
``down_proj``, ``dense``, ``c_proj``, ``fc2``) are set to zero. For a sub-layer whose output is
that projection's output, that is exactly the removal rule of ``engine/removal.py`` (and on
BLOOM / MPT, whose modules add the residual themselves, it leaves the residual). Parameter count
and file size do not change; the saving is in what the model computes, not in what it stores.

A sub-layer with no output projection of its own (a mixture of experts whose experts are fused
parameter tensors: the layer map's ``output_path`` is the whole MLP, its weights all in
sub-modules) is refused before anything is zeroed. Where zeroing the output projection is not the
whole sub-layer (a mixture of experts whose shared expert and routed experts both add to the
output), two checks refuse: every removed sub-layer of the pruned model must add exactly nothing
to the residual stream on a short random batch (what the removal rule means, in any dtype and
however little the sub-layer mattered), and its logits must equal the in-place removal's
(``blocks.check_equals_removal``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.core.models import check_torch_model, refuse_adapted_model
from layerscope.engine.hooks import contribution, on_outputs
from layerscope.engine.removal import resolve_players
from layerscope.engine.removal_check import ensure_removal_ok
from layerscope.pruning.blocks import check_equals_removal, check_ids


def prune_sublayers(
    model: nn.Module, sublayers: Iterable, layer_map: LayerMap | None = None, *, check: bool = True
) -> tuple[nn.Module, list[str]]:
    """(a copy of ``model`` with ``sublayers`` zeroed, the names of the zeroed parameters).

    ``sublayers``: indices into ``layer_map.players("sublayer")`` or sub-layer names. ``check``
    compares the copy's logits with the original's sub-layers removed in place.
    """
    check_torch_model(model)
    refuse_adapted_model(model)
    layer_map = layer_map or build_layer_map(model)
    names = layer_map.players("sublayer")
    idx = resolve_players(list(sublayers), names)
    if not idx:
        raise ConfigError("no sub-layer to remove")
    if len(idx) >= len(names):
        raise ConfigError(f"cannot remove all {len(names)} sub-layers: at least one must stay")
    ensure_removal_ok(model, layer_map)
    for i in idx:  # before the copy: a sub-layer whose removal cannot be saved is refused at once
        sub = layer_map.sublayers[i]
        if not list(model.get_submodule(sub.output_path).parameters(recurse=False)):
            raise ModelError(
                f"{type(model).__name__}: {sub.name} has no output projection of its own to zero "
                f"({sub.output_path} keeps its weights in sub-modules, e.g. a mixture of experts' fused "
                "experts); its removal cannot be saved as zero weights, so sub-layer pruning refuses it"
            )
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
        check_adds_nothing(pruned, layer_map, idx)
        check_equals_removal(model, pruned, layer_map, idx, "sublayer")
    return pruned, zeroed


def zeroed_sublayers(model: nn.Module, layer_map: LayerMap) -> list[int]:
    """Indices of the sub-layers that ``prune_sublayers`` has zeroed: their output projection's weight(s)
    (its own parameters other than the bias) are all exactly zero. A random or trained weight is never
    exactly zero, so this finds what was pruned even when the caller no longer says so."""
    out = []
    for i, sub in enumerate(layer_map.sublayers):
        own = model.get_submodule(sub.output_path).named_parameters(recurse=False)
        weights = [p for name, p in own if name != "bias"]
        # no weight of its own (fused experts) cannot have been zeroed; meta (offloaded) ones cannot be read
        if weights and all(not w.is_meta and not bool(w.any()) for w in weights):
            out.append(i)
    return out


def check_adds_nothing(pruned: nn.Module, layer_map: LayerMap, idx: list[int]) -> None:
    """Refuse when a removed sub-layer of ``pruned`` still adds anything to the residual stream: its
    modules' outputs (``SubLayer.hook_paths``; less the residual for BLOOM / MPT) must be exactly zero."""
    subs = {path: layer_map.sublayers[i] for i in idx for path in layer_map.sublayers[i].hook_paths}
    modules = {path: pruned.get_submodule(path) for path in subs}
    adds: dict[str, list[float]] = {}

    def record(path, args, kwargs, output):
        adds.setdefault(path, []).append(float(contribution(modules[path], args, kwargs, output).abs().max()))

    with torch.no_grad(), on_outputs(modules, record):
        pruned(input_ids=check_ids(pruned), use_cache=False)
    for path, sizes in adds.items():
        bad = [v for v in sizes if not v == 0]  # NaN included
        if bad:
            size, sub = max(bad) if all(v == v for v in bad) else float("nan"), subs[path]
            raise ModelError(
                f"{type(pruned).__name__}: with {sub.output_path} zeroed, {sub.name} still adds up to {size:.2e} "
                f"to the residual stream ({path}; e.g. a mixture of experts whose other experts add to the "
                "output): its removal cannot be saved as zero weights, so sub-layer pruning refuses it"
            )

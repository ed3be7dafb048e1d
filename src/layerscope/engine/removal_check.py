"""The removal check: a model on which removing a player does not leave the residual stream intact
is refused by name, before any number is computed.

``removal.py`` defines removal on the residual stream: with players removed, a block's output is
its input plus the contributions of the players it still keeps. Zeroing a module's output gives
that only when the block adds the module's output to its input, which is an assumption about the
architecture; a post-norm block (``LN(h + attn(h))``, OPT with ``do_layer_norm_before=False``) or a
module that adds the residual under a name ``removal.py`` does not know would give a removal that
silently wipes or rescales the hidden state. So every model is checked, on a short batch:

for every block with input ``h``, and every removal pattern (each sub-layer alone, then the whole
block), the block runs on ``h`` with the pattern removed, recording what each kept sub-layer adds
(its output; less the residual for a residual-adding module). Then it runs on another input ``h2``
(``h`` with its positions reversed) with the same pattern removed and every kept sub-layer forced
to add exactly what it added before. If the block output is "input + kept contributions", both
runs add the same thing: ``y(h) - h == y(h2) - h2``. With the whole block removed, also
``y(h) == h``. Differences are relative to the largest value of ``h``, ``y(h)`` and ``y(h2)``;
the tolerance allows a few rounding steps of the model's dtype (the coarser of the hidden states' and
the dtype it computes in: a quantised model's).

:func:`ensure_removal_ok` runs the check once per model and layer map (the engine and
``removal.removed`` call it); :func:`check_removal` always runs it. Both first check that the layer map
is the model's (:func:`check_layer_map_fits`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn

from layerscope.core.devices import input_device
from layerscope.core.errors import ConfigError, ModelError, error_line
from layerscope.core.layermap import LayerMap
from layerscope.core.quantization import compute_dtype
from layerscope.engine.hooks import (
    BlockCall,
    contribution,
    forced_contributions,
    on_block_inputs,
    on_outputs,
    removed_outputs,
    run_stopped,
    stop_after,
)

CHECK_SHAPE = (2, 12)  # rows x tokens of the synthetic batch: short, but long enough for a sliding window

_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> layer-map keys that passed


def ensure_removal_ok(model: nn.Module, layer_map: LayerMap) -> None:
    """:func:`check_removal`, run once per model and layer map (a model that passed is remembered)."""
    key = (
        layer_map.blocks_path,
        layer_map.n_blocks,
        tuple(p for s in layer_map.sublayers for p in s.hook_paths),
        tuple(m.path for m in layer_map.linears),
    )
    if key in _checked.get(model, ()):
        # the map's paths were found in this model when it passed; blocks can still be deleted in place,
        # and counting them is all a call per coalition (uncached mode) can afford on a deep model
        _check_block_count(model, layer_map)
        return
    check_removal(model, layer_map)  # checks first that every path of the map is in the model
    _checked.setdefault(model, set()).add(key)


def check_removal(model: nn.Module, layer_map: LayerMap, inputs: dict | None = None) -> dict[str, float]:
    """Raise :class:`ModelError` unless removing each sub-layer, and each whole block, leaves every
    block's output equal to its input plus the kept contributions (see the module doc).

    ``inputs``: keyword arguments of a model forward (default: a short synthetic batch). Returns
    the largest relative difference per removal pattern kind ("attn", "mlp", "block").
    """
    check_layer_map_fits(model, layer_map)
    inputs = inputs if inputs is not None else synthetic_inputs(model)
    blocks = model.get_submodule(layer_map.blocks_path)
    worst: dict[str, float] = {}
    # a 4-bit model's sub-layers compute in bnb_4bit_compute_dtype and cast back: its hidden states are
    # float32 but its contributions round like bfloat16 (core/quantization.py: compute_dtype)
    compute = compute_dtype(model)
    compute_tolerance = tolerance_for(compute) if compute is not None else 0.0
    with torch.no_grad(), _eval_mode(model):
        calls = _block_calls(model, blocks, inputs)
        for d, call in enumerate(calls):
            subs = [
                (s.name, s.kind, model.get_submodule(p))
                for s in layer_map.sublayers
                if s.block == d
                for p in s.hook_paths
            ]
            singles = [([n], k) for n, k in dict.fromkeys((n, k) for n, k, _ in subs)] if len(subs) > 1 else []
            call.replay(blocks[d], call.hidden)  # nothing removed: an error here is not removal's, raised as it is
            for names, kind in [*singles, ([n for n, _, _ in subs], "block")]:
                player = layer_map.block_name(d) if kind == "block" else names[0]
                try:
                    diff = _pattern_difference(blocks[d], call, subs, set(names), whole=kind == "block")
                except (AttributeError, TypeError, IndexError, ValueError) as e:
                    # the block cannot run with a sub-layer stubbed out (Reformer's attention returns an
                    # output object that a removed module's stand-in is not): no removal to measure
                    raise ModelError(
                        f"{layer_map.architecture}: removing {player} breaks the block's forward "
                        f"({error_line(e, with_type=True)}); this model is not supported"
                    ) from e
                worst[kind] = max(worst.get(kind, 0.0), diff)
                if not diff <= max(tolerance_for(call.hidden.dtype), compute_tolerance):
                    what = "its input" if kind == "block" else "input + kept contributions"
                    outside = _linears_outside_sublayers(blocks[d], layer_map, d)
                    hint = f"; the block computes with linears outside its sub-layers: {outside}" if outside else ""
                    raise ModelError(
                        f"{layer_map.architecture}: removing {player} does not leave the residual stream intact "
                        f"(block output differs from {what} by {diff:.2e}, relative{hint}); layer scores would be "
                        "wrong, so this model is refused (see docs/architectures.md)"
                    )
    return worst


def check_layer_map_fits(model: nn.Module, layer_map: LayerMap) -> None:
    """Refuse, in one line, a layer map that is not ``model``'s: one built from another model (``ablate(model,
    ev, layer_map=...)``) would otherwise fail deep in a hook as an AttributeError naming a module index, or,
    with fewer blocks than the model, be misread as a model whose removal breaks the residual stream."""
    _check_block_count(model, layer_map)
    paths = [p for s in layer_map.sublayers for p in s.hook_paths] + [m.path for m in layer_map.linears]
    missing = next((p for p in paths if _submodule(model, p) is None), None)
    if missing is not None:
        raise _misfit(model, layer_map, f"the model has no module {missing!r}")


def _check_block_count(model: nn.Module, layer_map: LayerMap) -> None:
    blocks = _submodule(model, layer_map.blocks_path)
    if not isinstance(blocks, nn.ModuleList):
        raise _misfit(model, layer_map, f"the model has no block list at {layer_map.blocks_path!r}")
    if len(blocks) != layer_map.n_blocks:
        raise _misfit(model, layer_map, f"the model has {len(blocks)} blocks there")


def _misfit(model: nn.Module, layer_map: LayerMap, what: str) -> ConfigError:
    n = layer_map.n_blocks
    return ConfigError(
        f"layer_map ({n} block{'s' * (n != 1)} at {layer_map.blocks_path!r}) is not {type(model).__name__}'s: "
        f"{what} (a layer map of another model? build it with build_layer_map(model))"
    )


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _linears_outside_sublayers(block: nn.Module, layer_map: LayerMap, d: int) -> str:
    """Block ``d``'s children holding linear modules that no sub-layer holds (Gemma 4's per-layer input
    projections): the usual reason a block is more than input + its sub-layers' outputs."""
    from layerscope.core.linears import is_linear

    prefix = f"{layer_map.blocks_path}.{d}."
    held = {p[len(prefix) :].split(".", 1)[0] for s in layer_map.sublayers if s.block == d for p in s.hook_paths}
    names = [n for n, c in block.named_children() if n not in held and any(is_linear(m) for m in c.modules())]
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def tolerance_for(dtype: torch.dtype) -> float:
    """A few rounding steps of ``dtype`` (relative): the two runs round ``h + c`` and ``h2 + c`` apart."""
    return max(1e-5, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-5


def synthetic_inputs(model: nn.Module) -> dict:
    """A short deterministic batch of token ids (no padding) on the model's input device."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    config = getattr(model, "config", None)
    vocab = int(getattr(emb, "num_embeddings", 0) or getattr(config, "vocab_size", 0) or 2)
    n = CHECK_SHAPE[0] * CHECK_SHAPE[1]
    ids = (torch.arange(n) * 7919 + 11) % max(vocab - 2, 1) + min(2, vocab - 1)  # spread ids, skip 0/1
    device = input_device(model)  # not the embedding weight's: a dispatched model may hold it offloaded, on meta
    ids = ids.view(CHECK_SHAPE).to(device)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def _block_calls(model: nn.Module, blocks: nn.ModuleList, inputs: dict) -> list[BlockCall]:
    """Every block's call (input and arguments) in one forward, stopped after the last block."""
    calls: dict[int, BlockCall] = {}

    def record(d: int, call: BlockCall) -> None:
        calls.setdefault(d, BlockCall(call.hidden.clone(), call.rest, call.kwargs, call.as_keyword))

    with on_block_inputs(blocks, record), stop_after(blocks[len(blocks) - 1], []):
        run_stopped(model, **inputs)
    if sorted(calls) != list(range(len(blocks))):
        raise ModelError(f"{type(model).__name__}: the model did not call every decoder block (removal check)")
    return [calls[d] for d in range(len(blocks))]


def _pattern_difference(
    block: nn.Module, call: BlockCall, subs: list[tuple[str, str, nn.Module]], removed: set[str], whole: bool
) -> float:
    """Relative max |(y(h) - h) - (y(h2) - h2)| with ``removed`` sub-layers removed and the kept ones
    forced to add on ``h2`` what they added on ``h``; for a whole block also |y(h) - h|."""
    gone = [m for name, _, m in subs if name in removed]
    kept = {str(j): m for j, (name, _, m) in enumerate(subs) if name not in removed}  # a sub-layer may have 2 modules
    added: dict[str, torch.Tensor] = {}

    def record(name: str, args: tuple, kwargs: dict, output) -> None:
        added.setdefault(name, contribution(kept[name], args, kwargs, output))

    h = call.hidden
    h2 = h.flip(-2)  # another input of the same shape and magnitude: the positions reversed
    with removed_outputs(gone), on_outputs(kept, record):
        y1 = call.replay(block, h)
    with removed_outputs(gone), forced_contributions({kept[n]: c for n, c in added.items()}):
        y2 = call.replay(block, h2)
    # relative to the largest value involved, so a model with small hidden states is judged like any other
    scale = max(float(t.abs().max()) for t in (h, y1, y2)) or 1.0
    diff = float(((y1.float() - h.float()) - (y2.float() - h2.float())).abs().max()) / scale
    if whole:
        diff = max(diff, float((y1.float() - h.float()).abs().max()) / scale)
    return diff


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Within the block, every module is in eval mode (no dropout); each one's own mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training

"""Block pruning: a new model without some decoder blocks, equal to the model with them removed.

A removed block is an identity map (``engine/removal.py``), so a model whose block list simply
skips it computes the same function, provided every kept block behaves as it did at its old
position. What a block does can depend on its index through the config: per-layer lists
(``layer_types``: sliding or full attention; SmolLM3's ``no_rope_layers``), lists of block
indices (Qwen2-MoE's ``mlp_only_layers``) and counts (DeepSeek-V3's ``first_k_dense_replace``,
Qwen2-MoE's ``decoder_sparse_step``). :func:`pruned_config` carries each over to the kept
blocks; a family that encodes the layout some other way is caught by two checks, so a pruned
model is never silently different:

- the kept blocks' own settings (every plain attribute of every sub-module, e.g. a sliding
  window, ``use_rope``) must equal the original block's, up to its index;
- the pruned model's logits on a short random batch must equal the original model's with the
  blocks removed in place (``engine.removed``), within float tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from layerscope.core.devices import input_device, state_tensors
from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.core.models import LoadedModel
from layerscope.engine.removal import is_index, removed
from layerscope.engine.removal_check import ensure_removal_ok

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
INDEX_LISTS = ("mlp_only_layers", "moe_layers")  # lists of block indices (renumbered, not filtered)
CHECK_SHAPE = (2, 24)  # (sequences, tokens) of the logits check: longer than the tiny sliding windows
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the logits' magnitude
LOW_PRECISION_TOLERANCE = 3e-2


def removed_blocks(layer_map: LayerMap, blocks: Iterable) -> list[int]:
    """Validated block indices or names (sorted, unique); at least one block must stay."""
    idx = sorted(set(layer_map.resolve_blocks([_block_index(layer_map, b) for b in blocks])))
    n = layer_map.n_blocks
    if not idx:
        raise ConfigError("no block to remove")
    if len(idx) >= n:
        raise ConfigError(f"cannot remove {len(idx)} of the model's {n} blocks: at least one block must stay")
    return idx


def _block_index(layer_map: LayerMap, block) -> int:
    """An int index (negative counts from the end) or a block name; a sub-layer or module name
    would otherwise be read as its whole block, and a float or bool as some index."""
    if isinstance(block, str):
        i = layer_map.block_of(block)
        if block != f"{layer_map.prefix}.{i}":
            raise ConfigError(
                f"{block!r} is not a block: prune removes whole blocks ('{layer_map.prefix}.<i>'); "
                "use prune_sublayers to remove attention / MLP sub-layers"
            )
        return i
    if not is_index(block):
        raise ConfigError(f"block {block!r} is not an integer index or a block name")
    return int(block)


def check_torch_model(model) -> None:
    """Refuse the wrapper ``load_model`` returns (it has no config or modules of its own)."""
    if isinstance(model, LoadedModel):
        raise ModelError("got the LoadedModel that load_model returns; pass its .model (the torch model)")


def prune(model: nn.Module, blocks: Iterable, layer_map: LayerMap | None = None, *, check: bool = True) -> nn.Module:
    """A new model (same class, dtype and device) without ``blocks`` (indices or names).

    The original is left unchanged. The kept blocks are renumbered 0..n-k-1 and the config's
    per-layer settings follow them (see the module doc). ``check`` compares the result's logits
    with the original's blocks removed in place and raises :class:`ModelError` if they differ.
    """
    check_torch_model(model)
    layer_map = layer_map or build_layer_map(model)
    gone = removed_blocks(layer_map, blocks)
    ensure_removal_ok(model, layer_map)  # a post-norm model has no sound notion of a removed block
    kept = [i for i in range(layer_map.n_blocks) if i not in gone]
    config = pruned_config(model.config, kept)
    state = renumbered_state(dict(state_tensors(model)), layer_map.blocks_path, kept)  # offloaded ones read
    param = next(model.parameters())
    pruned = type(model)._from_config(config, dtype=param.dtype)
    try:
        pruned.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"{type(model).__name__}: the pruned model's weights do not fit its config "
            f"({str(e).splitlines()[0]}); this family's block layout is not supported for pruning"
        ) from None
    pruned.to(input_device(model)).eval()  # a dispatched model: where its embedding computes
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = copy.deepcopy(model.generation_config)
    check_blocks_match(model, pruned, layer_map, kept)
    if check:
        check_equals_removal(model, pruned, layer_map, gone, "block")
    return pruned


# ----------------------------------------------------------------------------- config and weights


def layer_count_key(config) -> str:
    d = _decoder_dict(config.to_dict())
    for key in LAYER_COUNT_KEYS:
        if isinstance(d.get(key), int):
            return key
    raise ModelError(
        f"{type(config).__name__}: no layer count in the config (looked for {', '.join(LAYER_COUNT_KEYS)})"
    )


def _decoder_dict(d: dict) -> dict:
    """The part of a config dict that describes the decoder's blocks: the dict itself, or its
    ``text_config`` (an image-text model such as Gemma 3's keeps its decoder's settings there)."""
    if not any(isinstance(d.get(k), int) for k in LAYER_COUNT_KEYS) and isinstance(d.get("text_config"), dict):
        return d["text_config"]
    return d


def pruned_config(config, kept: list[int]):
    """A copy of ``config`` for a model holding only blocks ``kept`` (old indices, ascending)."""
    full = copy.deepcopy(config.to_dict())
    d = _decoder_dict(full)  # edited in place: the top level, or its text_config
    key = layer_count_key(config)
    n = d[key]
    new = {key: len(kept)}
    for k, v in d.items():  # per-layer lists: keep the kept blocks' entries
        if isinstance(v, list) and len(v) == n and "layer" in k and k not in INDEX_LISTS:
            new[k] = [v[i] for i in kept]
    new.update(_index_layout(d, kept))
    d.update(new)
    if not _pattern_holds(d):
        # Gemma 3 / Cohere 2 also store the sliding layout as a period ("every p-th block attends
        # fully"); transformers reads layer_types, but a tool deriving the layout from the period
        # would get the pruned model wrong, so a period the kept blocks no longer follow is dropped.
        d.pop("sliding_window_pattern")
    d = full
    d.pop("transformers_version", None)
    out = type(config).from_dict(d)
    out.name_or_path = getattr(config, "name_or_path", "")
    return out


def _pattern_holds(d: dict) -> bool:
    """Whether ``d``'s ``sliding_window_pattern`` (if any) still describes its ``layer_types``."""
    period, types = d.get("sliding_window_pattern"), d.get("layer_types")
    if not isinstance(period, int) or not isinstance(types, list) or period < 1:
        return True
    implied = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(len(types))]
    return types == implied


def _index_layout(d: dict, kept: list[int]) -> dict:
    """Config entries that say by block index how blocks differ: which hold a mixture of experts
    (DeepSeek, Qwen-MoE), which attend fully rather than in a sliding window (Qwen2 / Qwen3)."""
    new: dict = {}
    if isinstance(d.get("first_k_dense_replace"), int):  # DeepSeek: blocks < k are dense, the rest MoE
        new["first_k_dense_replace"] = sum(1 for i in kept if i < d["first_k_dense_replace"])
    if isinstance(d.get("max_window_layers"), int):  # Qwen2 / Qwen3: blocks < k attend fully, the rest slide
        new["max_window_layers"] = sum(1 for i in kept if i < d["max_window_layers"])
    if isinstance(d.get("moe_layers"), list):  # Llama 4: the blocks holding a mixture of experts
        moe = set(d["moe_layers"])
        new["moe_layers"] = [j for j, i in enumerate(kept) if i in moe]
    step = d.get("decoder_sparse_step")
    if isinstance(d.get("mlp_only_layers"), list) or isinstance(step, int):
        dense = set(d.get("mlp_only_layers") or [])
        if isinstance(step, int) and step > 1:  # sparse every step-th block: spell the pattern out instead
            dense |= {i for i in kept if (i + 1) % step}
            new["decoder_sparse_step"] = 1
        new["mlp_only_layers"] = [j for j, i in enumerate(kept) if i in dense]
    return new


def renumbered_state(state: dict[str, torch.Tensor], blocks_path: str, kept: list[int]) -> dict[str, torch.Tensor]:
    """The state dict without the removed blocks' tensors, kept blocks renumbered 0.."""
    new_index = {old: new for new, old in enumerate(kept)}
    prefix = blocks_path + "."
    out = {}
    for name, tensor in state.items():
        if not name.startswith(prefix):
            out[name] = tensor
            continue
        index, rest = name[len(prefix) :].split(".", 1)
        if int(index) in new_index:
            out[f"{prefix}{new_index[int(index)]}.{rest}"] = tensor
    return out


# ----------------------------------------------------------------------------- checks


def _settings(block: nn.Module) -> dict[str, object]:
    """Every plain attribute (numbers, strings, flags) of every sub-module of ``block``."""
    plain = (bool, int, float, str, type(None))
    out = {}
    for path, module in block.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training":
                continue
            if isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(x, plain) for x in value)):
                out[f"{path}.{attr}" if path else attr] = value
    return out


def check_blocks_match(model: nn.Module, pruned: nn.Module, layer_map: LayerMap, kept: list[int]) -> None:
    """Refuse when a kept block is set up differently at its new position (other than its index)."""
    pruned_map = build_layer_map(pruned)
    for new, old in enumerate(kept):
        before = _settings(model.get_submodule(layer_map.block_path(old)))
        after = _settings(pruned.get_submodule(pruned_map.block_path(new)))
        for attr in sorted(set(before) | set(after)):
            a, b = before.get(attr), after.get(attr)
            # an index that follows the block is expected (ints only: True == 1 would pass a flag flip)
            moved = type(a) is int and type(b) is int and (a, b) == (old, new)
            if a != b and not moved:
                raise ModelError(
                    f"{type(model).__name__}: block {old} would change when moved to position {new} "
                    f"({attr}: {a!r} -> {b!r}); this family's per-layer layout is not supported for pruning"
                )


def check_equals_removal(
    model: nn.Module, pruned: nn.Module, layer_map: LayerMap, players: list[int], granularity: str
) -> float:
    """Relative max difference between ``pruned``'s logits and ``model``'s with ``players`` removed
    in place; raises :class:`ModelError` above the dtype's tolerance."""
    param = next(model.parameters())
    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(3, vocab - 1), vocab, CHECK_SHAPE, generator=g).to(input_device(model))
    with torch.no_grad():
        with removed(model, layer_map, players, granularity):
            want = model(input_ids=ids, use_cache=False).logits.float()
        got = pruned(input_ids=ids, use_cache=False).logits.float()
    diff = float((got - want).abs().max() / max(1.0, float(want.abs().max())))
    tolerance = CHECK_TOLERANCE.get(param.dtype, LOW_PRECISION_TOLERANCE)
    if not diff <= tolerance:
        raise ModelError(
            f"{type(model).__name__}: the pruned model's logits differ from the model with the same "
            f"{granularity}s removed in place by {diff:.2e} (relative, tolerance {tolerance:g}); not pruning it"
        )
    return diff

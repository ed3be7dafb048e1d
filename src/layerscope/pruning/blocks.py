"""Block pruning: a new model without some decoder blocks, equal to the model with them removed.

A removed block is an identity map (``engine/removal.py``), so a model whose block list simply
skips it computes the same function, provided every kept block behaves as it did at its old
position. What a block does can depend on its index through the config: per-layer lists
(``layer_types``: sliding or full attention; SmolLM3's ``no_rope_layers``), lists of block
indices (Qwen2-MoE's ``mlp_only_layers``) and counts (DeepSeek-V3's ``first_k_dense_replace``,
Qwen2-MoE's ``decoder_sparse_step``, ERNIE-4.5's ``moe_layer_start_index`` / ``_end_index`` /
``_interval``). :func:`pruned_config` carries each over to the kept blocks. A period that
abbreviates an explicit list (``sliding_window_pattern`` for ``layer_types``, Llama 4's
``interleave_moe_layer_step`` for ``moe_layers``, ``no_rope_layer_interval`` for
``no_rope_layers``) is kept while it still describes the pruned list and dropped otherwise: the
list governs, and a stale period would tell a reader the wrong layout. A family that encodes the
layout some other way is caught by two checks, so a pruned model is never silently different:

- the kept blocks' own settings (every plain attribute of every sub-module, e.g. a sliding
  window, ``use_rope``) must equal the original block's, up to its index;
- the pruned model's logits on a short random batch must equal the original model's with the
  blocks removed in place (``engine.removed``), within float tolerance, and be much closer to
  them than the original model's logits are (a removal whose effect is below the tolerance would
  otherwise pass a model that removed nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from layerscope.core.devices import input_device, state_tensors
from layerscope.core.errors import ConfigError, ModelError, error_line
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.core.models import check_torch_model, refuse_adapted_model
from layerscope.core.player_names import with_article
from layerscope.engine.removal import is_index, removed
from layerscope.engine.removal_check import ensure_removal_ok
from layerscope.pruning.choose import Choice

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
INDEX_LISTS = ("mlp_only_layers", "moe_layers")  # lists of block indices (renumbered, not filtered)
CHECK_SHAPE = (2, 24)  # (sequences, tokens) of the logits check: longer than the tiny sliding windows
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the logits' magnitude
LOW_PRECISION_TOLERANCE = 3e-2
# ... and at most EFFECT_SHARE of what the removal itself changes, unless below tolerance * EXACT: a
# pruned model that does not compute the removal is as far from it as the original model is
EFFECT_SHARE, EXACT = 0.1, 1e-2
# a period that abbreviates an explicit per-layer list: key -> (the list, its entry for block i under period p)
PERIODS = {
    "sliding_window_pattern": ("layer_types", lambda i, p: "sliding_attention" if (i + 1) % p else "full_attention"),
    "full_attention_interval": ("layer_types", lambda i, p: "linear_attention" if (i + 1) % p else "full_attention"),
    "no_rope_layer_interval": ("no_rope_layers", lambda i, p: int((i + 1) % p != 0)),
}
MOE_STEP = "interleave_moe_layer_step"  # Llama 4: moe_layers = range(step - 1, n, step) when not listed
MOE_RANGE = ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval")  # ERNIE 4.5


def removed_blocks(layer_map: LayerMap, blocks: Iterable) -> list[int]:
    """Validated block indices or names (sorted, unique); at least one block must stay."""
    idx = sorted(set(layer_map.resolve_blocks([_block_index(layer_map, b) for b in _block_items(blocks)])))
    n = layer_map.n_blocks
    if not idx:
        raise ConfigError("no block to remove")
    if len(idx) >= n:
        raise ConfigError(f"cannot remove {len(idx)} of the model's {n} blocks: at least one block must stay")
    return idx


def _block_items(blocks) -> list:
    """``blocks`` as a list of what names one block each: a single index or name is one block, a
    :class:`~layerscope.pruning.choose.Choice` its names (checked to be blocks below). Refused: a
    ranking, whose player positions are not block indices unless it ranks blocks, and a mapping
    (its keys and values could each be meant)."""
    # an array has __index__ too: only a 0-d one is a single index
    if isinstance(blocks, str) or (is_index(blocks) and getattr(blocks, "ndim", 0) == 0):
        return [blocks]  # iterating a name would read its characters
    if isinstance(blocks, Choice):
        return list(blocks.names)  # names say their level; its indices may count sub-layers
    if isinstance(blocks, LayerImportance):
        raise ConfigError(
            f"prune takes block indices or names, not {with_article(blocks.granularity)} ranking: pass "
            "least_important_blocks(ranking, k), the k least important blocks"
        )
    if isinstance(blocks, Mapping) or not isinstance(blocks, Iterable):
        raise ConfigError(f"blocks must be a list of block indices or names (got a {type(blocks).__name__})")
    return list(blocks)


def _block_index(layer_map: LayerMap, block) -> int:
    """An int index (negative counts from the end) or a block name; a sub-layer or module name
    would otherwise be read as its whole block, and a float or bool as some index."""
    if isinstance(block, str):
        i = layer_map.block_of(block)
        if block != f"{layer_map.prefix}.{i}":
            raise ConfigError(
                f"{block!r} is not a block: prune removes whole blocks ('{layer_map.prefix}.<i>'); "
                "use prune_sublayers to remove attention / MLP sub-layers, or least_important_blocks(ranking, k) "
                "for the blocks of a finer ranking"
            )
        return i
    if not is_index(block):
        raise ConfigError(f"block {block!r} is not an integer index or a block name")
    return int(block)


def prune(model: nn.Module, blocks: Iterable, layer_map: LayerMap | None = None, *, check: bool = True) -> nn.Module:
    """A new model (same class, dtype and device) without ``blocks``: block indices (negative
    count from the end) or block names (``layers.3``), or one of either; a ranking's k least
    important blocks are ``least_important_blocks(ranking, k)``.

    The original is left unchanged. The kept blocks are renumbered 0..n-k-1 and the config's
    per-layer settings follow them (see the module doc). ``check`` compares the result's logits
    with the original's blocks removed in place and raises :class:`ModelError` if they differ.
    """
    check_torch_model(model)  # a LoadedModel with a layer map given would fail deep in the removal check
    refuse_adapted_model(model)  # its weights would not fit the pruned config's plain modules
    layer_map = layer_map or build_layer_map(model)
    gone = removed_blocks(layer_map, blocks)
    ensure_removal_ok(model, layer_map)  # a post-norm model has no sound notion of a removed block
    kept = [i for i in range(layer_map.n_blocks) if i not in gone]
    held = {attr.rsplit(".", 1)[-1] for attr in _settings(model.get_submodule(layer_map.block_path(kept[0])))}
    config = pruned_config(model.config, kept, held=held)
    state = renumbered_state(dict(state_tensors(model)), layer_map.blocks_path, kept)  # offloaded ones read
    param = next(model.parameters())
    pruned = type(model)._from_config(config, dtype=param.dtype)
    try:
        pruned.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"{type(model).__name__}: the pruned model's weights do not fit its config "
            f"({error_line(e)}); this family's block layout is not supported for pruning"
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


def pruned_config(config, kept: list[int], *, held: Iterable[str] = ()):
    """A copy of ``config`` for a model holding only blocks ``kept`` (old indices, ascending).

    ``held``: names of the settings the blocks' modules keep (``_settings``); a period among them
    is kept even where it no longer describes its list, since changing it would change the blocks.
    Raises :class:`ModelError` when the kept blocks' layout cannot be written in the config.
    """
    full = copy.deepcopy(config.to_dict())
    d = _decoder_dict(full)  # edited in place: the top level, or its text_config
    key = layer_count_key(config)
    n = d[key]
    new = {key: len(kept)}
    for k, v in d.items():  # per-layer lists: keep the kept blocks' entries
        if isinstance(v, list) and len(v) == n and "layer" in k and k not in INDEX_LISTS:
            new[k] = [v[i] for i in kept]
    new.update(_index_layout(d, kept))
    new.update(_moe_range(d, kept, type(config).__name__))
    d.update(new)
    # Gemma 3 / Cohere 2 also state the sliding layout as a period ("every p-th block attends
    # fully"), Llama 4 / SmolLM3 their MoE and NoPE blocks; transformers reads the list, but a tool
    # deriving the layout from the period would get the pruned model wrong, so a period the kept
    # blocks no longer follow is dropped - unless the blocks hold it as a setting (EXAONE 4's
    # attention keeps sliding_window_pattern: dropping it gives the class default, another setting
    # of every block, while layer_types still says which blocks slide)
    dropped = [p for p in _stale_periods(d) if p not in set(held)]
    for period in dropped:
        d.pop(period)
    in_text_config = d is not full
    full.pop("transformers_version", None)
    out = type(config).from_dict(full)
    out.name_or_path = getattr(config, "name_or_path", "")
    decoder = out.text_config if in_text_config else out
    for period in dropped:  # a declared field comes back as the class default: out of config.json too
        if period in vars(decoder) and hasattr(type(decoder), period):
            delattr(decoder, period)  # reads as the class default, which the explicit list overrides
    _check_lists_kept(out, new)
    return out


def _stale_periods(d: dict) -> list[str]:
    """The period keys of ``d`` that no longer describe the explicit list they abbreviate."""
    out = []
    for period, (list_key, entry) in PERIODS.items():
        p, listed = d.get(period), d.get(list_key)
        if _is_period(p) and isinstance(listed, list) and listed != [entry(i, p) for i in range(len(listed))]:
            out.append(period)
    p, moe = d.get(MOE_STEP), d.get("moe_layers")
    if _is_period(p) and isinstance(moe, list) and moe != list(range(p - 1, _layer_count(d), p)):
        out.append(MOE_STEP)
    return out


def _is_period(p) -> bool:
    return type(p) is int and p >= 1


def _layer_count(d: dict) -> int:
    return next(d[k] for k in LAYER_COUNT_KEYS if isinstance(d.get(k), int))


def _check_lists_kept(config, new: dict) -> None:
    """Refuse a config class that turns a list it was given into another one (derived from a period, say)."""
    d = _decoder_dict(config.to_dict())
    for k, v in new.items():
        if isinstance(v, list) and k in d and d[k] != v:
            raise ModelError(
                f"{type(config).__name__}: the pruned config does not keep {k} as given ({v} -> {d[k]}); "
                "this family's block layout is not supported for pruning"
            )


def _moe_range(d: dict, kept: list[int], name: str) -> dict:
    """ERNIE 4.5: block i holds a mixture of experts when start <= i <= end and (i + 1) % interval == 0
    (end -1: the last block). The kept MoE blocks, renumbered, are written the same way; refused when no
    start, end and interval give exactly them (MoE on every other block, one of the dense ones removed)."""
    start, end, interval = (d.get(k) for k in MOE_RANGE)
    if not (all(type(v) is int for v in (start, end, interval)) and interval >= 1):
        return {}
    n = _layer_count(d)
    end = n - 1 if end == -1 else end
    moe = {i for i in range(n) if start <= i <= end and (i + 1) % interval == 0}
    want = [j for j, i in enumerate(kept) if i in moe]
    m = len(kept)
    # the old bounds renumbered first (the same rule read on the kept blocks), then the tightest ones
    starts = (sum(1 for i in kept if i < start), want[0] if want else m)
    ends = (sum(1 for i in kept if i <= end) - 1, want[-1] if want else m - 1)
    for step in (interval, *range(1, m + 1)):
        for s in starts:
            for e in ends:
                if e >= 0 and [j for j in range(m) if s <= j <= e and (j + 1) % step == 0] == want:
                    return dict(zip(MOE_RANGE, (s, e, step)))
    raise ModelError(
        f"{name}: the kept blocks' mixture-of-experts layout (MoE at new positions {want} of {m}) cannot be "
        f"written as {' / '.join(MOE_RANGE)} (MoE on every interval-th block from start to end), the only way "
        "this family's config says it; remove other blocks"
    )


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


def check_ids(model: nn.Module) -> torch.Tensor:
    """The short random batch the checks run (fixed seed, ids above the usual special tokens)."""
    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)
    return torch.randint(min(3, vocab - 1), vocab, CHECK_SHAPE, generator=g).to(input_device(model))


def check_equals_removal(
    model: nn.Module, pruned: nn.Module, layer_map: LayerMap, players: list[int], granularity: str
) -> float:
    """Relative max difference between ``pruned``'s logits and ``model``'s with ``players`` removed
    in place; raises :class:`ModelError` above the dtype's tolerance, or when it is not well below
    what the removal itself changes (a pruned model that equals the original passes the tolerance
    alone wherever the removal moves the logits by less)."""
    from layerscope.core.quantization import compute_dtype

    ids = check_ids(model)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits.float()
        with removed(model, layer_map, players, granularity):
            want = model(input_ids=ids, use_cache=False).logits.float()
        got = pruned(input_ids=ids, use_cache=False).logits.float()
    scale = max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max()) / scale
    effect = float((full - want).abs().max()) / scale
    # a 4-bit model keeps float32 norms but computes its linears in bfloat16: the tolerance follows that
    tolerance = CHECK_TOLERANCE.get(compute_dtype(model), LOW_PRECISION_TOLERANCE)
    if not (diff <= tolerance and (diff <= tolerance * EXACT or diff <= EFFECT_SHARE * effect)):
        raise ModelError(
            f"{type(model).__name__}: the pruned model's logits differ from the model with the same "
            f"{granularity}s removed in place by {diff:.2e} (relative; the removal itself changes them by "
            f"{effect:.2e}; tolerance {tolerance:g}, and {EFFECT_SHARE:g} of the removal's change); not pruning it"
        )
    return diff

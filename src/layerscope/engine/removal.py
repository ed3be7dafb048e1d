"""Removing players (layers) from a model: removal is defined on the residual stream.

**Players** come at four granularities (``LayerMap.players``): ``block`` (a decoder block),
``sublayer`` (a block's attention or MLP, forward order attn0, mlp0, attn1, ...), ``module``
(one linear module) and ``expert`` (each expert of each mixture-of-experts layer).

**The rule.** "Remove player p" means the block's output equals its input plus the contributions
of the players it still keeps: the residual stream passes through p untouched. Concretely:

- a sub-layer contributes nothing: the output of its module (``SubLayer.hook_path``; the first
  element when the module returns a tuple) is replaced by zeros. That is exactly what zeroing
  ``o_proj`` / ``down_proj`` (the paper's hook) gives, bias included. Some families pass the
  residual into the module, which returns ``residual + f(x)`` (BLOOM's attention and MLP, MPT's
  MLP): a module whose ``forward`` takes a parameter named ``residual`` returns that residual
  instead (``hooks.removal_hook``; the engine's stubs do the same), never zeros, which would
  wipe the hidden state;
- a block: both its sub-layers, so the block becomes an identity map;
- a module: that linear's output (bias included) is zeroed. For an output projection this
  equals removing the sub-layer; for q/k/v/gate/up it is a different, weaker intervention
  (e.g. q = 0 gives uniform attention over the visible keys);
- an expert: its output is zeroed. A routed expert gets routing weight 0 wherever the router
  chose it (``hooks.masked_experts``); the token keeps its other chosen experts with their own
  weights, not renormalised and not re-routed. A shared expert's module output is zeroed. So a MoE
  layer's output is exactly the sum of its kept experts' contributions, as a block's is of its
  kept sub-layers', and removing every expert of a layer equals removing its MLP sub-layer. (The
  other rule, masking the router's logit so another expert takes the slot and the weights are
  renormalised, would also change what the kept experts add, and depends on each family's
  router: softmax or sigmoid scores, top-k renormalised or not, DeepSeek's expert groups.) An
  expert the router never chooses on the data has no effect: its removal changes nothing.

Norms are never touched: a later block's pre-norm sees the changed residual stream; a
Gemma-2-style post-norm of a zero sub-layer output is zero again (RMSNorm(0) = 0), so the
removal holds there too. KV caches are not used when scoring (``use_cache=False``); a removed
attention adds nothing and nothing of it is cached.

**The check.** Whether the rule holds is an assumption about the architecture, so it is verified
on every model before any value is computed (``removal_check.py``, run by :func:`removed` and
by the coalition engine): a model on which removing a sub-layer or a block does not leave
"input + kept contributions" (post-norm blocks such as OPT with ``do_layer_norm_before=False``)
is refused with a :class:`~layerscope.core.errors.ModelError` naming the architecture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch.nn as nn

from layerscope.core import layermap
from layerscope.core.errors import ConfigError
from layerscope.core.layermap import LayerMap, Player
from layerscope.engine.hooks import masked_experts, removed_outputs
from layerscope.engine.removal_check import ensure_removal_ok

# ----------------------------------------------------------------------------- players


def check_granularity(granularity: str) -> str:
    return layermap.check_granularity(granularity)


def removal_targets(layer_map: LayerMap, granularity: str) -> list[list[str]]:
    """Per player (forward order): the module paths whose outputs are replaced to remove it. A routed
    expert's path is its experts module, which is masked, not zeroed (:func:`removed_records`)."""
    return [list(p.targets) for p in layer_map.player_records(granularity)]


def player_blocks(layer_map: LayerMap, granularity: str) -> list[int]:
    """Block index of every player (non-decreasing: players are in forward order)."""
    return [p.block for p in layer_map.player_records(granularity)]


def player_kinds(layer_map: LayerMap, granularity: str) -> list[str]:
    """ "attn" / "mlp" per player ("block" for blocks): used for colours and summaries."""
    return [p.kind for p in layer_map.player_records(granularity)]


def is_index(p) -> bool:
    """An integer player index: a Python or NumPy integer, or a 0-d integer tensor; not a bool (numpy's
    and torch's bools have ``__index__`` too, and a kept-mask of them would read as indices 0 and 1)."""
    return not isinstance(p, bool) and hasattr(p, "__index__") and "bool" not in str(getattr(p, "dtype", ""))


def resolve_players(players: Iterable, names: Sequence[str]) -> list[int]:
    """Player indices from indices or names; out-of-range indices and unknown names fail clearly."""
    if isinstance(players, (str, int)):
        players = [players]
    out: list[int] = []
    lookup = {n: i for i, n in enumerate(names)}
    for p in players:
        if isinstance(p, str):
            if p not in lookup:
                raise ConfigError(f"no player named {p!r} (players are e.g. {', '.join(names[:3])}, ...)")
            out.append(lookup[p])
            continue
        if not is_index(p):
            raise ConfigError(f"player {p!r} is not an index or a player name")
        i = int(p)
        if not 0 <= i < len(names):
            raise ConfigError(f"player index {i} out of range: there are {len(names)} players (0..{len(names) - 1})")
        out.append(i)
    return sorted(set(out))


# ----------------------------------------------------------------------------- removal by hooks


@contextlib.contextmanager
def removed(
    model: nn.Module, layer_map: LayerMap, players: Iterable, granularity: str = "sublayer"
) -> Iterator[list[str]]:
    """Within the block, ``players`` (indices or names) are removed (see the module doc).

    This is the reference definition (what the paper does with hooks on o_proj / down_proj);
    the hooks are always removed on exit, also after an exception. Yields the removed names.
    Raises :class:`~layerscope.core.errors.ModelError` for a model the removal check refuses.
    """
    records = layer_map.player_records(check_granularity(granularity))
    names = [p.name for p in records]
    idx = resolve_players(players, names)
    ensure_removal_ok(model, layer_map)
    with removed_records(model, [records[i] for i in idx]):
        yield [names[i] for i in idx]


@contextlib.contextmanager
def removed_records(model: nn.Module, records: Sequence[Player]) -> Iterator[None]:
    """Within the block, the players ``records`` are removed: their target modules output zeros (or
    their residual), and routed experts are masked inside their experts module."""
    whole = [model.get_submodule(path) for p in records if p.expert is None for path in p.targets]
    experts: dict[str, list[int]] = {}
    for p in records:
        if p.expert is not None:
            experts.setdefault(p.targets[0], []).append(p.expert)
    with removed_outputs(whole), masked_experts({model.get_submodule(t): ids for t, ids in experts.items()}):
        yield

"""Hidden states a coalition's forward can start from, held under a byte budget.

The input to block ``d`` depends only on which players before block ``d`` are removed. Two kinds
of state are kept:

- **base states**: the full model's input to every block, per evaluator batch (nothing before
  the block removed). When they do not all fit the budget, only evenly spaced blocks are kept and
  a forward starts at the nearest kept block at or before its first removal;
- **path states**: inputs to deeper stages (blocks, or a block's sub-layers: ``stages.py``) on
  the current coalition's path, keyed by (batch, stage, removed players before that stage).
  Coalitions are evaluated sorted by their removal pattern, a depth-first walk of the trie of
  patterns, so the path holds at most one state per stage and batch, and the next coalition
  starts from the deepest one it shares; states that do not fit next to the base states evict
  deeper ones (shared by fewer coalitions) or are not stored.

The blocks' other arguments (masks, position embeddings, ...) are always kept, outside the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from layerscope.core.devices import module_device, to_device
from layerscope.engine.hooks import BlockCall

if TYPE_CHECKING:
    from layerscope.engine.stats import EngineStats

PathKey = tuple[int, int, int]  # (batch, stage, removed mask of the players before that stage)


@dataclass
class BlockArgs:
    """A :class:`BlockCall` without its hidden states: every other argument of one block call.

    Kept apart because the hidden states are what the budget bounds, the arguments are always kept.
    """

    rest: tuple
    kwargs: dict
    as_keyword: bool
    device: torch.device | None = None  # where rest / kwargs were moved (None: where the model made them)

    @classmethod
    def of(cls, call: BlockCall) -> BlockArgs:
        return cls(call.rest, call.kwargs, call.as_keyword)

    def replay(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Call ``block`` on ``hidden`` with these arguments; returns its output hidden states.

        On a model dispatched over several devices, the hidden states (a cached state may lie on the
        previous block's device) and, once, these arguments move to the block's device."""
        device = module_device(block)
        if device is not None and device != self.device:
            self.rest, self.kwargs, self.device = to_device(self.rest, device), to_device(self.kwargs, device), device
        if device is not None and hidden.device != device:
            hidden = hidden.to(device)
        return BlockCall(hidden, self.rest, self.kwargs, self.as_keyword).replay(block, hidden)


def nbytes(obj: Any, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (shared tensors counted once)."""
    if torch.is_tensor(obj):
        try:
            key = obj.untyped_storage().data_ptr()
            size = obj.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(obj), obj.numel() * obj.element_size()
        if key in seen:
            return 0
        seen.add(key)
        return int(size)
    if isinstance(obj, dict):
        return sum(nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(v, seen) for v in obj)
    return 0


def choose_kept_blocks(n_blocks: int, budget: int, bytes_per_block: int) -> set[int]:
    """Which blocks' full-model inputs to keep: all if they fit, else as many as fit, evenly spaced.

    ``bytes_per_block``: one block's input over every evaluator batch.
    """
    m = n_blocks if bytes_per_block == 0 else min(n_blocks, int(budget // bytes_per_block))
    if m >= n_blocks:
        return set(range(n_blocks))
    return {int(math.floor(j * n_blocks / m)) for j in range(m)} if m > 0 else set()


class PrefixCache:
    """Base states, block arguments and path states for ``n_batches`` evaluator batches.

    ``player_blocks``: the block of every player (forward order). ``budget``: bytes for hidden
    states (base + path). Byte counts and refusals are reported in ``stats``.
    """

    def __init__(self, budget: int, player_blocks: list[int], n_blocks: int, n_batches: int, stats: EngineStats):
        self.budget = budget
        self.n_blocks = n_blocks
        self.stats = stats
        n = len(player_blocks)
        # players of stages < s, as a bitmask: the part of a removed mask a stage-s input depends on
        # (until use_stages: one stage per block)
        self._before = [sum(1 << p for p in range(n) if player_blocks[p] < d) for d in range(n_blocks + 1)]
        self._base: list[list[torch.Tensor | None]] = [[None] * n_blocks for _ in range(n_batches)]
        self._args: list[list[BlockArgs]] = [[] for _ in range(n_batches)]
        self._path: dict[PathKey, torch.Tensor] = {}
        self.kept_blocks: set[int] | None = None  # chosen when the first batch shows the hidden size
        self.base_bytes = self.args_bytes = self.path_bytes = 0
        self.held_bytes = 0  # states held for a while outside the cache (stacked coalitions' members)

    def use_stages(self, before: list[int]) -> None:
        """Key path states by stage: ``before[s]``, the players of the stages before stage ``s``."""
        if self._path:
            raise RuntimeError("path states are held: clear them before changing stages")
        self._before = list(before)

    # ---- filled by the capture pass -------------------------------------------------------------
    def keep_blocks(self, bytes_per_block: int) -> set[int]:
        self.kept_blocks = choose_kept_blocks(self.n_blocks, self.budget, bytes_per_block)
        self.stats.base_blocks_cached = len(self.kept_blocks)
        return self.kept_blocks

    def record(self, batch: int, inputs: list[torch.Tensor | None], args: list[BlockArgs]) -> None:
        """One batch's captured block inputs (None where not kept) and block arguments."""
        self._base[batch] = inputs
        self._args[batch] = args

    def count_bytes(self) -> None:
        """Account for the captured states (call once the capture pass is done)."""
        seen: set[int] = set()
        self.base_bytes = sum(nbytes([t for t in per if t is not None], seen) for per in self._base)
        self.args_bytes = sum(nbytes([(a.rest, a.kwargs) for a in per], seen) for per in self._args)
        self._update_stats()

    # ---- reading -------------------------------------------------------------------------------
    def base_input(self, batch: int, block: int) -> torch.Tensor | None:
        return self._base[batch][block]

    def block_args(self, batch: int, block: int) -> BlockArgs:
        return self._args[batch][block]

    def path_state(self, batch: int, stage: int, removed_mask: int) -> torch.Tensor | None:
        return self._path.get((batch, stage, removed_mask & self._before[stage]))

    # ---- path states ---------------------------------------------------------------------------
    def store(self, batch: int, stage: int, removed_mask: int, h: torch.Tensor) -> None:
        """Keep ``h``, the input to ``stage`` with ``removed_mask``'s earlier players removed, if it fits."""
        key = (batch, stage, removed_mask & self._before[stage])
        size = h.numel() * h.element_size()
        room = self.budget - self.base_bytes - self.held_bytes
        if self.path_bytes + size > room:  # evict deeper states first: they are shared by fewer coalitions
            for k in sorted((k for k in self._path if k[1] > stage), key=lambda k: -k[1]):
                self._drop(k)
                if self.path_bytes + size <= room:
                    break
        if self.path_bytes + size > room:
            self.stats.path_refused += 1
            return
        self._path[key] = h
        self.path_bytes += size
        self._update_stats()

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes held elsewhere against the budget, making room by dropping path states
        (deepest first) if needed; False, holding nothing, when even that does not make room."""
        for k in sorted(self._path, key=lambda k: -k[1]):
            if self.base_bytes + self.path_bytes + self.held_bytes + size <= self.budget:
                break
            self._drop(k)
        if self.base_bytes + self.path_bytes + self.held_bytes + size > self.budget:
            return False
        self.held_bytes += size
        self._update_stats()
        return True

    def release(self, size: int) -> None:
        self.held_bytes -= size
        self._update_stats()

    def prune(self, removed_mask: int) -> None:
        """Drop path states not on ``removed_mask``'s path: in sorted order nothing later can use them."""
        for key in [k for k in self._path if k[2] != removed_mask & self._before[k[1]]]:
            self._drop(key)

    def clear_path(self) -> None:
        self._path.clear()
        self.path_bytes = 0
        self._update_stats()

    def clear(self) -> None:
        """Free everything (the engine fell back to plain forwards)."""
        self._base, self._args, self._path = [], [], {}
        self.base_bytes = self.args_bytes = self.path_bytes = 0
        self._update_stats()

    def _drop(self, key: PathKey) -> None:
        t = self._path.pop(key)
        self.path_bytes -= t.numel() * t.element_size()
        self._update_stats()

    def _update_stats(self) -> None:
        self.stats.cache_bytes = self.base_bytes + self.path_bytes + self.held_bytes
        self.stats.kwargs_bytes = self.args_bytes
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.stats.cache_bytes)

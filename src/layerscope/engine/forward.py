"""One coalition's forward from cached states.

Hidden states entering a block are the full model's until the first removed player, so a
coalition's forward starts at the deepest usable cached state (a path state, else the full
model's input to a block at or before its first removal), runs the remaining blocks with the
removed modules returning zeros, then the final norm and the output embedding on the scored
positions only. Everything here works on a *removed* mask: bit ``p`` set means player ``p`` is
removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from layerscope.core.errors import ModelError
from layerscope.core.layermap import LayerMap
from layerscope.engine.hooks import run_stopped, stop_before
from layerscope.engine.prefix_cache import PrefixCache
from layerscope.engine.stages import StagePlan, whole_blocks
from layerscope.engine.stubs import Signature, removed_or_stubbed

if TYPE_CHECKING:
    from layerscope.engine.stats import EngineStats
    from layerscope.scoring import Batch


def model_inputs(b: Batch) -> dict[str, Any]:
    """Keyword arguments of a plain model forward on evaluator batch ``b``."""
    kw: dict[str, Any] = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    if b.position_ids is not None:
        kw["position_ids"] = b.position_ids
    return kw


@dataclass
class ModelParts:
    """The pieces of a causal LM the cached forward calls directly."""

    blocks: Sequence[nn.Module]
    norm: nn.Module | None  # the final norm (None: the model has none)
    head: nn.Module  # the output embedding
    softcap: float  # Gemma-2/3-style final logit soft-capping (0: none)

    @classmethod
    def find(cls, model: nn.Module, layer_map: LayerMap) -> ModelParts:
        try:
            blocks = model.get_submodule(layer_map.blocks_path)
            norm = model.get_submodule(layer_map.final_norm_path) if layer_map.final_norm_path else None
        except AttributeError as e:
            raise ModelError(f"cannot find blocks / final norm ({e})") from None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ModelError("the model has no output embedding module")
        config = getattr(model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        softcap = float(getattr(text_config, "final_logit_softcapping", None) or 0.0)
        return cls(blocks, norm, head, softcap)


class CachedForward:
    """Runs coalitions from the states in ``cache``; ``targets[p]``: module paths zeroed to remove
    player ``p``; ``signatures``: how those modules are called (filled by the capture pass);
    ``plan``: the stages a forward is cut into (``stages.py``; whole blocks until the engine
    verified more)."""

    def __init__(
        self,
        model: nn.Module,
        parts: ModelParts,
        cache: PrefixCache,
        targets: list[list[str]],
        player_blocks: list[int],
        stats: EngineStats,
    ):
        self.model, self.parts, self.cache, self.stats = model, parts, cache, stats
        self.targets, self.player_blocks = targets, player_blocks
        self.n_blocks = len(parts.blocks)
        self.signatures: dict[str, Signature] = {}
        self._logits_buf: torch.Tensor | None = None
        self._modules: list[list[tuple[str, nn.Module]]] | None = None  # per player: (path, module) to remove
        self.plan = whole_blocks(player_blocks, self.n_blocks)
        cache.use_stages(self.plan.before)

    def use_plan(self, plan: StagePlan) -> None:
        """Cut forwards into ``plan``'s stages (path states are keyed by stage: none may be held)."""
        self.plan = plan
        self.cache.clear_path()
        self.cache.use_stages(plan.before)

    def first_block(self, removed_mask: int) -> int:
        """Block of the first removed player (n_blocks when nothing is removed)."""
        return self.player_blocks[(removed_mask & -removed_mask).bit_length() - 1] if removed_mask else self.n_blocks

    def run(self, i: int, b: Batch, removed_mask: int, *, store_upto: int = -1, use_stubs: bool = True) -> torch.Tensor:
        """Logits of batch ``i`` with ``removed_mask``'s players removed, storing path states for
        stages up to ``store_upto`` (the deepest stage the next coalition shares)."""
        first = self.plan.first_stage(removed_mask)
        start, h, cached = self._start(i, b, removed_mask, first)
        with self.removal(removed_mask, use_stubs):
            h = self.run_stages(i, h, start, removed_mask, first, store_upto, cached=cached)
        return self.logits(h, b)

    def _start(self, i: int, b: Batch, removed_mask: int, first: int) -> tuple[int, torch.Tensor, bool]:
        """Deepest usable state for batch i: a path state, else a full-model state at or before
        stage ``first`` (a block's base input, or a mid-block state kept on the path); and whether
        the cache holds it (False: recomputed by a forward cut short)."""
        plan, cache = self.plan, self.cache
        for s in range(plan.n_stages - 1, first, -1):
            h = cache.path_state(i, s, removed_mask)
            if h is not None:
                self.stats.path_hits += 1
                return s, h, True
        top = min(first, plan.n_stages - 1)
        for s in range(top, -1, -1):
            st = plan.stages[s]
            h = cache.base_input(i, st.block) if st.opens_block else cache.path_state(i, s, removed_mask)
            if h is not None:
                return s, h, True
        block = plan.stages[top].block
        return plan.block_start[block], self.run_to(b, block), False

    def run_stages(
        self, i: int, h: torch.Tensor, start: int, removed_mask: int, first: int, store_upto: int, *, cached: bool
    ) -> torch.Tensor:
        """Stages ``start``.. of batch ``i`` on ``h`` (removal is the caller's :meth:`removal`),
        keeping the states entering stages up to ``store_upto`` that are not base states;
        ``cached``: the cache holds ``h`` already."""
        plan, cache = self.plan, self.cache
        kept = h if cached else None  # the state the cache holds last: a skipped stage passes it on unchanged
        s = start
        while s < plan.n_stages:
            if start < s <= store_upto and h is not kept and not (s <= first and plan.stages[s].opens_block):
                cache.store(i, s, removed_mask, h)
                kept = h
            e = plan.segment_end(s, store_upto)
            runs = sum(not plan.skips(t, removed_mask) for t in range(s, e))
            if runs:
                block = plan.stages[s].block
                outside = plan.block_players[block] & ~(plan.before[e] & ~plan.before[s])
                h = self.call_block(i, block, h, held=outside & ~removed_mask, runs=runs)
            s = e
        return h

    def call_block(self, i: int, d: int, h: torch.Tensor, *, held: int = 0, runs: int = 1) -> torch.Tensor:
        """Block ``d`` of batch ``i`` on ``h``, with the players in ``held`` stubbed for this call
        (``runs``: how many of the plan's stages it computes)."""
        self.stats.block_forwards += 1
        self.stats.stage_runs += runs
        if not held:
            return self.cache.block_args(i, d).replay(self.parts.blocks[d], h)
        with self.removal(held, True):
            return self.cache.block_args(i, d).replay(self.parts.blocks[d], h)

    def run_to(self, b: Batch, block: int) -> torch.Tensor:
        """The full model's hidden state entering ``block``, by a forward cut short there."""
        box: list[torch.Tensor] = []
        with stop_before(self.parts.blocks[block], box):
            run_stopped(self.model, **model_inputs(b))
        self.stats.block_forwards += block
        return box[0]

    def run_blocks(self, i: int, h: torch.Tensor, start: int) -> torch.Tensor:
        """Whole blocks ``start``.. of batch ``i`` on ``h`` (removal is the caller's :meth:`removal`)."""
        for d in range(start, self.n_blocks):
            h = self.call_block(i, d, h)
        return h

    @contextlib.contextmanager
    def removal(self, removed_mask: int, use_stubs: bool = True) -> Iterator[None]:
        """Removed modules contribute nothing: via stubs (not run at all) where possible, else via hooks."""
        modules = [m for p, per in enumerate(self.player_modules()) if (removed_mask >> p) & 1 for m in per]
        with removed_or_stubbed(modules, self.signatures, use_stubs):
            yield

    def player_modules(self) -> list[list[tuple[str, nn.Module]]]:
        """Per player, the (path, module) pairs removing it zeroes."""
        if self._modules is None:  # looked up once: a forward enters removal() for every stage it cuts
            self._modules = [[(path, self.model.get_submodule(path)) for path in ts] for ts in self.targets]
        return self._modules

    def logits(self, h: torch.Tensor, b: Batch) -> torch.Tensor:
        """Final norm + output embedding on the scored positions only, laid out as [B, L, V] logits."""
        return self.scored_logits(self.scored_states(h, b), b)

    def scored_states(self, h: torch.Tensor, b: Batch) -> torch.Tensor:
        """The final hidden states the evaluator's logits need: [U, H] at the distinct scored
        positions, or [B, L, H], the last ``logits_to_keep`` positions, where those are not listed."""
        T = h.shape[1]
        rows, pos = getattr(b, "uniq_row", None), getattr(b, "uniq_pos", None)
        if rows is None or pos is None:
            return h[:, T - int(getattr(b, "logits_to_keep", T) or T) :, :]
        return h[rows.to(h.device), pos.to(h.device)]

    def scored_logits(self, z: torch.Tensor, b: Batch) -> torch.Tensor:
        """[B, L, V] logits of batch ``b`` from its :meth:`scored_states` ``z``."""
        rows, pos = getattr(b, "uniq_row", None), getattr(b, "uniq_pos", None)
        if rows is None or pos is None:
            return self._head(z)
        B, T = b.input_ids.shape
        L = int(getattr(b, "logits_to_keep", T) or T)
        z = self._head(z.unsqueeze(0))[0]  # norms act per position, so normalising only these is exact
        # The evaluator reads only these positions, so the rest is left unwritten (zero-filling a
        # [B, L, vocab] tensor costs as much as a small head), in one buffer reused across calls:
        # the evaluator scores each batch's logits before asking for the next.
        need = B * L * z.shape[-1]
        buf = self._logits_buf
        if buf is None or buf.numel() < need or buf.dtype != z.dtype or buf.device != z.device:
            buf = self._logits_buf = z.new_empty(need)
        logits = buf[:need].view(B, L, z.shape[-1])
        logits[rows.to(z.device), pos.to(z.device) - (T - L)] = z
        return logits

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, output embedding, and the soft-capping a Gemma-2/3 causal-LM forward applies after it."""
        if self.parts.norm is not None:
            x = self.parts.norm(x)
        logits = self.parts.head(x)
        if self.parts.softcap:
            logits = torch.tanh(logits / self.parts.softcap) * self.parts.softcap
        return logits

"""The steps a coalition's forward is cut into, and the trie of removal patterns over them.

A **stage** is one call of one decoder block that adds the contributions of some of its players
(``own``) while the block's other players (``held``) are stubbed out for that call. With
**whole-block** stages a block is one stage. With **sub-layer** stages (``sublayer`` granularity)
every sub-layer is its own stage: ``block(h)`` with the MLP stubbed is ``h + attn(h)``, and that
block again, on that state, with the attention stubbed adds the MLP. So the state between a
block's attention and its MLP becomes a node of the trie: two coalitions that differ only in a
block's MLP share that block's attention instead of each computing it. A stage whose own players
are all removed adds nothing (the residual stream passes through, ``removal.py``) and is skipped.
Consecutive stages of one block still run as one call where no state between them is worth keeping
(the next coalition does not share it), so a forward never makes more block calls than whole
blocks would.

Both shortcuts are facts about the architecture (sequential residual sub-layers, an identity
block when everything in it is stubbed), so :func:`verify_plan` checks them bit for bit on the
self-check batch and keeps only what holds: a parallel-residual block (GPT-J, GPT-NeoX, Falcon)
stays whole.

**The trie.** The state entering stage ``s`` depends only on the removal pattern of the players
of earlier stages (``before[s]``). Coalitions sorted by their removal pattern in forward order are
a depth-first walk of that trie, so keeping one state per depth (the current path) computes each
distinct (stage, prefix pattern) state once: :meth:`StagePlan.runs_needed` counts those runs, the
least work any traversal of the same plan can do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from layerscope.engine.forward import CachedForward
    from layerscope.scoring import Batch


@dataclass(frozen=True)
class Stage:
    block: int
    own: int  # players whose contribution this stage adds (bitmask)
    held: int  # players of the same block stubbed for this call: a later (or earlier) stage adds them
    opens_block: bool  # its input is the block's input (a full-model base state when nothing before is removed)


class StagePlan:
    """Stages in forward order, for players in forward order (``player_blocks``: each player's block).

    ``split``: one stage per player (sub-layers), else one per block. ``skip_removed``: a stage
    whose own players are all removed is not run."""

    def __init__(self, player_blocks: list[int], n_blocks: int, *, split: bool, skip_removed: bool):
        self.split, self.skip_removed = split, skip_removed
        self.n_players = len(player_blocks)
        stages: list[Stage] = []
        for d in range(n_blocks):
            mine = [p for p, blk in enumerate(player_blocks) if blk == d]
            block_mask = sum(1 << p for p in mine)
            groups = [1 << p for p in mine] if split and len(mine) > 1 else [block_mask]
            stages += [Stage(d, g, block_mask & ~g, k == 0) for k, g in enumerate(groups)]
        self.stages = stages
        self.n_stages = len(stages)
        # players of stages < s: the part of a removed mask the input to stage s depends on
        self.before = [0] * (self.n_stages + 1)
        for s, st in enumerate(stages):
            self.before[s + 1] = self.before[s] | st.own
        self.stage_of_player = [0] * self.n_players
        for s, st in enumerate(stages):
            for p in range(self.n_players):
                if (st.own >> p) & 1:
                    self.stage_of_player[p] = s
        self.block_start = [s for s, st in enumerate(stages) if st.opens_block]
        self.block_players = [0] * n_blocks
        for st in stages:
            self.block_players[st.block] |= st.own

    def describe(self) -> str:
        kind = "sub-layer stages" if self.split else "whole blocks"
        return f"{kind}, removed {'skipped' if self.skip_removed else 'run'}"

    def first_stage(self, removed_mask: int) -> int:
        """Stage of the first removed player (``n_stages`` when nothing is removed)."""
        if not removed_mask:
            return self.n_stages
        return self.stage_of_player[(removed_mask & -removed_mask).bit_length() - 1]

    def shared_depth(self, a: int, b: int | None) -> int:
        """Deepest stage whose input is the same with removed masks a and b (-1: no next coalition)."""
        if b is None:
            return -1
        return self.first_stage(a ^ b) if a != b else self.n_stages

    def skips(self, s: int, removed_mask: int) -> bool:
        own = self.stages[s].own
        return self.skip_removed and own != 0 and removed_mask & own == own

    def segment_end(self, s: int, store_upto: int) -> int:
        """End of the stages from ``s`` that one block call can run: the rest of the block, cut
        before a stage whose input the next coalition shares (``<= store_upto``: it is kept)."""
        e, block = s + 1, self.stages[s].block
        while e < self.n_stages and self.stages[e].block == block and e > store_upto:
            e += 1
        return e

    def runs_needed(self, removed_masks: Iterable[int]) -> int:
        """Distinct stage calls the coalitions need, per batch: every (stage, pattern of the players up
        to that stage) from the block of the first removal on, not skipped. The full model (mask 0)
        needs none: it is the capture pass."""
        seen: set[tuple[int, int]] = set()
        for m in removed_masks:
            if not m:
                continue
            start = self.block_start[self.stages[self.first_stage(m)].block]
            seen.update((s, m & self.before[s + 1]) for s in range(start, self.n_stages) if not self.skips(s, m))
        return len(seen)


def whole_blocks(player_blocks: list[int], n_blocks: int) -> StagePlan:
    """One stage per block, every block run: the plan that needs nothing of the architecture."""
    return StagePlan(player_blocks, n_blocks, split=False, skip_removed=False)


def verify_plan(fwd: CachedForward, plan: StagePlan, check: tuple[int, Batch], player_blocks: list[int]) -> StagePlan:
    """``plan`` where its shortcuts reproduce whole-block calls bit for bit on the check batch,
    else a plan with fewer of them (see the module doc)."""
    if not (plan.split or plan.skip_removed):
        return plan
    i, b = check
    split_ok, identity_ok = plan.split, plan.skip_removed
    with torch.no_grad():
        h = fwd.cache.base_input(i, 0)
        h = fwd.run_to(b, 0) if h is None else h
        for d in range(len(fwd.parts.blocks)):
            mine = [st for st in plan.stages if st.block == d]
            whole = fwd.call_block(i, d, h)
            if split_ok and len(mine) > 1:
                staged = h
                for st in mine:
                    staged = fwd.call_block(i, d, staged, held=st.held)
                split_ok = torch.equal(staged, whole)
            if identity_ok and mine[0].own | mine[0].held:
                identity_ok = torch.equal(fwd.call_block(i, d, h, held=mine[0].own | mine[0].held), h)
            h = whole
    if split_ok == plan.split and identity_ok == plan.skip_removed:
        return plan
    return StagePlan(player_blocks, len(fwd.parts.blocks), split=split_ok, skip_removed=identity_ok)

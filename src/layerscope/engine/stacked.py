"""Several coalitions in one forward, their rows stacked (issue 18, item 5).

A small model on a large GPU leaves the device mostly idle in a forward of one batch: G
coalitions' rows side by side cost about what one coalition's do. A group of G coalitions starts
together at the shallowest first removal among them, from the full model's state there repeated
G times (member k holds rows k*B..(k+1)*B-1). Every removed module of the blocks that run is
hooked so that on the rows of each member that removes it, its output is what removal makes it
(zeros, or the residual it was given: the reference hooks' removal, per row); the other rows keep
its output. Each member's final hidden states at the scored positions are kept until the
evaluator asks for that member's logits.

The blocks' other arguments (masks, position embeddings, ALiBi biases) must be the stacked
batch's. Which of them carry the batch dimension is learnt from the model, not guessed from
shapes (MPT's position bias is [heads, 1, T]: a batch of as many rows as heads would look
batch-first): :meth:`Stacker.batch_paths` runs the model once on a batch's rows repeated G times
and records, per block, the arguments whose first dimension grew G-fold. Those are repeated; the
rest are passed as they are. It is learnt again for a batch whose blocks get other arguments (a
batch without padding may get no mask at all, the next one a mask).

The work is not shared the way the trie walk shares it (a member runs from the group's start, not
from its own first removal), and the matmuls see G times the rows, so a BLAS may sum in another
order: values agree with one coalition at a time to float tolerance, not bit for bit. The engine
checks that on its self-check batch (:meth:`Stacker.check`) and stays at one coalition per forward
where it does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from layerscope.core.errors import ModelError
from layerscope.engine.capture import Probe, relative_diff
from layerscope.engine.forward import model_inputs
from layerscope.engine.hooks import BlockCall, on_block_inputs, removed_outputs, run_stopped, stop_after
from layerscope.engine.prefix_cache import BlockArgs

if TYPE_CHECKING:
    from layerscope.engine.forward import CachedForward
    from layerscope.scoring import Batch, EvalResult

Path = tuple  # where an argument sits in a block call: ("kwargs", name, 0, ...) / ("rest", 1)


def tensors(obj: Any, path: Path = ()) -> dict[Path, torch.Tensor]:
    """Every tensor in ``obj`` (tuples / lists / dicts of them), by path."""
    if torch.is_tensor(obj):
        return {path: obj}
    out: dict[Path, torch.Tensor] = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) else ()
    for k, v in items:
        out.update(tensors(v, (*path, k)))
    return out


def repeat_at(obj: Any, paths: frozenset, times: int, done: dict[int, torch.Tensor], path: Path = ()) -> Any:
    """``obj`` with the tensors at ``paths`` repeated ``times`` along their first dimension (``done``:
    those already repeated, by id: blocks share one mask and one rotary table)."""
    if torch.is_tensor(obj):
        if path not in paths:
            return obj
        if id(obj) not in done:
            done[id(obj)] = obj.repeat(times, *([1] * (obj.dim() - 1)))
        return done[id(obj)]
    if isinstance(obj, dict):
        return {k: repeat_at(v, paths, times, done, (*path, k)) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(repeat_at(v, paths, times, done, (*path, k)) for k, v in enumerate(obj))
    return obj


def stacked_inputs(b: Batch, times: int) -> dict[str, Any]:
    """The model inputs of batch ``b`` with its rows repeated ``times`` (every one is batch-first)."""
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else v for k, v in model_inputs(b).items()}


class Stacker:
    """Runs groups of ``size`` coalitions as one forward per block on ``fwd``'s cached states."""

    def __init__(self, fwd: CachedForward, size: int):
        self.fwd, self.size = fwd, size
        self._learnt: dict[tuple, list[frozenset]] = {}  # by the arguments' layout: per block, the batch-first paths
        self._by_batch: dict[int, list[frozenset]] = {}

    def batch_paths(self, i: int, b: Batch) -> list[frozenset]:
        """Per block, the paths of batch ``i``'s block arguments that carry the batch dimension
        (learnt once per layout of the arguments: which tensors are there, by path)."""
        if i not in self._by_batch:
            cache = self.fwd.cache
            layout = tuple(
                frozenset(tensors({"rest": a.rest, "kwargs": a.kwargs}))
                for a in (cache.block_args(i, d) for d in range(self.fwd.n_blocks))
            )
            if layout not in self._learnt:
                self._learnt[layout] = self._learn(i, b)
            self._by_batch[i] = self._learnt[layout]
        return self._by_batch[i]

    def _learn(self, i: int, b: Batch) -> list[frozenset]:
        """The block arguments whose first dimension grows ``size``-fold when the model runs on
        batch ``i``'s rows repeated ``size`` times."""
        fwd = self.fwd
        calls: list[BlockCall] = []
        blocks = fwd.parts.blocks
        with torch.no_grad(), on_block_inputs(blocks, lambda d, call: calls.append(call)), stop_after(blocks[-1], []):
            run_stopped(fwd.model, **stacked_inputs(b, self.size))  # no LM head: [rows, T, vocab] could be huge
        if len(calls) != fwd.n_blocks:
            raise ModelError("the model did not call every decoder block once on the stacked rows")
        learnt = []
        for d, call in enumerate(calls):
            plain = fwd.cache.block_args(i, d)
            one = tensors({"rest": plain.rest, "kwargs": plain.kwargs})
            many = tensors({"rest": call.rest, "kwargs": call.kwargs})
            if one.keys() != many.keys():
                raise ModelError(f"block {d} is called with other arguments on more rows")
            grown = set()
            for path, t in one.items():
                if many[path].shape == t.shape:
                    continue
                if t.dim() == 0 or many[path].shape != (t.shape[0] * self.size, *t.shape[1:]):
                    raise ModelError(f"block {d}'s argument {'.'.join(map(str, path[1:]))} changes shape with the rows")
                grown.add(path)
            learnt.append(frozenset(grown))
        return learnt

    def evaluate_group(self, evaluator, masks: list[int], use_stubs: bool) -> list[EvalResult]:
        """The results of coalitions ``masks`` (removed masks): the evaluator's pass for the first runs
        the group's forward per batch and keeps the others' scored states, which their own passes then
        turn into logits."""
        fwd, cache, stats = self.fwd, self.fwd.cache, self.fwd.stats
        kept: list[dict[int, torch.Tensor]] = [{} for _ in masks]  # per member, by batch: scored states

        def size(z: torch.Tensor) -> int:
            return z.numel() * z.element_size()

        def lead(i: int, b) -> torch.Tensor:
            states = self.run_group(i, b, masks)
            # the other members' states wait for their own passes: held within the cache budget; a
            # batch's state that does not fit is recomputed alone in its member's pass
            for k, z in enumerate(states[1:], 1):
                if cache.hold(size(z)):
                    kept[k][i] = z
            return fwd.scored_logits(states[0], b)

        def member(k: int) -> Callable[[int, Any], torch.Tensor]:
            def forward(i: int, b) -> torch.Tensor:
                z = kept[k].pop(i, None)
                if z is None:
                    stats.stacked_recomputed += 1
                    return fwd.run(i, b, masks[k], use_stubs=use_stubs)
                cache.release(size(z))
                return fwd.scored_logits(z, b)

            return forward

        try:
            out = [evaluator.evaluate(fwd.model, forward=lead)]
            out += [evaluator.evaluate(fwd.model, forward=member(k)) for k in range(1, len(masks))]
        finally:  # an interrupted group gives back what it held
            cache.release(sum(size(z) for waiting in kept for z in waiting.values()))
        return out

    def check(self, probe: Probe, use_stubs: bool) -> float:
        """Largest relative difference between a stacked group's logits and the engine's one at a
        time (``probe.cached``) on the probe's batch."""
        masks = check_masks(len(self.fwd.targets), self.size)
        with torch.no_grad():
            states = self.run_group(probe.i, probe.b, masks)
            return max(relative_diff(self.fwd._head(z), probe.cached(m, use_stubs)) for m, z in zip(masks, states))

    def run_group(self, i: int, b: Batch, masks: list[int]) -> list[torch.Tensor]:
        """The scored final states (``CachedForward.scored_states``) of batch ``i`` for each removed
        mask in ``masks`` (at most ``size``), from one forward of their rows stacked."""
        fwd = self.fwd
        G, B = len(masks), b.input_ids.shape[0]
        start = min(min(fwd.first_block(m) for m in masks), fwd.n_blocks - 1)
        base = fwd.cache.base_input(i, start)
        h = base if base is not None else fwd.run_to(b, start)
        h = h.repeat(G, *([1] * (h.dim() - 1)))
        removing: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}  # by module id: (module, rows removing it)
        for p, per in enumerate(fwd.player_modules()):
            rows = torch.tensor([(m >> p) & 1 for m in masks], dtype=torch.bool).repeat_interleave(B)
            if rows.any():
                for _, mod in per:
                    old = removing.get(id(mod))
                    removing[id(mod)] = (mod, rows if old is None else old[1] | rows)
        batch_paths, done = self.batch_paths(i, b), {}
        with removed_outputs([m for m, _ in removing.values()], [r for _, r in removing.values()]):
            for d in range(start, fwd.n_blocks):
                args, paths = fwd.cache.block_args(i, d), batch_paths[d]
                rest = repeat_at(args.rest, paths, G, done, ("rest",))
                kwargs = repeat_at(args.kwargs, paths, G, done, ("kwargs",))
                h = BlockArgs(rest, kwargs, args.as_keyword, args.device).replay(fwd.parts.blocks[d], h)
                fwd.stats.block_forwards += 1
                fwd.stats.stage_runs += 1
        return [fwd.scored_states(h[k * B : (k + 1) * B], b) for k in range(G)]


def check_masks(n_players: int, size: int) -> list[int]:
    """``size`` removed masks for the check: the full model, and single and paired removals spread
    over the players (so the group starts early and its members part at different depths)."""
    masks = [0]
    for k in range(size - 1):
        masks.append((1 << ((k * n_players) // max(1, size - 1))) | (1 << (n_players - 1 - k % n_players)))
    return masks

"""The full-model capture pass, and the self-check that the cached forward reproduces the model.

**Capture.** The evaluator runs the full model once, through a forward that records, per batch,
every block's input (the kept ones: see ``prefix_cache.py``) and arguments, and, on the first
batch, how each removable module is called (its stub :class:`~layerscope.engine.stubs.Signature`).
The forward stops after the last block; the logits come from the cached forward's head, so the
full model's result is the engine's own.

**Self-check.** On the first batch this process ran, the engine's logits for the full model and
for one removal pattern (the first player and a middle one) are compared with plain hooked
forwards (``removal.py``, the reference). A model the engine does not reproduce (an extra
projection after the final norm, stateful blocks, ...) raises :class:`Fallback`; if only the zero
stubs disagree, removed modules run and are zeroed instead. Before that, a structural check: a
block that takes, beside its hidden states, something an earlier block computed (Zaya hands its
router states from block to block) would be replayed with that argument stale from the full
model's run, by an amount a single batch may not show; such a model falls back too
(``Probe.side_channel``).

**Tolerance** (:func:`check_tolerance`): relative to the logits' magnitude, a few rounding steps of
the dtype the model computes in, never below ``1e-5``: ``1e-5`` for float32 (and float64),
``8 * eps`` otherwise (bfloat16 ``6.25e-2``, float16 ``7.8e-3``). The two paths run the same
operations on different shapes (the head on scored positions only, blocks resumed from a cached
state), which a GPU may round differently; what the check is there to catch, a model the engine
does not reproduce, differs by order one. A fixed float32 tolerance made every bfloat16 model
on such a GPU fall back to plain forwards for nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from layerscope.core.errors import ModelError
from layerscope.core.layermap import LayerMap
from layerscope.core.quantization import compute_dtype
from layerscope.engine.forward import CachedForward, model_inputs
from layerscope.engine.hooks import (
    BlockCall,
    StopForward,
    block_call,
    hidden_states,
    on_block_inputs,
    on_outputs,
    run_stopped,
    stop_after,
)
from layerscope.engine.prefix_cache import BlockArgs
from layerscope.engine.removal import removed
from layerscope.engine.stubs import signature

if TYPE_CHECKING:
    import torch.nn as nn

    from layerscope.scoring import Batch, EvalResult

CheckBatch = tuple[int, "Batch"]  # (batch index, batch) the self-check runs on


class Fallback(Exception):
    """The cached path cannot reproduce this model: use plain hooked forwards."""


class _Recorder:
    """The evaluator's ``forward`` for the capture pass (one call per batch)."""

    def __init__(self, fwd: CachedForward, total_tokens: int):
        self.fwd = fwd
        self.total_tokens = total_tokens  # over every batch: one block's input costs this many hidden vectors
        self.check: CheckBatch | None = None  # the first batch this process runs (not batch 0 on every rank)

    def __call__(self, i: int, b: Batch) -> torch.Tensor:
        fwd, cache = self.fwd, self.fwd.cache
        n_blocks = fwd.n_blocks
        inputs: list[torch.Tensor | None] = [None] * n_blocks
        args: list[BlockArgs | None] = [None] * n_blocks
        out: list[torch.Tensor] = []

        def record(d: int, call: BlockCall) -> None:
            h = call.hidden
            kept = cache.kept_blocks
            if kept is None:  # first batch: now the hidden size is known
                kept = cache.keep_blocks(h[0, 0].numel() * h.element_size() * self.total_tokens)
            if d in kept:
                inputs[d] = h.clone()
            args[d] = BlockArgs.of(call)

        blocks = fwd.parts.blocks
        with on_block_inputs(blocks, record), stop_after(blocks[n_blocks - 1], out), self._signatures():
            run_stopped(fwd.model, **model_inputs(b))
        if not out or any(a is None for a in args):
            raise Fallback("the model did not call every decoder block once, in order")
        cache.record(i, inputs, args)  # type: ignore[arg-type]  # no None left
        logits = fwd.logits(out[0], b)
        if self.check is None:
            self.check = (i, b)
        return logits

    def _signatures(self) -> contextlib.AbstractContextManager:
        """Record each removable module's call signature, on the first batch only."""
        sigs = self.fwd.signatures
        if sigs:
            return contextlib.nullcontext()
        paths = {p for ts in self.fwd.targets for p in ts}

        def record(path: str, args: tuple, kwargs: dict, output) -> None:
            if path not in sigs:
                sigs[path] = signature(args, kwargs, output, self.fwd.model.get_submodule(path))

        return on_outputs({path: self.fwd.model.get_submodule(path) for path in paths}, record)


def capture_full_model(fwd: CachedForward, evaluator, progress: bool) -> tuple[EvalResult, CheckBatch | None]:
    """The full model's result, filling ``fwd.cache`` and ``fwd.signatures`` on the way.

    Returns the result and the batch for the self-check (None: this process ran no batch).
    Raises :class:`Fallback` when the model's forward does not fit the engine.
    """
    recorder = _Recorder(fwd, sum(b.input_ids.numel() for b in evaluator.batches))
    try:
        with torch.no_grad():
            result = evaluator.evaluate(fwd.model, forward=recorder, progress=progress)
    except Fallback:
        raise
    except (RuntimeError, KeyError, TypeError, ModelError) as e:
        raise Fallback(f"capturing block inputs failed ({type(e).__name__}: {e})") from None
    fwd.cache.count_bytes()
    return result, recorder.check


FLOAT32_TOLERANCE = 1e-5  # the floor, and float32's tolerance
ROUNDING_STEPS = 8  # of the computing dtype's epsilon, for lower precisions


def check_tolerance(model: torch.nn.Module) -> float:
    """The self-check's tolerance for ``model``: from the least precise dtype it computes in
    (:func:`~layerscope.core.quantization.compute_dtype`: a 4-bit model's compute dtype, not the
    float32 of its embeddings)."""
    dtype = compute_dtype(model)
    eps = torch.finfo(dtype).eps if dtype is not None else 0.0
    return max(FLOAT32_TOLERANCE, ROUNDING_STEPS * eps)


def relative_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    scale = max(1.0, float(ref.abs().max()))
    return float((a.float() - ref.float()).abs().max()) / scale


class Probe:
    """Scored logits of one batch by the cached forward and by a plain hooked forward."""

    def __init__(self, fwd: CachedForward, layer_map: LayerMap, granularity: str, check: CheckBatch):
        self.fwd, self.layer_map, self.granularity = fwd, layer_map, granularity
        self.i, self.b = check
        self.rows, self.pos = getattr(self.b, "uniq_row", None), getattr(self.b, "uniq_pos", None)

    def plain(self, removed_mask: int) -> torch.Tensor:
        model, b = self.fwd.model, self.b
        players = [p for p in range(len(self.fwd.targets)) if (removed_mask >> p) & 1]
        with torch.no_grad(), removed(model, self.layer_map, players, self.granularity):
            out = model(**model_inputs(b))
        logits = hidden_states(out.logits if hasattr(out, "logits") else out)
        if self.rows is not None:
            return logits[self.rows, self.pos]
        return logits[:, -int(getattr(b, "logits_to_keep", 0) or logits.shape[1]) :]

    def side_channel(self) -> str | None:
        """An argument a block takes from an earlier block's work besides the hidden states (Zaya's
        router states, handed from block to block), or None. The cache replays each block with the
        arguments of the full model's run, so such an argument would be stale under a removal. Found
        by running the blocks twice, block 0's input perturbed the second time: a later block's
        hidden states change, any other argument must not. Each distinct argument tensor is copied
        once (masks and rotary tables are shared by every block) and dropped once compared; both
        runs stop after the last block."""
        blocks = self.fwd.model.get_submodule(self.layer_map.blocks_path)
        first: dict[int, dict] = {}
        found: list[str] = []
        copies: dict[int, object] = {}  # id(tensor) -> its copy, within the first run

        def remember(d: int, call: BlockCall) -> None:
            if d:
                first[d] = _snapshot(_named_arguments(blocks[d], call), copies)

        def compare(d: int, call: BlockCall) -> None:
            before = first.pop(d, None)
            if before is None or found:
                return
            now = _named_arguments(blocks[d], call)
            changed = next((name for name, value in before.items() if not _same(value, now.get(name))), None)
            if changed is not None:
                found.append(f"block {d} takes {changed!r} from an earlier block's output, beside the hidden states")
                raise StopForward

        for record, perturb in ((remember, False), (compare, True)):
            hooks = [blocks[0].register_forward_pre_hook(_perturbed, with_kwargs=True)] if perturb else []
            try:
                with torch.no_grad(), on_block_inputs(blocks, record), stop_after(blocks[len(blocks) - 1], []):
                    run_stopped(self.fwd.model, **model_inputs(self.b))
            finally:
                for h in hooks:
                    h.remove()
            copies.clear()
        return found[0] if found else None

    def cached(self, removed_mask: int, use_stubs: bool) -> torch.Tensor:
        fwd, i, b = self.fwd, self.i, self.b
        with torch.no_grad():
            base = fwd.cache.base_input(i, 0)
            h = base if base is not None else fwd.run_to(b, 0)
            with fwd.removal(removed_mask, use_stubs):
                h = fwd.run_blocks(i, h, 0)
            logits = fwd.logits(h, b)
        if self.rows is None:
            return logits
        return logits[self.rows, self.pos - (b.width - logits.shape[1])]


def _perturbed(_module, args, kwargs):
    """A forward pre-hook: the block's input hidden states moved by a fixed, clearly visible amount."""
    call = block_call(args, kwargs)
    h = call.hidden
    moved = h + 0.1 * h.detach().abs().mean() * torch.linspace(-1.0, 1.0, h.shape[-1], dtype=h.dtype, device=h.device)
    if call.as_keyword:
        return args, {**kwargs, "hidden_states": moved}
    return (moved, *args[1:]), kwargs


def _positional_names(block: nn.Module):
    """Name of the block's k-th positional argument after the hidden states, from its signature."""
    import inspect

    try:
        params = list(inspect.signature(block.forward).parameters)
    except (TypeError, ValueError):
        params = []
    return lambda k: params[k + 1] if k + 1 < len(params) else f"positional argument {k + 2}"


def _named_arguments(block: nn.Module, call: BlockCall) -> dict:
    """A block call's arguments other than the hidden states, by name."""
    names = _positional_names(block)
    return {**{names(k): v for k, v in enumerate(call.rest)}, **call.kwargs}


def _snapshot(value, copies: dict):
    """``value`` with every tensor in it copied, each distinct tensor once (``copies``: id -> copy); a
    block may change a shared mapping or tensor in place (Gemma 3n's KV-sharing dict)."""
    if torch.is_tensor(value):
        if id(value) not in copies:
            copies[id(value)] = value.detach().clone()
        return copies[id(value)]
    if isinstance(value, (list, tuple)):  # compared element by element (``_same``): either kind will do
        return [_snapshot(v, copies) for v in value]
    if isinstance(value, Mapping):
        return {k: _snapshot(v, copies) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    """Equal tensors (same shape and values) at the same places; anything else compared as a marker only."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b.to(a.device))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True  # a cache object, a flag, None: not a tensor an earlier block could have computed


def self_check(
    fwd: CachedForward,
    layer_map: LayerMap,
    granularity: str,
    check: CheckBatch,
    tolerance: float,
    diffs: dict[str, float],
) -> bool:
    """Cached forward == plain forward on ``check``, for the full model and one removal pattern.

    Records the relative differences in ``diffs``. Returns whether the zero stubs may be used
    (False: they disagree but running and zeroing the removed modules agrees; warns once).
    Raises :class:`Fallback` when neither agrees within ``tolerance``.
    """
    probe = Probe(fwd, layer_map, granularity, check)
    channel = probe.side_channel()
    if channel is not None:
        raise Fallback(channel)
    diffs["tolerance"] = tolerance
    diffs["full"] = d_full = relative_diff(probe.cached(0, True), probe.plain(0))
    if not d_full <= tolerance:
        raise Fallback(f"full-model logits differ from a plain forward by {d_full:.2e} (relative)")
    n = len(fwd.targets)
    # the first player and a middle one removed: the first changes every later block's input, so a block
    # that also takes something an earlier block computed (Zaya's router states, handed from block to
    # block beside the hidden states) gets it stale from the cache and disagrees here
    one = 1 | 1 << (n // 2)
    ref = probe.plain(one)
    diffs["removal"] = d_rm = relative_diff(probe.cached(one, True), ref)
    if d_rm <= tolerance:
        return True
    diffs["removal_hooks"] = d_rm = relative_diff(probe.cached(one, False), ref)
    if not d_rm <= tolerance:
        players = " and ".join(dict.fromkeys(layer_map.players(granularity)[i] for i in (0, n // 2)))
        raise Fallback(f"logits with {players} removed differ from a hooked forward by {d_rm:.2e} (relative)")
    warnings.warn(
        f"{type(fwd.model).__name__}: zero stubs disagree with hooks; removed modules are computed and zeroed instead",
        RuntimeWarning,
        stacklevel=4,
    )
    return False

"""Hook points on a model's decoder blocks, and hooks that always clean up.

Everything that looks inside a forward pass goes through here: the coalition engine (capture
every block's input, start a forward at a block, remove a module), the similarity baselines
(read each block's input and the last block's output), the removal check (force what a module
adds) and the fine-tuning probe (does the hidden state entering a block require grad). Every
hook is registered inside a context manager and removed on exit, also after an exception, so a
model never keeps a stray hook.

A block is called either as ``block(hidden, *rest, **kwargs)`` or ``block(hidden_states=...,
**kwargs)`` depending on the architecture; :class:`BlockCall` records which, so it can be
replayed exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from layerscope.core.errors import ModelError


class StopForward(Exception):
    """Raised inside a hook to end a model forward early: the rest of it is not needed."""


@dataclass
class BlockCall:
    """How one decoder block was called: its hidden-state input and every other argument."""

    hidden: torch.Tensor
    rest: tuple  # positional arguments after the hidden states
    kwargs: dict  # keyword arguments (masks, position embeddings, ...), without hidden_states
    as_keyword: bool  # hidden states were passed as ``hidden_states=``

    def replay(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Call ``block`` the same way on other hidden states; returns its output hidden states."""
        if self.as_keyword:
            return hidden_states(block(hidden_states=hidden, **self.kwargs))
        return hidden_states(block(hidden, *self.rest, **self.kwargs))


def block_call(args: tuple, kwargs: dict) -> BlockCall:
    """The :class:`BlockCall` of a forward pre-hook's ``(args, kwargs)`` (registered ``with_kwargs``)."""
    if args:
        return BlockCall(args[0], tuple(args[1:]), dict(kwargs), False)
    kw = dict(kwargs)
    if "hidden_states" not in kw:
        raise ModelError("a decoder block was called without hidden states")
    return BlockCall(kw.pop("hidden_states"), (), kw, True)


def hidden_states(output: Any) -> torch.Tensor:
    """The hidden states of a module or block output (a tensor, or the first element of a tuple)."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    hs = getattr(output, "last_hidden_state", None)
    if torch.is_tensor(hs):
        return hs
    raise ModelError(f"cannot find hidden states in a module output of type {type(output).__name__}")


def replace_hidden(module: nn.Module, output: Any, new: torch.Tensor) -> Any:
    """``output`` (a tensor, or a tuple / list whose first element is one) with that tensor replaced by ``new``."""
    if torch.is_tensor(output):
        return new
    if isinstance(output, tuple) and output and torch.is_tensor(output[0]):
        return (new,) + tuple(output[1:])
    if isinstance(output, list) and output and torch.is_tensor(output[0]):
        return [new] + list(output[1:])
    raise ModelError(f"cannot replace the output of {type(module).__name__} (output type {type(output).__name__})")


def zero_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: replace the module's output (or its first element) by zeros."""
    return replace_hidden(module, output, torch.zeros_like(hidden_states(output)))


# ----------------------------------------------------------------------------- residual-adding modules
# Some families (BLOOM, MPT's MLP) pass the residual into the attention / MLP module, which returns
# ``residual + f(x)``: there, removing the module means returning the residual it was given.

RESIDUAL_ARGUMENT = "residual"


def residual_position(module: nn.Module) -> int | None:
    """Position of ``module.forward``'s ``residual`` parameter (None: the module does not take one).

    Structural: a parameter named ``residual`` means the module adds the residual itself. The
    removal check (``removal_check.py``) verifies the consequence on every model, so a module
    that adds it under another name is refused, never silently mis-removed.
    """
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(params):
        if p.name == RESIDUAL_ARGUMENT and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return i if p.kind != p.KEYWORD_ONLY else -1
    return None


def residual_argument(position: int, args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual a residual-adding module was called with (``position`` from :func:`residual_position`)."""
    if RESIDUAL_ARGUMENT in kwargs:
        return kwargs[RESIDUAL_ARGUMENT]
    if 0 <= position < len(args):
        return args[position]
    raise ModelError("a residual-adding module was called without its residual")


def removal_hook(module: nn.Module, rows: torch.Tensor | None = None) -> Callable[..., Any]:
    """Forward hook (``with_kwargs``) that removes ``module``'s contribution: its output becomes zeros,
    or, for a residual-adding module, (a copy of) the residual it was given. ``rows`` (bool, one per
    row of the batch): remove it on those rows only, leaving the others' output as it is (several
    coalitions stacked in one forward, ``stacked.py``)."""
    position = residual_position(module)

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if rows is None and position is None:
            return zero_output(mod, args, output)
        out = hidden_states(output)
        if position is None:
            gone = torch.zeros_like(out)
        else:  # a copy: the block may update the returned tensor in place, and the residual may be a cached state
            gone = residual_argument(position, args, kwargs).clone()
        if rows is not None:
            per_row, rest = divmod(out.shape[0], rows.shape[0])
            if rest or not per_row:
                raise ModelError(f"{type(mod).__name__} output has {out.shape[0]} rows, not a multiple of the batch's")
            # OPT's MLP works on [batch * positions, hidden]: batch-major, which the engine's check confirms
            pick = rows.to(out.device).repeat_interleave(per_row).view(-1, *([1] * (out.dim() - 1)))
            gone = torch.where(pick, gone, out)
        return replace_hidden(mod, output, gone)

    return hook


@contextlib.contextmanager
def hooked(handles: list) -> Iterator[list]:
    """Yield a list to put hook handles in; every one is removed on exit."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def on_block_inputs(blocks: Sequence[nn.Module], fn: Callable[[int, BlockCall], None]) -> Iterator[None]:
    """Within the block, ``fn(index, call)`` runs before each decoder block does."""

    def pre(d: int):
        def hook(module, args, kwargs):
            fn(d, block_call(args, kwargs))

        return hook

    with hooked([b.register_forward_pre_hook(pre(d), with_kwargs=True) for d, b in enumerate(blocks)]):
        yield


@contextlib.contextmanager
def on_outputs(modules: dict[str, nn.Module], fn: Callable[[str, tuple, dict, Any], None]) -> Iterator[None]:
    """Within the block, ``fn(name, args, kwargs, output)`` runs after each named module does."""

    def post(name: str):
        def hook(module, args, kwargs, output):
            fn(name, args, kwargs, output)

        return hook

    with hooked([m.register_forward_hook(post(n), with_kwargs=True) for n, m in modules.items()]):
        yield


@contextlib.contextmanager
def removed_outputs(modules: Sequence[nn.Module], rows: Sequence[torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, each of ``modules`` still runs but contributes nothing: it outputs zeros,
    or its residual argument when it adds the residual itself (see :func:`removal_hook`); with
    ``rows`` (one bool row mask per module), only on those rows."""
    per_row = rows if rows is not None else [None] * len(modules)
    with hooked([m.register_forward_hook(removal_hook(m, r), with_kwargs=True) for m, r in zip(modules, per_row)]):
        yield


def contribution(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    """What ``module`` adds to the residual stream in one call: its output hidden states, less the
    residual for a residual-adding module (a new tensor: the block may update the output in place)."""
    position = residual_position(module)
    out = hidden_states(output)
    return out.clone() if position is None else out - residual_argument(position, args, kwargs)


@contextlib.contextmanager
def forced_contributions(contributions: dict[nn.Module, torch.Tensor]) -> Iterator[None]:
    """Within the block, each module still runs but adds exactly the given contribution (see
    :func:`contribution`): its output hidden states become a copy of it, or residual + it."""

    def hook_for(m: nn.Module, value: torch.Tensor):
        position = residual_position(m)

        def hook(mod, args, kwargs, output):
            new = value.clone() if position is None else residual_argument(position, args, kwargs) + value
            return replace_hidden(mod, output, new)

        return hook

    with hooked([m.register_forward_hook(hook_for(m, v), with_kwargs=True) for m, v in contributions.items()]):
        yield


@contextlib.contextmanager
def stop_after(module: nn.Module, box: list) -> Iterator[None]:
    """Within the block, a forward appends ``module``'s output hidden states to ``box`` and stops
    there (raises :class:`StopForward`; run the model through :func:`run_stopped`)."""

    def hook(_module, _args, output):
        box.append(hidden_states(output))
        raise StopForward

    with hooked([module.register_forward_hook(hook)]):
        yield


@contextlib.contextmanager
def stop_before(module: nn.Module, box: list) -> Iterator[None]:
    """Within the block, a forward appends ``module``'s input hidden states to ``box`` and stops
    before running it."""

    def hook(_module, args, kwargs):
        box.append(block_call(args, kwargs).hidden)
        raise StopForward

    with hooked([module.register_forward_pre_hook(hook, with_kwargs=True)]):
        yield


def run_stopped(model: nn.Module, **inputs: Any) -> bool:
    """``model(**inputs)`` for a forward that a hook may end early; True if one did."""
    try:
        model(**inputs)
    except StopForward:
        return True
    return False


# ----------------------------------------------------------------------------- experts (granularity "expert")
# A routed expert lives inside one fused experts module (``core/experts.py``) called as
# ``experts(hidden_states, top_k_index, top_k_weights)``: removing expert e zeroes its output by
# giving it routing weight 0 wherever the router chose it. The token keeps its other experts and
# their weights (no renormalisation, no re-routing), so the MoE output is exactly the sum of the
# kept experts' weighted outputs. The weight, not the index, is changed because every experts
# kernel (eager loop, batched and grouped matmul) multiplies by it; an out-of-range "skip" index is
# honoured only by some of them.


def _routing(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(top_k_index, top_k_weights) of an experts module call, positional or keyword."""
    found = []
    for pos, name in ((1, "top_k_index"), (2, "top_k_weights")):
        value = kwargs.get(name, args[pos] if pos < len(args) else None)
        if not torch.is_tensor(value):
            raise ModelError(f"an experts module was called without {name}")
        found.append(value)
    return found[0], found[1]


def expert_mask_hook(removed: Sequence[int]) -> Callable[..., Any]:
    """Forward pre-hook (``with_kwargs``) on a fused experts module: experts ``removed`` get routing weight 0."""
    ids = sorted(set(int(e) for e in removed))

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        index, weights = _routing(args, kwargs)
        gone = torch.isin(index, torch.tensor(ids, device=index.device, dtype=index.dtype))
        weights = weights.masked_fill(gone, 0)  # a new tensor: the router's output is left as it was
        if "top_k_weights" in kwargs:
            return args, {**kwargs, "top_k_weights": weights}
        return (*args[:2], weights, *args[3:]), kwargs

    return hook


@contextlib.contextmanager
def masked_experts(experts: dict[nn.Module, Sequence[int]]) -> Iterator[None]:
    """Within the block, each fused experts module still runs, but the experts listed for it add nothing."""
    with hooked(
        [m.register_forward_pre_hook(expert_mask_hook(ids), with_kwargs=True) for m, ids in experts.items() if ids]
    ):
        yield

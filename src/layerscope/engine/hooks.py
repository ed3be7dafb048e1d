"""Hook points on a model's decoder blocks, and hooks that always clean up.

Everything that looks inside a forward pass goes through here: the coalition engine (capture
every block's input, start a forward at a block, zero a removed module), the similarity
baselines (read each block's input and the last block's output) and the fine-tuning probe (does
the hidden state entering a block require grad). Every hook is registered inside a context
manager and removed on exit, also after an exception, so a model never keeps a stray hook.

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


def zero_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: replace the module's output (or its first element) by zeros."""
    if torch.is_tensor(output):
        return torch.zeros_like(output)
    if isinstance(output, tuple) and output and torch.is_tensor(output[0]):
        return (torch.zeros_like(output[0]),) + tuple(output[1:])
    if isinstance(output, list) and output and torch.is_tensor(output[0]):
        return [torch.zeros_like(output[0])] + list(output[1:])
    raise ModelError(f"cannot zero the output of {type(module).__name__} (output type {type(output).__name__})")


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
def zeroed(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, each of ``modules`` outputs zeros (it still runs)."""
    with hooked([m.register_forward_hook(zero_output) for m in modules]):
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

"""Zero stubs: a removed module that is not run at all.

Removing a module makes it contribute nothing (``removal.py``): its output is zeros, or, for a
module that adds the residual itself, the residual it was given. Running it only to throw the
result away costs as much as keeping it, so once a module's call has been seen on the full model
(its :class:`Signature`), the cached forward replaces its ``forward`` by a stub that returns zeros
of the recorded shape and structure (a copy of its residual argument for a residual-adding
module). Modules whose call does not fit that pattern, or every module when stubs are turned off,
still run and have their outputs replaced by a hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from layerscope.engine.hooks import removed_outputs, residual_argument, residual_position

_MISSING = object()  # the module had no instance-level ``forward`` to restore


@dataclass
class Signature:
    """How a removable module is called and what it returns, seen once on the full model.

    A removed module whose signature is ``ok`` is not run at all: a stub returns zeros of the
    recorded shape (input's leading dims + ``out_dim``) in the recorded structure, or a copy of
    its residual argument when ``residual`` is set (the module adds the residual itself).
    """

    hidden_kw: str | None  # None: hidden states are the first positional argument
    out_dim: int
    dtype: torch.dtype
    tuple_len: int | None  # None: a plain tensor; else a tuple (zeros, None, ...)
    ok: bool
    residual: int | None = None  # position of the residual argument (hooks.residual_position); None: none


def signature(args: tuple, kwargs: dict, output: Any, module: nn.Module | None = None) -> Signature:
    """The :class:`Signature` of one call of ``module``, from a forward hook's ``(args, kwargs, output)``."""
    if args and torch.is_tensor(args[0]):
        x, kw = args[0], None
    else:
        x, kw = kwargs.get("hidden_states"), "hidden_states"
    first = output if torch.is_tensor(output) else (output[0] if isinstance(output, tuple) and output else None)
    tuple_len = None if torch.is_tensor(output) else (len(output) if isinstance(output, tuple) else None)
    ok = (
        torch.is_tensor(x)
        and torch.is_tensor(first)
        and x.shape[:-1] == first.shape[:-1]
        and (tuple_len is None or all(o is None for o in output[1:]))
        and (torch.is_tensor(output) or isinstance(output, tuple))
    )
    return Signature(
        kw,
        int(first.shape[-1]) if torch.is_tensor(first) else 0,
        first.dtype if torch.is_tensor(first) else torch.float32,
        tuple_len,
        bool(ok),
        residual_position(module) if module is not None else None,
    )


def make_stub(sig: Signature) -> Callable[..., Any]:
    """A ``forward`` that returns zeros shaped like the module's real output (its residual argument,
    copied, for a residual-adding module)."""

    def forward(*args, **kwargs):
        if sig.residual is not None:
            z = residual_argument(sig.residual, args, kwargs).clone()
        else:
            x = args[0] if sig.hidden_kw is None else kwargs[sig.hidden_kw]
            z = torch.zeros(x.shape[:-1] + (sig.out_dim,), dtype=sig.dtype, device=x.device)
        return z if sig.tuple_len is None else (z,) + (None,) * (sig.tuple_len - 1)

    return forward


@contextlib.contextmanager
def removed_or_stubbed(
    modules: Sequence[tuple[str, nn.Module]], signatures: dict[str, Signature], use_stubs: bool
) -> Iterator[None]:
    """Within the block, each ``(path, module)`` contributes nothing: replaced by a stub where its
    signature allows (and ``use_stubs``), else run with its output replaced by a hook."""
    patched: list[tuple[nn.Module, Any]] = []
    hooked: list[nn.Module] = []
    try:
        for path, mod in modules:
            sig = signatures.get(path)
            if use_stubs and sig is not None and sig.ok:
                patched.append((mod, mod.__dict__.get("forward", _MISSING)))
                mod.forward = make_stub(sig)
            else:
                hooked.append(mod)
        with removed_outputs(hooked):
            yield
    finally:
        for mod, old in reversed(patched):
            if old is _MISSING:
                del mod.forward
            else:
                mod.forward = old

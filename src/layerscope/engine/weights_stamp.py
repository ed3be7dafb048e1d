"""Whether a model's weights are still the ones the engine captured.

The coalition engine caches the full model's hidden states and memoises every value it computes.
Both describe the weights as they were at construction: a model edited afterwards (an in-place
change, ``.to(dtype)``, ``load_state_dict``, a swapped parameter) would get the old model's values,
stamped with the new model's fingerprint. :func:`weights_stamp` is taken at construction and
compared before every batch of coalitions; a difference is refused.

The stamp is cheap, since it is taken per call: each parameter's identity, storage address,
version counter (bumped by in-place operations autograd sees), dtype, device and shape, plus a few
strided elements of each one, which also catches edits made through ``.data`` (those
bypass the version counter). An edit of single elements outside that sample can still pass: this
is a guard against the common mistakes, not a proof.
"""

from __future__ import annotations

import torch
import torch.nn as nn

SAMPLES_PER_TENSOR = 16


def weights_stamp(model: nn.Module) -> tuple:
    """A value that changes when ``model``'s parameters do (module docstring)."""
    layout = []
    samples: dict[torch.device, list[torch.Tensor]] = {}  # per device: one transfer each
    for name, p in model.named_parameters():
        on_meta = p.device.type == "meta"  # offloaded: the weights live in accelerate's map, reloaded per forward
        # inference tensors (an offloaded weight loaded under inference mode) keep no version counter
        version = -1 if on_meta or p.is_inference() else p._version
        layout.append((name, 0 if on_meta else p.data_ptr(), version, p.dtype, str(p.device), tuple(p.shape)))
        if not on_meta and p.numel() > 0:
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            samples.setdefault(p.device, []).append(flat[::step][:SAMPLES_PER_TENSOR])  # a view: no copy
    checksum = tuple(
        # one concatenation and one transfer per device; NaN (which never equals itself) read as 0
        (str(device), tuple(torch.cat([v.double() for v in views]).nan_to_num(nan=0.0).tolist()))
        for device, views in samples.items()
    )
    return tuple(layout), checksum


def changed_since(model: nn.Module, stamp: tuple) -> str | None:
    """What changed since ``stamp`` was taken, in words, or None."""
    layout, checksum = weights_stamp(model)
    before_layout, before_checksum = stamp
    if layout != before_layout:
        names_before = [entry[0] for entry in before_layout]
        if names_before != [entry[0] for entry in layout]:
            return "its parameters were added, removed or renamed"
        first = next(new for old, new in zip(before_layout, layout) if old != new)
        return f"parameter {first[0]} was changed or replaced (value, dtype, device or shape)"
    if checksum != before_checksum:
        return "its weights were edited in place"
    return None

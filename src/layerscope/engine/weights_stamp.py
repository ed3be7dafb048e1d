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
    samples: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}  # one conversion per group
    for name, p in model.named_parameters():
        on_meta = p.device.type == "meta"  # offloaded: the weights live in accelerate's map, reloaded per forward
        # a tensor subclass (a DTensor under tensor parallelism) is recorded by its layout alone
        plain = not on_meta and type(p.data) is torch.Tensor
        # inference tensors (an offloaded weight loaded under inference mode) keep no version counter
        version = p._version if plain and not p.is_inference() else -1
        layout.append((name, p.data_ptr() if plain else 0, version, p.dtype, str(p.device), tuple(p.shape)))
        if plain and p.numel() > 0:
            step = max(1, p.numel() // SAMPLES_PER_TENSOR)
            where = torch.arange(0, p.numel(), step, device=p.device)[:SAMPLES_PER_TENSOR]
            # take() reads row-major positions of any layout: reshape(-1) would copy a transposed weight whole
            samples.setdefault((p.device, p.dtype), []).append(torch.take(p.detach(), where))
    checksum = tuple(
        # NaN (which never equals itself) read as 0
        (str(device), str(dtype), tuple(torch.cat(parts).double().nan_to_num(nan=0.0).tolist()))
        for (device, dtype), parts in samples.items()
    )
    return tuple(layout), checksum


# what a difference in a layout field means, by its place in weights_stamp's entries, most telling first:
# a new dtype, device or shape also gives a new storage, which alone would say only "replaced"
_CHANGES = (
    (3, "has another dtype"),
    (4, "is on another device"),
    (5, "has another shape"),
    (1, "was replaced by another tensor"),
    (2, "was written in place (perhaps with the same values)"),
)


def changed_since(model: nn.Module, stamp: tuple) -> str | None:
    """What changed since ``stamp`` was taken, in words, or None."""
    layout, checksum = weights_stamp(model)
    before_layout, before_checksum = stamp
    if layout != before_layout:
        names_before = [entry[0] for entry in before_layout]
        if names_before != [entry[0] for entry in layout]:
            return "its parameters were added, removed or renamed"
        old, new = next((old, new) for old, new in zip(before_layout, layout) if old != new)
        what = next(change for place, change in _CHANGES if old[place] != new[place])
        return f"parameter {new[0]} {what}"
    if checksum != before_checksum:
        return "its weights were edited in place (through .data, which keeps no version count)"
    return None

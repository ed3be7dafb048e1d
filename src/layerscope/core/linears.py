"""What counts as a linear module, the unit of the ``module`` granularity and of LoRA: nn.Linear and
GPT-2's Conv1D, quantized linears, a model's own subclass only while it still maps like a linear, and
a peft-wrapped linear as one module under the wrapper's name (its parts are not modules of the model).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is inspected
    import torch.nn as nn


def linear_types() -> tuple[type, ...]:
    """nn.Linear plus GPT-2's Conv1D (a transposed linear)."""
    import torch.nn as nn

    types: list[type] = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover - very old transformers
        pass
    return tuple(types)


def is_linear(module: nn.Module) -> bool:
    """A linear map of its input: nn.Linear / Conv1D, or a quantized linear (bitsandbytes, ...). A model's
    own subclass of nn.Linear that changes ``forward`` may not be one: Llama 4's and PhiMoE's routers
    return (scores, indices), DeepSeek-V4's grouped projection splits its input; LoRA cannot adapt
    them. Such a class is called once on a zero input and kept only if it maps (.., in) to a tensor
    (.., out) as a linear does (Falcon's FalconLinear)."""
    bases = linear_types()
    if not isinstance(module, bases):
        return False
    cls = type(module)
    if cls in bases or not cls.__module__.startswith("transformers.models."):
        return True
    if all(cls.forward is base.forward for base in bases if isinstance(module, base)):
        return True
    if cls not in _ACTS_LINEAR:
        verdict = _maps_like_a_linear(module)
        if verdict is None:  # could not tell (weights offloaded and not reachable here): as nn.Linear says
            return True
        _ACTS_LINEAR[cls] = verdict
    return _ACTS_LINEAR[cls]


_ACTS_LINEAR: dict[type, bool] = {}  # per class overriding a linear's forward: whether it still maps like one


def _maps_like_a_linear(module: nn.Module) -> bool | None:
    """Called on a zero input where the module computes (an offloaded one: its accelerate hook's device);
    None when the call failed and the weights were not there to compute with (meta)."""
    import torch

    from layerscope.core.devices import module_device

    weight = module.weight
    n_in, n_out = (weight.shape[1], weight.shape[0]) if isinstance(module, linear_types()[0]) else weight.shape
    device = module_device(module) or weight.device
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, 3, n_in, dtype=weight.dtype, device=device))
    except Exception:  # a router needing more arguments, a grouped projection refusing the shape, ...
        return None if weight.device.type == "meta" else False
    return torch.is_tensor(out) and tuple(out.shape) == (2, 3, n_out)


def peft_base_layer(module: nn.Module) -> nn.Module | None:
    """The module a peft tuner layer wraps (LoRA's ``q_proj`` wrapper -> the original ``nn.Linear``);
    None for any other module. peft is looked up, not imported: a model holding peft layers has loaded it."""
    tuners_utils = sys.modules.get("peft.tuners.tuners_utils")
    if tuners_utils is None or not isinstance(module, tuners_utils.BaseTunerLayer):
        return None
    return module.get_base_layer()


def linear_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name relative to ``module``, module) of its linear modules, pre-order. A peft tuner layer wrapping
    a linear is one linear under its own name, the name the base model had there: its output (base +
    adapter) is what the model uses, so zeroing it removes that linear. Nothing inside a tuner layer is
    one (base_layer, lora_A.default, lora_B.default are its parts), so a peft model has the base model's
    linears and names."""
    out: list[tuple[str, nn.Module]] = []
    inside: tuple[str, ...] = ()  # name prefixes of tuner layers seen: not searched below them
    for n, m in module.named_modules():
        if n.startswith(inside):
            continue
        base = peft_base_layer(m)
        if base is not None:
            inside += (f"{n}." if n else "",)  # "": ``module`` itself is one, everything below is inside
        if is_linear(m if base is None else base):
            out.append((n, m))
    return out

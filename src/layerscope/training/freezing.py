"""Which parameters train: freezing all but the selected modules, counting what is left, and
giving a model back as it came once training is over."""

from __future__ import annotations

import os

import torch

from layerscope.core.layermap import LayerMap
from layerscope.core.quantization import refuse_quantized
from layerscope.training.lora import module_paths

# weights too coarse for an optimizer to update in place: at full fine-tuning's learning rates most of
# AdamW's steps are below half a unit in the last place of a bfloat16 weight and round away
HALF_PRECISION = (torch.bfloat16, torch.float16)


def freeze_except(model: torch.nn.Module, layer_map: LayerMap, modules: list[str]) -> int:
    """Full fine-tuning of ``modules`` only: freeze everything else. Returns trainable parameters.
    A model quantised by bitsandbytes is refused: its packed integer weights cannot train."""
    refuse_quantized(model, "full fine-tuning")
    freeze_all(model)
    n = 0
    for path in module_paths(layer_map, modules):
        for p in model.get_submodule(path).parameters():
            p.requires_grad_(True)
            n += p.numel()
    return n


def launcher_keeps_float32_weights() -> bool:
    """True under ``accelerate launch`` with FSDP and mixed precision: accelerate then upcasts the trainable
    low-precision parameters to float32 master weights itself (and computes in the mixed dtype)."""
    return (
        os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() == "true"
        and os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower() != "no"
    )


def half_precision_trainable(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s trainable weights when it is bfloat16 or float16 (the optimizer would
    update them with no float32 copy), else None."""
    return next((p.dtype for p in model.parameters() if p.requires_grad and p.dtype in HALF_PRECISION), None)


def freeze_all(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def block_modules(model: torch.nn.Module, layer_map: LayerMap) -> list[torch.nn.Module]:
    """The decoder blocks, in order, of ``model`` or of the base model a peft wrapper holds."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [base.get_submodule(layer_map.block_path(i)) for i in range(layer_map.n_blocks)]


def trainable_blocks(model: torch.nn.Module, layer_map: LayerMap) -> dict[int, list[torch.nn.Parameter]]:
    """Block index -> its trainable parameters, for the blocks that have any (ascending)."""
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for i, block in enumerate(block_modules(model, layer_map)):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups[i] = params
    return groups


class TrainingState:
    """What training changes on a model and a caller gets back: its ``requires_grad`` flags, its
    train/eval mode, (a Trainer switches it on) activation checkpointing, and the hook on the input
    embeddings that peft adds to a checkpointing model (``enable_input_require_grads``: left in place,
    every later run would add another)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.was_training = model.training
        self.checkpointing = _checkpointing(model)
        self.input_grad_hooks = _input_grad_hooks(model)
        self.input_grad_handles = {a: getattr(model, a) for a in _INPUT_GRAD_ATTRIBUTES if hasattr(model, a)}

    def restore_flags(self) -> None:
        """Only the flags that changed: an offloaded weight is an inference tensor, which refuses any setting."""
        for n, p in self.model.named_parameters():
            if n in self.flags and p.requires_grad != self.flags[n]:
                p.requires_grad_(self.flags[n])

    def restore_mode(self, module: torch.nn.Module | None = None) -> None:
        """Train/eval mode, set on ``module`` (a wrapper around the model, e.g. a PeftModel) or the model."""
        (self.model if module is None else module).train(self.was_training)

    def restore_checkpointing(self) -> None:
        if _checkpointing(self.model) and not self.checkpointing:
            # transformers 5 names it activation checkpointing; 4.x (still allowed) gradient checkpointing
            off = (
                getattr(self.model, "activation_checkpointing_disable", None)
                or self.model.gradient_checkpointing_disable
            )
            off()

    def restore_input_grads(self) -> None:
        """Remove the input-embedding hooks added since, and the model's record of them. Not through
        ``disable_input_require_grads``: a model that had one (transformers adds it with reentrant
        checkpointing) got a second that peft's call overwrote in that record, so the record no
        longer names every hook."""
        for module, key in _input_grad_hooks(self.model) - self.input_grad_hooks:
            for hooks in (
                module._forward_hooks,
                module._forward_hooks_with_kwargs,
                module._forward_hooks_always_called,
            ):
                hooks.pop(key, None)
        for attribute in _INPUT_GRAD_ATTRIBUTES:
            if attribute in self.input_grad_handles:
                setattr(self.model, attribute, self.input_grad_handles[attribute])
            elif hasattr(self.model, attribute):
                delattr(self.model, attribute)


# where transformers' enable_input_require_grads keeps its hook handles (4.x: one, 5.x: a list)
_INPUT_GRAD_ATTRIBUTES = ("_require_grads_hook", "_require_grads_hooks")


def _input_grad_hooks(model: torch.nn.Module) -> set[tuple[torch.nn.Module, int]]:
    """(module, hook key) of every ``enable_input_require_grads`` hook in ``model``."""
    return {
        (module, key)
        for module in model.modules()
        for key, hook in module._forward_hooks.items()
        if "enable_input_require_grads" in getattr(hook, "__qualname__", "")
    }


def _checkpointing(model: torch.nn.Module) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))

"""LoRA adapters on exactly the modules asked for: the one injection ILA and fine-tuning share.

peft's ``get_peft_model`` matches ``target_modules`` by name suffix, so a type name such as
``q_proj`` could also adapt a linear outside the decoder blocks (a vision tower, a projector).
:func:`inject_lora` therefore checks what peft actually adapted against what was asked for and
refuses a mismatch, instead of training (and ranking) a different module set.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from layerscope.core.devices import adapters_beside_offloaded_weights
from layerscope.core.errors import ConfigError, TrainingError
from layerscope.core.layermap import LayerMap

ADAPTER = "default"  # peft's adapter name, as peft and users expect it


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft calls a transformers API that warns of its own deprecation; not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def targets_as_given() -> Iterator[None]:
    """Keep peft from renaming the targets. On transformers 5, peft reads a target whose last name is
    an expert projection of a transformers-4 MoE checkpoint (``gate_proj``, ``up_proj``, ``down_proj``
    on DeepSeek-V3, Qwen3-MoE, GLM-4-MoE, ...) as that old name and moves the adapter to the fused
    experts tensor, so the shared-expert or dense MLP asked for is never adapted. Our targets are
    always module names of the loaded model, never v4 names: that conversion is off while we inject."""
    try:
        import peft.utils.transformers_weight_conversion as conversion
    except ImportError:  # peft or transformers older than the conversion: no target is renamed
        yield
        return
    original = conversion.convert_peft_config_for_transformers
    conversion.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conversion.convert_peft_config_for_transformers = original


def module_paths(layer_map: LayerMap, modules: Iterable[str]) -> list[str]:
    """Full module paths of stable module names (``layers.3.self_attn.q_proj``); unknown names fail."""
    by_name = {m.name: m.path for m in layer_map.linears}
    modules = list(modules)
    missing = [m for m in modules if m not in by_name]
    if missing:
        raise ConfigError(f"selection names {len(missing)} modules the model does not have (e.g. {missing[0]!r})")
    return [by_name[m] for m in modules]


def every_linear_targets(layer_map: LayerMap) -> list[str]:
    """peft ``target_modules`` for every linear of every block: the module types (q_proj, ...), or
    the exact paths if a type name would also match another module (``LayerMap.clashing_types``)."""
    if layer_map.clashing_types():
        return sorted(m.path for m in layer_map.linears)
    return layer_map.module_types()


def lora_adapted_paths(peft_model) -> list[str]:
    """Full paths (relative to the base model) of the modules carrying a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return [name for name, mod in base.named_modules() if isinstance(mod, LoraLayer)]


def inject_lora(
    model: nn.Module,
    layer_map: LayerMap,
    modules: list[str] | None = None,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    seed: int | None = None,
    task_type: str | None = None,
):
    """Wrap ``model`` with LoRA on exactly ``modules`` (stable names; None: every linear of every
    block). ``seed`` seeds the random init of LoRA A. Raises if peft adapted anything else."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    paths = [m.path for m in layer_map.linears] if modules is None else module_paths(layer_map, modules)
    targets = every_linear_targets(layer_map) if modules is None else list(paths)
    conv1d = any(isinstance(model.get_submodule(p), Conv1D) for p in paths)  # GPT-2 stores weights transposed
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=conv1d,
        bias="none",
        task_type=task_type,
    )
    if seed is not None:
        torch.manual_seed(seed)
    with quiet_peft(), targets_as_given(), adapters_beside_offloaded_weights(model):  # may hold weights offloaded
        peft_model = get_peft_model(model, config, adapter_name=ADAPTER)
    adapted = set(lora_adapted_paths(peft_model))
    if adapted != set(paths):
        extra, missing = sorted(adapted - set(paths)), sorted(set(paths) - adapted)
        raise TrainingError(
            f"peft adapted a different module set than selected (extra {extra[:3]}, missing {missing[:3]})"
        )
    return peft_model


def load_lora(model: nn.Module, folder: str | Path, trainable: bool = False):
    """A saved LoRA adapter folder on ``model``; a folder that holds none fails with one line."""
    from peft import PeftModel

    if not (Path(folder) / "adapter_config.json").is_file():
        raise ConfigError(f"{folder}: no LoRA adapter there (expected a folder with adapter_config.json)")
    try:
        with quiet_peft(), targets_as_given(), adapters_beside_offloaded_weights(model):
            return PeftModel.from_pretrained(model, str(folder), adapter_name=ADAPTER, is_trainable=trainable)
    except torch.OutOfMemoryError:
        raise  # not the adapter's fault: the caller says what to lower
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: shapes of another model size
        lines = [line.strip() for line in str(e).strip().splitlines()] or [type(e).__name__]
        detail = next((line for line in lines if line.startswith("size mismatch")), lines[0])  # the telling line
        raise ConfigError(f"{folder}: cannot load LoRA adapter ({detail[:200]})") from e

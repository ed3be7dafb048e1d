"""What ``finetune`` checks before it touches the model or starts training.

A run can take hours, so everything that can be known wrong up front is refused up front, in one
line: no data, a model that already carries adapters, a selection naming modules the model lacks,
an output folder that cannot be written, a tokenizer without a pad token, full fine-tuning of
offloaded weights. A failure here leaves the model untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerscope.core import atomic, distributed
from layerscope.core.devices import offloaded_parameters
from layerscope.core.errors import ConfigError
from layerscope.core.layermap import LayerMap
from layerscope.training.config import FinetuneConfig
from layerscope.training.lora import module_paths
from layerscope.training.selection import Selection


def check_inputs(model, train, heldout, selection, config) -> None:
    """The arguments of ``finetune`` are of the kinds it reads (each named when not: a dict for the
    config, a path for the data would otherwise fail inside, naming no argument), the model bare."""
    from layerscope.core.data import SFTData
    from layerscope.core.models import refuse_adapted_model

    for name, value, kind, what in (
        ("train", train, SFTData, "load_sft / split_heldout"),
        ("heldout", heldout, SFTData, "load_sft / split_heldout"),
        ("selection", selection, Selection, "select_modules"),
        ("config", config, FinetuneConfig, "FinetuneConfig(...)"),
    ):
        if not isinstance(value, kind):
            raise ConfigError(f"finetune: {name} must be {kind.__name__} ({what}), not {type(value).__name__}")
    refuse_adapted_model(model)
    if not train.examples:
        raise ConfigError("no training examples")
    if not heldout.examples:
        raise ConfigError("no held-out examples")


def check_selection(layer_map: LayerMap, selection: Selection) -> list[str]:
    """The selected module names, each one checked to be a linear module of the model."""
    modules = list(selection.modules)
    if not modules:
        raise ConfigError("the selection names no module to train")
    module_paths(layer_map, modules)  # raises for a name the model does not have
    return modules


def check_lisa(layer_map: LayerMap, modules: list[str], config: FinetuneConfig) -> None:
    """LISA draws ``lisa_layers`` of the blocks holding selected modules: as many or more would train
    every one of them at every step, a run recorded as LISA that had no schedule."""
    if not config.lisa_layers:
        return
    blocks = len({layer_map.block_of(m) for m in modules})
    if config.lisa_layers >= blocks:
        raise ConfigError(
            f"--lisa-layers {config.lisa_layers}: the selected modules lie in {blocks} block(s), so every one "
            f"would train at every step (no LISA schedule); give fewer than {blocks}, or drop --lisa-layers"
        )


def check_out_dir(config: FinetuneConfig) -> bool:
    """Create the output folder now: a folder that cannot be written fails before training, not after.
    True when this made it (a run that then fails removes it again while it is empty)."""
    if not config.out_dir or not distributed.is_main_process():
        return False
    out = Path(config.out_dir)
    existed = out.is_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise atomic.WriteError(f"{out}: cannot write ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise atomic.WriteError(f"{out}: cannot write (permission denied)")
    return not existed


def remove_if_empty(folder: str | Path) -> None:
    """A folder a failed run made and left empty goes, so nothing looks like a run's output."""
    try:
        Path(folder).rmdir()  # refuses a folder with anything in it: what was written stays
    except OSError:
        pass


def pad_id_of(tokenizer) -> int:
    """The token id batches are padded with: the pad token, else the eos token."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("tokenizer has no pad or eos token")
    return pad_id


def refuse_offloaded(model) -> None:
    """Full fine-tuning updates weights in place: an offloaded one (on ``meta``) cannot be trained."""
    offloaded = offloaded_parameters(model)
    if offloaded:
        raise ConfigError(
            f"--method full needs every weight in memory, but the device map offloads {len(offloaded)} "
            f"(e.g. {offloaded[0]}); use --method lora, or shard with FSDP (docs/large-models.md)"
        )

"""Putting a ranking to use: choosing modules from it, fine-tuning only those (LoRA or full), measuring
what that saves, and exporting the choice as peft / axolotl / LLaMA-Factory configs.

Rooms: ``selection`` (ranking -> modules), ``inputs`` (a ranking checked against a model, the data
split), ``config`` (options and report), ``freezing``, ``lora``, ``probes`` (does the backward stop
early), ``measure`` (timers, memory), ``trainer`` (the Hugging Face Trainer glue), ``finetuning`` (the
run itself) and ``export``. The names below are the public API; ``layerscope.finetune``, the module
this package grew from, is an alias of this package.
"""

from layerscope.training.config import DEFAULT_LR, METHODS, FinetuneConfig, FinetuneReport
from layerscope.training.export import FORMATS, Export, LoraParams, export_selection, write_export
from layerscope.training.finetuning import eval_tasks, finetune, heldout_loss, save_trained
from layerscope.training.freezing import count_params, freeze_all, freeze_except
from layerscope.training.inputs import choose_modules, load_ranking, load_train_heldout
from layerscope.training.lora import inject_lora, load_lora, lora_adapted_paths, module_paths
from layerscope.training.measure import (
    MemoryMonitor,
    synchronize,
    time_forward_backward,
    time_optimizer_step,
    timing_batch,
)
from layerscope.training.probes import lowest_trainable_block, probe_grad_flow
from layerscope.training.selection import MODES, Selection, select_modules

__all__ = [
    "DEFAULT_LR",
    "FORMATS",
    "METHODS",
    "MODES",
    "Export",
    "FinetuneConfig",
    "FinetuneReport",
    "LoraParams",
    "MemoryMonitor",
    "Selection",
    "choose_modules",
    "count_params",
    "eval_tasks",
    "export_selection",
    "finetune",
    "freeze_all",
    "freeze_except",
    "heldout_loss",
    "inject_lora",
    "load_lora",
    "load_ranking",
    "load_train_heldout",
    "lora_adapted_paths",
    "lowest_trainable_block",
    "module_paths",
    "probe_grad_flow",
    "save_trained",
    "select_modules",
    "synchronize",
    "time_forward_backward",
    "time_optimizer_step",
    "timing_batch",
    "write_export",
]

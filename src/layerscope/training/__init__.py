"""Putting a ranking to use: choosing modules from it, fine-tuning only those (LoRA or full), measuring
what that saves, and exporting the choice as peft / axolotl / LLaMA-Factory configs.

Rooms: ``selection`` (ranking -> modules), ``inputs`` (a ranking checked against a model, the data
split), ``config`` (options and report), ``freezing``, ``lora``, ``probes`` (does the backward stop
early), ``measure`` (timers, memory), ``trainer`` (the Hugging Face Trainer glue), ``finetuning`` (the
run itself, with ``preflight`` checks before it, ``evaluation`` before and after it, ``restoring`` the
model after it) and ``export``. The names below are the public API; ``layerscope.finetune``, the module
this package grew from, is an alias of this package.
"""

from __future__ import annotations

from layerscope._lazy import lazy_attributes

# public name -> the submodule defining it. Imported on first use, so that the CLI can read the
# selection modes and export formats (for --help) without loading torch, transformers and peft.
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("DEFAULT_LR", "METHODS", "FinetuneConfig", "FinetuneReport"), "config"),
    **dict.fromkeys(("FORMATS", "Export", "LoraParams", "export_selection", "write_export"), "export"),
    **dict.fromkeys(("eval_tasks", "heldout_loss"), "evaluation"),
    **dict.fromkeys(("finetune",), "finetuning"),
    **dict.fromkeys(("count_params", "freeze_all", "freeze_except"), "freezing"),
    **dict.fromkeys(("choose_modules", "load_ranking", "load_train_heldout"), "inputs"),
    **dict.fromkeys(("inject_lora", "load_lora", "lora_adapted_paths", "module_paths"), "lora"),
    **dict.fromkeys(
        ("MemoryMonitor", "synchronize", "time_forward_backward", "time_optimizer_step", "timing_batch"), "measure"
    ),
    **dict.fromkeys(("lowest_trainable_block", "probe_grad_flow"), "probes"),
    **dict.fromkeys(("save_trained",), "saving"),
    **dict.fromkeys(("MODES", "Selection", "select_modules"), "selection"),
}

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


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

"""ILA (Shi et al., arXiv 2410.17875): LoRA-align until epsilon-stable, then learn one gate per
LoRA-adapted module under a sparsity budget; the gates rank the modules.

Modules: ``config`` (options), ``batches`` (data order), ``loop`` (the training loop both stages
share), ``stages`` (stage 1 LoRA, stage 2 gates), ``gates`` (the gates and the stability measure),
``checkpoints`` (resuming), ``run`` (``run_ila``), ``outputs`` (a run written to a folder).
"""

from __future__ import annotations

from layerscope._lazy import lazy_attributes

# public name -> the submodule defining it. Imported on first use, so that reading ``ILAConfig`` and
# its choices (the CLI's --help) does not load torch and peft.
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("batch_indices", "check_examples", "process_batches", "shuffled_batches"), "batches"),
    **dict.fromkeys(("Checkpoints", "Resume", "run_fingerprint"), "checkpoints"),
    **dict.fromkeys(("CHECKPOINT_EVERY", "GATE_OPTIMIZERS", "SPARSITY_MODES", "ILAConfig", "StageLog"), "config"),
    **dict.fromkeys(
        (
            "LoraGates",
            "NormalizedSGD",
            "StabilityTracker",
            "delta_norm",
            "gate_optimizer",
            "lora_factors",
            "resolve_gate_optimizer",
        ),
        "gates",
    ),
    **dict.fromkeys(("Stage", "run_stage"), "loop"),
    **dict.fromkeys(("ILAOutputs", "checkpoint_folder", "run_ila_to_folder"), "outputs"),
    **dict.fromkeys(("DROPOUT_SEED_STRIDE", "ila_importance", "lora_layers", "run_ila", "wrap_lora"), "run"),
    **dict.fromkeys(("train_gates", "train_lora"), "stages"),
}

__all__ = [
    "CHECKPOINT_EVERY",
    "DROPOUT_SEED_STRIDE",
    "GATE_OPTIMIZERS",
    "SPARSITY_MODES",
    "Checkpoints",
    "ILAConfig",
    "ILAOutputs",
    "LoraGates",
    "NormalizedSGD",
    "Resume",
    "StabilityTracker",
    "Stage",
    "StageLog",
    "batch_indices",
    "check_examples",
    "checkpoint_folder",
    "delta_norm",
    "gate_optimizer",
    "ila_importance",
    "lora_factors",
    "lora_layers",
    "process_batches",
    "resolve_gate_optimizer",
    "run_fingerprint",
    "run_ila",
    "run_ila_to_folder",
    "run_stage",
    "shuffled_batches",
    "train_gates",
    "train_lora",
    "wrap_lora",
]


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

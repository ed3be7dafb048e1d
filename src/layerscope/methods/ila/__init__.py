"""ILA (Shi et al., arXiv 2410.17875): LoRA-align until epsilon-stable, then learn one gate per
LoRA-adapted module under a sparsity budget; the gates rank the modules.

Modules: ``config`` (options), ``batches`` (data order), ``loop`` (the training loop both stages
share), ``stages`` (stage 1 LoRA, stage 2 gates), ``gates`` (the gates and the stability measure),
``checkpoints`` (resuming), ``run`` (``run_ila``), ``outputs`` (a run written to a folder).
"""

from layerscope.methods.ila.batches import batch_indices, check_examples, process_batches, shuffled_batches
from layerscope.methods.ila.checkpoints import CHECKPOINT_EVERY, Checkpoints, Resume, run_fingerprint
from layerscope.methods.ila.config import ILAConfig, StageLog
from layerscope.methods.ila.gates import (
    GATE_OPTIMIZERS,
    SPARSITY_MODES,
    LoraGates,
    NormalizedSGD,
    StabilityTracker,
    delta_norm,
    gate_optimizer,
    lora_factors,
    resolve_gate_optimizer,
)
from layerscope.methods.ila.loop import Stage, run_stage
from layerscope.methods.ila.outputs import ILAOutputs, checkpoint_folder, run_ila_to_folder
from layerscope.methods.ila.run import DROPOUT_SEED_STRIDE, ila_importance, lora_layers, run_ila, wrap_lora
from layerscope.methods.ila.stages import train_gates, train_lora

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

"""The two ILA stages, each a ``Stage`` of the shared loop (``loop.py``).

Stage 1 (``train_lora``): LoRA SFT with AdamW, linear warm-up then linear decay to zero at
``max_steps`` and gradient clipping, until training is *epsilon-stable*: every ``check_every``
optimizer steps compute ``r = ||dW_t - dW_{t-k}|| / ||dW_t||`` over the concatenated LoRA updates of
all modules (exact, via r x r Gram matrices, see ``gates.py``); stop once ``r < eps`` at ``patience``
consecutive checks and at least ``min_steps`` steps were taken (reason "stable"), else at
``max_steps`` (reason "max_steps"). How to choose eps: docs/ila.md.

Stage 2 (``train_gates``): base and LoRA weights frozen, dropout off; one score per module scales
its LoRA update by its gate (``LoraGates``), trained on the task loss plus, in penalty mode,
``lam * mean(sigmoid(s))``; in budget mode the number of open gates anneals over ``budget_warmup``.

Under several processes the stability ratio that decides the stop is the main process's, so every
process stops at the same step (one that stopped alone would leave the others waiting in a collective).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn

from layerscope.core import checkpoint, distributed
from layerscope.core.devices import input_device
from layerscope.methods.ila.batches import process_batches
from layerscope.methods.ila.checkpoints import (
    Checkpoints,
    Resume,
    load_tracker,
    lora_tensors,
    tracker_state,
)
from layerscope.methods.ila.config import ILAConfig, StageLog
from layerscope.methods.ila.gates import LoraGates, StabilityTracker, gate_optimizer, resolve_gate_optimizer
from layerscope.methods.ila.loop import Batch, Stage, batch_loss, run_stage
from layerscope.training.lora import ADAPTER


def train_lora(
    peft_model,
    layers: list[nn.Module],
    examples: list,
    config: ILAConfig,
    pad_id: int,
    checkpoints: Checkpoints | None = None,
    resume: Resume | None = None,
) -> StageLog:
    """LoRA SFT until epsilon-stable (module docstring); returns losses and the stop reason.

    ``resume``: a stage-1 checkpoint whose LoRA weights are already loaded; continues after its step.
    """
    checkpoints = checkpoints or Checkpoints()
    stage = _LoraStage(peft_model, layers, config, resume)
    batches = process_batches(examples, config, config.seed, pad_id, stage.done)
    peft_model.train()
    if resume is not None:
        checkpoints.restore_rng(resume)  # last: nothing above may draw from the RNGs
    run_stage(stage, batches, stage.done + 1, config.max_steps, config, checkpoints)
    stage.log.extra["stop_step"] = stage.log.steps
    stage.log.extra["lora_delta_norm"] = stage.tracker.module_norms()
    return stage.log


def train_gates(
    peft_model,
    gates: LoraGates,
    examples: list,
    config: ILAConfig,
    pad_id: int,
    checkpoints: Checkpoints | None = None,
    resume: Resume | None = None,
    stage1: StageLog | None = None,
) -> StageLog:
    """Learn the gate scores with base and LoRA weights frozen and dropout off.

    ``resume``: a stage-2 checkpoint (step > 0) to continue; ``stage1``: the stage-1 log that
    goes into this stage's checkpoints.
    """
    checkpoints = checkpoints or Checkpoints()
    for p in peft_model.parameters():
        p.requires_grad_(False)
    peft_model.eval()  # dropout off: the hooked update is exactly g * (alpha/r) B A x
    stage = _GateStage(peft_model, gates, config, resume, stage1 or StageLog())
    batches = process_batches(examples, config, config.seed + 1, pad_id, stage.done)
    gates.attach(peft_model.base_model.model)
    try:
        if resume is not None:
            checkpoints.restore_rng(resume)
        run_stage(stage, batches, stage.done + 1, config.gate_steps, config, checkpoints)
    finally:
        gates.detach()
    return stage.log


class _LoraStage(Stage):
    name, title = "lora", "ILA stage 1 (LoRA)"

    def __init__(self, peft_model, layers: list[nn.Module], config: ILAConfig, resume: Resume | None):
        self.model, self.config = peft_model, config
        self.device = input_device(peft_model)  # where batches go (a dispatched model: not its first weight)
        self.params = [p for p in peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _stage1_lr_factor(config))
        self.max_grad_norm = config.max_grad_norm
        self.tracker = StabilityTracker(layers, ADAPTER)
        self.min_steps = min(config.min_steps, config.max_steps)
        if resume is None:
            self.tracker.check()  # reference at step 0 (dW = 0)
            self.log = StageLog(extra={"stability": [], "stop_reason": "max_steps"})
            self.done, self.calm = 0, 0  # steps taken; consecutive checks below eps
        else:
            header, tensors = resume
            checkpoint.load_optimizer_state(self.optimizer, header["optimizer"], tensors, "optimizer")
            self.scheduler.load_state_dict(header["scheduler"])
            load_tracker(self.tracker, header["tracker"], tensors, self.device)
            self.log = StageLog(**header["stage1"])
            self.done, self.calm = header["step"], header["calm"]

    def micro_loss(self, batch: Batch) -> torch.Tensor:
        return batch_loss(self.model, batch, self.device) / self.config.grad_accum

    def end_step(self, step: int, loss: float) -> bool:
        self.log.loss.append(loss)
        if step % self.config.check_every != 0:
            return False
        ratio = distributed.from_main_process(self.tracker.check())
        self.log.extra["stability"].append([step, ratio])
        self.calm = self.calm + 1 if ratio < self.config.eps else 0
        stable = self.calm >= self.config.patience and step >= self.min_steps
        if stable:
            self.log.extra["stop_reason"] = "stable"
        return stable

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.log.loss[-1]:.3f}"}

    def state(self, step: int) -> Resume:
        opt_header, opt_tensors = checkpoint.optimizer_state(self.optimizer, "optimizer")
        tracker_header, tracker_tensors = tracker_state(self.tracker)
        header = {
            "stage": "lora",
            "step": step,
            "stage1": asdict(self.log),
            "calm": self.calm,
            "optimizer": opt_header,
            "scheduler": checkpoint.scheduler_state(self.scheduler),
            "tracker": tracker_header,
        }
        return header, {**lora_tensors(self.model), **opt_tensors, **tracker_tensors}


def _stage1_lr_factor(config: ILAConfig):
    """Stage 1's LR factor: linear warm-up over ``warmup_ratio`` of the steps, then (``lr_schedule``) a
    linear decay to 0 at ``max_steps``, or the peak rate held."""
    warm = int(round(config.warmup_ratio * config.max_steps))

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        if config.lr_schedule == "constant":
            return 1.0
        return max(0.0, (config.max_steps - s) / max(1, config.max_steps - warm))

    return factor


class _GateStage(Stage):
    name, title = "gates", "ILA stage 2 (gates)"

    def __init__(self, peft_model, gates: LoraGates, config: ILAConfig, resume: Resume | None, stage1: StageLog):
        self.model, self.gates, self.config, self.stage1 = peft_model, gates, config, stage1
        self.device = input_device(peft_model)
        gates.to(self.device)
        opt_name = resolve_gate_optimizer(config.gate_optimizer, config.sparsity)
        if resume is None:
            self.log = StageLog(extra={"penalty": [], "open_gates": [], "optimizer": opt_name})
            self.done = 0
        else:
            with torch.no_grad():
                gates.scores.copy_(resume[1]["gates.scores"])
            self.log = StageLog(**resume[0]["stage2"])
            self.done = resume[0]["step"]
        self.optimizer = gate_optimizer(opt_name, gates.parameters(), config.gate_lr)
        if resume is not None:
            checkpoint.load_optimizer_state(self.optimizer, resume[0]["optimizer"], resume[1], "optimizer")
        self.params = list(gates.parameters())
        self.warm = int(round(config.budget_warmup * config.gate_steps))
        self.penalised = config.sparsity == "penalty"
        self.pen = 0.0  # the penalty this step's loss sees

    def begin_step(self, step: int) -> None:
        self.gates.anneal(step - 1, self.warm)
        self.pen = float(self.gates.penalty().detach())

    def micro_loss(self, batch: Batch) -> torch.Tensor:
        loss = batch_loss(self.model, batch, self.device) / self.config.grad_accum
        if self.penalised and self.config.lam > 0:
            loss = loss + self.config.lam * self.gates.penalty() / self.config.grad_accum
        return loss

    def end_step(self, step: int, loss: float) -> bool:
        self.log.loss.append(loss - (self.config.lam * self.pen if self.penalised else 0.0))  # the task loss
        self.log.extra["penalty"].append(self.pen)
        self.log.extra["open_gates"].append(int((self.gates.values().detach() > 0.5).sum()))
        return False

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.log.loss[-1]:.3f}", "gates": f"{self.pen:.2f}"}

    def state(self, step: int) -> Resume:
        opt_header, opt_tensors = checkpoint.optimizer_state(self.optimizer, "optimizer")
        header = {
            "stage": "gates",
            "step": step,
            "stage1": asdict(self.stage1),
            "stage2": asdict(self.log),
            "optimizer": opt_header,
        }
        return header, {**lora_tensors(self.model), "gates.scores": self.gates.scores, **opt_tensors}

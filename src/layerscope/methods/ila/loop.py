"""The training loop both ILA stages share.

A lean, deterministic torch loop, not the HF Trainer: both stages need exact control of the step
(stability checks between optimizer steps, gate annealing, a loss made of task loss plus a penalty)
and no hidden state (no dataloader workers, schedulers or callbacks that reorder RNG use).

One optimizer step: the stage's loss on ``grad_accum`` micro-batches, each backward; gradients and
loss averaged over the processes in one collective (no DDP wrapper, so peft and the gate hooks stay
as they are); the loss checked finite; optional clipping; optimizer and scheduler step; the stage
records the step and says whether to stop; then a checkpoint, when one is due.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from layerscope.core import distributed
from layerscope.core.errors import TrainingError
from layerscope.methods.ila.checkpoints import Checkpoints, Resume
from layerscope.methods.ila.config import ILAConfig, StageLog

Batch = dict[str, torch.Tensor]


class Stage:
    """One ILA stage as the loop sees it: what it trains, its loss and its bookkeeping.

    Subclasses set the attributes in ``__init__`` and define ``micro_loss``, ``end_step``,
    ``postfix`` and ``state``; ``begin_step`` is optional.
    """

    name: str  # "lora" or "gates": the label of its checkpoints and of on_step
    title: str  # of its progress bar
    log: StageLog
    params: list[torch.Tensor]  # trained tensors, whose gradients are averaged over processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    max_grad_norm: float | None = None  # clip the gradients' norm to this before the step; None: no clipping

    def begin_step(self, step: int) -> None:
        """Called before step ``step`` (counted from 1) draws its first micro-batch."""

    def micro_loss(self, batch: Batch) -> torch.Tensor:
        """The loss of one micro-batch, already divided by ``grad_accum``."""
        raise NotImplementedError

    def end_step(self, step: int, loss: float) -> bool:
        """Record step ``step`` (``loss``: averaged over micro-batches and processes); True stops the stage."""
        raise NotImplementedError

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {}

    def state(self, step: int) -> Resume:
        """The checkpoint after step ``step``: header and tensors."""
        raise NotImplementedError


def run_stage(
    stage: Stage, batches: Iterator[Batch], first: int, last: int, config: ILAConfig, checkpoints: Checkpoints
) -> None:
    """Optimizer steps ``first`` .. ``last`` (counted from 1) of ``stage``, fewer if it stops early.
    ``stage.log`` gets the steps taken and the wall time (added to what it held, for a resumed stage)."""
    log = stage.log
    t0 = time.perf_counter() - log.seconds
    show = config.progress and distributed.is_main_process()  # one bar, not one per process
    bar = tqdm(range(first, last + 1), initial=first - 1, total=last, desc=stage.title, disable=not show, leave=False)

    def state() -> Resume:
        log.seconds = time.perf_counter() - t0
        return stage.state(step)

    try:
        for step in bar:
            stage.begin_step(step)
            try:
                loss = _accumulate(stage, batches, config.grad_accum)
            except torch.OutOfMemoryError as e:
                raise TrainingError(
                    f"{stage.title}: out of memory at step {step} (batch size {config.batch_size}); "
                    "lower --batch-size (raise --grad-accum to keep the examples per step) or --max-length"
                ) from e
            loss = distributed.average_gradients(stage.params, loss)
            _check_finite(loss)
            _update(stage)
            log.steps = step
            stop = stage.end_step(step, loss)
            bar.set_postfix(stage.postfix())
            checkpoints.after_step(stage.name, step, stop or step == last, state)
            if stop:
                break
    finally:
        bar.close()
    log.seconds = time.perf_counter() - t0


def batch_loss(model: nn.Module, batch: Batch, device) -> torch.Tensor:
    """The model's own (response-only SFT) loss on ``batch``.

    ``use_cache=False``: stage 2 runs in eval mode, where models default to building a cache, and
    RWKV's cache is a state it writes in place, which breaks the backward."""
    return model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss


def _accumulate(stage: Stage, batches: Iterator[Batch], grad_accum: int) -> float:
    total = 0.0
    for _ in range(grad_accum):
        loss = stage.micro_loss(next(batches))
        loss.backward()
        total += loss.item()
    return total


def _check_finite(step_loss: float) -> None:
    """Checked on the step's loss after averaging over processes, so that all of them raise
    together (one raising alone would leave the others waiting in the next collective)."""
    if not math.isfinite(step_loss):
        raise TrainingError(f"ILA: loss became {step_loss} (lower --lr / --gate-lr?)")


def _update(stage: Stage) -> None:
    if stage.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(stage.params, stage.max_grad_norm)
    stage.optimizer.step()
    if stage.scheduler is not None:
        stage.scheduler.step()
    stage.optimizer.zero_grad(set_to_none=True)

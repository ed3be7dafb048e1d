"""A model measured on held-out text and zero-shot tasks, before and after fine-tuning.

:func:`~layerscope.training.finetuning.finetune` takes the held-out loss of the untouched model,
trains, then takes it again (and the zero-shot tasks asked for) on the trained one. The tasks are
loaded before training, so that a misspelt name fails in seconds rather than after the run; under
DDP the evaluation after training is split over the processes instead of repeated by each.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from layerscope.core import distributed
from layerscope.core.errors import TrainingError
from layerscope.training.config import FinetuneConfig
from layerscope.training.saving import discard


def heldout_loss(model, tokenizer, examples, batch_size: int = 8) -> float:
    from layerscope.scoring import LossEvaluator

    was_training = model.training
    model.eval()
    try:
        return float(LossEvaluator(tokenizer, examples, batch_size=batch_size).evaluate(model).metrics["loss"])
    finally:
        model.train(was_training)


def load_eval_tasks(names: list[str], limit: int | None) -> dict:
    """The zero-shot tasks asked for, loaded (name -> Task): an unknown name or a missing file fails here."""
    from layerscope.core.tasks import load_task

    return {name: load_task(name, limit=limit) for name in names}


def eval_tasks(
    model, tokenizer, tasks, limit: int | None, batch_size: int = 16, progress: bool = False
) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per task (headline metric under ``value``); ``tasks``: names, or name -> loaded Task."""
    from layerscope.scoring import evaluate_task

    loaded = tasks if isinstance(tasks, dict) else load_eval_tasks(list(tasks), limit)
    out: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    try:
        for name, task in loaded.items():
            res = evaluate_task(model, tokenizer, task, batch_size=batch_size, progress=progress)
            out[name] = {
                "value": float(res.value),
                "metric": task.metric,
                "n": res.n_items,
                **{k: float(v) for k, v in res.metrics.items()},
            }
    finally:
        model.train(was_training)
    return out


def evaluate_before(model, tokenizer, heldout, config: FinetuneConfig, timings: dict[str, float]) -> float | None:
    """Held-out loss of the untouched model (None when ``config.eval_before`` is off)."""
    t0 = time.perf_counter()
    loss = heldout_loss(model, tokenizer, heldout.examples, config.eval_batch_size) if config.eval_before else None
    timings["eval_before_s"] = time.perf_counter() - t0
    return loss


def share_evaluation(device: str) -> None:
    """Under DDP (``torchrun`` / ``accelerate launch``) join the launcher's process group now, on the
    model's ``device`` (gloo on CPU, nccl on a GPU), and split every held-out evaluation over the
    processes, each batch evaluated by one of them and the sums added exactly
    (:mod:`layerscope.core.distributed`), instead of every process evaluating every item; the
    Trainer's accelerate state takes the group as it finds it. Nothing alone."""
    distributed.init_from_env(device)


def evaluate_after(
    train_model, tokenizer, heldout, config: FinetuneConfig, tasks: dict, saved: Path | None
) -> tuple[float, dict[str, Any]]:
    """Held-out loss (and the zero-shot tasks asked for) of the trained model."""
    eval_model = train_model.get_base_model() if config.method == "lora" else train_model
    loss = heldout_loss(eval_model, tokenizer, heldout.examples, config.eval_batch_size)
    if not math.isfinite(loss):
        discard(saved)  # a diverged model is not worth keeping
        raise TrainingError(f"held-out loss is {loss} after training; lower --lr")
    if not tasks:
        return loss, {}
    return loss, eval_tasks(eval_model, tokenizer, tasks, config.eval_limit, progress=config.progress)

"""Evaluators from a task spec, and the description of what they evaluate (the ``data`` field of results).

A spec is what ``layerscope ablate / shapley --task`` take: a known task name or an MC file
(:func:`layerscope.core.tasks.load_task`), or ``loss:<SFT file>`` for negative held-out loss.
"""

from __future__ import annotations

from typing import Any

from layerscope.core.data import load_sft
from layerscope.core.errors import ConfigError
from layerscope.core.tasks import load_task
from layerscope.scoring.loss import LossEvaluator
from layerscope.scoring.multiple_choice import MCEvaluator, mc_evaluator

LOSS_PREFIX = "loss:"


def evaluator_for(
    spec: str, model, tokenizer, *, limit: int | None, batch_size: int, max_length: int, append_eos: bool = True
) -> tuple[MCEvaluator | LossEvaluator, dict[str, Any]]:
    """(evaluator, data description) for ``spec``; ``max_length`` caps the tokens of loss examples."""
    if batch_size < 1:  # before loading any data
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if spec.startswith(LOSS_PREFIX):
        path = spec[len(LOSS_PREFIX) :]
        if not path:
            raise ConfigError("--task loss:<file>: give an SFT file after 'loss:'")
        data = load_sft(path, tokenizer, max_length=max_length, limit=limit, append_eos=append_eos)
        ev = LossEvaluator(tokenizer, data.examples, batch_size=batch_size)
        return ev, {
            "task": "loss",
            "source": str(data.source),
            "fingerprint": data.fingerprint,
            "n_examples": len(data.examples),
            "metric": "-loss",
        }
    ev = mc_evaluator(tokenizer, load_task(spec, limit=limit), batch_size, model)
    return ev, evaluator_info(ev)


def evaluator_info(evaluator) -> dict[str, Any]:
    """What was evaluated, for the ``data`` field of a result."""
    task = getattr(evaluator, "task", None)
    if task is not None:
        return {
            "task": task.name,
            "source": str(task.source),
            "n_items": len(task.items),
            "fingerprint": task.fingerprint,
            "metric": task.metric,
            "chance": task.chance,
        }
    info: dict[str, Any] = {"task": "loss", "metric": "-loss"}
    for attr in ("n_examples", "n_scored_examples", "n_tokens"):
        if hasattr(evaluator, attr):
            info[attr] = getattr(evaluator, attr)
    return info

"""Evaluators from a task spec, and the description of what they evaluate (the ``data`` field of results).

A spec is what ``layerscope ablate / shapley --task`` take: a known task name or an MC file
(:func:`layerscope.core.tasks.load_task`), or ``loss:<SFT file>`` for negative held-out loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from layerscope.core.data import load_sft
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.models import check_torch_model, context_length
from layerscope.core.tasks import load_task
from layerscope.core.tasks.types import Task, task_fingerprint
from layerscope.scoring.loss import LossEvaluator
from layerscope.scoring.multiple_choice import MCEvaluator, mc_evaluator

LOSS_PREFIX = "loss:"


def evaluator_for(
    spec: str,
    model,
    tokenizer,
    *,
    limit: int | None,
    batch_size: int,
    max_length: int,
    append_eos: bool = True,
    skip: int = 0,
    fields: dict | None = None,
    subject: str | None = None,
) -> tuple[MCEvaluator | LossEvaluator, dict[str, Any]]:
    """(evaluator, data description) for ``spec``; ``max_length`` caps the tokens of loss examples.
    ``skip`` leaves out the first items (records of an SFT file): ``limit`` items from item ``skip``
    on, e.g. items chosen on apart from those scored (recorded as ``first_item``). ``fields``: an MC
    file's field names, ``subject``: MMLU's subjects or category (both as ``load_task`` takes them)."""
    check_torch_model(model)
    if batch_size < 1:  # before loading any data
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if skip < 0:
        raise ConfigError(f"skip must be >= 0 items, got {skip}")
    upto = None if limit is None else skip + limit
    where = {"first_item": skip} if skip else {}
    if spec.startswith(LOSS_PREFIX):
        path = spec[len(LOSS_PREFIX) :]
        if not path:
            raise ConfigError("--task loss:<file>: give an SFT file after 'loss:'")
        if subject is not None:  # as load_task refuses it with another task: it would pick nothing
            raise ConfigError(f"subject picks MMLU subjects; {spec} is SFT data: leave it out")
        data = load_sft(
            path,
            tokenizer,
            max_length=max_length,
            limit=upto,
            append_eos=append_eos,
            context_length=context_length(model),
        )
        if skip:
            data = _after(data, skip, spec)
        ev = LossEvaluator(tokenizer, data.examples, batch_size=batch_size)
        return ev, {**sft_data_info(data), **where}
    task = load_task(spec, limit=upto, fields=fields, subject=subject)
    if skip:
        task = _after(task, skip, spec)
    ev = mc_evaluator(tokenizer, task, batch_size, model)
    return ev, {**evaluator_info(ev), **where}


def _after(data, skip: int, spec: str):
    """A task (or SFT data) without its first ``skip`` items (SFT: examples, which follow the records
    in order, so they never overlap the first ``skip`` records' examples), fingerprinted anew."""
    items = data.items if isinstance(data, Task) else data.examples
    if len(items) <= skip:
        raise DataError(f"{spec}: {len(items)} items, none left after the first {skip}")
    if isinstance(data, Task):
        rest = replace(data, items=items[skip:], extras=dict(data.extras, first_item=skip))  # for messages
        return replace(rest, fingerprint=task_fingerprint(rest))
    fingerprint = hashlib.sha256(f"{data.fingerprint}|from={skip}".encode()).hexdigest()[:16]
    return replace(data, examples=items[skip:], fingerprint=fingerprint, stats=dict(data.stats, first_example=skip))


def sft_data_info(data) -> dict[str, Any]:
    """The ``data`` field of a result scored as held-out loss on SFT data (``load_sft``'s ``SFTData``)."""
    return {
        "task": "loss",
        "source": str(data.source),
        "fingerprint": data.fingerprint,
        "n_examples": len(data.examples),
        "metric": "-loss",
    }


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

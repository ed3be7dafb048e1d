"""What a task is: multiple-choice items, how to score them, and the fingerprint naming them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: list[str]
    gold: int


@dataclass
class Task:
    name: str
    items: list[MCItem]
    chance: float  # expected accuracy of uniform guessing: mean of 1/n_choices
    metric: str  # "acc_norm" or "acc": the headline metric (what lm-eval reports for it)
    source: str  # file (and subject) the items came from
    fingerprint: str  # sha256[:16] of name, prompts, choices, golds: equal iff the same items
    target_delimiter: str = " "  # put between context and choice, as lm-eval's default
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def task_fingerprint(task: Task) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([task.target_delimiter, task.metric]).encode())
    for it in task.items:
        h.update(json.dumps([it.context, it.choices, it.gold], ensure_ascii=False).encode())
    return h.hexdigest()[:16]

"""What a task is: its items (ordinary multiple choice or partial scoring), how to score them, and its fingerprint.

Both item kinds reduce to the same thing for scoring: a list of (context, continuation)
requests, one per option, and the option with the highest log-likelihood wins. They differ in
which side varies, so a method that needs one side must ask the item (``requests``) rather
than assume the ordinary shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class MCItem:
    """Ordinary multiple choice: one context, several choices scored after it."""

    context: str
    choices: list[str]
    gold: int
    # where the item is read from (``FILE: line N``), for messages: no part of what is scored or compared
    place: str = field(default="", compare=False, repr=False)

    @property
    def n_options(self) -> int:
        return len(self.choices)

    @property
    def prompt_text(self) -> str:
        """The text read before anything is scored (methods that need plain task text use it)."""
        return self.context

    def requests(self, delimiter: str) -> list[tuple[str, str]]:
        """(context, continuation) per option, as lm-eval's ``construct_requests``."""
        return [(self.context, delimiter + c) for c in self.choices]

    def norm_lengths(self) -> list[int]:
        """Characters acc_norm divides each option's log-likelihood by (lm-eval: each choice, no delimiter)."""
        return [len(c) for c in self.choices]


@dataclass(frozen=True)
class PartialItem:
    """Partial scoring (lm-eval's ``multiple_input``, e.g. WinoGrande): several contexts, one continuation.

    The answer is the context under which the shared continuation is most likely.
    """

    contexts: list[str]
    continuation: str
    gold: int
    place: str = field(default="", compare=False, repr=False)  # as MCItem's

    @property
    def n_options(self) -> int:
        return len(self.contexts)

    @property
    def prompt_text(self) -> str:
        """The first context: no option is read before the continuation is scored, so none is privileged."""
        return self.contexts[0]

    def requests(self, delimiter: str) -> list[tuple[str, str]]:
        """(context_i, continuation) per option, as lm-eval's ``construct_requests`` for multiple inputs."""
        return [(c, delimiter + self.continuation) for c in self.contexts]

    def norm_lengths(self) -> list[int]:
        """lm-eval divides by the length of ``doc_to_choice``'s entries, which here are the contexts."""
        return [len(c) for c in self.contexts]


Item = MCItem | PartialItem


@dataclass
class Task:
    name: str
    items: list[Item]  # all of one kind
    chance: float  # expected accuracy of uniform guessing: mean of 1/n_options
    metric: str  # "acc_norm" or "acc": the headline metric (what lm-eval reports for it)
    source: str  # file (and subject) the items came from
    fingerprint: str  # sha256[:16] of name, prompts, choices, golds: equal iff the same items
    target_delimiter: str = " "  # put between context and continuation, as lm-eval's default
    extras: dict = field(default_factory=dict)
    # metrics reported beside acc and the headline: a custom multiple-choice file's acc_norm, as lm-eval's
    # multiple_choice reports both where a task names none; a known task reports what lm-eval's config lists
    also_reported: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def reported(self) -> tuple[str, ...]:
        """The metrics said for this task (eval's lines), in :data:`METRICS` order: acc always, acc_norm where
        it is the headline or reported beside it. ``EvalResult.metrics`` holds both either way."""
        return tuple(m for m in METRICS if m == "acc" or m == self.metric or m in self.also_reported)

    @property
    def partial(self) -> bool:
        """Whether the items are partial-scoring items (several contexts, one continuation)."""
        return bool(self.items) and isinstance(self.items[0], PartialItem)


def task_fingerprint(task: Task) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([task.target_delimiter, task.metric]).encode())
    for it in task.items:
        if isinstance(it, PartialItem):  # tagged, so no partial task fingerprints like an ordinary one
            record = ["partial", it.contexts, it.continuation, it.gold]
        else:  # unchanged, so fingerprints of ordinary tasks stay what earlier results recorded
            record = [it.context, it.choices, it.gold]
        h.update(json.dumps(record, ensure_ascii=False).encode())
    return h.hexdigest()[:16]

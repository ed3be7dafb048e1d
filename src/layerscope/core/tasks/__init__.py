"""Zero-shot multiple-choice evaluation sets, as lm-evaluation-harness builds them.

A :class:`Task` is a list of :class:`MCItem` (a context, its answer choices, the gold index)
plus how to score it (``acc`` or ``acc_norm``, as lm-eval reports for that task) and the
random-guess level. The evaluator (``layerscope.scoring``) scores the continuation
``target_delimiter + choice`` after ``context``, exactly like lm-eval's ``multiple_choice``.
A partial-scoring task (lm-eval's ``multiple_input``, e.g. WinoGrande) is a list of
:class:`PartialItem` instead: several contexts, one continuation ``target_delimiter +
continuation`` scored under each; the answer is the context under which it is most likely.

Sources understood by :func:`load_task`:

- a known name (``arc_easy``, ``arc_challenge``, ``boolq``, ``piqa``, ``openbook_qa``,
  ``hellaswag``, ``mmlu``; ``mmlu:<subject or category>`` also works) mapped to the files in
  ``../shared/data/eval``. Known names rebuild lm-eval's prompts from those files (e.g. ARC
  ``"Question: ...\\nAnswer:"``), so numbers are comparable with published lm-eval results;
- a ``{"query", "choices", "gold"}`` JSONL file (the query is used verbatim; each choice follows it after
  one space, so a choice is written without a leading one);
- a ``{"contexts", "continuation", "gold"}`` JSONL file, or WinoGrande's own records
  (``sentence`` with ``_``, ``option1``, ``option2``, ``answer``): partial scoring;
- an original-schema HellaSwag JSONL (``ctx_a``, ``ctx_b``, ``endings``, ``label``);
- MMLU: ``mmlu.zip``, a folder of the hendrycks CSVs, or one ``<subject>_<split>.csv``;
- any other multiple-choice JSONL/JSON list whose field names are given with ``fields``
  (a mapping that would read a partial-scoring file as ordinary MC is refused).

One module per concept: ``types`` (items, tasks, fingerprints), ``registry`` (known names,
prompts, data folders, :func:`load_task`), ``reading`` (JSON records and field mapping),
``partial`` (partial-scoring records), ``hellaswag`` and ``mmlu``.
"""

from __future__ import annotations

from layerscope.core.tasks.hellaswag import hellaswag_preprocess
from layerscope.core.tasks.mmlu import MMLU_LETTERS, mmlu_prompt
from layerscope.core.tasks.registry import ALIASES, KNOWN, data_roots, known_tasks, load_task
from layerscope.core.tasks.types import METRICS, Item, MCItem, PartialItem, Task, task_fingerprint

__all__ = [
    "ALIASES",
    "KNOWN",
    "METRICS",
    "MMLU_LETTERS",
    "Item",
    "MCItem",
    "PartialItem",
    "Task",
    "data_roots",
    "hellaswag_preprocess",
    "known_tasks",
    "load_task",
    "mmlu_prompt",
    "task_fingerprint",
]

"""Zero-shot multiple-choice evaluation sets, as lm-evaluation-harness builds them.

A :class:`Task` is a list of :class:`MCItem` (a context, its answer choices, the gold index)
plus how to score it (``acc`` or ``acc_norm``, as lm-eval reports for that task) and the
random-guess level. The evaluator (``layerscope.scoring``) scores the continuation
``target_delimiter + choice`` after ``context``, exactly like lm-eval's ``multiple_choice``.

Sources understood by :func:`load_task`:

- a known name (``arc_easy``, ``arc_challenge``, ``boolq``, ``piqa``, ``openbook_qa``,
  ``hellaswag``, ``mmlu``; ``mmlu:<subject or category>`` also works) mapped to the files in
  ``../shared/data/eval``. Known names rebuild lm-eval's prompts from those files (e.g. ARC
  ``"Question: ...\\nAnswer:"``), so numbers are comparable with published lm-eval results;
- a ``{"query", "choices", "gold"}`` JSONL file (the query is used verbatim);
- an original-schema HellaSwag JSONL (``ctx_a``, ``ctx_b``, ``endings``, ``label``);
- MMLU: ``mmlu.zip``, a folder of the hendrycks CSVs, or one ``<subject>_<split>.csv``;
- any other multiple-choice JSONL/JSON list whose field names are given with ``fields``.

One module per concept: ``types`` (items, tasks, fingerprints), ``registry`` (known names,
prompts, data folders, :func:`load_task`), ``reading`` (JSON records and field mapping),
``hellaswag`` and ``mmlu``.
"""

from __future__ import annotations

from layerscope.core.tasks.hellaswag import hellaswag_preprocess
from layerscope.core.tasks.mmlu import MMLU_LETTERS, mmlu_prompt
from layerscope.core.tasks.registry import ALIASES, KNOWN, data_roots, known_tasks, load_task
from layerscope.core.tasks.types import METRICS, MCItem, Task, task_fingerprint

__all__ = [
    "ALIASES",
    "KNOWN",
    "METRICS",
    "MMLU_LETTERS",
    "MCItem",
    "Task",
    "data_roots",
    "hellaswag_preprocess",
    "known_tasks",
    "load_task",
    "mmlu_prompt",
    "task_fingerprint",
]

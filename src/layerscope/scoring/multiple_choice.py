"""Zero-shot multiple-choice accuracy, scored exactly like lm-evaluation-harness.

A choice's score is the sum of the log-probabilities of its continuation tokens after the
context (``encoding``); acc takes the highest score, acc_norm the highest score per character.
Items are packed (context once, then all choices; see ``batching``) when the model honours a
custom 4-D attention mask, which a probe checks once per model: :func:`mc_evaluator` falls
back to one row per choice when it does not.

Partial-scoring items (:class:`~layerscope.core.tasks.PartialItem`, lm-eval's ``multiple_input``)
go through the same evaluator: each (context_i, continuation) pair is one request, and the
answer is the context with the highest score. Packing does not apply to them (it shares one
context among several continuations, and here the contexts differ), so they get one plain row
per request, as in lm-eval, and need no packing probe. Their acc_norm divides by each
context's characters, as lm-eval's does (it divides by ``doc_to_choice``, here the contexts).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import warnings
import weakref

import numpy as np
import torch

from layerscope.core.errors import ConfigError, DataError, ModelError, check_count, error_line
from layerscope.core.models import check_eval_mode, check_tokenizer, check_torch_model, context_length, pad_token_id
from layerscope.core.quantization import compute_dtype
from layerscope.core.tasks import Task, load_task
from layerscope.scoring.batching import Batch, EvalResult, Row, build_batch, sorted_batches
from layerscope.scoring.encoding import Request, encode_pairs
from layerscope.scoring.runner import ForwardFn, run_batches
from layerscope.scoring.vocabulary import VocabularyCheck

LAYOUTS = ("packed", "plain")
PACKING_TOLERANCE = 2e-3  # max |loglik difference| packed vs plain accepted by the probe, in float32
# In lower precision the same rows packed and plain round differently: SmolLM2 in bfloat16 differs by
# 0.10-0.49 nats on ARC-Easy / HellaSwag / PIQA (0.00001-0.00003 in float32), while a model that ignores
# the packed mask differs by 5.6-67 (docs/performance.md). So the bound grows with the dtype's epsilon:
# 128 eps is 1.0 nat in bfloat16, 0.125 in float16, and below the float32 floor.
PACKING_EPS_STEPS = 128
_WARNED_UNPACKABLE: weakref.WeakSet = weakref.WeakSet()  # models whose packed-row failure was reported
_TOLD_CUT: set[tuple] = set()  # (task, max_length) whose items cut from the left were said in a note


TaskLike = Task | str | os.PathLike  # a Task, or what load_task reads: a known name or an MC file


def as_task(task: TaskLike) -> Task:
    """``task`` as a :class:`Task`: a known task name or an MC file is loaded with :func:`load_task` (every
    item; call ``load_task(name, limit=N)`` for fewer), as ``evaluator_for`` and the CLI's ``--task`` do."""
    if isinstance(task, Task):
        return task
    if isinstance(task, (str, os.PathLike)):
        return load_task(os.fspath(task))
    raise ConfigError(
        f"task must be a Task (layerscope.core.tasks.load_task), a task name or an MC file, got {type(task).__name__}"
    )


class MCEvaluator:
    """Zero-shot multiple-choice scorer for one :class:`Task` (or a task name or file, loaded whole).

    ``batch_size`` counts rows per forward: items in the packed layout (each row holds one
    item and all its choices), (item, choice) requests in the plain layout (like lm-eval).
    ``layout="plain"`` gives one row per request, for models that do not honour 4-D masks.
    ``max_length`` (default: from ``model``'s config when given, else none) truncates
    context + continuation from the left like lm-eval; such items get plain rows.
    """

    def __init__(
        self,
        tokenizer,
        task: TaskLike,
        batch_size: int = 16,
        *,
        layout: str = "packed",
        max_length: int | None = None,
        model=None,
    ):
        check_count(batch_size, "batch_size", 1)
        if max_length is not None:
            check_count(max_length, "max_length", 2)
        check_tokenizer(tokenizer)  # a negative one would cut from the wrong end
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        task = as_task(task)
        if not task.items:
            raise DataError(f"task {task.name}: no items")
        at_context = max_length is None and model is not None
        if at_context:
            max_length = context_length(model)
        self.task, self.batch_size, self.layout, self.max_length = task, batch_size, layout, max_length
        self.first_item = task.extras.get("first_item", 0)  # items before it were left out (skip): for messages
        items = task.items
        self.n_items = len(items)
        self.offsets = np.cumsum([0] + [it.n_options for it in items]).tolist()
        self.n_requests = self.offsets[-1]
        self.choice_chars = np.array([max(1, n) for it in items for n in it.norm_lengths()], dtype=np.float64)
        self.golds = [it.gold for it in items]
        self.requests = self._tokenize(tokenizer, task)  # per item: [(context ids, continuation ids)] per option
        self.pad_id = pad_token_id(tokenizer)
        self._batch_rows()  # refuses an item whose choice alone is too long: no note before that error
        self._note_cut(at_context)

    def _batch_rows(self) -> None:
        """Rows of the current layout, batched; no model has been probed on them yet."""
        rows = self._rows(self.requests)
        self.n_tokens = sum(r.length for r in rows)
        self.batches: list[Batch] = sorted_batches(rows, self.batch_size, lambda rs: build_batch(rs, self.pad_id))
        self._probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # models that passed the probe
        self._unpackable: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> why packed rows fail
        self._check_vocabulary = VocabularyCheck(self.batches, f"task {self.task.name}", self.pad_id)

    def plain(self) -> MCEvaluator:
        """This evaluator with one row per request (the same tokens: nothing is tokenized again)."""
        other = copy.copy(self)
        other.layout = "plain"
        other._batch_rows()
        return other

    # -- preparation
    def _tokenize(self, tokenizer, task: Task) -> list[list[Request]]:
        texts = [it.requests(task.target_delimiter) for it in task.items]
        reqs = encode_pairs(tokenizer, texts)
        for i, item in enumerate(reqs):
            for j, (_, cont) in enumerate(item):
                if not cont:
                    raise DataError(
                        f"{self._item(i)}: option {j} (continuation {texts[i][j][1]!r}) "
                        "tokenizes to nothing after its context"
                    )
        return reqs

    def _item(self, i: int) -> str:
        """How a message names item ``i``: its place in its file (``FILE: line N``), as the readers' errors do;
        else (items built in code) its number in the task."""
        return self.task.items[i].place or f"task {self.task.name}: item {i + self.first_item}"

    def _note_cut(self, at_context: bool) -> None:
        """One ``note:`` per task (and length) whose items are longer than ``max_length``: they are cut from the
        left, as lm-eval cuts them, so the model scores their choices without the start of their query, as
        SFT examples cut at the length are noted (``at_context``: the length is the model's context)."""
        limit = self.max_length
        if limit is None:
            return
        cut = [i for i, item in enumerate(self.requests) if any(len(c) + len(t) > limit + 1 for c, t in item)]
        told = (self.task.name, str(self.task.source), self.task.fingerprint, limit)
        if not cut or told in _TOLD_CUT:
            return
        _TOLD_CUT.add(told)
        length = f"the model's context ({limit} tokens)" if at_context else f"max_length {limit}"
        print(
            f"note: task {self.task.name}: {len(cut)} of {self.n_items} items are longer than {length} and cut from "
            f"the left, as lm-eval cuts them: their choices are scored without the start of the query "
            f"(first: {self._item(cut[0])})",
            file=sys.stderr,
        )

    def _packable(self, item: list[Request]) -> bool:
        """One shared context that fits max_length: ordinary items unless an empty context split differently;
        partial-scoring items only when their contexts tokenize alike."""
        ctx = item[0][0]
        if any(c != ctx for c, _ in item[1:]):
            return False
        return self.max_length is None or all(len(ctx) + len(t) <= self.max_length + 1 for _, t in item)

    def _packed_row(self, i: int) -> Row:
        item = self.requests[i]
        reqs = range(self.offsets[i], self.offsets[i + 1])
        return Row(prefix=item[0][0], segments=[(r, t) for r, (_, t) in zip(reqs, item)], order=i)

    def _rows(self, requests: list[list[Request]]) -> list[Row]:
        rows: list[Row] = []
        limit = self.max_length
        for i, item in enumerate(requests):
            if self.layout == "packed" and self._packable(item):
                rows.append(self._packed_row(i))
                continue
            for r, (c, t) in zip(range(self.offsets[i], self.offsets[i + 1]), item):
                full = c + t
                if limit is not None and len(full) > limit + 1:
                    full = full[-(limit + 1) :]  # lm-eval: truncate from the left
                if len(t) >= len(full):
                    raise DataError(f"{self._item(i)}: a choice alone is longer than max_length={limit}")
                rows.append(Row(prefix=full[: len(full) - len(t)], segments=[(r, t)], order=i))
        return rows

    # -- checks
    @property
    def packs(self) -> bool:
        """Whether any batch relies on a custom 4-D attention mask (so the model must be probed)."""
        return any(b.packed for b in self.batches)

    def check_packing(self, model) -> float:
        """Max |loglik| difference between packed and one-row-per-choice scoring on a few items.

        Packing relies on the model honouring a custom 4-D attention mask and position ids;
        every Hugging Face decoder tested does, but a model that silently ignored them would
        give wrong scores, so this is checked once per model before packed evaluation. A model
        whose forward fails on packed rows (e.g. ALiBi models, which build their bias from a 2-D
        mask) does not support packing: the difference is then infinite, never an exception.
        """
        idx = [
            i for i, item in enumerate(self.requests) if self._packable(item) and sum(len(t) > 1 for _, t in item) > 1
        ][:2]
        if not idx:
            return 0.0
        self._check_vocabulary(model)  # before the probe's forwards: an id past the vocabulary is no packing failure
        packed = [self._packed_row(i) for i in idx]
        plain = [
            Row(prefix=c, segments=[(r, t)], order=i)
            for i in idx
            for r, (c, t) in zip(range(self.offsets[i], self.offsets[i + 1]), self.requests[i])
        ]
        b = run_batches([build_batch(plain, self.pad_id)], model, None, False, "", self.n_requests)
        try:
            a = run_batches([build_batch(packed, self.pad_id)], model, None, False, "", self.n_requests)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the model's own mask code means "no packing"
            self._unpackable[model] = error_line(e, 200, with_type=True)
            return math.inf
        return float((a - b).abs().max())

    def packing_difference(self, model) -> float:
        """:meth:`check_packing`, run once per model: a model within :func:`packing_tolerance` is
        remembered (0.0 after)."""
        if model in self._probed:
            return 0.0
        if model in self._unpackable:
            return math.inf
        diff = self.check_packing(model)
        if diff <= packing_tolerance(model):
            self._probed[model] = True
        return diff

    def packing_failure(self, model) -> str | None:
        """Why ``model``'s forward failed on packed rows in the probe (None: it did not fail, or was not probed)."""
        return self._unpackable.get(model)

    def _ensure_packing_ok(self, model) -> None:
        if self.layout != "packed" or model is None or not self.packs:
            return
        diff = self.packing_difference(model)
        if self.packing_failure(model) is not None:
            raise ModelError(
                f"{type(model).__name__} fails on packed rows ({self.packing_failure(model)}); "
                "build MCEvaluator(..., layout='plain')"
            )
        if not diff <= packing_tolerance(model):
            raise ModelError(
                f"{type(model).__name__} does not honour custom 4-D attention masks (packed scores differ "
                f"by {diff:.3g}); build MCEvaluator(..., layout='plain')"
            )

    # -- evaluation
    def evaluate(self, model, forward: ForwardFn | None = None, progress: bool = False) -> EvalResult:
        self._check_vocabulary(model)  # once per model: an id past its vocabulary fails deep in torch
        if model is not None:
            check_eval_mode(model)  # each call: the mode can change between two
        self._ensure_packing_ok(model)
        sums = run_batches(self.batches, model, forward, progress, f"eval {self.task.name}", self.n_requests)
        return self.result_from_loglikelihoods(sums.numpy())

    def result_from_loglikelihoods(self, lls: np.ndarray) -> EvalResult:
        """Accuracy metrics from one log-likelihood per request (lm-eval's multiple_choice rules)."""
        normed = lls / self.choice_chars
        pred, pred_norm, per_item = [], [], []
        for i in range(self.n_items):
            a, b = self.offsets[i], self.offsets[i + 1]
            pred.append(int(np.argmax(lls[a:b])))  # first maximum on ties, as numpy / lm-eval
            pred_norm.append(int(np.argmax(normed[a:b])))
            per_item.append([float(x) for x in lls[a:b]])
        n = self.n_items
        acc = sum(p == g for p, g in zip(pred, self.golds)) / n
        acc_norm = sum(p == g for p, g in zip(pred_norm, self.golds)) / n
        metrics = {
            "acc": acc,
            "acc_stderr": _stderr(acc, n),
            "acc_norm": acc_norm,
            "acc_norm_stderr": _stderr(acc_norm, n),
            "chance": self.task.chance,
        }
        headline = self.task.metric
        return EvalResult(
            value=metrics[headline],
            metrics=metrics,
            predictions=pred_norm if headline == "acc_norm" else pred,
            n_items=n,
            loglikelihoods=per_item,
        )


def packing_tolerance(model) -> float:
    """Largest |loglik| difference between packed and plain rows accepted for ``model``: from the
    least precise dtype it computes in (:func:`~layerscope.core.quantization.compute_dtype`: a 4-bit
    model's compute dtype, not the float32 of its embeddings)."""
    dtype = compute_dtype(model)
    eps = torch.finfo(dtype).eps if dtype is not None else 0.0
    return max(PACKING_TOLERANCE, PACKING_EPS_STEPS * eps)


def mc_evaluator(tokenizer, task: TaskLike, batch_size: int, model) -> MCEvaluator:
    """An evaluator of ``task`` (a :class:`Task`, or a task name or file: :func:`as_task`) for ``model``:
    packed rows when the model honours them, else plain rows."""
    check_torch_model(model)
    ev = MCEvaluator(tokenizer, task, batch_size, model=model)
    if ev.packs and not ev.packing_difference(model) <= packing_tolerance(model):
        if ev.packing_failure(model) is not None and model not in _WARNED_UNPACKABLE:
            _WARNED_UNPACKABLE.add(model)  # once per model, however many evaluators are built for it
            warnings.warn(
                f"{type(model).__name__} fails on packed rows ({ev.packing_failure(model)}): packing is not "
                "supported, items are scored one row per choice",
                RuntimeWarning,
                stacklevel=2,
            )
        ev = ev.plain()
    return ev


def evaluate_task(model, tokenizer, task: TaskLike, batch_size: int = 16, progress: bool = False) -> EvalResult:
    """Zero-shot accuracy of ``model`` on ``task`` (a :class:`Task`, or a task name or file: :func:`as_task`):
    packed scoring when the model supports it, else plain rows."""
    return mc_evaluator(tokenizer, task, batch_size, model).evaluate(model, progress=progress)


def _stderr(p: float, n: int) -> float:
    """lm-eval's stderr of a mean of 0/1 scores: sqrt(p(1-p)/(n-1))."""
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")

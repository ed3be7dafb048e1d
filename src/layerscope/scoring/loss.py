"""Held-out SFT loss: mean cross-entropy over the response tokens of tokenized examples."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from layerscope.core.data import IGNORE_INDEX
from layerscope.core.errors import DataError, check_count
from layerscope.core.models import check_eval_mode, pad_token_id
from layerscope.scoring.batching import Batch, EvalResult, sorted_batches
from layerscope.scoring.runner import ForwardFn, run_batches
from layerscope.scoring.vocabulary import VocabularyCheck


class LossEvaluator:
    """Mean cross-entropy over the response tokens (labels != -100) of SFT examples.

    The mean is over tokens (all examples pooled), like a Trainer's eval loss on one big
    batch; ``value`` is ``-loss`` so that higher is better, as for accuracies.
    """

    def __init__(self, tokenizer, examples: Iterable, batch_size: int = 8, *, max_length: int | None = None):
        if isinstance(examples, (str, os.PathLike)):
            raise DataError(f"{examples}: a path; load the examples first (load_sft(path, tokenizer).examples)")
        examples = getattr(examples, "examples", examples)  # an SFTData, as run_ila takes it
        check_count(batch_size, "batch_size", 1)
        if max_length is not None:
            check_count(max_length, "max_length", 2)  # -1 is no "no limit": [:-1] would cut every example's last token
        rows: list[_LossRow] = []
        n_examples = 0
        for i, ex in enumerate(examples):
            n_examples += 1
            ids, labels = list(ex.input_ids), list(ex.labels)
            if len(ids) != len(labels):
                raise DataError(f"example {i}: input_ids and labels differ in length ({len(ids)} vs {len(labels)})")
            if max_length is not None:
                ids, labels = ids[:max_length], labels[:max_length]
            scored = [t for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
            if not scored:
                continue  # nothing to score (e.g. the response was truncated away)
            rows.append(_LossRow(ids, labels, i, scored[0], slot=len(rows)))
        if not rows:
            raise DataError(f"no example with response tokens (labels != {IGNORE_INDEX}) among {n_examples}")
        self.n_examples = n_examples
        self.n_scored_examples = len(rows)
        self.n_tokens = sum(r.n_scored for r in rows)
        pad = pad_token_id(tokenizer)
        self.batches: list[Batch] = sorted_batches(rows, batch_size, lambda rs: _loss_batch(rs, pad))
        longest = max(len(r.ids) for r in rows)
        self._check_vocabulary = VocabularyCheck(self.batches, "the loss examples", pad, longest=longest)

    def evaluate(self, model, forward: ForwardFn | None = None, progress: bool = False) -> EvalResult:
        self._check_vocabulary(model)  # once per model: an id past its vocabulary fails deep in torch
        if model is not None:
            check_eval_mode(model)  # each call: the mode can change between two
        # one slot per example, summed in a fixed order at the end: the same number however the batches
        # were split across processes (a single running sum would depend on the order they arrive in)
        sums = run_batches(self.batches, model, forward, progress, "eval loss", self.n_scored_examples)
        loss = float(-sums.sum()) / self.n_tokens
        ppl = math.exp(loss) if loss < 700 else float("inf")
        return EvalResult(
            value=-loss,
            metrics={
                "loss": loss,
                "ppl": ppl,
                "n_tokens": float(self.n_tokens),
                "n_examples": float(self.n_scored_examples),
            },
            predictions=None,
            n_items=self.n_scored_examples,
        )


@dataclass
class _LossRow:
    ids: list[int]
    labels: list[int]
    order: int
    first: int  # first position whose label is scored
    slot: int = 0  # this example's place in the evaluator's per-example sums

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def n_scored(self) -> int:
        return sum(1 for t in range(1, len(self.ids)) if self.labels[t] != IGNORE_INDEX)


def _loss_batch(rows: list[_LossRow], pad_id: int) -> Batch:
    """Right-padded rows; position t - 1 predicts every label t that is not IGNORE_INDEX."""
    B, T = len(rows), max(len(r.ids) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    s_row, s_pos, s_tok, s_req = [], [], [], []
    for b, r in enumerate(rows):
        ids[b, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[b, : len(r.ids)] = 1
        for t in range(1, len(r.ids)):
            if r.labels[t] != IGNORE_INDEX:
                s_row.append(b)
                s_pos.append(t - 1)
                s_tok.append(r.labels[t])
                s_req.append(r.slot)
    first = min(r.first for r in rows) - 1
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=None,
        logits_to_keep=T - first,
        score_row=torch.tensor(s_row, dtype=torch.long),
        score_pos=torch.tensor(s_pos, dtype=torch.long),
        score_tok=torch.tensor(s_tok, dtype=torch.long),
        score_req=torch.tensor(s_req, dtype=torch.long),
    )

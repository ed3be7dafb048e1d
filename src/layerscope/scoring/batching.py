"""Model inputs for scoring: the :class:`Batch` a forward pass takes, and how rows become batches.

Everything is tokenized once, at an evaluator's construction, and batched in a fixed order:
longest rows first, cut into batches of at most ``batch_size`` rows by an exact dynamic
programme that minimises padded tokens plus a per-forward overhead (:func:`partition_sorted`).

**Packed rows** (:class:`Row` with several segments): one row holds a context once, followed
by the tokens of all its choices. A 4-D attention mask lets each choice see the context and
itself only, and position ids restart after the context, so each choice is scored exactly as
if it followed the context alone, but the context runs once instead of once per choice. The
last token of a choice is never fed (nothing after it is scored), so one-token choices (MMLU
" A".." D") cost nothing beyond their context. Rows whose choices are all one token need no
4-D mask at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# One forward pass costs about this many tokens' worth of time on top of its tokens
# (SmolLM2-135M on 2 CPU cores: ~40 ms per call at ~650 tokens/s).
FORWARD_OVERHEAD_TOKENS = 32


@dataclass
class Batch:
    """Model inputs of one forward pass, plus what is needed to score its logits.

    ``attention_mask`` is a [B, T] 0/1 padding mask, or, for packed multiple-choice rows, a
    float additive mask [B, 1, T, T] (0 where a query may attend a key, the dtype's minimum
    elsewhere), which Hugging Face models take as-is. ``position_ids`` is None (the model's
    default 0..T-1) or [B, T]. Rows are right-padded. ``logits_to_keep``: only the last this
    many positions are scored, so a forward may return logits [B, logits_to_keep, V] instead
    of [B, T, V].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    logits_to_keep: int
    # ---- scoring (private): one entry per scored token
    score_row: torch.Tensor = field(repr=False)  # row of the predicting position
    score_pos: torch.Tensor = field(repr=False)  # its position in the row (0..T-1)
    score_tok: torch.Tensor = field(repr=False)  # the token whose log-prob is taken
    score_req: torch.Tensor = field(repr=False)  # request (choice / example) it adds to
    uniq_row: torch.Tensor = field(repr=False, default=None)  # distinct (row, pos) pairs scored ...
    uniq_pos: torch.Tensor = field(repr=False, default=None)
    score_uniq: torch.Tensor = field(repr=False, default=None)  # ... and which one each scored token uses

    def __post_init__(self) -> None:
        if self.uniq_row is None:  # positions shared by several tokens (a context's last one) are scored once
            key = self.score_row * max(1, self.width) + self.score_pos
            uniq, inv = torch.unique(key, return_inverse=True)
            w = max(1, self.width)
            self.uniq_row, self.uniq_pos, self.score_uniq = uniq // w, uniq % w, inv

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def packed(self) -> bool:
        """Whether the batch needs the model to honour a custom 4-D attention mask."""
        return self.attention_mask.dim() == 4

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """The same batch on ``device``; a 4-D float mask is rebuilt in ``dtype`` (no-op when equal)."""
        mask = self.attention_mask
        if mask.dim() == 4 and dtype is not None and dtype.is_floating_point and mask.dtype != dtype:
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill_(mask != 0, torch.finfo(dtype).min)
        return Batch(
            self.input_ids.to(device),
            mask.to(device),
            None if self.position_ids is None else self.position_ids.to(device),
            self.logits_to_keep,
            self.score_row,
            self.score_pos,
            self.score_tok,
            self.score_req,
            self.uniq_row,
            self.uniq_pos,
            self.score_uniq,
        )


@dataclass
class EvalResult:
    value: float  # headline metric: acc_norm / acc for MC tasks, -loss for loss evaluation
    metrics: dict[str, float]
    predictions: list[int] | None  # chosen answer per item (by the headline metric); None for loss
    n_items: int
    loglikelihoods: list[list[float]] | None = None  # per item, per choice (MC only)


@dataclass
class Row:
    """One model input row: a prefix, then segments whose tokens are scored.

    Segment ``j`` scores ``tokens_j`` with the request ``req_j``; its first token is predicted
    from the prefix's last position, the rest from the segment's own positions. Every segment
    attends to the prefix and to itself only.
    """

    prefix: list[int]
    segments: list[tuple[int, list[int]]]  # (request id, continuation tokens), each non-empty
    order: int  # original index, a stable tie-break for sorting

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(t) - 1 for _, t in self.segments)


def build_batch(rows: Sequence[Row], pad_id: int) -> Batch:
    """Right-padded tensors, the (2-D or 4-D) mask, positions and scoring indices of ``rows``."""
    B, T = len(rows), max(r.length for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    packed = any(sum(1 for _, t in r.segments if len(t) > 1) > 1 for r in rows)
    seg = torch.full((B, T), -1, dtype=torch.long)  # -1 pad, 0 prefix, j+1 segment j
    pos = torch.zeros((B, T), dtype=torch.long)
    s_row: list[int] = []
    s_pos: list[int] = []
    s_tok: list[int] = []
    s_req: list[int] = []
    first_scored = T
    for b, r in enumerate(rows):
        P = len(r.prefix)
        ids[b, :P] = torch.tensor(r.prefix, dtype=torch.long)
        seg[b, :P] = 0
        pos[b, :P] = torch.arange(P)
        first_scored = min(first_scored, P - 1)
        start = P
        for j, (req, toks) in enumerate(r.segments):
            n_in = len(toks) - 1  # the last token is only predicted, never fed
            if n_in:
                ids[b, start : start + n_in] = torch.tensor(toks[:-1], dtype=torch.long)
                seg[b, start : start + n_in] = j + 1
                pos[b, start : start + n_in] = torch.arange(P, P + n_in)
            where = [P - 1] + list(range(start, start + n_in))
            s_row += [b] * len(toks)
            s_pos += where
            s_tok += toks
            s_req += [req] * len(toks)
            start += n_in
    if packed:
        mask, position_ids = _segment_mask(seg), pos
    else:  # every row is an ordinary causal sequence: a padding mask is all the model needs
        mask, position_ids = (seg >= 0).long(), None
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        logits_to_keep=T - first_scored,
        score_row=torch.tensor(s_row, dtype=torch.long),
        score_pos=torch.tensor(s_pos, dtype=torch.long),
        score_tok=torch.tensor(s_tok, dtype=torch.long),
        score_req=torch.tensor(s_req, dtype=torch.long),
    )


def _segment_mask(seg: torch.Tensor) -> torch.Tensor:
    """Additive [B, 1, T, T] mask from segment ids (-1 pad, 0 prefix, j+1 segment j).

    Causal, and a segment sees the prefix and itself only.
    """
    T = seg.shape[1]
    q, k = seg.unsqueeze(2), seg.unsqueeze(1)  # [B, T, 1], [B, 1, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(T, dtype=torch.bool)  # pads see themselves: no empty rows
    mask = torch.zeros((seg.shape[0], 1, T, T), dtype=torch.float32)
    return mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(torch.float32).min)


def partition_sorted(lengths: Sequence[int], max_rows: int, overhead: int | None = None) -> list[int]:
    """Cut lengths sorted in descending order into runs of <= ``max_rows`` minimising padded cost.

    A run starting at row j holds rows j..i-1 and costs (i - j) * lengths[j] + overhead: the
    padded tokens it feeds plus a per-forward overhead. Exact dynamic programme, O(n * max_rows).
    Returns the start index of each run. ``overhead`` defaults to FORWARD_OVERHEAD_TOKENS.
    """
    overhead = FORWARD_OVERHEAD_TOKENS if overhead is None else overhead
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    start = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - max_rows), i):
            c = best[j] + (i - j) * lengths[j] + overhead
            if c < best[i]:
                best[i], start[i] = c, j
    cuts, i = [], n
    while i > 0:
        cuts.append(start[i])
        i = start[i]
    return cuts[::-1]


def sorted_batches(rows: list, batch_size: int, build: Callable[[list], Batch]) -> list[Batch]:
    """Longest rows first (stable), cut into batches of at most ``batch_size`` rows with little padding.

    ``rows`` need a ``length`` and an ``order`` (the stable tie-break).
    """
    rows = sorted(rows, key=lambda r: (-r.length, r.order))
    cuts = partition_sorted([r.length for r in rows], batch_size) + [len(rows)]
    return [build(rows[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]

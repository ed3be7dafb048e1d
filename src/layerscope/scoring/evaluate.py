"""The fast scorer: zero-shot multiple-choice accuracy and held-out SFT loss.

Scores are exactly lm-evaluation-harness's ``loglikelihood`` (HF backend): the context is
encoded alone, ``context + continuation`` is encoded whole and split at the context's token
length, and a choice's score is the sum of the log-probabilities of its tokens. What makes it
fast (it runs thousands of times inside ablation / Shapley loops):

- everything is tokenized once, at construction, and batched in a fixed order: longest rows
  first, cut into batches of at most ``batch_size`` rows by an exact dynamic programme that
  minimises padded tokens plus a per-forward overhead;
- **packed rows**: one row holds a context once, followed by the tokens of all its choices.
  A 4-D attention mask lets each choice see the context and itself only, and position ids
  restart after the context, so each choice is scored exactly as if it followed the context
  alone, but the context runs once instead of once per choice. The last token of a choice is
  never fed (nothing after it is scored), so one-token choices (MMLU " A".." D") cost nothing
  beyond their context. Rows whose choices are all one token need no 4-D mask at all. Before
  a model is first evaluated packed, a probe checks that it honours the mask;
- only the scored positions reach the LM head: with the default forward a pre-hook on the
  output embedding keeps just those hidden states (and the model is asked for
  ``logits_to_keep``), so no [B, T, vocab] tensor and no log-softmax over unscored positions.

The ablation engine supplies its own ``forward(batch_index, batch) -> logits``; it must use
``batch.input_ids / attention_mask / position_ids`` as the model inputs and may return logits
for all ``T`` positions or only the last ``batch.logits_to_keep``.
"""

from __future__ import annotations

import inspect
import math
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from layerscope.core import distributed
from layerscope.core.errors import ConfigError, DataError, ModelError
from layerscope.core.models import pad_token_id
from layerscope.core.tasks import Task

IGNORE_INDEX = -100
LAYOUTS = ("packed", "plain")
_PACKING_TOLERANCE = 2e-3  # max |loglik difference| packed vs plain accepted by the probe


# ----------------------------------------------------------------------------- public types


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


ForwardFn = Callable[[int, Batch], torch.Tensor]


class Evaluator(Protocol):
    batches: list[Batch]

    def evaluate(self, model, forward: ForwardFn | None = None, progress: bool = False) -> EvalResult: ...


# ----------------------------------------------------------------------------- helpers


@dataclass
class _Row:
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


def _build_batch(rows: Sequence[_Row], pad_id: int) -> Batch:
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
        q, k = seg.unsqueeze(2), seg.unsqueeze(1)  # [B, T, 1], [B, 1, T]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = causal & (k >= 0) & ((k == 0) | (k == q))
        allowed |= torch.eye(T, dtype=torch.bool)  # pads see themselves: no empty rows
        mask = torch.zeros((B, 1, T, T), dtype=torch.float32)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(torch.float32).min)
        position_ids: torch.Tensor | None = pos
    else:  # every row is an ordinary causal sequence: a padding mask is all the model needs
        mask = (seg >= 0).long()
        position_ids = None
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


# One forward pass costs about this many tokens' worth of time on top of its tokens
# (SmolLM2-135M on 2 CPU cores: ~40 ms per call at ~650 tokens/s).
FORWARD_OVERHEAD_TOKENS = 32


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


def _batched(rows: list, batch_size: int, build: Callable[[list], Batch]) -> list[Batch]:
    """Longest rows first (stable), cut into batches of at most ``batch_size`` rows with little padding."""
    rows = sorted(rows, key=lambda r: (-r.length, r.order))
    cuts = partition_sorted([r.length for r in rows], batch_size) + [len(rows)]
    return [build(rows[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def _accepts_logits_to_keep(model) -> bool:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


def default_forward(model) -> ForwardFn:
    """``model(input_ids, attention_mask, position_ids).logits``, asking only for the scored positions."""
    keep = _accepts_logits_to_keep(model)

    def forward(_: int, b: Batch) -> torch.Tensor:
        kwargs = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        if b.position_ids is not None:
            kwargs["position_ids"] = b.position_ids
        if keep:
            kwargs["logits_to_keep"] = b.logits_to_keep
        return model(**kwargs).logits

    return forward


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype | None]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), None


def _select(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """Logits [U, V] at the batch's distinct scored positions, from [B, T or logits_to_keep, V]."""
    B, L = logits.shape[0], logits.shape[1]
    if B != batch.size or L not in (batch.width, batch.logits_to_keep):
        raise ModelError(
            f"forward returned logits of shape {tuple(logits.shape)}; expected "
            f"[{batch.size}, {batch.width} or {batch.logits_to_keep}, vocab]"
        )
    dev = logits.device
    return logits[batch.uniq_row.to(dev), (batch.uniq_pos - (batch.width - L)).to(dev)]


def _score_selected(batch: Batch, sel: torch.Tensor, out: torch.Tensor) -> None:
    """Add each scored token's log-probability to ``out[request]`` (float64) from logits [U, V]."""
    sel = sel.float()
    dev = sel.device
    lse = torch.logsumexp(sel, dim=-1)
    inv = batch.score_uniq.to(dev)
    logp = sel[inv, batch.score_tok.to(dev)] - lse[inv]
    out.index_add_(0, batch.score_req, logp.double().cpu())


class _HeadSelector:
    """Run a causal LM so that its LM head sees only the scored positions.

    A forward pre-hook on the output embedding replaces its input hidden states [B, L, H]
    by the rows at the batch's scored positions [1, U, H], so the head (and any elementwise
    post-processing such as logit soft-capping) costs U positions instead of B*T, and no
    [B, T, V] tensor is ever built. If the model bypasses its output-embedding module, the
    hook never fires and the full logits are selected afterwards.
    """

    def __init__(self, model):
        self.model = model
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.keep = _accepts_logits_to_keep(model)
        self.batch: Batch | None = None
        self.fired = False

    def _hook(self, module, args):
        h = args[0]
        if self.batch is None or h.dim() != 3 or h.shape[0] != self.batch.size:
            return None
        b = self.batch
        off = b.width - h.shape[1]
        self.fired = True
        rows, pos = b.uniq_row.to(h.device), (b.uniq_pos - off).to(h.device)
        return (h[rows, pos].unsqueeze(0),) + tuple(args[1:])

    def __call__(self, b: Batch) -> torch.Tensor:
        kwargs = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        if b.position_ids is not None:
            kwargs["position_ids"] = b.position_ids
        if self.keep:
            kwargs["logits_to_keep"] = b.logits_to_keep
        if self.head is None:
            return _select(b, self.model(**kwargs).logits)
        self.batch, self.fired = b, False
        handle = self.head.register_forward_pre_hook(self._hook)
        try:
            logits = self.model(**kwargs).logits
        finally:
            handle.remove()
            self.batch = None
        return logits[0] if self.fired else _select(b, logits)


def _run(
    batches: list[Batch], model, forward: ForwardFn | None, progress: bool, desc: str, n_requests: int
) -> torch.Tensor:
    """Forward every batch and score it right away (never holding all logits)."""
    if forward is None and model is None:
        raise ConfigError("evaluate needs a model or a forward function")
    device, dtype = _model_device_dtype(model) if model is not None else (None, None)
    head = _HeadSelector(model) if forward is None else None
    # the last slot counts processes that failed: every process reaches the one collective below even
    # when its own batches raised, so no process is left waiting, and all of them raise together
    sums = torch.zeros(n_requests + 1, dtype=torch.float64)
    from tqdm import tqdm

    ctx = torch.no_grad() if forward is not None else torch.inference_mode()
    mine = distributed.owned(len(batches))  # all batches in one process; a shard under torchrun
    failure: BaseException | None = None
    try:
        with ctx:
            for i in tqdm(
                mine, desc=desc, disable=not progress or not distributed.is_main_process(), file=sys.stderr, leave=False
            ):
                b = batches[i]
                if device is not None:
                    b = b.to(device, dtype)
                sel = head(b) if head is not None else _select(b, forward(i, b))
                _score_selected(b, sel, sums)
                del sel
    except Exception as e:
        if not distributed.sharding():
            raise
        failure = e
        sums.zero_()
        sums[-1] = 1.0
    if distributed.sharding():
        sums = distributed.sum_across(sums)
    if failure is not None:
        if int(sums[-1]) < distributed.world_size():
            # not every process failed, so the main process only knows "failed elsewhere": this
            # process must print its own message (the CLI reads this flag)
            failure.report_on_every_process = True
        raise failure
    if sums[-1] > 0:
        raise ModelError(f"evaluation failed in {int(sums[-1])} other process(es)")
    return sums[:-1]


def _stderr(p: float, n: int) -> float:
    """lm-eval's stderr of a mean of 0/1 scores: sqrt(p(1-p)/(n-1))."""
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")


def _resolve_max_length(model) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


# ----------------------------------------------------------------------------- multiple choice


def encode_like_lm_eval(tokenizer, text: str) -> list[int]:
    """lm-eval's ``tok_encode``: the tokenizer's default special tokens, unless ``text`` already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Batch version of :func:`encode_like_lm_eval` (one fast-tokenizer call per group)."""
    bos = getattr(tokenizer, "bos_token", None)
    out: list[list[int] | None] = [None] * len(texts)
    plain = [i for i, t in enumerate(texts) if not (bos and t.startswith(bos))]
    raw = [i for i, t in enumerate(texts) if bos and t.startswith(bos)]
    for idx, special in ((plain, True), (raw, False)):
        if idx:
            enc = tokenizer([texts[i] for i in idx], add_special_tokens=special)["input_ids"]
            for i, e in zip(idx, enc):
                out[i] = list(e)
    return out  # type: ignore[return-value]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` for one (context, continuation), including empty contexts."""
    return _encode_requests(tokenizer, [context], [[continuation]])[0][0]


def _encode_requests(
    tokenizer, contexts: list[str], continuations: list[list[str]]
) -> list[list[tuple[list[int], list[int]]]]:
    """(context ids, continuation ids) of every request, per item, as lm-eval makes them.

    Trailing whitespace of a context moves to its continuation; the whole string is encoded
    and split at the context's token length (each distinct context is encoded once). An
    empty context becomes the BOS (else EOS) token.
    """
    pairs: list[tuple[str, str]] = []
    for c, conts in zip(contexts, continuations):
        n = len(c) - len(c.rstrip())
        pairs += [(c[:-n], c[-n:] + cont) if n else (c, cont) for cont in conts]
    uniq = list(dict.fromkeys(a for a, _ in pairs if a))
    ctx_enc = dict(zip(uniq, _encode_many(tokenizer, uniq)))
    whole_enc = iter(_encode_many(tokenizer, [a + b for a, b in pairs if a]))
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    out: list[list[tuple[list[int], list[int]]]] = []
    k = 0
    for conts in continuations:
        item = []
        for _ in conts:
            c_text, cont_text = pairs[k]
            k += 1
            if c_text:
                c = ctx_enc[c_text]
                item.append((c, next(whole_enc)[len(c) :]))
            else:
                cont = list(tokenizer.encode(cont_text, add_special_tokens=False))
                item.append((cont[:1], cont[1:]) if cont and cont[0] == prefix_id else ([prefix_id], cont))
        out.append(item)
    return out


class MCEvaluator:
    """Zero-shot multiple-choice scorer for one :class:`Task`.

    ``batch_size`` counts rows per forward: items in the packed layout (each row holds one
    item and all its choices), (item, choice) requests in the plain layout (like lm-eval).
    ``layout="plain"`` gives one row per request, for models that do not honour 4-D masks.
    ``max_length`` (default: from ``model``'s config when given, else none) truncates
    context + continuation from the left like lm-eval; such items get plain rows.
    """

    def __init__(
        self,
        tokenizer,
        task: Task,
        batch_size: int = 16,
        *,
        layout: str = "packed",
        max_length: int | None = None,
        model=None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not task.items:
            raise DataError(f"task {task.name}: no items")
        if max_length is None and model is not None:
            max_length = _resolve_max_length(model)
        self.task, self.batch_size, self.layout, self.max_length = task, batch_size, layout, max_length
        items = task.items
        self.n_items = len(items)
        self.offsets = np.cumsum([0] + [len(it.choices) for it in items]).tolist()
        self.n_requests = self.offsets[-1]
        self.choice_chars = np.array([max(1, len(c)) for it in items for c in it.choices], dtype=np.float64)
        self.golds = [it.gold for it in items]
        self.requests = self._tokenize(tokenizer, task)  # per item: [(context ids, continuation ids)] per choice
        rows = self._rows(self.requests)
        self.n_tokens = sum(r.length for r in rows)
        self.pad_id = pad_token_id(tokenizer)
        self.batches: list[Batch] = _batched(rows, batch_size, lambda rs: _build_batch(rs, self.pad_id))
        self._probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- preparation
    def _tokenize(self, tokenizer, task: Task) -> list[list[tuple[list[int], list[int]]]]:
        d = task.target_delimiter
        reqs = _encode_requests(
            tokenizer, [it.context for it in task.items], [[d + c for c in it.choices] for it in task.items]
        )
        for i, item in enumerate(reqs):
            for j, (_, cont) in enumerate(item):
                if not cont:
                    raise DataError(
                        f"task {task.name}: item {i} choice {j} ({task.items[i].choices[j]!r}) "
                        "tokenizes to nothing after its context"
                    )
        return reqs

    def _packable(self, item: list[tuple[list[int], list[int]]]) -> bool:
        """One shared context (always, unless an empty context split differently) that fits max_length."""
        ctx = item[0][0]
        if any(c != ctx for c, _ in item[1:]):
            return False
        return self.max_length is None or all(len(ctx) + len(t) <= self.max_length + 1 for _, t in item)

    def _rows(self, requests: list[list[tuple[list[int], list[int]]]]) -> list[_Row]:
        rows: list[_Row] = []
        limit = self.max_length
        for i, item in enumerate(requests):
            reqs = range(self.offsets[i], self.offsets[i + 1])
            if self.layout == "packed" and self._packable(item):
                rows.append(_Row(prefix=item[0][0], segments=[(r, t) for r, (_, t) in zip(reqs, item)], order=i))
                continue
            for r, (c, t) in zip(reqs, item):
                full = c + t
                if limit is not None and len(full) > limit + 1:
                    full = full[-(limit + 1) :]  # lm-eval: truncate from the left
                if len(t) >= len(full):
                    raise DataError(
                        f"task {self.task.name}: item {i}: a choice alone is longer than max_length={limit}"
                    )
                rows.append(_Row(prefix=full[: len(full) - len(t)], segments=[(r, t)], order=i))
        return rows

    # -- checks
    def check_packing(self, model) -> float:
        """Max |loglik| difference between packed and one-row-per-choice scoring on a few items.

        Packing relies on the model honouring a custom 4-D attention mask and position ids;
        every Hugging Face decoder tested does, but a model that silently ignored them would
        give wrong scores, so this is checked once per model before packed evaluation.
        """
        idx = [
            i for i, item in enumerate(self.requests) if self._packable(item) and sum(len(t) > 1 for _, t in item) > 1
        ][:2]
        if not idx:
            return 0.0
        packed, plain = [], []
        for i in idx:
            reqs = list(range(self.offsets[i], self.offsets[i + 1]))
            item = self.requests[i]
            packed.append(_Row(prefix=item[0][0], segments=[(r, t) for r, (_, t) in zip(reqs, item)], order=i))
            plain += [_Row(prefix=c, segments=[(r, t)], order=i) for r, (c, t) in zip(reqs, item)]
        a = _run([_build_batch(packed, self.pad_id)], model, None, False, "", self.n_requests)
        b = _run([_build_batch(plain, self.pad_id)], model, None, False, "", self.n_requests)
        return float((a - b).abs().max())

    def _ensure_packing_ok(self, model) -> None:
        if self.layout != "packed" or model is None or not any(b.attention_mask.dim() == 4 for b in self.batches):
            return
        if model in self._probed:
            return
        diff = self.check_packing(model)
        if not diff <= _PACKING_TOLERANCE:
            raise ModelError(
                f"{type(model).__name__} does not honour custom 4-D attention masks (packed scores differ "
                f"by {diff:.3g}); build MCEvaluator(..., layout='plain')"
            )
        self._probed[model] = True

    # -- evaluation
    def evaluate(self, model, forward: ForwardFn | None = None, progress: bool = False) -> EvalResult:
        self._ensure_packing_ok(model)
        sums = _run(self.batches, model, forward, progress, f"eval {self.task.name}", self.n_requests)
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


def evaluate_task(model, tokenizer, task: Task, batch_size: int = 16, progress: bool = False) -> EvalResult:
    """Zero-shot accuracy of ``model`` on ``task``: packed scoring when the model supports it, else plain rows."""
    ev = MCEvaluator(tokenizer, task, batch_size, model=model)
    if any(b.attention_mask.dim() == 4 for b in ev.batches):
        diff = ev.check_packing(model)
        if diff <= _PACKING_TOLERANCE:
            ev._probed[model] = True
        else:
            ev = MCEvaluator(tokenizer, task, batch_size, layout="plain", model=model)
    return ev.evaluate(model, progress=progress)


# ----------------------------------------------------------------------------- held-out loss


class LossEvaluator:
    """Mean cross-entropy over the response tokens (labels != -100) of SFT examples.

    The mean is over tokens (all examples pooled), like a Trainer's eval loss on one big
    batch; ``value`` is ``-loss`` so that higher is better, as for accuracies.
    """

    def __init__(self, tokenizer, examples: Iterable, batch_size: int = 8, *, max_length: int | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        rows: list[_Row] = []
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
            first = scored[0]
            rows.append(_LossRow(ids, labels, i, first, slot=len(rows)))
        if not rows:
            raise DataError(f"no example with response tokens (labels != {IGNORE_INDEX}) among {n_examples}")
        self.n_examples = n_examples
        self.n_scored_examples = len(rows)
        self.n_tokens = sum(r.n_scored for r in rows)
        pad = pad_token_id(tokenizer)
        self.batches: list[Batch] = _batched(rows, batch_size, lambda rs: _loss_batch(rs, pad))

    def evaluate(self, model, forward: ForwardFn | None = None, progress: bool = False) -> EvalResult:
        # one slot per example, summed in a fixed order at the end: the same number however the batches
        # were split across processes (a single running sum would depend on the order they arrive in)
        sums = _run(self.batches, model, forward, progress, "eval loss", self.n_scored_examples)
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

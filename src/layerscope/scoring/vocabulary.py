"""Token ids checked against the model they go into, before torch fails on them deep in a forward.

An id at or past the model's vocabulary (most often: data tokenized with another model's tokenizer)
makes the embedding lookup raise a bare ``IndexError: index out of range in self`` (on CUDA a
device-side assert that poisons the whole process). Every place where token ids meet a model
refuses them first, in one line: :func:`check_token_sequences` for lists of ids (similarity), and a
:class:`VocabularyCheck` per evaluator for its batches (scoring).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from layerscope.core.errors import DataError
from layerscope.core.models import check_torch_model, context_length
from layerscope.engine.removal import is_index

HINT = "a tokenizer of another model?"


def input_vocabulary(model) -> int | None:
    """How many token ids ``model`` takes as input: its input embedding's rows (None: it does not say)."""
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(getattr(emb, "num_embeddings", None) or weight.shape[0])
    return None


def output_vocabulary(model) -> int | None:
    """How many token ids ``model`` scores: its LM head's outputs, which a scored token indexes (None:
    it does not say). It may differ from the input's: Mllama embeds 8 more ids than its head scores."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    out = getattr(head, "out_features", None)
    return out if isinstance(out, int) else input_vocabulary(model)


def check_positions(longest: int, context: int | None, where: str) -> None:
    """Refuse a sequence longer than the model's context: positions it never learned are read silently
    (rotary models) or fail deep in the forward (learned position embeddings). The commands cut data to
    the context with a note; data built by hand reaches here."""
    if context is not None and longest > context:
        raise DataError(
            f"{where}: a sequence of {longest} tokens is longer than the model's context of {context} positions; "
            f"cut the data to it (max_length={context})"
        )


def check_token_sequences(sequences: Sequence[Sequence[int]], vocab: int, context: int | None = None) -> None:
    """Refuse what torch would fail on deep in the forward: text, empty sequences, ids outside the
    vocabulary, and (with ``context``) sequences longer than the model's context."""
    for n, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
            raise DataError(f"sequence {n}: a {type(seq).__name__}, not a list of token ids (tokenize it first)")
        if len(seq) == 0:
            raise DataError(f"sequence {n}: empty (no token to measure)")
        j = next((j for j, t in enumerate(seq) if not is_index(t) or not 0 <= int(t) < vocab), None)
        if j is not None:
            raise DataError(f"sequence {n}: token {j} is {seq[j]!r}, not a token id of the model (0..{vocab - 1})")
        check_positions(len(seq), context, f"sequence {n}")


def check_id_range(low: int, high: int, vocab: int, where: str, pad_id: int | None = None, what: str = "") -> None:
    """Refuse ids ``low..high`` (the smallest and largest of some data) outside ``0..vocab - 1``; ``what``
    names the limit ("the model's input vocabulary"); a pad id past it gets its own cause."""
    limit = what or "the model's vocabulary"
    if high >= vocab and pad_id is not None and high == pad_id:
        raise DataError(
            f"{where}: the pad token's id {high} is past {limit} of {vocab}: a pad token added to the tokenizer "
            "without model.resize_token_embeddings(len(tokenizer))?"
        )
    if high >= vocab:
        raise DataError(f"{where}: token id {high} >= {limit} of {vocab} ({HINT})")
    if low < 0:
        raise DataError(f"{where}: token id {low} is negative, not a token id of the model (0..{vocab - 1})")


class VocabularyCheck:
    """One evaluator's batches checked against each model it scores, once per model.

    Input ids (pads included) are checked against the input embedding, scored tokens against the LM
    head. The ranges are taken from the batches once, and a model that passed is remembered (weakly),
    so scoring thousands of coalitions costs one comparison each, not a pass over the batches.
    """

    def __init__(self, batches: Sequence, where: str, pad_id: int | None = None, longest: int | None = None):
        # longest: the longest sequence, checked against the model's context (None: not checked; packed
        # multiple-choice rows are cut to the context by their evaluator)
        self.batches, self.where, self.pad_id, self.longest = batches, where, pad_id, longest
        self._ranges: dict[str, tuple[int, int]] = {}
        self._passed: weakref.WeakSet = weakref.WeakSet()

    def id_range(self, field: str) -> tuple[int, int]:
        """(smallest, largest) id of one batch field (``input_ids`` or ``score_tok``) over the batches."""
        if field not in self._ranges:
            ids = [t for t in (getattr(b, field) for b in self.batches) if t.numel()]
            self._ranges[field] = (min(int(t.min()) for t in ids), max(int(t.max()) for t in ids)) if ids else (0, 0)
        return self._ranges[field]

    def __call__(self, model) -> None:
        """Refuse ``model`` when it is not a torch model, or when the batches hold an id it cannot take."""
        if model is None:  # a forward function alone: nothing says which vocabulary it takes
            return
        check_torch_model(model)  # a LoadedModel or a tokenizer: one line, not an AttributeError further on
        if model in self._passed:
            return
        for field, vocab, what in (
            ("input_ids", input_vocabulary(model), "the model's input vocabulary"),
            ("score_tok", output_vocabulary(model), "the model's output vocabulary (its LM head)"),
        ):
            if vocab is not None:
                check_id_range(*self.id_range(field), vocab, self.where, self.pad_id, what)
        if self.longest is not None:
            check_positions(self.longest, context_length(model), self.where)
        self._passed.add(model)

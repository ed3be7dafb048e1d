"""ILA's training data: the examples checked, then batched in an order that depends only on the seed.

Batch ``i`` of a stage depends only on the seed and ``i``, so a resumed run trains on the same batches
in the same order as an uninterrupted one. With W processes and ``grad_accum`` G, optimizer step t uses
G*W micro-batches, exactly those one process with ``grad_accum`` G*W would use, process r taking the
r-th run of G of them (``process_batches``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from layerscope.core import distributed
from layerscope.core.data import SFTExample, collate
from layerscope.core.errors import DataError
from layerscope.methods.ila.config import ILAConfig


def check_examples(data) -> list:
    """The SFT examples of ``data`` (an ``SFTData`` or a list); ``DataError`` if there is nothing to train on."""
    if isinstance(data, (str, os.PathLike)):
        raise DataError(f"{data}: ILA takes SFT examples, not a path: load them with load_sft(path, tokenizer)")
    examples = getattr(data, "examples", data)
    if not isinstance(examples, (list, tuple)) or not all(isinstance(e, SFTExample) for e in examples):
        raise DataError(f"ILA takes an SFTData or a list of SFTExample, not {type(data).__name__}")
    if not examples:
        raise DataError(f"{getattr(data, 'source', 'data')}: no SFT examples")
    if not any(any(x != -100 for x in e.labels) for e in examples):
        raise DataError(f"{getattr(data, 'source', 'data')}: no response tokens to train on (all labels are -100)")
    return list(examples)


def check_examples_fit(examples: list, model) -> None:
    """Refuse, in one line, examples ``model`` cannot train on: labels not aligned with the ids, an id past
    its vocabulary, a sequence past its context (each fails deep in torch, or reads unlearned positions)."""
    from layerscope.core.models import context_length
    from layerscope.scoring.vocabulary import check_token_sequences, input_vocabulary

    for i, e in enumerate(examples):
        if len(e.labels) != len(e.input_ids):
            raise DataError(
                f"example {i}: input_ids and labels differ in length ({len(e.input_ids)} vs {len(e.labels)})"
            )
    vocab = input_vocabulary(model)
    if vocab is not None:
        check_token_sequences([e.input_ids for e in examples], vocab, context_length(model))


def batch_indices(n: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Endless shuffled batches of example indices from batch number ``start`` on. One permutation
    per epoch drawn from a generator seeded with ``seed``, so batch ``i`` depends only on ``seed``
    and ``i``: a resumed run replays the earlier epochs' draws and continues with the same batches."""
    gen = torch.Generator().manual_seed(seed)
    epoch, offset = divmod(start, math.ceil(n / batch_size))
    for _ in range(epoch):
        torch.randperm(n, generator=gen)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for i in range(offset * batch_size, len(order), batch_size):
            yield order[i : i + batch_size]
        offset = 0


def shuffled_batches(
    examples: list, batch_size: int, seed: int, pad_id: int, start: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of ``batch_indices``, collated."""
    for idx in batch_indices(len(examples), batch_size, seed, start):
        yield collate([examples[j] for j in idx], pad_id)


def process_batches(
    examples: list, config: ILAConfig, seed: int, pad_id: int, done_steps: int
) -> Iterator[dict[str, torch.Tensor]]:
    """This process's micro-batches from optimizer step ``done_steps + 1`` on.

    Step t (from 1) uses global batches (t-1)*G*W .. t*G*W - 1 (G = grad_accum, W = processes),
    the micro-batches of one process with grad_accum G*W; process r takes the r-th run of G.
    Alone (W = 1) these are simply the batches from ``done_steps * G`` on."""
    per_step = config.grad_accum * distributed.world_size()
    first = done_steps * per_step
    mine = distributed.rank()
    for i, idx in enumerate(batch_indices(len(examples), config.batch_size, seed, first), start=first):
        if (i % per_step) // config.grad_accum == mine:
            yield collate([examples[j] for j in idx], pad_id)

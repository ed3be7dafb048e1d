"""Tokenized SFT examples and what is done with them after loading: seeded train / heldout splits and padding."""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from layerscope.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; -100 where no loss is taken


@dataclass
class SFTData:
    examples: list[SFTExample]
    stats: dict
    source: str
    format: str
    # sha256[:16] of the file bytes (or hub records), mixed with any subset selection and a forced format other
    # than the detected one (the same file read otherwise)
    fingerprint: str

    def __len__(self) -> int:
        return len(self.examples)


def split_heldout(data: SFTData, fraction: float = 0.1, seed: int = 0) -> tuple[SFTData, SFTData]:
    """Seeded split into (train, heldout); heldout gets about ``round(fraction * n)`` examples (at least 1).

    Identical examples (the same tokens: a record the file holds twice) stay on one side, so the held-out
    loss is never measured on an example trained on; a ``note:`` on stderr says how many were kept together.
    """
    if not isinstance(data, SFTData):  # e.g. its .examples list: the split keeps the source and fingerprints
        raise ConfigError(f"split_heldout takes SFTData (load_sft's result), not {type(data).__name__}")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"heldout fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(data.examples)
    if n < 2:
        raise DataError(f"{data.source}: {n} example(s) cannot be split into train and heldout")
    groups = _identical_groups(data.examples)
    if len(groups) < 2:
        raise DataError(f"{data.source}: all {n} examples are the same: none can be held out apart from training")
    random.Random(seed).shuffle(groups)  # without duplicates: the same order as shuffling the indices
    held_idx, train_idx = _fill_heldout(groups, min(n - 1, max(1, round(n * fraction))))
    repeated = n - len(groups)
    if repeated:
        print(
            f"note: {data.source}: {repeated} of {n} examples repeat an earlier one; each is kept on the side of "
            "the split its copies are on, so the held-out set holds no training example",
            file=sys.stderr,
        )

    def part(name: str, idx: list[int]) -> SFTData:
        stats = dict(data.stats, split=name, split_fraction=fraction, split_seed=seed, examples=len(idx))
        examples = [data.examples[i] for i in idx]
        # which examples a part holds also depends on those tokenization dropped (another max_length or
        # tokenizer keeps others and shuffles another list): the fingerprint covers the tokens themselves
        h = hashlib.sha256(f"{data.fingerprint}|{name}|{fraction}|{seed}".encode())
        for e in examples:
            h.update(("|" + ",".join(map(str, e.input_ids))).encode())
        fp = h.hexdigest()[:16]
        return replace(data, examples=examples, stats=stats, fingerprint=fp)

    return part("train", train_idx), part("heldout", held_idx)


def _identical_groups(examples: list[SFTExample]) -> list[list[int]]:
    """The indices of ``examples``, grouped by identical tokens, each group in file order, groups in the order
    of their first example."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(tuple(e.input_ids), []).append(i)
    return list(groups.values())


def _fill_heldout(groups: list[list[int]], n_held: int) -> tuple[list[int], list[int]]:
    """(held-out, train) indices: whole groups, in their (shuffled) order, go to the held-out side while they
    fit in ``n_held``; the rest train. When no group fits, the smallest is held out (never all of them)."""
    held: list[int] = []
    train: list[int] = []
    for group in groups:
        (held if len(held) + len(group) <= n_held else train).extend(group)
    if not held:
        taken = set(min(groups, key=len))
        held, train = sorted(taken), [i for i in train if i not in taken]
    return sorted(held), sorted(train)


def collate(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` (pad_id), ``attention_mask`` (0 on pad), ``labels`` (-100 on pad)."""
    import torch  # here, not at the top: loading and splitting data (and the CLI's --help) need no torch

    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

"""Tokenized SFT examples and what is done with them after loading: seeded train / heldout splits and padding."""

from __future__ import annotations

import hashlib
import random
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
    fingerprint: str  # sha256[:16] of the file bytes (or hub records), mixed with any subset selection

    def __len__(self) -> int:
        return len(self.examples)


def split_heldout(data: SFTData, fraction: float = 0.1, seed: int = 0) -> tuple[SFTData, SFTData]:
    """Seeded split into (train, heldout); heldout gets ``round(fraction * n)`` examples (at least 1)."""
    if not isinstance(data, SFTData):  # e.g. its .examples list: the split keeps the source and fingerprints
        raise ConfigError(f"split_heldout takes SFTData (load_sft's result), not {type(data).__name__}")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"heldout fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(data.examples)
    if n < 2:
        raise DataError(f"{data.source}: {n} example(s) cannot be split into train and heldout")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = min(n - 1, max(1, round(n * fraction)))
    held_idx, train_idx = sorted(order[:n_held]), sorted(order[n_held:])

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

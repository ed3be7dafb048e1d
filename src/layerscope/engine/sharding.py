"""Coalitions across processes: under ``torchrun`` / ``accelerate launch``, which process evaluates which
coalition of one batch, and how their results come back together.

Two ways to share a batch of coalitions among processes (``--shard``):

- **items**: every process runs every coalition on its own share of the evaluator's batches
  (``core/distributed.py``); one sum across processes per coalition.
- **coalitions**: every process runs its own coalitions on every item, then one gather at the end
  of the batch hands every process all results. Each coalition is computed exactly as one process
  computes it, so the values are bit-identical to a single process's (with ``coalition_batch`` > 1,
  groups are cut from each process's share, so values agree within the stacking self-check's
  tolerance instead).
- **auto** (the default): coalitions when a batch has at least as many coalitions to compute as
  there are processes, items otherwise (a lone coalition - the full model, one step of a truncated
  permutation walk - is split by item rather than leaving processes idle).

Under ``coalitions`` and ``auto`` every process captures the full model on every item (the
per-call choice needs every batch's states), so each holds the whole prefix cache (``--cache-mb``
bounds it per process); ``items`` keeps only its own batches'.

Which coalitions: the batch is sorted by removal pattern (the engine's trie order, in which
neighbours share prefix states) and cut into contiguous runs, one per process, of about equal
estimated cost, so each process keeps the prefix sharing inside its run. A coalition's cost is
estimated as the players from its first difference with the coalition before it to the end of the
model (the stages a forward re-runs); the first of a run starts from the full model's states.
A round-robin split would balance as well but break the trie walk into strided pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from layerscope.core import distributed
from layerscope.core.errors import ConfigError

if TYPE_CHECKING:
    from layerscope.scoring import EvalResult

SHARD_CHOICES = ("auto", "coalitions", "items")


def check_shard(shard: str) -> str:
    if shard not in SHARD_CHOICES:
        raise ConfigError(f"shard must be one of {', '.join(SHARD_CHOICES)} (got {shard!r})")
    return shard


def split_by_coalition(n_todo: int, shard: str) -> bool:
    """Whether a batch of ``n_todo`` coalitions to compute is split by coalition (else by item, or not at all).

    The same on every process: they all hold the same memo, so the same ``n_todo``."""
    if shard == "items" or not distributed.working_together():
        return False
    return shard == "coalitions" or n_todo >= distributed.world_size()


def forward_costs(removed_masks: Sequence[int], n_players: int) -> list[int]:
    """Estimated cost of each coalition computed in this order: players from the first one whose
    removal differs from the previous coalition (the full model, mask 0, for the first) to the end."""
    costs, prev = [], 0
    for m in removed_masks:
        diff = m ^ prev
        costs.append(n_players - ((diff & -diff).bit_length() - 1) if diff else 1)
        prev = m
    return costs


def contiguous_shares(costs: Sequence[int], parts: int) -> list[range]:
    """Cut ``0..len(costs)-1`` into ``parts`` contiguous ranges of about equal total cost (some may be empty)."""
    total = float(sum(costs))
    bounds, acc, k = [0], 0.0, 1
    for i, c in enumerate(costs):
        # cut before i when the run so far is nearer the k-th share with i outside it than with i inside
        while k < parts and acc + c / 2 > k * total / parts:
            bounds.append(i)
            k += 1
        acc += c
    bounds += [len(costs)] * (parts + 1 - len(bounds))
    return [range(bounds[j], bounds[j + 1]) for j in range(parts)]


def my_share(todo: Sequence[int], n_players: int) -> list[int]:
    """The coalitions (removed masks, in the engine's order) this process computes."""
    shares = contiguous_shares(forward_costs(todo, n_players), distributed.world_size())
    return [todo[i] for i in shares[distributed.rank()]]


def gather_results(
    mine: dict[int, EvalResult], failure: BaseException | None, work: dict[str, int] | None = None
) -> tuple[dict[int, EvalResult], dict[str, int]]:
    """All processes' results by removed mask, and their ``work`` counters (the engine's, for this
    share) summed over the processes, on every process; one collective.

    A process whose share failed still takes part (so none waits forever) and then every process
    raises: the one that failed its own error, the others a :class:`ModelError` saying where."""
    parts = distributed.all_gather_objects(None if failure is not None else (mine, work or {}))
    failed = sum(p is None for p in parts)
    if failure is not None:  # alone, this process must say what; failed everywhere, the main process says it
        distributed.mark_reporting(failure, alone=failed < len(parts))
        raise failure
    if failed:
        raise distributed.failed_elsewhere("evaluation", failed)
    got: dict[int, EvalResult] = {}
    total: dict[str, int] = {}
    for results, counts in parts:
        got.update(results)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return got, total

"""The engine that scores many models with players (layers) removed, fast.

A **coalition** is the set of player indices that are KEPT: ``value(kept)``, ``values``,
``result`` and ``results`` take coalitions. Internally, and in the coalition log, a coalition is
held as its **removed mask** (bit ``p`` set: player ``p`` removed; :meth:`CoalitionEngine.removed_mask`),
because what a forward reuses is a prefix of removals: the full model is mask 0. What a player is
and what removing one means is defined in ``removal.py``, whose names are re-exported here.

**The engine.** :class:`CoalitionEngine` runs the full model once per evaluator batch, caching
the hidden state entering every block and the arguments the model hands its blocks
(``capture.py``). A coalition's forward starts at the block of its first removed player and runs
only the rest, with removed modules replaced by zero stubs (``forward.py``, ``stubs.py``), cut
into stages: blocks, or a block's sub-layers where the architecture allows (``stages.py``). Many
coalitions evaluated together are sorted by their removal pattern in forward order, a depth-first
walk of the trie of patterns, and the states of the current path kept (one per stage), so each
distinct prefix state is computed once, within a memory bound (``prefix_cache.py``).
Repeated coalitions are memoised.

A self-check at construction compares the engine's logits with plain model forwards; a model that
does something the engine does not reproduce falls back, with one warning, to plain hooked
forwards: ``uncached=True`` mode, which is also the reference.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from layerscope.core import distributed
from layerscope.core.errors import ConfigError, ModelError, error_line
from layerscope.core.layermap import LayerMap
from layerscope.core.models import check_eval_mode, check_torch_model
from layerscope.engine.capture import Fallback, Probe, capture_full_model, check_tolerance, self_check
from layerscope.engine.forward import CachedForward, ModelParts
from layerscope.engine.prefix_cache import PrefixCache
from layerscope.engine.removal import (
    check_granularity,
    is_index,
    player_blocks,
    player_kinds,
    removal_targets,
    removed,
    resolve_players,
)
from layerscope.engine.removal_check import ensure_removal_ok
from layerscope.engine.settings import DEFAULT_CACHE_MB
from layerscope.engine.sharding import check_shard, forward_costs, gather_results, my_share, split_by_coalition
from layerscope.engine.stacked import Stacker
from layerscope.engine.stages import StagePlan, verify_plan, whole_blocks
from layerscope.engine.stats import EngineStats
from layerscope.engine.weights_stamp import changed_since, weights_stamp

if TYPE_CHECKING:  # the engine only calls ``evaluator.evaluate``; types are for readers
    from layerscope.engine.coalition_log import CoalitionLog
    from layerscope.scoring import EvalResult

__all__ = [
    "DEFAULT_CACHE_MB",
    "CoalitionEngine",
    "EngineStats",
    # re-exported from removal.py, where they live
    "check_granularity",
    "player_blocks",
    "player_kinds",
    "removal_targets",
    "removed",
    "resolve_players",
]


class CoalitionEngine:
    """``value(kept) -> float`` for coalitions of players of one model on one evaluator.

    ``evaluator`` follows the evaluator contract (``batches`` and ``evaluate(model, forward)``;
    ``MCEvaluator`` / ``LossEvaluator``). The engine is also the value object the Shapley
    estimators take: it is callable and has the batch hook ``values``.

    Options: ``cache_mb`` bounds the memory for cached hidden states (0 keeps none and recomputes
    prefixes; the blocks' arguments - masks, position embeddings - are always kept); ``memo`` keeps
    every computed :class:`EvalResult` by coalition; ``uncached=True`` uses plain full forwards
    with removal hooks (the reference); ``check`` runs the construction self-check (``tolerance``
    on logits, relative to their magnitude; None: from the model's dtype,
    ``capture.check_tolerance``); ``progress`` shows a bar for the full-model capture;
    ``log`` appends every computed value to a coalition log and takes the values it holds;
    ``whole_blocks=True`` runs every forward as whole blocks, removed ones included (the traversal
    before sub-layer stages, for benchmarks; results are the same); ``shard`` (``auto``,
    ``coalitions``, ``items``): how processes under a launcher share a batch of coalitions
    (``sharding.py``; no effect alone); ``coalition_batch``: coalitions evaluated together in one
    forward, their rows stacked (``stacked.py``: for a small model on a large device; checked against
    one at a time at construction, and 1 where that check fails).
    """

    def __init__(
        self,
        model: nn.Module,
        layer_map: LayerMap,
        evaluator,
        granularity: str = "sublayer",
        *,
        cache_mb: float = DEFAULT_CACHE_MB,
        memo: bool = True,
        uncached: bool = False,
        check: bool = True,
        tolerance: float | None = None,
        progress: bool = False,
        log: CoalitionLog | None = None,
        whole_blocks: bool = False,
        shard: str = "auto",
        coalition_batch: int = 1,
    ):
        self.shard = check_shard(shard)
        if (
            isinstance(coalition_batch, bool)
            or not isinstance(coalition_batch, numbers.Integral)
            or coalition_batch < 1
        ):
            raise ConfigError(f"coalition_batch must be an integer >= 1 (got {coalition_batch!r})")
        self.coalition_batch = coalition_batch
        if not isinstance(layer_map, LayerMap):  # its .players below would fail with no word of the argument
            raise ConfigError(f"layer_map must be a LayerMap (build_layer_map(model)), not {type(layer_map).__name__}")
        self.players = layer_map.players(check_granularity(granularity))
        _check_arguments(model, evaluator, cache_mb)
        ensure_removal_ok(model, layer_map)  # refuses a model on which removal is not defined (by name)
        self.model, self.layer_map, self.evaluator, self.granularity = model, layer_map, evaluator, granularity
        self._weights = weights_stamp(model)  # cached states and memo hold for these weights only
        self.n = len(self.players)
        self.n_blocks = layer_map.n_blocks
        self.memo_enabled = bool(memo)
        self.budget = int(cache_mb * 2**20)
        self.stats = EngineStats()
        self._memo: dict[int, EvalResult] = {}  # by removed mask (0: the full model)
        self._forward: CachedForward | None = None  # None in uncached mode
        self._stacker: Stacker | None = None  # runs groups of coalition_batch coalitions (cached mode, > 1)
        self.use_stubs = True  # removed modules are not run (False: they run and are zeroed)
        self.whole_blocks = bool(whole_blocks)
        self.full_result: EvalResult | None = None
        self._items_split = False  # some coalitions were split by item: their block counters are this process's share
        # expert removal masks routing inside a module; the cached forward removes whole modules only
        uncached = uncached or granularity == "expert"
        self.mode = "uncached" if uncached else "cached"
        self.check_diff: dict[str, float] = {}
        if not uncached:
            try:
                # sharing by coalition needs every batch's states here; by item, this process's only
                with distributed.every_item_here() if self.shard != "items" else contextlib.nullcontext():
                    self._prepare(check, tolerance, progress)
            except Fallback as e:
                self._fall_back(str(e))
            self._agree_across_processes()
        self.log = log
        if log is not None:
            self._resume_from(log)

    # ---- public API ----------------------------------------------------------------------------
    def __call__(self, kept: Iterable[int]) -> float:
        return self.value(kept)

    def value(self, kept: Iterable[int]) -> float:
        """v(kept): the evaluator's headline value with every player not in ``kept`` removed."""
        return self.result(kept).value

    def values(
        self,
        coalitions: Sequence[Iterable[int]],
        progress: bool = False,
        on_result: Callable[[float], None] | None = None,
    ) -> list[float]:
        """v for many coalitions (kept players), computed in an order that reuses shared prefixes.

        This is also the batch hook the Shapley estimators look for; they pass ``on_result`` (see
        :meth:`results`) to move their own progress bar while a long batch runs."""
        return [r.value for r in self.results(coalitions, progress=progress, on_result=on_result)]

    def result(self, kept: Iterable[int]) -> EvalResult:
        """The evaluator's full result with every player not in ``kept`` removed."""
        return self.results([kept])[0]

    def full(self) -> EvalResult:
        """The full model's result (every player kept)."""
        return self.result(range(self.n))

    def removed_mask(self, kept: Iterable[int]) -> int:
        """Bitmask of the players NOT in ``kept`` (validated): how the engine and its log key a coalition."""
        if isinstance(kept, (str, bytes)) or not hasattr(kept, "__iter__"):
            raise ConfigError(f"a coalition is a set of player indices, not {kept!r}")
        kept_mask = 0
        for p in kept:
            if not is_index(p):
                raise ConfigError(
                    f"player {p!r} in a coalition is not an integer index (a coalition lists kept players)"
                )
            i = int(p)
            if not 0 <= i < self.n:
                raise ConfigError(
                    f"player index {i} out of range: {self.n} {self.granularity} players (0..{self.n - 1})"
                )
            if kept_mask >> i & 1:  # a 0/1 keep-mask of ints ([1, 1, 0, 1, 1]) would read as players {0, 1}
                raise ConfigError(
                    f"player {i} is listed twice in a coalition; a coalition lists the kept players' indices "
                    "(not a 0/1 mask)"
                )
            kept_mask |= 1 << i
        return ((1 << self.n) - 1) & ~kept_mask

    def results(
        self,
        coalitions: Sequence[Iterable[int]],
        progress: bool = False,
        on_result: Callable[[float], None] | None = None,
    ) -> list[EvalResult]:
        """The evaluator's full result for many coalitions (kept players), in the order given.

        ``progress`` draws the engine's own bar; ``on_result(value)`` is called as each coalition
        that had to be computed (not a memo hit) is done. Under a launcher the coalitions or their
        items are shared among the processes (``shard``; ``sharding.py``); every process returns
        the same results."""
        self._check_weights_unchanged()  # training mode: every evaluator.evaluate(model) refuses it
        removed_masks = [self.removed_mask(c) for c in coalitions]
        todo = list(dict.fromkeys(m for m in removed_masks if not (self.memo_enabled and m in self._memo)))
        self.stats.memo_hits += len(removed_masks) - len(todo) if self.memo_enabled else 0
        if self.mode == "cached":
            todo.sort(key=self._order_key)
        if todo and split_by_coalition(len(todo), self.shard):  # todo is the same in every process
            got = self._compute_shared(todo, progress, on_result)
        else:  # alone, or every process computes every coalition on its share of the items
            self._items_split = self._items_split or (bool(todo) and distributed.sharding())
            got = self._compute_all(todo, progress, on_result, log=distributed.is_main_process())
        return [got[m] if m in got else self._memo[m] for m in removed_masks]

    def _compute_all(
        self,
        todo: list[int],
        progress: bool,
        on_result: Callable[[float], None] | None,
        log: bool,
        share_of: int | None = None,
    ) -> dict[int, EvalResult]:
        """Compute ``todo`` (removed masks) in order, memoising and (``log``) logging each as it is done.
        ``share_of``: ``todo`` is this process's share of that many coalitions (the bar says so)."""
        got: dict[int, EvalResult] = {}
        # the bar counts stages run, not coalitions: in the engine's order the first coalitions reuse
        # most of the cached prefix and cost little, so a count of coalitions would promise too early an end
        shown = progress and len(todo) > 1
        weights = self._bar_weights(todo) if shown else []
        desc = self._bar_desc(share_of)
        bar = self._progress_bar(len(todo), share_of, sum(weights)) if shown else None
        size = self.coalition_batch if self._stacker is not None else 1
        try:
            for j in range(0, len(todo), size):
                group = todo[j : j + size]
                if len(group) == 1:
                    done = [self._compute(group[0], todo[j + 1] if j + 1 < len(todo) else None)]
                else:
                    done = self._compute_stacked(group)
                for m, r in zip(group, done):
                    got[m] = r
                    if self.memo_enabled:
                        self._memo[m] = r
                    if log and self.log is not None:
                        self.log.append(m, r)
                    if on_result is not None:
                        on_result(r.value)
                if bar is not None:
                    bar.set_description_str(f"{desc} {j + len(group)}/{len(todo)}", refresh=False)
                    bar.set_postfix_str(f"last value {done[-1].value:.4g}", refresh=False)
                    bar.update(sum(weights[j : j + size]))
        finally:
            if bar is not None:
                bar.close()
            if self._forward is not None:
                self._forward.cache.clear_path()
        return got

    def _compute_shared(
        self, todo: list[int], progress: bool, on_result: Callable[[float], None] | None
    ) -> dict[int, EvalResult]:
        """This process computes its share of ``todo`` on every item (logging what it computed in its
        own log), then one gather gives every process every result."""
        mine: dict[int, EvalResult] = {}
        failure: BaseException | None = None
        before = self.stats.work()
        try:
            with distributed.every_item_here():
                show = progress and distributed.is_main_process()  # its bar counts its own share
                mine = self._compute_all(my_share(todo, self.n), show, on_result, log=True, share_of=len(todo))
        except Exception as e:  # every process must reach the gather, which raises everywhere
            failure = e
        done_here = {k: v - before[k] for k, v in self.stats.work().items()}
        got, done = gather_results(mine, failure, done_here)
        # the counters then hold every process's work on the batch, the same in each (as one process counts it)
        self.stats.add_work({k: done.get(k, 0) - v for k, v in done_here.items()})
        if self.memo_enabled:
            self._memo.update(got)
        if on_result is not None:  # the others' coalitions are done too: a caller's bar counts them all
            for m in todo:
                if m not in mine:
                    on_result(got[m].value)
        return got

    def to_compute(self, coalitions: Iterable[Iterable[int]]) -> int:
        """How many of ``coalitions`` (kept players) :meth:`results` would compute in this process:
        the distinct ones not in the memo (resumed values and the full model are), this process's
        share of them where a launcher splits them by coalition (about an equal share of the cost).
        For an up-front estimate of a run (``run_estimate.py``)."""
        masks = {self.removed_mask(c) for c in coalitions}
        todo = [m for m in masks if not (self.memo_enabled and m in self._memo)]
        if todo and split_by_coalition(len(todo), self.shard):
            return -(-len(todo) // distributed.world_size())
        return len(todo)

    def _check_weights_unchanged(self) -> None:
        changed = changed_since(self.model, self._weights)
        if changed:
            raise ModelError(
                f"the model changed after this CoalitionEngine was built ({changed}): its cached states and "
                "values describe the old weights; build a new engine for the changed model"
            )

    def describe(self) -> dict[str, Any]:
        """Settings and counters, for result files."""
        return {
            "mode": self.mode,
            "granularity": self.granularity,
            "n_players": self.n,
            "memo": self.memo_enabled,
            "processes": distributed.world_size(),
            "shard": self.shard if distributed.working_together() else "none (one process)",
            "cache_mb": self.budget / 2**20,
            "stubs": self.use_stubs,
            "coalition_batch": self.coalition_batch if self._stacker is not None else 1,
            "self_check": dict(self.check_diff),
            "stages": self._forward.plan.describe() if self._forward is not None else "none (plain forwards)",
            **{k: v for k, v in self.stats.as_dict().items() if k != "capture_seconds"},
            **({"counters": self._counters_scope()} if distributed.working_together() else {}),
        }  # timings live apart

    def _counters_scope(self) -> str:
        """What the counters of a run shared among processes count: the work of coalitions shared by
        coalition is summed at each batch's gather; that of coalitions shared by item (every process runs
        each on its share of the batches) is known per process only, and gathering it would cost one more
        collective per coalition, so those counters say so."""
        scope = f"the whole run's work, over its {distributed.world_size()} processes"
        if self._items_split:
            scope += (
                ", except block_forwards, stage_runs, path_hits, path_refused and stacked_recomputed of coalitions "
                f"shared by item: process {distributed.rank()}'s share of their batches"
            )
        return scope + "; cache bytes: one process's (each holds its own cache)"

    # ---- coalition order ------------------------------------------------------------------------
    def _order_key(self, removed_mask: int) -> tuple[int, ...]:
        """Removal pattern in forward order: sorting by it puts coalitions sharing prefixes next to each other."""
        return tuple((removed_mask >> p) & 1 for p in range(self.n))

    def prefix_bound(self, coalitions: Iterable[Iterable[int]]) -> int:
        """Stage runs the least any traversal needs for ``coalitions`` (kept players), memo aside:
        one per distinct (stage, prefix pattern) state, per evaluator batch (``StagePlan.runs_needed``;
        compare ``stats.stage_runs``)."""
        if self._forward is None:
            return 0
        masks = {self.removed_mask(c) for c in coalitions}
        return self._forward.plan.runs_needed(masks) * len(self.evaluator.batches)

    def _bar_weights(self, todo: list[int]) -> list[int]:
        """Each coalition's share of the bar, in ``todo``'s order: the players from the first one whose
        removal differs from the coalition before (what its forward recomputes, ``forward_costs``), plus
        the output head every coalition runs, in players' worth of parameters (a large vocabulary's head
        costs several blocks). Plain forwards (uncached) all cost the same."""
        if self.mode != "cached":
            return [1] * len(todo)
        head = self._head_cost()
        return [c + head for c in forward_costs(todo, self.n)]

    def _head_cost(self) -> int:
        """The output head's weights over a player's (the blocks' weights shared among the players), at least 1."""
        try:
            out = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
            head = sum(p.numel() for p in out.parameters()) if isinstance(out, nn.Module) else 0
            blocks = sum(p.numel() for b in self._forward.parts.blocks for p in b.parameters())
            return max(1, round(head * self.n / blocks)) if blocks else 1
        except Exception:  # a rough weight for a progress bar: never worth failing a run over
            return 1

    def _bar_desc(self, share_of: int | None = None) -> str:
        if share_of is not None:  # under --shard coalitions each process counts its own share only
            return f"coalitions ({self.granularity}; process {distributed.rank()}'s share of {share_of})"
        return f"coalitions ({self.granularity})"

    def _progress_bar(self, n_coalitions: int, share_of: int | None = None, total: int | None = None):
        """The bar over ``n_coalitions``, the number done shown after its description. Given ``total``
        (units of work in all, ``_bar_weights``), it advances by work, and shows the percentage and
        times only (its counts would be of work units)."""
        from tqdm import tqdm

        # under a launcher every process computes (all coalitions on its items, or its share): one draws
        quiet = not distributed.is_main_process()
        weighted = total is not None and total != n_coalitions
        fmt = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]" if weighted else None
        return tqdm(
            total=total if weighted else n_coalitions,
            desc=f"{self._bar_desc(share_of)} 0/{n_coalitions}",
            unit="coal",
            bar_format=fmt,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=quiet,
        )

    # ---- computing one coalition ------------------------------------------------------------------
    def _compute(self, removed_mask: int, next_mask: int | None) -> EvalResult:
        """One coalition's result; ``next_mask``: the coalition computed next (whose prefix is worth keeping)."""
        self.stats.evaluations += 1
        n_batches = len(self.evaluator.batches)
        self.stats.block_forwards_full += self.n_blocks * n_batches
        if self.mode == "uncached":
            self.stats.block_forwards += self.n_blocks * n_batches
            removed_players = [p for p in range(self.n) if (removed_mask >> p) & 1]
            with removed(self.model, self.layer_map, removed_players, self.granularity):
                return self.evaluator.evaluate(self.model)
        fwd = self._forward
        fwd.cache.prune(removed_mask)
        store_upto = fwd.plan.shared_depth(removed_mask, next_mask)
        use_stubs = self.use_stubs
        return self.evaluator.evaluate(
            self.model, forward=lambda i, b: fwd.run(i, b, removed_mask, store_upto=store_upto, use_stubs=use_stubs)
        )

    def _compute_stacked(self, masks: list[int]) -> list[EvalResult]:
        """Several coalitions' results from forwards of their rows stacked (``stacked.py``)."""
        self.stats.evaluations += len(masks)
        self.stats.block_forwards_full += self.n_blocks * len(self.evaluator.batches) * len(masks)
        return self._stacker.evaluate_group(self.evaluator, masks, self.use_stubs)

    # ---- capture, self-check and fallback ---------------------------------------------------------
    def _prepare(self, check: bool, tolerance: float | None, progress: bool) -> None:
        t0 = time.perf_counter()
        if tolerance is None:
            tolerance = check_tolerance(self.model)
        try:
            parts = ModelParts.find(self.model, self.layer_map)
        except ModelError as e:
            raise Fallback(str(e)) from None
        pblocks = player_blocks(self.layer_map, self.granularity)
        cache = PrefixCache(self.budget, pblocks, self.n_blocks, len(self.evaluator.batches), self.stats)
        targets = removal_targets(self.layer_map, self.granularity)
        self._forward = CachedForward(self.model, parts, cache, targets, pblocks, self.stats)
        self.full_result, check_batch = capture_full_model(self._forward, self.evaluator, progress)
        self.stats.capture_seconds = time.perf_counter() - t0
        if self.memo_enabled:
            self._memo[0] = self.full_result  # removed mask 0: the full model
        if check and check_batch is not None:  # None: this process owns no batch (more processes than batches)
            self.use_stubs = self_check(
                self._forward, self.layer_map, self.granularity, check_batch, tolerance, self.check_diff
            )
        if check_batch is not None and not self.whole_blocks and self.use_stubs:
            plan = StagePlan(
                pblocks,
                self.n_blocks,
                split=self.granularity == "sublayer",
                skip_removed=self.granularity in ("sublayer", "block"),
            )
            self._forward.use_plan(verify_plan(self._forward, plan, check_batch, pblocks))
        if check_batch is not None and self.coalition_batch > 1:
            self._check_stacking(check_batch, tolerance)
        self.stats.block_forwards = self.stats.stage_runs = 0  # count coalition work only

    def _check_stacking(self, check_batch, tolerance: float) -> None:
        """Stacked coalitions must give one-at-a-time's logits (to ``tolerance``); else one per forward."""
        stacker = Stacker(self._forward, self.coalition_batch)
        try:
            diff = stacker.check(Probe(self._forward, self.layer_map, self.granularity, check_batch), self.use_stubs)
            problem = None if diff <= tolerance else f"logits differ from one at a time by {diff:.2e} (relative)"
            self.check_diff["stacked"] = diff
        except (ModelError, RuntimeError) as e:  # e.g. a removable module whose output rows are not batch-major
            problem = error_line(e)
        if problem is not None:
            warnings.warn(
                f"{type(self.model).__name__}: coalitions are evaluated one per forward, not "
                f"{self.coalition_batch} stacked ({problem})",
                RuntimeWarning,
                stacklevel=4,
            )
            self.coalition_batch = 1
        else:
            self._stacker = stacker

    def _agree_across_processes(self) -> None:
        """Under torchrun each process checks its own batches: if any fell back (or had to give up the
        zero stubs), all do, so they keep evaluating the same coalitions in the same order."""
        if not distributed.working_together():
            return
        votes = distributed.sum_across(
            torch.tensor([float(self.mode == "uncached"), float(not self.use_stubs)], dtype=torch.float64)
        )
        if votes[0] > 0 and self.mode == "cached":
            self._fall_back("another process's self-check failed")
        if votes[1] > 0:
            self.use_stubs = False
            if self._forward is not None:  # sub-layer stages and skips were verified with the stubs
                self._forward.use_plan(whole_blocks(self._forward.player_blocks, self.n_blocks))

    def _fall_back(self, reason: str) -> None:
        warnings.warn(
            f"{type(self.model).__name__}: coalition engine falls back to plain hooked forwards ({reason})",
            RuntimeWarning,
            stacklevel=3,
        )
        self.mode = "uncached"
        self._stacker = None
        if self._forward is not None:
            self._forward.cache.clear()
            self._forward = None
        else:
            self.stats.cache_bytes = self.stats.kwargs_bytes = 0
        self._memo.clear()  # the full model's result was computed on the cached path only: recompute it
        self.full_result = None

    def _resume_from(self, log: CoalitionLog) -> None:
        """Take the values a killed run finished; the memo makes every estimator use them instead of recomputing."""
        if not self.memo_enabled:
            raise ConfigError("a coalition log needs the memo (memo=True)")
        for removed_mask, r in log.results.items():
            if removed_mask >> self.n:
                raise ConfigError(f"{log.path}: coalition mask {removed_mask:x} does not fit {self.n} players")
            self._memo.setdefault(removed_mask, r)
        self.stats.resumed = log.n_resumed


def _check_arguments(model: nn.Module, evaluator, cache_mb: float) -> None:
    check_torch_model(model)
    if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or not cache_mb >= 0:
        raise ConfigError(f"cache_mb must be a number >= 0 (got {cache_mb!r})")
    batches = getattr(evaluator, "batches", None)
    if batches is None or not callable(getattr(evaluator, "evaluate", None)):
        raise ConfigError(f"{type(evaluator).__name__} is not an evaluator (needs .batches and .evaluate)")
    if len(batches) == 0:
        raise ConfigError("the evaluator has no batches (empty item set)")
    check_eval_mode(model)

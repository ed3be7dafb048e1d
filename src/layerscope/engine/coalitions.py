"""The engine that scores many models with players (layers) removed, fast.

A **coalition** is the frozenset of player indices that are KEPT. What a player is and what
removing one means (its output is zeroed, so the residual stream passes through) is defined in
``removal.py``, whose names (``removed``, ``resolve_players``, ...) are re-exported here.

**The engine.** Hidden states entering a block are the full model's until the first removed
player, so :class:`CoalitionEngine` runs the full model once per evaluator batch, caching the
hidden state entering every block and the keyword arguments the model hands its blocks
(position embeddings, the causal / packed 4-D mask, ...), captured with a forward pre-hook.
A coalition's forward then starts at the block of its first removed player, runs the remaining
blocks with the removed modules replaced by stubs that return zeros (they are not computed at
all), then the final norm and the output embedding on the scored positions only. When many
coalitions are evaluated together (:meth:`CoalitionEngine.values`), they are sorted
lexicographically by their removal pattern in forward order and the states of the current path
are kept (a trie walked depth-first), so sibling coalitions reuse deeper shared prefixes.
Repeated coalitions are memoised. Memory is bounded by ``cache_mb``: if the full model's block
inputs do not fit, only evenly spaced blocks are kept and the others recomputed from the
nearest kept one; path states that do not fit evict deeper ones or are simply recomputed.

A self-check at construction compares the engine's full-coalition logits (and one removal)
with plain model forwards; a model that does something the engine does not reproduce (logit
soft-capping, an extra projection after the final norm, stateful blocks) falls back, with one
warning, to plain hooked forwards: ``uncached=True`` mode, which is also the reference.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.layermap import LayerMap
from layerscope.engine.hooks import hidden_states as _first
from layerscope.engine.hooks import zero_output as _zero_output
from layerscope.engine.removal import (
    check_granularity,
    player_blocks,
    player_kinds,
    removal_targets,
    removed,
    resolve_players,
)

if TYPE_CHECKING:  # the engine only calls ``evaluator.evaluate``; types are for readers
    from layerscope.engine.coalition_log import CoalitionLog
    from layerscope.scoring.evaluate import Batch, EvalResult

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

DEFAULT_CACHE_MB = 2048.0


# ----------------------------------------------------------------------------- stubs


@dataclass
class _Signature:
    """How a removable module is called and what it returns, seen once on the full model.

    A removed module whose signature is known is not run at all: a stub returns zeros of the
    recorded shape (input's leading dims + ``out_dim``) in the recorded structure.
    """

    hidden_kw: str | None  # None: hidden states are the first positional argument
    out_dim: int
    dtype: torch.dtype
    tuple_len: int | None  # None: a plain tensor; else a tuple (zeros, None, ...)
    ok: bool


def _signature(args: tuple, kwargs: dict, output: Any) -> _Signature:
    if args and torch.is_tensor(args[0]):
        x, kw = args[0], None
    else:
        x, kw = kwargs.get("hidden_states"), "hidden_states"
    first = output if torch.is_tensor(output) else (output[0] if isinstance(output, tuple) and output else None)
    tuple_len = None if torch.is_tensor(output) else (len(output) if isinstance(output, tuple) else None)
    ok = (
        torch.is_tensor(x)
        and torch.is_tensor(first)
        and x.shape[:-1] == first.shape[:-1]
        and (tuple_len is None or all(o is None for o in output[1:]))
        and (torch.is_tensor(output) or isinstance(output, tuple))
    )
    return _Signature(
        kw,
        int(first.shape[-1]) if torch.is_tensor(first) else 0,
        first.dtype if torch.is_tensor(first) else torch.float32,
        tuple_len,
        bool(ok),
    )


def _make_stub(sig: _Signature) -> Callable[..., Any]:
    def forward(*args, **kwargs):
        x = args[0] if sig.hidden_kw is None else kwargs[sig.hidden_kw]
        z = torch.zeros(x.shape[:-1] + (sig.out_dim,), dtype=sig.dtype, device=x.device)
        return z if sig.tuple_len is None else (z,) + (None,) * (sig.tuple_len - 1)

    return forward


# ----------------------------------------------------------------------------- the engine


class _Stop(Exception):
    """Raised inside a hook to end a model forward early (the rest is not needed)."""


class _Fallback(Exception):
    """The cached path cannot reproduce this model: use plain hooked forwards."""


@dataclass
class EngineStats:
    evaluations: int = 0  # coalitions computed (memo misses)
    memo_hits: int = 0
    block_forwards: int = 0  # block calls run for coalitions (one per block per batch)
    block_forwards_full: int = 0  # block calls plain full forwards would have needed for the same coalitions
    path_hits: int = 0  # batch forwards that started from a cached path (trie) state
    path_refused: int = 0  # path states not stored for lack of cache memory
    base_blocks_cached: int = 0  # per batch, how many block inputs of the full model are kept
    cache_bytes: int = 0  # hidden-state bytes held now (base + path states): bounded by cache_mb
    peak_cache_bytes: int = 0
    kwargs_bytes: int = 0  # block arguments (masks, position embeddings): always kept, not in the bound
    capture_seconds: float = 0.0
    resumed: int = 0  # values read back from a coalition log (an interrupted run's work)

    def as_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in self.__dict__.items()}


def _nbytes(obj: Any, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (shared tensors counted once)."""
    if torch.is_tensor(obj):
        try:
            key = obj.untyped_storage().data_ptr()
            size = obj.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(obj), obj.numel() * obj.element_size()
        if key in seen:
            return 0
        seen.add(key)
        return int(size)
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(v, seen) for v in obj)
    return 0


def _model_inputs(b: Batch) -> dict[str, Any]:
    kw: dict[str, Any] = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    if b.position_ids is not None:
        kw["position_ids"] = b.position_ids
    return kw


class CoalitionEngine:
    """``value(kept) -> float`` for coalitions of players of one model on one evaluator.

    ``evaluator`` follows the evaluator contract (``batches`` and ``evaluate(model, forward)``;
    ``MCEvaluator`` / ``LossEvaluator``). The engine is also the value object the Shapley
    estimators take: it is callable and has ``evaluate_many``.

    Options: ``cache_mb`` bounds the memory for cached hidden states (0 keeps none and recomputes
    prefixes; the blocks' arguments - masks, position embeddings - are always kept); ``memo`` keeps
    every computed :class:`EvalResult` by coalition; ``uncached=True`` uses plain full forwards
    with removal hooks (the reference);
    ``check`` runs the construction self-check (``tolerance`` on logits, relative to their
    magnitude); ``progress`` shows a bar for the full-model capture.
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
        tolerance: float = 1e-5,
        progress: bool = False,
        log: CoalitionLog | None = None,
    ):
        self.players = layer_map.players(check_granularity(granularity))
        if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or not cache_mb >= 0:
            raise ConfigError(f"cache_mb must be a number >= 0 (got {cache_mb!r})")
        batches = getattr(evaluator, "batches", None)
        if batches is None or not callable(getattr(evaluator, "evaluate", None)):
            raise ConfigError(f"{type(evaluator).__name__} is not an evaluator (needs .batches and .evaluate)")
        if len(batches) == 0:
            raise ConfigError("the evaluator has no batches (empty item set)")
        if model.training:
            raise ConfigError("the model is in training mode (dropout would make values random); call model.eval()")
        self.model, self.layer_map, self.evaluator, self.granularity = model, layer_map, evaluator, granularity
        self.n = len(self.players)
        self.n_blocks = layer_map.n_blocks
        self.memo_enabled = bool(memo)
        self.budget = int(cache_mb * 2**20)
        self.stats = EngineStats()
        self._targets = removal_targets(layer_map, granularity)
        self._pblock = player_blocks(layer_map, granularity)
        # players in blocks < b, as a bitmask (the part of a removal pattern a block-b input depends on)
        self._prefix = [sum(1 << p for p in range(self.n) if self._pblock[p] < b) for b in range(self.n_blocks + 1)]
        self._memo: dict[int, EvalResult] = {}
        self._path: dict[tuple[int, int, int], torch.Tensor] = {}  # (batch, block, prefix pattern) -> state
        self._path_bytes = 0
        self._base_bytes = 0
        self._kw_bytes = 0
        self._use_stubs = True
        self._logits_buf: torch.Tensor | None = None
        self._sigs: dict[str, _Signature] = {}
        self.full_result: EvalResult | None = None
        self.mode = "uncached" if uncached else "cached"
        self.check_diff: dict[str, float] = {}
        if not uncached:
            try:
                self._prepare(check, tolerance, progress)
            except _Fallback as e:
                self._fall_back(str(e))
            self._agree_across_processes()
        self.log = log
        if log is not None:
            # values a killed run finished; the memo makes every estimator take them instead of recomputing
            if not self.memo_enabled:
                raise ConfigError("a coalition log needs the memo (memo=True)")
            for m, r in log.results.items():
                if m >> self.n:
                    raise ConfigError(f"{log.path}: coalition mask {m:x} does not fit {self.n} players")
                self._memo.setdefault(m, r)
            self.stats.resumed = log.n_resumed

    # ---- public API ----------------------------------------------------------------
    def __call__(self, kept: Iterable[int]) -> float:
        return self.value(kept)

    def value(self, kept: Iterable[int]) -> float:
        """v(kept): the evaluator's headline value with every player not in ``kept`` removed."""
        return self.evaluate(kept).value

    def evaluate(self, kept: Iterable[int]) -> EvalResult:
        """The evaluator's full result with every player not in ``kept`` removed."""
        return self.evaluate_results([kept])[0]

    def values(self, coalitions: Sequence[Iterable[int]], progress: bool = False) -> list[float]:
        """v for many coalitions, computed in an order that reuses shared prefixes."""
        return [r.value for r in self.evaluate_results(coalitions, progress=progress)]

    def evaluate_many(self, coalitions: Sequence[Iterable[int]]) -> list[float]:
        """The batch hook the Shapley estimators look for (same as :meth:`values`)."""
        return self.values(coalitions)

    def full(self) -> EvalResult:
        """The full model's result (every player kept)."""
        return self.evaluate(range(self.n))

    def removed_mask(self, kept: Iterable[int]) -> int:
        """Bitmask of removed players for a coalition of kept players (validated)."""
        if isinstance(kept, (str, bytes)):
            raise ConfigError(f"a coalition is a set of player indices, not {kept!r}")
        mask = 0
        for p in kept:
            if isinstance(p, bool) or not hasattr(p, "__index__"):
                raise ConfigError(f"player {p!r} in a coalition is not an integer index")
            i = int(p)
            if not 0 <= i < self.n:
                raise ConfigError(
                    f"player index {i} out of range: {self.n} {self.granularity} players (0..{self.n - 1})"
                )
            mask |= 1 << i
        return ((1 << self.n) - 1) & ~mask

    def evaluate_results(self, coalitions: Sequence[Iterable[int]], progress: bool = False) -> list[EvalResult]:
        masks = [self.removed_mask(c) for c in coalitions]
        todo = list(dict.fromkeys(m for m in masks if not (self.memo_enabled and m in self._memo)))
        self.stats.memo_hits += len(masks) - len(todo) if self.memo_enabled else 0
        if self.mode == "cached":
            todo.sort(key=self._order_key)
        got: dict[int, EvalResult] = {}
        bar = None
        if progress and len(todo) > 1:
            import sys

            from tqdm import tqdm

            bar = tqdm(
                total=len(todo),
                desc=f"coalitions ({self.granularity})",
                unit="coal",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        try:
            for j, m in enumerate(todo):
                nxt = todo[j + 1] if j + 1 < len(todo) else None
                got[m] = self._compute(m, nxt)
                if self.memo_enabled:
                    self._memo[m] = got[m]
                if self.log is not None:
                    self.log.append(m, got[m])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"v={got[m].value:.4g}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
            self._clear_path()
        return [got[m] if m in got else self._memo[m] for m in masks]

    def clear_memo(self) -> None:
        self._memo.clear()

    # ---- coalition order and the path (trie) --------------------------------------------
    def _order_key(self, mask: int) -> tuple[int, ...]:
        """Removal pattern in forward order: sorting by it puts coalitions sharing prefixes next to each other."""
        return tuple((mask >> p) & 1 for p in range(self.n))

    def _first_block(self, mask: int) -> int:
        """Block of the first removed player (n_blocks when nothing is removed)."""
        return self._pblock[(mask & -mask).bit_length() - 1] if mask else self.n_blocks

    def _shared_depth(self, a: int, b: int | None) -> int:
        """Deepest block whose input is the same for removal patterns a and b."""
        if b is None:
            return -1
        diff = a ^ b
        return self._first_block(diff) if diff else self.n_blocks

    def _prune_path(self, mask: int) -> None:
        """Drop path states that are not on ``mask``'s path: in sorted order nothing later can use them."""
        for key in [k for k in self._path if k[2] != mask & self._prefix[k[1]]]:
            self._drop(key)

    def _drop(self, key: tuple[int, int, int]) -> None:
        t = self._path.pop(key)
        self._path_bytes -= t.numel() * t.element_size()
        self._update_bytes()

    def _clear_path(self) -> None:
        self._path.clear()
        self._path_bytes = 0
        self._update_bytes()

    def _store(self, key: tuple[int, int, int], h: torch.Tensor) -> None:
        size = h.numel() * h.element_size()
        room = self.budget - self._base_bytes
        if self._path_bytes + size > room:  # evict deeper states first: they are shared by fewer coalitions
            for k in sorted((k for k in self._path if k[1] > key[1]), key=lambda k: -k[1]):
                self._drop(k)
                if self._path_bytes + size <= room:
                    break
        if self._path_bytes + size > room:
            self.stats.path_refused += 1
            return
        self._path[key] = h
        self._path_bytes += size
        self._update_bytes()

    def _update_bytes(self) -> None:
        self.stats.cache_bytes = self._base_bytes + self._path_bytes
        self.stats.kwargs_bytes = self._kw_bytes
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.stats.cache_bytes)

    # ---- computing one coalition -----------------------------------------------------------
    def _compute(self, mask: int, nxt: int | None) -> EvalResult:
        self.stats.evaluations += 1
        n_batches = len(self.evaluator.batches)
        self.stats.block_forwards_full += self.n_blocks * n_batches
        if self.mode == "uncached":
            self.stats.block_forwards += self.n_blocks * n_batches
            kept_out = [p for p in range(self.n) if (mask >> p) & 1]
            with removed(self.model, self.layer_map, kept_out, self.granularity):
                return self.evaluator.evaluate(self.model)
        self._prune_path(mask)
        store_upto = self._shared_depth(mask, nxt)
        return self.evaluator.evaluate(self.model, forward=lambda i, b: self._forward(i, b, mask, store_upto))

    def _start(self, i: int, b: Batch, mask: int, first: int) -> tuple[int, torch.Tensor]:
        """Deepest usable state for batch i: a path state, else the full model's input to a block <= first."""
        top = min(first, self.n_blocks - 1)
        for d in range(self.n_blocks - 1, first, -1):
            h = self._path.get((i, d, mask & self._prefix[d]))
            if h is not None:
                self.stats.path_hits += 1
                return d, h
        for d in range(top, -1, -1):
            h = self._inputs[i][d]
            if h is not None:
                return d, h
        return top, self._run_to(b, top)

    def _run_to(self, b: Batch, block: int) -> torch.Tensor:
        """The full model's hidden state entering ``block``, by a forward cut short there."""
        box: list[torch.Tensor] = []

        def hook(module, args, kwargs):
            box.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = self._blocks[block].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model(**_model_inputs(b))
        except _Stop:
            pass
        finally:
            handle.remove()
        self.stats.block_forwards += block
        return box[0]

    def _forward(self, i: int, b: Batch, mask: int, store_upto: int) -> torch.Tensor:
        first = self._first_block(mask)
        start, h = self._start(i, b, mask, first)
        with self._removal(mask):
            h = self._run_blocks(i, h, start, mask=mask, first=first, store_upto=store_upto)
        return self._logits(h, b)

    def _run_blocks(
        self, i: int, h: torch.Tensor, start: int, *, mask: int = 0, first: int = 0, store_upto: int = -1
    ) -> torch.Tensor:
        for d in range(start, self.n_blocks):
            if start < d <= store_upto and d > first:
                self._store((i, d, mask & self._prefix[d]), h)
            rest, kwargs, as_kw = self._kwargs[i][d]
            out = self._blocks[d](hidden_states=h, **kwargs) if as_kw else self._blocks[d](h, *rest, **kwargs)
            h = _first(out)
        self.stats.block_forwards += self.n_blocks - start
        return h

    @contextlib.contextmanager
    def _removal(self, mask: int) -> Iterator[None]:
        """Removed modules return zeros: via stubs (not run at all) where possible, else via hooks."""
        patched: list[tuple[nn.Module, Any]] = []
        handles = []
        try:
            for p in range(self.n):
                if not (mask >> p) & 1:
                    continue
                for path in self._targets[p]:
                    mod = self.model.get_submodule(path)
                    sig = self._sigs.get(path)
                    if self._use_stubs and sig is not None and sig.ok:
                        patched.append((mod, mod.__dict__.get("forward", _MISSING)))
                        mod.forward = _make_stub(sig)
                    else:
                        handles.append(mod.register_forward_hook(_zero_output))
            yield
        finally:
            for mod, old in reversed(patched):
                if old is _MISSING:
                    del mod.forward
                else:
                    mod.forward = old
            for h in handles:
                h.remove()

    def _logits(self, h: torch.Tensor, b: Batch) -> torch.Tensor:
        """Final norm + output embedding on the scored positions only, laid out as [B, L, V] logits."""
        B, T = h.shape[0], h.shape[1]
        L = int(getattr(b, "logits_to_keep", T) or T)
        rows, pos = getattr(b, "uniq_row", None), getattr(b, "uniq_pos", None)
        if rows is None or pos is None:
            x = h[:, T - L :, :]
            if self._norm is not None:
                x = self._norm(x)
            return self._softcap(self._head(x))
        rows, pos = rows.to(h.device), pos.to(h.device)
        x = h[rows, pos].unsqueeze(0)  # norms act per position, so normalising only these is exact
        if self._norm is not None:
            x = self._norm(x)
        z = self._softcap(self._head(x)[0])
        # The evaluator reads only these positions, so the rest is left unwritten (zero-filling a
        # [B, L, vocab] tensor costs as much as a small head), in one buffer reused across calls:
        # the evaluator scores each batch's logits before asking for the next.
        need = B * L * z.shape[-1]
        buf = self._logits_buf
        if buf is None or buf.numel() < need or buf.dtype != z.dtype or buf.device != z.device:
            buf = self._logits_buf = z.new_empty(need)
        logits = buf[:need].view(B, L, z.shape[-1])
        logits[rows, pos - (T - L)] = z
        return logits

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """Gemma-2/3-style final logit soft-capping, which their causal-LM forward applies after the head."""
        if self._cap:
            logits = torch.tanh(logits / self._cap) * self._cap
        return logits

    # ---- capture and self-check ----------------------------------------------------------------
    def _prepare(self, check: bool, tolerance: float, progress: bool) -> None:
        t0 = time.perf_counter()
        try:
            self._blocks = self.model.get_submodule(self.layer_map.blocks_path)
            self._norm = (
                self.model.get_submodule(self.layer_map.final_norm_path) if self.layer_map.final_norm_path else None
            )
        except AttributeError as e:
            raise _Fallback(f"cannot find blocks / final norm ({e})") from None
        self._head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if self._head is None:
            raise _Fallback("the model has no output embedding module")
        config = getattr(self.model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._cap = float(getattr(text_config, "final_logit_softcapping", None) or 0.0)
        nb = len(self.evaluator.batches)
        self._inputs: list[list[torch.Tensor | None]] = [[None] * self.n_blocks for _ in range(nb)]
        self._kwargs: list[list[tuple[tuple, dict, bool]]] = [[] for _ in range(nb)]
        self._kw_bytes = 0
        self._keep: set[int] | None = None
        self._check_ref: torch.Tensor | None = None
        self._check_batch: Batch | None = None
        self._check_index = 0
        try:
            with torch.no_grad():
                self.full_result = self.evaluator.evaluate(self.model, forward=self._capture, progress=progress)
        except _Fallback:
            raise
        except (RuntimeError, KeyError, TypeError, ModelError) as e:
            raise _Fallback(f"capturing block inputs failed ({type(e).__name__}: {e})") from None
        seen: set[int] = set()
        self._base_bytes = sum(_nbytes([t for t in per if t is not None], seen) for per in self._inputs)
        self._kw_bytes = sum(_nbytes([(r, k) for r, k, _ in per], seen) for per in self._kwargs)
        self._update_bytes()
        self.stats.capture_seconds = time.perf_counter() - t0
        if self.memo_enabled:
            self._memo[0] = self.full_result
        if check:
            self._self_check(tolerance)
        self.stats.block_forwards = 0  # count coalition work only

    def _choose_kept_blocks(self, per_block_bytes: int) -> set[int]:
        """Which block inputs of the full model to keep, given the budget (evenly spaced when not all fit)."""
        total_tokens = sum(b.input_ids.numel() for b in self.evaluator.batches)
        per_block_all = per_block_bytes * total_tokens
        m = self.n_blocks if per_block_all == 0 else min(self.n_blocks, int(self.budget // per_block_all))
        if m >= self.n_blocks:
            return set(range(self.n_blocks))
        return {int(math.floor(j * self.n_blocks / m)) for j in range(m)} if m > 0 else set()

    def _capture(self, i: int, b: Batch) -> torch.Tensor:
        """Full forward that records each block's input and arguments, cut short after the last block."""
        inputs: list[torch.Tensor | None] = [None] * self.n_blocks
        kwargs_rec: list[tuple[tuple, dict, bool] | None] = [None] * self.n_blocks
        out_box: list[torch.Tensor] = []
        handles = []

        def pre(d: int):
            def hook(module, args, kwargs):
                if args:
                    h, rest, kw, as_kw = args[0], tuple(args[1:]), dict(kwargs), False
                else:
                    kw = dict(kwargs)
                    h, rest, as_kw = kw.pop("hidden_states"), (), True
                if self._keep is None:  # first batch: now the hidden size is known
                    self._keep = self._choose_kept_blocks(h[0, 0].numel() * h.element_size())
                    self.stats.base_blocks_cached = len(self._keep)
                if d in self._keep:
                    inputs[d] = h.clone()
                kwargs_rec[d] = (rest, kw, as_kw)

            return hook

        def last(module, args, output):
            out_box.append(_first(output))
            raise _Stop

        def sig_hook(path: str):
            def hook(module, args, kwargs, output):
                if path not in self._sigs:
                    self._sigs[path] = _signature(args, kwargs, output)

            return hook

        for d, block in enumerate(self._blocks):
            handles.append(block.register_forward_pre_hook(pre(d), with_kwargs=True))
        handles.append(self._blocks[self.n_blocks - 1].register_forward_hook(last))
        if not self._sigs:
            for path in {p for ts in self._targets for p in ts}:
                handles.append(self.model.get_submodule(path).register_forward_hook(sig_hook(path), with_kwargs=True))
        try:
            self.model(**_model_inputs(b))
        except _Stop:
            pass
        finally:
            for hd in handles:
                hd.remove()
        if not out_box or any(k is None for k in kwargs_rec):
            raise _Fallback("the model did not call every decoder block once, in order")
        self._inputs[i] = inputs
        self._kwargs[i] = kwargs_rec  # type: ignore[assignment]
        logits = self._logits(out_box[0], b)
        if self._check_batch is None:  # the first batch this process runs (not batch 0 on every rank)
            self._check_batch, self._check_index = b, i
        return logits

    def _self_check(self, tolerance: float) -> None:
        """Engine path == plain forward on the first batch, for the full model and one removal."""
        b, i = self._check_batch, self._check_index
        if b is None:
            return  # this process owns no batch (more processes than batches): nothing to check
        inputs = _model_inputs(b)
        rows, pos = getattr(b, "uniq_row", None), getattr(b, "uniq_pos", None)

        def plain(mask: int) -> torch.Tensor:
            kept_out = [p for p in range(self.n) if (mask >> p) & 1]
            with torch.no_grad(), removed(self.model, self.layer_map, kept_out, self.granularity):
                out = self.model(**inputs)
            logits = _first(out.logits if hasattr(out, "logits") else out)
            return (
                logits[rows, pos]
                if rows is not None
                else logits[:, -int(getattr(b, "logits_to_keep", 0) or logits.shape[1]) :]
            )

        def engine(mask: int) -> torch.Tensor:
            first = self._first_block(mask)
            with torch.no_grad():
                h = self._inputs[i][0] if self._inputs[i][0] is not None else self._run_to(b, 0)
                with self._removal(mask):
                    h = self._run_blocks(i, h, 0, mask=mask, first=first)
                logits = self._logits(h, b)
            L = logits.shape[1]
            return logits[rows, pos - (b.width - L)] if rows is not None else logits

        def diff(a: torch.Tensor, r: torch.Tensor) -> float:
            scale = max(1.0, float(r.abs().max()))
            return float((a.float() - r.float()).abs().max()) / scale

        d_full = diff(engine(0), plain(0))
        self.check_diff["full"] = d_full
        if not d_full <= tolerance:
            raise _Fallback(f"full-model logits differ from a plain forward by {d_full:.2e} (relative)")
        probe = 1 << (self.n // 2)
        ref = plain(probe)
        d_rm = diff(engine(probe), ref)
        self.check_diff["removal"] = d_rm
        if not d_rm <= tolerance:
            self._use_stubs = False
            d_rm = diff(engine(probe), ref)
            self.check_diff["removal_hooks"] = d_rm
            if not d_rm <= tolerance:
                raise _Fallback(
                    f"logits with {self.players[self.n // 2]} removed differ from a hooked forward by "
                    f"{d_rm:.2e} (relative)"
                )
            warnings.warn(
                f"{type(self.model).__name__}: zero stubs disagree with hooks; removed modules are "
                "computed and zeroed instead",
                RuntimeWarning,
                stacklevel=3,
            )
        self._check_batch = None

    def _agree_across_processes(self) -> None:
        """Under torchrun each process checks its own batches: if any fell back (or had to give up the
        zero stubs), all do, so they keep evaluating the same coalitions in the same order."""
        from layerscope.core.distributed import sharding, sum_across

        if not sharding():
            return
        votes = sum_across(
            torch.tensor([float(self.mode == "uncached"), float(not self._use_stubs)], dtype=torch.float64)
        )
        if votes[0] > 0 and self.mode == "cached":
            self._fall_back("another process's self-check failed")
        if votes[1] > 0:
            self._use_stubs = False

    def _fall_back(self, reason: str) -> None:
        warnings.warn(
            f"{type(self.model).__name__}: coalition engine falls back to plain hooked forwards ({reason})",
            RuntimeWarning,
            stacklevel=3,
        )
        self.mode = "uncached"
        self._memo.pop(0, None)  # computed on one path only: recompute it like every other coalition
        self._inputs, self._kwargs, self._path = [], [], {}
        self._base_bytes = self._kw_bytes = self._path_bytes = 0
        self._update_bytes()
        self._memo.clear()
        self.full_result = None

    def describe(self) -> dict[str, Any]:
        """Settings and counters, for result files."""
        from layerscope.core.distributed import world_size

        return {
            "mode": self.mode,
            "granularity": self.granularity,
            "n_players": self.n,
            "memo": self.memo_enabled,
            "processes": world_size(),
            "cache_mb": self.budget / 2**20,
            "stubs": self._use_stubs,
            "self_check": dict(self.check_diff),
            **{k: v for k, v in self.stats.as_dict().items() if k != "capture_seconds"},
        }  # timings live apart


_MISSING = object()

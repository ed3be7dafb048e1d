"""Representation-similarity baselines: ShortGPT block influence and angular distance.

Both look at the hidden state entering each block, X_0 .. X_{L-1}, and the last block's output
X_L (taken with hooks on the blocks, *not* HF's ``hidden_states`` output, whose last entry is
after the final norm). A block that barely changes its input is a pruning candidate.

- **Block influence** (ShortGPT, arXiv 2403.03853): BI_i = 1 - mean over non-pad tokens of
  cos(X_i, X_{i+1}). A cosine that is undefined (a zero vector) counts as 0.5, as in ShortGPT.
- **Angular distance** (Gromov et al., arXiv 2403.17887): d(l, l+n) = arccos(cos(x^l, x^{l+n})) / pi
  on the last non-pad token of each sequence, averaged over sequences (undefined cosines count
  as 0.5 here too). Block l's score is d(l, l+n) for the chosen ``n`` (default 1: larger = the
  block changes more); for l > L - n the window is cut at the last block, so those n - 1 scores span
  fewer blocks, are not comparable with the others, and are warned about. The full table for
  every n, and the n-block window with the smallest distance (what Gromov et al. remove), are
  in ``extras``.

Both return a block-granularity :class:`LayerImportance` (higher = more important).

Data: :func:`layerscope.methods.sequences.load_sequences` (also importable from here).
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from layerscope.core.devices import input_device
from layerscope.core.errors import ConfigError, DataError, ModelError
from layerscope.core.importance import LayerImportance, cpu_threads, model_info
from layerscope.core.layermap import LayerMap
from layerscope.core.models import check_eval_mode, check_torch_model, context_length, pad_token_id
from layerscope.engine.hooks import BlockCall, on_block_inputs, run_stopped, stop_after
from layerscope.engine.removal_check import check_layer_map_fits
from layerscope.methods.sequences import load_sequences, sequence_kind  # noqa: F401  (the API's names here too)
from layerscope.scoring.vocabulary import check_token_sequences

NAN_COSINE = 0.5


# ----------------------------------------------------------------------------- statistics


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dim in float64; undefined (zero-norm) cosines become NaN_COSINE."""
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    cos = torch.where(torch.isfinite(cos), cos, torch.full_like(cos, NAN_COSINE))
    return cos.clamp(-1.0, 1.0)


class _Accumulator:
    """Per-batch block states -> running sums for block influence and angular distance."""

    def __init__(self, n_blocks: int):
        self.L = n_blocks
        self.cos_sum = np.zeros(n_blocks)  # sum over tokens of cos(X_i, X_{i+1})
        self.n_tokens = 0
        self.ang_sum = np.zeros((n_blocks + 1, n_blocks + 1))  # [l, m]: sum over sequences of d(l, m)
        self.n_seqs = 0

    def add(self, states: list[torch.Tensor], mask: torch.Tensor) -> None:
        keep = mask.bool()
        for i in range(self.L):
            self.cos_sum[i] += float(_cosine(states[i], states[i + 1])[keep].sum())
        self.n_tokens += int(keep.sum())
        last = keep.sum(1) - 1  # right padding: last real token
        rows = torch.arange(mask.shape[0])
        x = torch.stack([s[rows, last] for s in states], dim=1)  # [B, L+1, H]
        cos = _cosine(x.unsqueeze(2), x.unsqueeze(1))  # [B, L+1, L+1]
        self.ang_sum += (torch.arccos(cos) / math.pi).sum(0).numpy()
        self.n_seqs += int(mask.shape[0])


def block_states(
    model,
    layer_map: LayerMap,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 8,
    progress: bool = False,
    pad_id: int = 0,
) -> _Accumulator:
    """Run the model over ``sequences`` (right-padded batches, longest first) and accumulate statistics.

    States come from a forward pre-hook on every block (its input) and a forward hook on the last
    block (its output); the forward stops there, so the LM head is never run.
    """
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
    blocks = model.get_submodule(layer_map.blocks_path)
    acc = _Accumulator(layer_map.n_blocks)
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    device = input_device(model)  # a dispatched model: where its embedding computes
    from tqdm import tqdm

    starts = list(range(0, len(order), batch_size))
    for s in tqdm(starts, desc="similarity", unit="batch", file=sys.stderr, disable=not progress, leave=False):
        rows = [list(sequences[i]) for i in order[s : s + batch_size]]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = 1
        states: list[torch.Tensor | None] = [None] * (layer_map.n_blocks + 1)
        last: list[torch.Tensor] = []

        def record(d: int, call: BlockCall, states: list = states) -> None:
            states[d] = call.hidden.detach().float().cpu()

        # the forward stops after the last block: the LM head is never run
        with torch.no_grad(), on_block_inputs(blocks, record), stop_after(blocks[layer_map.n_blocks - 1], last):
            run_stopped(model, input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        if last:
            states[layer_map.n_blocks] = last[0].detach().float().cpu()
        if any(x is None for x in states):
            raise ConfigError("the model did not run every decoder block (cannot measure block similarity)")
        odd = next((tuple(x.shape) for x in states if x.dim() != 3 or tuple(x.shape[:2]) != tuple(ids.shape)), None)
        if odd is not None:  # e.g. several residual streams per token (hyper-connections): no one vector to compare
            raise ModelError(
                f"{layer_map.architecture}: its blocks pass hidden states of shape {odd}, not (batch, tokens, "
                "hidden); block influence and angular distance compare one vector per token, so they are not "
                "defined for this model"
            )
        acc.add(states, mask)  # type: ignore[arg-type]
    return acc


# ----------------------------------------------------------------------------- results


def similarity(
    model,
    layer_map: LayerMap,
    sequences: Sequence[Sequence[int]],
    *,
    window: int = 1,
    batch_size: int = 8,
    model_name: str = "model",
    data: dict | None = None,
    tokenizer=None,
    progress: bool = False,
) -> dict[str, LayerImportance]:
    """Block influence and angular distance from one pass over ``sequences``: lists of token ids, or
    a 2-D tensor / array of them (its rows, every token measured: no padding is assumed).

    Returns ``{"block_influence": ..., "angular_distance": ...}``.
    """
    sequences = _as_rows(sequences)
    L = layer_map.n_blocks
    if not isinstance(window, numbers.Integral) or isinstance(window, bool) or not 1 <= window <= L:
        raise ConfigError(f"window must be an integer in 1..{L} (the model has {L} blocks), got {window!r}")
    if not sequences:
        raise DataError("no sequences to measure similarity on")
    check_torch_model(model)
    check_eval_mode(model)
    check_layer_map_fits(model, layer_map)  # a map of fewer blocks would leave the model's last ones out
    check_token_sequences(sequences, int(model.get_input_embeddings().weight.shape[0]), context_length(model))
    t0 = time.perf_counter()
    acc = block_states(model, layer_map, sequences, batch_size, progress, pad_token_id(tokenizer))
    seconds = time.perf_counter() - t0
    players = layer_map.players("block")
    info = model_info(model, layer_map, model_name)
    data = dict(data or {}, n_sequences=len(sequences), n_tokens=acc.n_tokens)
    common = dict(granularity="block", players=players, model=info, data=data)
    return {
        "block_influence": _block_influence(acc, common, seconds),
        "angular_distance": _angular_distance(acc, window, common, seconds),
    }


def _as_rows(sequences: Any) -> Sequence[Sequence[int]]:
    """``sequences`` as a sequence of rows: a 2-D tensor or array becomes its rows (a tensor's truth
    value is ambiguous, so ``if not sequences`` fails on one); other tensors and text are refused."""
    if isinstance(sequences, (torch.Tensor, np.ndarray)):
        if sequences.ndim != 2:
            raise DataError(
                f"sequences: a {sequences.ndim}-D {type(sequences).__name__}; pass a 2-D one (a row of "
                "token ids per sequence) or a list of token-id lists"
            )
        return sequences.tolist()
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
        raise DataError(
            f"sequences: a {type(sequences).__name__}, not a list of token-id lists (tokenize the text first)"
        )
    return sequences


def _block_influence(acc: _Accumulator, common: dict[str, Any], seconds: float) -> LayerImportance:
    """Score = 1 - mean cosine between a block's input and output over non-pad tokens."""
    mean_cos = acc.cos_sum / max(acc.n_tokens, 1)
    return LayerImportance(
        method="block-influence",
        scores=[float(1 - c) for c in mean_cos],
        method_config={"nan_cosine": NAN_COSINE, "tokens": "non-pad"},
        n_evaluations=None,
        baseline={},
        timings={"seconds": seconds, "threads": cpu_threads()},
        extras={"mean_cosine": [float(c) for c in mean_cos]},
        **common,
    )


def _angular_distance(acc: _Accumulator, window: int, common: dict[str, Any], seconds: float) -> LayerImportance:
    """Score = angular distance from a block's input to the state ``window`` blocks later; the
    whole distance table and the best window to prune ride along in ``extras``.

    The last ``window - 1`` blocks have no full window: their scores are d(l, L), over fewer blocks, so
    smaller, and a ranking would put them last for that alone. They are kept, not left out (NaN), because
    pruning refuses a ranking with a missing score and every block needs one for plots and comparisons;
    instead a warning names them and ``extras["short_windows"]`` records them. Gromov's pruning window
    comes from ``extras["table"]`` (full windows only) and is unaffected."""
    L = acc.L
    d = acc.ang_sum / max(acc.n_seqs, 1)
    table = {str(n): [float(d[i, i + n]) for i in range(L + 1 - n)] for n in range(1, L + 1)}
    scores = [float(d[i, min(i + window, L)]) for i in range(L)]
    best = int(np.argmin(table[str(window)]))
    short = common["players"][L + 1 - window :]  # blocks l > L - window: the span l..L is < window blocks
    if short:
        _warn_short_windows(window, short)
    return LayerImportance(
        method="angular-distance",
        scores=scores,
        method_config={
            "window": window,
            "token": "last non-pad",
            "nan_cosine": NAN_COSINE,
            "score": "d(l, min(l + window, L)) = arccos(cos) / pi",
        },
        timings={"seconds": seconds, "threads": cpu_threads()},
        extras={
            "table": table,
            "table_note": "table[n][l] = d(l, l+n); state L is the last block's output",
            "short_windows": {
                "blocks": short,
                "note": "scored d(l, L), over fewer than window blocks: smaller for that alone, not comparable "
                "with the other blocks' scores (window 1 has none)",
            },
            "prune_window": {
                "n": window,
                "start": best,
                "blocks": common["players"][best : best + window],
                "distance": table[str(window)][best],
            },
        },
        **common,
    )


def _warn_short_windows(window: int, short: list[str]) -> None:
    """Say that the tail's scores span shorter windows, so nobody ranks blocks on them unwarned."""
    import warnings  # here, not at the top: only this warning needs it

    which = short[0] if len(short) == 1 else f"{short[0]} to {short[-1]}"
    warnings.warn(
        f"angular distance, window {window}: the last {len(short)} block(s) ({which}) have no full window, so "
        f"their scores d(l, L) span fewer blocks and come out smaller: do not rank them against the others "
        "(window 1 scores every block alike; pruning's window rule reads extras['table'] and is unaffected)",
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this module, whichever public
    function (``similarity``, ``angular_distance``) it came through."""
    import sys

    frame, level = sys._getframe(2), 2  # the frame calling the function that warns
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def block_influence(model, layer_map: LayerMap, sequences, **kw: Any) -> LayerImportance:
    return similarity(model, layer_map, sequences, **kw)["block_influence"]


def angular_distance(model, layer_map: LayerMap, sequences, window: int = 1, **kw: Any) -> LayerImportance:
    return similarity(model, layer_map, sequences, window=window, **kw)["angular_distance"]

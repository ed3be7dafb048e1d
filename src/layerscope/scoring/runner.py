"""Running batches through a model and summing the log-probabilities of their scored tokens.

Only the scored positions reach the LM head: with the default forward a pre-hook on the output
embedding keeps just those hidden states (and the model is asked for ``logits_to_keep``), so no
[B, T, vocab] tensor is built and no log-softmax runs over unscored positions.

The ablation engine supplies its own ``forward(batch_index, batch) -> logits``; it must use
``batch.input_ids / attention_mask / position_ids`` as the model inputs and may return logits
for all ``T`` positions or only the last ``batch.logits_to_keep``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import torch

from layerscope.core import distributed
from layerscope.core.errors import ConfigError, ModelError
from layerscope.scoring.batching import Batch

ForwardFn = Callable[[int, Batch], torch.Tensor]


def _accepts_logits_to_keep(model) -> bool:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


def _model_kwargs(b: Batch, keep: bool) -> dict:
    kwargs = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    if b.position_ids is not None:
        kwargs["position_ids"] = b.position_ids
    if keep:
        kwargs["logits_to_keep"] = b.logits_to_keep
    return kwargs


def default_forward(model) -> ForwardFn:
    """``model(input_ids, attention_mask, position_ids).logits``, asking only for the scored positions."""
    keep = _accepts_logits_to_keep(model)

    def forward(_: int, b: Batch) -> torch.Tensor:
        return model(**_model_kwargs(b, keep)).logits

    return forward


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype | None]:
    """Where batches go (the input embedding's device: on a dispatched model, not its first parameter's,
    which may be offloaded to ``meta``) and the weights' dtype (for 4-D float masks)."""
    from layerscope.core.devices import input_device, model_dtype

    return input_device(model), model_dtype(model)


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


# float32 elements per chunk of the log-softmax's normaliser (64 MiB): the float32 copy of the logits and
# logsumexp's temporary are taken a chunk of positions at a time, not for all U x V at once
_LSE_CHUNK_ELEMENTS = 1 << 24


def _scored_logprobs(batch: Batch, sel: torch.Tensor) -> torch.Tensor:
    """Each scored token's log-probability (float64, on the logits' device) from logits [U, V].

    The normaliser is computed in float32 over chunks of rows: the same values as over all rows at once
    (each row is reduced alone), without two U x V float32 tensors at the peak."""
    dev = sel.device
    rows = max(1, _LSE_CHUNK_ELEMENTS // max(1, sel.shape[-1]))
    lse = torch.cat([torch.logsumexp(chunk.float(), dim=-1) for chunk in sel.split(rows)])
    inv = batch.score_uniq.to(dev)
    return (sel[inv, batch.score_tok.to(dev)].float() - lse[inv]).double()


class _Sums:
    """Per-request float64 sums of scored tokens' log-probabilities, added on the CPU in token order (so
    they are the same to the last bit every run: CUDA's ``index_add_`` adds repeated indices in any order).
    On a GPU each batch's values stay there until :meth:`total` copies them back at once: scoring a batch
    then does not wait for it to finish. MPS has no float64: its values come back per batch."""

    def __init__(self, n: int, device: torch.device | None):
        self.n = n
        self.keep = device is not None and device.type == "cuda"
        self.requests: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []

    def add(self, batch: Batch, logprobs: torch.Tensor) -> None:
        self.requests.append(batch.score_req)
        self.logprobs.append(logprobs if self.keep else logprobs.cpu())

    def total(self) -> torch.Tensor:
        out = torch.zeros(self.n, dtype=torch.float64)
        if self.requests:
            out.index_add_(0, torch.cat(self.requests), torch.cat([x.cpu() for x in self.logprobs]))
        return out


class HeadSelector:
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
        kwargs = _model_kwargs(b, self.keep)
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


def run_batches(
    batches: list[Batch], model, forward: ForwardFn | None, progress: bool, desc: str, n_requests: int
) -> torch.Tensor:
    """Forward every batch and score it right away (never holding all logits): float64 sums per request.

    Under torchrun each process runs its shard of the batches and the sums are added across processes.
    """
    if forward is None and model is None:
        raise ConfigError("evaluate needs a model or a forward function")
    device, dtype = _model_device_dtype(model) if model is not None else (None, None)
    head = HeadSelector(model) if forward is None else None
    # the last slot counts processes that failed: every process reaches the one collective below even
    # when its own batches raised, so no process is left waiting, and all of them raise together
    scored = _Sums(n_requests + 1, device)
    from tqdm import tqdm

    ctx = torch.no_grad() if forward is not None else torch.inference_mode()
    mine = distributed.owned(len(batches))  # all batches in one process; a shard under torchrun
    if distributed.sharding():  # only the main process shows a bar: it counts that process's batches alone
        desc = f"{desc} (main process's share, 1/{distributed.world_size()})"
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
                scored.add(b, _scored_logprobs(b, sel))
                del sel
    except Exception as e:
        if not distributed.sharding():
            raise
        failure = e
    sums = scored.total() if failure is None else torch.zeros(n_requests + 1, dtype=torch.float64)
    if failure is not None:
        sums[-1] = 1.0
    if distributed.sharding():
        sums = distributed.sum_across(sums)
    if failure is not None:
        # not every process failed: the main process only knows "failed elsewhere", so this one says why
        distributed.mark_reporting(failure, alone=int(sums[-1]) < distributed.world_size())
        raise failure
    if sums[-1] > 0:
        raise distributed.failed_elsewhere("evaluation", int(sums[-1]))
    return sums[:-1]

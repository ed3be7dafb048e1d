"""Measuring what a selection costs: forward+backward and optimizer-step times on a fixed batch,
and peak memory while training. The benches and :func:`layerscope.training.finetuning.finetune` use these."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from layerscope.core.devices import input_device
from layerscope.core.errors import ConfigError


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_batch(source: str, tokenizer, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A fixed batch for timing: ``batch_size`` examples of ``source`` that fill ``seq_len`` tokens.

    Examples as long as ``seq_len`` (after truncation) are taken first, so a timing measures the
    size it names rather than however long the first few examples happen to be; shorter ones make
    up the rest when too few are that long.
    """
    from layerscope.core.data import collate, load_sft
    from layerscope.core.models import pad_token_id

    data = load_sft(source, tokenizer, max_length=seq_len, limit=max(64, 16 * batch_size), shuffle_seed=0)
    ordered = sorted(data.examples, key=lambda e: -len(e.input_ids))  # stable: ties keep the shuffled order
    return collate(ordered[:batch_size], pad_token_id(tokenizer))


def time_forward_backward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    repeats: int = 3,
    force_input_grads: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Mean seconds of one forward+backward on ``batch`` (after one warm-up).

    ``force_input_grads`` makes the input embeddings' output require grad, as
    ``enable_input_require_grads`` would, so autograd records the whole stack: the difference
    to the default is what stopping the backward at the lowest trainable block saves.
    ``clock=time.process_time`` (CPU, one thread) is steadier than wall time on a shared machine.
    """
    emb = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_input_embeddings()
    handle = emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)) if force_input_grads else None
    device = input_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training
    model.train()
    try:
        times = []
        for r in range(repeats + 1):
            synchronize(device)
            t0 = clock()
            loss = model(**batch).loss
            loss.backward()
            synchronize(device)
            if r:
                times.append(clock() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    return sum(times) / len(times)


def time_optimizer_step(
    model: torch.nn.Module, repeats: int = 3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Mean seconds of one AdamW step (the Trainer's default optimizer) over the trainable parameters.

    Negligible for LoRA, but with full fine-tuning it grows with the trainable parameter count,
    so it belongs in a time-per-step comparison between selections. Parameters without a
    gradient get zero ones (an AdamW step costs the same whatever their values); every
    gradient is dropped afterwards. Weight decay 0, as in the Trainer's default: with zero
    gradients the weights then stay as they were.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to time: the model has no trainable parameter")
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)
    opt.step()  # warm-up: allocates the moment buffers
    synchronize(params[0].device)
    t0 = clock()
    for _ in range(repeats):
        opt.step()
    synchronize(params[0].device)
    dt = (clock() - t0) / repeats
    for p in params:
        p.grad = None
    return dt


def steady_mean(xs: list[float]) -> float:
    """Mean without the first (warm-up) step, when there is more than one."""
    steady = xs[1:] if len(xs) > 1 else xs
    return sum(steady) / max(1, len(steady))


def median(xs: list[float]) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class MemoryMonitor:
    """Peak memory while a block runs: CUDA max allocated, else process RSS sampled every 20 ms.

    ``ru_maxrss`` cannot be reset, so it would carry one run's peak into the next; a
    sampling thread measures each run on its own (it may miss spikes shorter than 20 ms).
    """

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.kind = "cuda_allocated" if device.type == "cuda" else "rss"
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryMonitor:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, rss())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)


def rss() -> int:
    """This process's resident memory in bytes."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is nearly always there
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

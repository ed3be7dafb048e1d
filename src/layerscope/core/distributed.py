"""Multi-process evaluation: items are sharded across processes launched by ``torchrun`` or
``accelerate launch``; every process ends with the same numbers as a single process.

Why sharding by batch gives identical numbers: each request (one item's choice, or one loss
example) lives in exactly one batch, so each process fills its own requests' log-likelihoods
into a zero vector and a sum over processes puts every value in place exactly (x + 0 == x in
floating point). Every process then holds the same full result, so the Shapley estimators take
the same path everywhere without further talk; only the main process writes files.

Coalitions can be sharded instead (``engine/sharding.py``): inside :func:`every_item_here` this
process evaluates every item itself, and the engine splits the coalitions and gathers their results
(:func:`all_gather_objects`).

Nothing here does anything in a single process: one code path for both.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from layerscope.core.errors import ConfigError


def launched_multi_process() -> bool:
    """True under ``torchrun`` / ``accelerate launch`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_sharding = False  # evaluation is split across processes only where a command asked for it
_items_here = 0  # > 0 inside every_item_here(): this process evaluates every item itself


def init_from_env(device: str = "cpu") -> None:
    """Join the process group the launcher set up (gloo on CPU, nccl on CUDA) and shard evaluation
    over it from now on; no-op alone."""
    global _sharding
    if not launched_multi_process():
        return
    _sharding = True
    if dist.is_initialized():
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))  # sum_across works on the current device: this process's GPU
    dist.init_process_group(backend=backend)


def world_size() -> int:
    """Processes sharing the work now (1 until the process group is joined)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's place in the group sharing the work (0 until the group is joined)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """The process that prints and writes files: rank 0, judged by the launcher's RANK before the
    process group exists (the HF Trainer only sets it up once training starts)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


_chosen_device: str | None = None  # the GPU join_from_env chose for this process (left alone afterwards)
_chosen_from_auto = False  # whether _chosen_device is what --device auto became (the run notes say "(auto)")


def local_device(device: str) -> str:
    """``cuda`` (and ``auto`` on a CUDA machine) becomes this process's own GPU (LOCAL_RANK) under a launcher:
    ``cuda:{LOCAL_RANK}``, or ``cuda:0`` where each process sees only its own GPU (one visible:
    CUDA_VISIBLE_DEVICES per task). More processes per machine than visible GPUs is refused (a ConfigError):
    two processes on one GPU make NCCL fail ("Duplicate GPU detected") or hang. The device
    :func:`join_from_env` chose is returned as it is (a command passes it on to the loader, which asks again)."""
    if not launched_multi_process() or (_chosen_device is not None and str(device) == _chosen_device):
        return device
    if str(device) == "auto":
        from layerscope.core.devices import resolve_device

        device = resolve_device(device)
    if str(device) == "cuda":
        return _own_gpu()
    if str(device).startswith("cuda:") and torch.cuda.device_count() > 1:
        # every process would take that one GPU: NCCL then fails ("Duplicate GPU detected") or hangs;
        # where each process sees only its own GPU (CUDA_VISIBLE_DEVICES per task), cuda:0 is right
        raise ConfigError(
            f"--device {device} under a launcher puts every process on one GPU; pass --device cuda (or auto): "
            "each process then takes its own (LOCAL_RANK), and CUDA_VISIBLE_DEVICES chooses which GPUs"
        )
    return device


def chosen_automatically(device: str) -> bool:
    """Whether ``device`` is ``auto``, or what :func:`join_from_env` made of ``auto`` for this process
    (the command passes that on to the loader, and the run notes still say "(auto)", as alone)."""
    return str(device).strip().lower() == "auto" or (_chosen_from_auto and str(device) == _chosen_device)


def _own_gpu() -> str:
    """This process's GPU under a launcher: ``cuda:0`` where it sees only one (its own), else ``cuda:{LOCAL_RANK}``;
    a LOCAL_RANK with no visible GPU of its own is refused rather than sharing another process's."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    visible = torch.cuda.device_count()
    if visible <= 1:
        return "cuda:0"
    if local_rank >= visible:
        per_machine = os.environ.get("LOCAL_WORLD_SIZE")
        processes = f"{per_machine} processes" if per_machine else f"at least {local_rank + 1} processes"
        raise ConfigError(
            f"process LOCAL_RANK={local_rank} has no GPU of its own: {visible} GPUs are visible to {processes} "
            f"per machine; launch at most {visible} processes per machine (--nproc-per-node), or make one GPU "
            "visible to each (CUDA_VISIBLE_DEVICES)"
        )
    return f"cuda:{local_rank}"


def sharding() -> bool:
    """True when evaluation is split across processes: a command called :func:`init_from_env` under a
    launcher. A process group someone else set up (the HF Trainer's DDP) does not shard, so code that
    evaluates on one rank only never waits for the others."""
    return _sharding and world_size() > 1 and _items_here == 0


def working_together() -> bool:
    """True when a command joined a group of several processes (:func:`init_from_env`), whether
    items are split now (:func:`sharding`) or each process evaluates whole coalitions."""
    return _sharding and world_size() > 1


@contextlib.contextmanager
def every_item_here() -> Iterator[None]:
    """Within this block, evaluation is not split by item: this process runs every batch itself
    (it evaluates whole coalitions, which other processes do not share)."""
    global _items_here
    _items_here += 1
    try:
        yield
    finally:
        _items_here -= 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` alone."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)  # nccl: on the current device, which join_from_env set
    return out


def raise_together(failure: BaseException | None, what: str) -> None:
    """Every process learns whether any failed at ``what`` (one collective), so none is left waiting
    in a later one: a process that failed raises its own error, the others a ModelError saying how
    many failed. The error says whether this process must print it (:func:`mark_reporting`)."""
    failed = all_gather_objects(failure is not None)
    if failure is not None:
        mark_reporting(failure, alone=not all(failed))
        raise failure
    if any(failed):
        raise failed_elsewhere(what, sum(failed))


def failed_elsewhere(what: str, n: int) -> BaseException:
    """The error of a process that did not fail at ``what`` while ``n`` others did: the main process
    says it (nobody else may), another one stays quiet (the processes that failed say why)."""
    from layerscope.core.errors import ModelError

    e = ModelError(f"{what} failed in {n} other process(es)")
    mark_reporting(e, alone=False)
    return e


def mark_reporting(failure: BaseException, alone: bool) -> None:
    """Tell the CLI who prints ``failure`` (cli/app.py): met by this process ``alone`` (the main process
    only knows "failed elsewhere"), this process must say it; met by every process, the main one says it
    once. Of an error left unmarked after the group was joined, the CLI asks :func:`same_error_as_main`."""
    failure.report_on_every_process = alone  # type: ignore[attr-defined]


@contextlib.contextmanager
def together(what: str) -> Iterator[None]:
    """A block in which one process may fail alone (opening its own file, loading onto its own device),
    ended by one collective (:func:`raise_together`): if any process failed, every process raises,
    and none is left waiting in the next collective for one that is gone. Every process of a joined
    group must run the block; alone (or in a group a command did not join) it just runs it."""
    failure: Exception | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised by raise_together, here and (as ModelError) elsewhere
        if not working_together():
            raise
        failure = e
    if working_together():
        raise_together(failure, what)


def same_error_as_main(message: str, wait_s: float = 3.0) -> bool:
    """Post ``message``, this process's error, to the group's store (a process that fails while others
    may still be working, so no collective); in a process other than the main one, return whether the
    main process posted the same message within ``wait_s`` seconds: the same bad input met by every
    process, which the main process says once. False where that cannot be told (no group, no store):
    then this process says its own error."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        import time

        store = dist.distributed_c10d._get_default_store()
        store.set(f"layerscope/error/{rank()}", message)
        if rank() == 0:
            return True
        deadline = time.monotonic() + wait_s
        while not store.check(["layerscope/error/0"]):  # polled: store.wait logs its timeout from C++
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return store.get("layerscope/error/0").decode() == message
    except Exception:  # noqa: BLE001 - no answer (store gone): say it here
        return False


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_a_peer(e: BaseException) -> bool:
    """True for what a collective raises when another process of the group a command joined is gone
    (it failed alone outside the collective helpers, or was killed): torch's DistError, or gloo's plain
    RuntimeError "Connection closed by peer". Not this process's error to explain: the other one's is."""
    if not working_together() or not isinstance(e, RuntimeError):
        return False
    return isinstance(e, getattr(dist, "DistError", ())) or any(s in str(e) for s in _PEER_GONE)


def owned(n: int) -> range:
    """Indices 0..n-1 this process evaluates (round-robin, so long and short batches spread evenly)."""
    return range(rank(), n, world_size()) if sharding() else range(n)


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over processes (in place on a copy on the backend's device); identity alone."""
    if world_size() == 1:
        return t
    backend = dist.get_backend()
    work = t.to(f"cuda:{torch.cuda.current_device()}") if backend == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def finish(meet: bool = False) -> None:
    """Leave the process group cleanly (avoids a warning at exit). ``meet``: after a command that ended
    well everywhere, all processes meet first: one that tears gloo down while another still talks to it
    can abort the other ("terminate called without an active exception", seen once in CI on a busy
    machine). Not after an error: a process that failed alone would wait there for the others forever."""
    if dist.is_available() and dist.is_initialized():
        if meet:
            with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to wait for
                dist.barrier()
        dist.destroy_process_group()


def join_from_env(device: str) -> str:
    """Join the launcher's process group for a command that runs on ``device``; returns the device to use.

    Call it first thing in a command, before the model is loaded: under ``torchrun`` / ``accelerate
    launch`` ``"cuda"`` becomes this process's own GPU (:func:`local_device`), which is made the current
    CUDA device (:func:`sum_across` works on the current device) before :func:`init_from_env` joins the
    group. Alone it only sets the current device for an explicit ``"cuda:N"`` and joins nothing."""
    global _chosen_device, _chosen_from_auto
    asked = device
    device = local_device(device)
    if device.startswith("cuda:") and (launched_multi_process() or _have_gpu(device)):
        torch.cuda.set_device(device)  # alone, a GPU this machine lacks is left to the loader's one-line refusal
    if launched_multi_process() and str(asked) != _chosen_device:  # a new choice, not the last one passed back
        _chosen_device = device  # this process's own GPU from now on: not refused as "one GPU for all"
        _chosen_from_auto = str(asked).strip().lower() == "auto"
    init_from_env(device)
    return device


def _have_gpu(device: str) -> bool:
    try:
        return torch.cuda.is_available() and torch.device(device).index < torch.cuda.device_count()
    except (RuntimeError, TypeError):
        return False


def average_gradients(params: list[torch.Tensor], step_loss: float) -> float:
    """Average the gradients of ``params`` and a step's loss over all processes, in place; returns the
    averaged loss. Identity alone.

    One collective on a flat concatenation (not one per tensor), in the widest of the gradients' dtypes
    and float32. Each process's gradient is the mean over its own G micro-batches, so the average is
    the mean over all G*W, as one process with grad_accum G*W computes it. A parameter without a
    gradient counts as zero there."""
    w = world_size()
    if w == 1:
        return step_loss
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dtype = functools.reduce(torch.promote_types, (g.dtype for g in grads), torch.float32)
    loss = torch.tensor([step_loss], dtype=dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1).to(dtype) for g in grads] + [loss])
    flat = sum_across(flat) / w
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
    return float(flat[-1])


def from_main_process(value: float) -> float:
    """The main process's ``value`` on every process (x + 0 + ... + 0 is exactly x). For values that
    decide what all processes do next (when to stop), which must agree even if their floats drifted."""
    if world_size() == 1:
        return value
    mine = torch.tensor([value if is_main_process() else 0.0], dtype=torch.float64)
    return float(sum_across(mine))

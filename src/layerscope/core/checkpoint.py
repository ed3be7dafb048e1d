"""Training checkpoints that survive ``kill -9``: one file, written to a temp name and renamed.

A checkpoint folder holds a single ``state.safetensors``: the tensors (trainable weights,
optimizer moments, RNG states) and, in the safetensors metadata, a JSON header with
everything else (stage, step, logs, scheduler state, optimizer hyper-parameters, numpy /
python RNG states, the run's fingerprint). One file renamed into place (``os.replace``) is
atomic, so a kill during a save leaves the previous checkpoint whole; a folder could not be
swapped in one step. Nothing is unpickled when loading: safetensors and JSON only.

The helpers here are generic (any torch optimizer / LR scheduler); what a checkpoint of a
particular training loop contains is decided by that loop (``ila.py``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerscope.core import atomic, distributed
from layerscope.core.errors import ConfigError, error_line

FORMAT = 1
STATE_FILE = "state.safetensors"
_HEADER_KEY = "layerscope_checkpoint"
THREADS = "threads"  # the header field of torch's CPU thread count when the checkpoint was written

Tensors = dict[str, torch.Tensor]


# ---- the file ----------------------------------------------------------------------------


def state_file(directory: str | os.PathLike) -> Path:
    return Path(directory) / STATE_FILE


def exists(directory: str | os.PathLike | None) -> bool:
    return directory is not None and state_file(directory).is_file()


def save(directory: str | os.PathLike, header: dict[str, Any], tensors: Tensors) -> Path:
    """Write ``header`` (JSON-able) and ``tensors`` as the checkpoint in ``directory``, atomically."""
    from safetensors.torch import save_file

    path = state_file(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    # safetensors wants contiguous CPU tensors that share no storage
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    # torch's CPU threads: on the CPU the order of float sums, so the numbers, depend on them (``threads_mismatch``)
    meta = {_HEADER_KEY: json.dumps({"format": FORMAT, THREADS: torch.get_num_threads(), **header})}
    with atomic.atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=meta)
        _fsync(tmp)  # a power cut, not only a kill, should find either the old or the new file
    return path


def read_header(directory: str | os.PathLike | None) -> dict[str, Any] | None:
    """The JSON header of the checkpoint in ``directory`` (no tensors read), or None if there is none."""
    if not exists(directory):
        return None
    from safetensors import safe_open

    path = state_file(directory)
    try:
        with safe_open(str(path), framework="pt") as f:
            return _parse_header(f.metadata(), path)
    except _read_errors() as e:  # truncated, not safetensors, a header that is not JSON
        raise _unreadable(path, e) from e


def load(directory: str | os.PathLike) -> tuple[dict[str, Any], Tensors]:
    """Header and tensors of the checkpoint in ``directory`` (``ConfigError`` if unreadable)."""
    from safetensors import safe_open

    path = state_file(directory)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = _parse_header(f.metadata(), path)
            # fresh (aligned, unmapped) copies: BLAS kernels may round differently on misaligned data
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except _read_errors() as e:
        raise _unreadable(path, e) from e
    return header, tensors


def remove(directory: str | os.PathLike | None) -> None:
    if directory is not None and Path(directory).is_dir():
        shutil.rmtree(directory, ignore_errors=True)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged checkpoint raises: safetensors' own ``SafetensorError`` (a truncated
    file: "incomplete metadata, file not fully covered"; a plain ``Exception`` subclass), OS errors,
    and the ``ValueError`` of a header that is not JSON."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # older safetensors raised the built-in types alone
        return (OSError, ValueError, RuntimeError)
    return (OSError, ValueError, RuntimeError, SafetensorError)


def _parse_header(meta: dict[str, str] | None, path: Path) -> dict[str, Any]:
    if not meta or _HEADER_KEY not in meta:
        raise ConfigError(f"{path}: not a layerscope checkpoint (no header); remove it or run without --resume")
    header = json.loads(meta[_HEADER_KEY])
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: not a layerscope checkpoint (bad header); remove it or run without --resume")
    if header.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: checkpoint format {header.get('format')!r} is not {FORMAT} (written by another "
            f"layerscope version); remove it or run without --resume"
        )
    return header


def _unreadable(path: Path, e: BaseException) -> ConfigError:
    return ConfigError(
        f"{path}: checkpoint unreadable ({error_line(e, 200)}; "
        f"damaged or cut short); delete {path.parent} to start over, or run without --resume"
    )


def _remove_stale_temp_files(path: Path) -> None:
    """Temp files a killed save left behind (one writer per folder, so none is in use)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- optimizer and LR scheduler ------------------------------------------------------------


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Any], Tensors]:
    """Split ``opt.state_dict()`` into a JSON part and tensors named ``{prefix}.{param}.{key}``."""
    sd = opt.state_dict()
    tensors: Tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def load_optimizer_state(opt: torch.optim.Optimizer, header: dict[str, Any], tensors: Tensors, prefix: str) -> None:
    """Inverse of ``optimizer_state`` (JSON turned tuples such as ``betas`` into lists: turned back here)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        head, _, key = name[len(prefix) + 1 :].partition(".")
        if name.startswith(prefix + ".") and head.isdigit():
            state.setdefault(int(head), {})[key] = value
    for idx, values in header["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    fresh = opt.state_dict()["param_groups"]
    if len(fresh) != len(header["param_groups"]):
        raise ConfigError("checkpoint optimizer has a different number of parameter groups; remove the checkpoint")
    groups = []
    for new, saved in zip(fresh, header["param_groups"]):
        groups.append(
            {k: tuple(v) if isinstance(new.get(k), tuple) and isinstance(v, list) else v for k, v in saved.items()}
        )
    opt.load_state_dict({"state": state, "param_groups": groups})


def scheduler_state(sched) -> dict[str, Any]:
    """LR scheduler state (plain numbers; lambdas are code, rebuilt by the caller, stored as None)."""
    sd = sched.state_dict()
    sd["lr_lambdas"] = [None] * len(sd.get("lr_lambdas", []))
    return sd


# ---- random number generators --------------------------------------------------------------


def rng_state() -> tuple[dict[str, Any], Tensors]:
    """torch (CPU and every CUDA device), numpy and python RNG states: dropout draws must continue exactly."""
    tensors: Tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    header = {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return header, tensors


def set_rng_state(header: dict[str, Any], tensors: Tensors) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    name, keys, pos, has_gauss, gauss = header["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = header["python"]
    random.setstate((version, tuple(internal), gauss_next))


def process_rng_state(device: torch.device | str = "cpu") -> Tensors:
    """Under several processes (torchrun), every process's own torch RNG states, one row each:
    the CPU generator and, on CUDA, that of ``device`` (the process's GPU). They differ between
    processes (each draws its own dropout), so ``rng_state`` of the writing process alone would
    not continue them. A collective: every process must call it. Empty in a single process."""
    if distributed.world_size() == 1:
        return {}
    cpu = torch.get_rng_state()
    own = [cpu, torch.cuda.get_rng_state(device)] if torch.device(device).type == "cuda" else [cpu]
    rows = torch.zeros(distributed.world_size(), sum(t.numel() for t in own), dtype=torch.int64)
    rows[distributed.rank()] = torch.cat(own).to(torch.int64)  # int64: every backend sums it
    rows = distributed.sum_across(rows).to(torch.uint8)  # one row each, zeros elsewhere: sums are exact
    out = {"rng.process.cpu": rows[:, : cpu.numel()]}
    if len(own) > 1:
        out["rng.process.cuda"] = rows[:, cpu.numel() :]
    return out


def set_process_rng_state(tensors: Tensors, device: torch.device | str = "cpu") -> None:
    """This process's row of ``process_rng_state``, if the checkpoint has them (after ``set_rng_state``)."""
    rows = tensors.get("rng.process.cpu")
    if rows is None or distributed.world_size() == 1:
        return
    if rows.shape[0] != distributed.world_size():
        raise ConfigError(
            f"checkpoint was written by {rows.shape[0]} processes, this run has "
            f"{distributed.world_size()}; resume with as many or remove the checkpoint"
        )
    # clone: a row is a view at an offset into the matrix, which set_rng_state misreads (segfault, torch 2.13)
    torch.set_rng_state(rows[distributed.rank()].clone())
    cuda = tensors.get("rng.process.cuda")
    if cuda is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(cuda[distributed.rank()].clone(), device)


# ---- belonging to a run ----------------------------------------------------------------------


def fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None if two run fingerprints agree, else a short phrase naming what differs."""
    diffs = []
    changed = changed_settings(saved.get("config", {}), current.get("config", {}))
    if changed:
        diffs.append("config " + ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else ""))
    for part, label in (("data", "data"), ("model", "model weights")):
        if saved.get(part) != current.get(part):
            diffs.append(f"{label} differ")
    # where it runs: bfloat16 weights upcast to float32 keep their fingerprint, but not their numerics
    # (a checkpoint written before placement was recorded is not held to it)
    if "placement" in saved and saved["placement"] != current.get("placement"):
        diffs.append("placement " + ", ".join(changed_settings(saved["placement"], current.get("placement") or {})))
    return "; ".join(diffs) or None


def threads_mismatch(header: dict[str, Any] | None) -> str | None:
    """None if a checkpoint was written with torch's current CPU thread count (or did not record
    one: written before it was), else a line saying what to give. Matters where the model computes
    on the CPU: there the order of float sums in a matrix product depends on the thread count, so a
    resumed run with another count would continue with numbers that differ in the last digits."""
    saved = (header or {}).get(THREADS)
    now = torch.get_num_threads()
    if not isinstance(saved, int) or saved == now:
        return None
    return (
        f"checkpoint written with {threads_phrase(saved)}, this run has {now} (float sums in another order change the "
        f"result): resume with --threads {saved}, or run without --resume"
    )


def threads_phrase(n: Any) -> str:
    """``n`` CPU thread(s), as the refusals of a resumed run with another count say it."""
    return f"{n} CPU thread{'' if n == 1 else 's'}"


def changed_settings(before: dict[str, Any], now: dict[str, Any], name=str, show=repr) -> list[str]:
    """``key old -> new`` for each key whose value differs (missing: None), in key order; ``name``
    spells a key (as a CLI option, say), ``show`` a value."""
    keys = sorted(set(before) | set(now))
    return [f"{name(k)} {show(before.get(k))} -> {show(now.get(k))}" for k in keys if before.get(k) != now.get(k)]

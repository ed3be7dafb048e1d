"""ILA's checkpoints: when a run saves them, the fingerprint that ties one to its run, and the pieces of
training state (LoRA weights, stability tracker) that go in and come back out.

A checkpoint holds all a run needs to continue exactly: LoRA weights or gate scores, optimizer and
scheduler state, the stability tracker's reference factors and patience counter, the logs, the
position in the data order and every process's RNG states (file format: ``core/checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerscope.core import checkpoint, distributed
from layerscope.core.errors import ConfigError
from layerscope.methods.ila.config import CHECKPOINT_EVERY, ILAConfig
from layerscope.methods.ila.gates import StabilityTracker

# options that do not change the result, so a run may be resumed with them changed
_NOT_IN_FINGERPRINT = ("progress", "save_adapter")

Resume = tuple[dict[str, Any], dict[str, torch.Tensor]]  # a loaded checkpoint: JSON header, tensors
State = Callable[[], Resume]  # builds a checkpoint's content on demand (only when one is saved)


@dataclass
class Checkpoints:
    """Where and how often a run saves checkpoints, and the fingerprint that ties them to it.

    ``directory`` None or ``every`` 0 saves nothing. ``on_step(stage, step)`` is called after
    every optimizer step ("lora" or "gates", counted from 1) and after that step's checkpoint.
    Under several processes every one calls ``save`` (it gathers their RNG states); the main
    process alone writes.
    """

    directory: Path | None = None
    every: int = CHECKPOINT_EVERY
    fingerprint: dict[str, Any] = field(default_factory=dict)
    on_step: Callable[[str, int], None] | None = None
    device: torch.device | str = "cpu"  # the model's: whose CUDA RNG state each process saves

    @property
    def enabled(self) -> bool:
        return self.directory is not None and self.every > 0

    def after_step(self, stage: str, step: int, finished: bool, state: State) -> None:
        # a stage's last step needs no periodic checkpoint: stage 1 saves its own, stage 2 ends the run
        if self.enabled and not finished and step % self.every == 0:
            self.save(*state())
        if self.on_step is not None:
            self.on_step(stage, step)

    def save(self, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if not self.enabled:
            return
        per_process = checkpoint.process_rng_state(self.device)  # a collective: before the main-only part
        if distributed.is_main_process():
            rng_header, rng_tensors = checkpoint.rng_state()
            checkpoint.save(
                self.directory,
                {**header, "fingerprint": self.fingerprint, "rng": rng_header},
                {**tensors, **rng_tensors, **per_process},
            )
        distributed.barrier()  # once save returns the file is there for every process (a resume may follow)

    def load(self) -> Resume | None:
        """The checkpoint to resume from, or None if there is none; refuses one of another run.
        Every process reads it; none goes on until all have, so the main process cannot replace
        it under a slower one."""
        saved = self._read()
        distributed.barrier()
        return saved

    def _read(self) -> Resume | None:
        if not checkpoint.exists(self.directory):
            return None
        header, tensors = checkpoint.load(self.directory)
        why = checkpoint.fingerprint_mismatch(_with_schedule(header.get("fingerprint", {})), self.fingerprint)
        if why:
            raise ConfigError(
                f"{self.directory}: checkpoint belongs to a different run ({why}); remove it or run without --resume"
            )
        return header, tensors

    def restore_rng(self, saved: Resume) -> None:
        """The RNG states of the checkpoint, each process its own."""
        checkpoint.set_rng_state(saved[0]["rng"], saved[1])
        checkpoint.set_process_rng_state(saved[1], self.device)


def _with_schedule(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved fingerprint with stage 1's learning-rate schedule: a checkpoint written before ``lr_schedule``
    existed trained under the linear one, so it resumes as such (and a mismatch names both schedules)."""
    config = saved.get("config")
    if not isinstance(config, dict) or "lr_schedule" in config:
        return saved
    return {**saved, "config": {**config, "lr_schedule": "linear"}}


def run_fingerprint(
    config: ILAConfig, examples: list, pad_id: int, weights: str, placement: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: result-changing options, the tokenised data, the
    base weights, and where they compute (``placement``: dtype, device type, quantization; a
    checkpoint written before placement was recorded is not held to it)."""
    h = hashlib.sha256(f"pad={pad_id}".encode())
    for e in examples:
        h.update(json.dumps([list(e.input_ids), list(e.labels)]).encode())
    cfg = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_FINGERPRINT}
    cfg["processes"] = distributed.world_size()  # another count takes other data per step
    return {
        "config": json.loads(json.dumps(cfg)),
        "data": h.hexdigest()[:16],
        "model": weights,
        "placement": json.loads(json.dumps(placement)),
    }


def lora_tensors(peft_model) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``peft_model``, named for a checkpoint."""
    return {f"lora.{n}": p for n, p in peft_model.named_parameters() if "lora_" in n}


def load_lora_tensors(peft_model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's LoRA weights into ``peft_model``; ``ConfigError`` if they do not fit."""
    params = dict(peft_model.named_parameters())
    saved = {k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")}
    if set(saved) != {n for n in params if "lora_" in n} or any(
        saved[n].shape != params[n].shape for n in saved
    ):  # other modules, or another rank
        raise ConfigError("checkpoint LoRA weights do not match this model's LoRA modules; remove the checkpoint")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def tracker_state(tracker: StabilityTracker) -> Resume:
    """The stability tracker's reference factors (those of its last check), for a checkpoint."""
    if tracker.prev is None:
        return {"scaling": None}, {}
    tensors = {}
    for i, (a, b, _) in enumerate(tracker.prev):
        tensors[f"tracker.{i}.A"], tensors[f"tracker.{i}.B"] = a, b
    return {"scaling": [s for _, _, s in tracker.prev]}, tensors


def load_tracker(
    tracker: StabilityTracker,
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
) -> None:
    """Give ``tracker`` back the reference factors of ``tracker_state``.

    Checkpoints load on the CPU; the tracker compares each saved factor with the live LoRA weight of
    its own layer, so each goes to that weight's device (a model spread over GPUs by ``--device-map``
    has layers on several), not one device for all. ``device``: where a factor goes whose layer the
    tracker does not hold (none in a checkpoint of this run)."""
    scaling = header["scaling"]
    if scaling is None:
        tracker.prev = None
        return
    tracker.prev = [
        (
            tensors[f"tracker.{i}.A"].to(_lora_weight_device(tracker, i, "lora_A", device)),
            tensors[f"tracker.{i}.B"].to(_lora_weight_device(tracker, i, "lora_B", device)),
            s,
        )
        for i, s in enumerate(scaling)
    ]


def _lora_weight_device(
    tracker: StabilityTracker, i: int, factor: str, default: torch.device | str
) -> torch.device | str:
    """The device of layer ``i``'s LoRA ``factor`` (``lora_A`` / ``lora_B``) weight, which
    :meth:`StabilityTracker.snapshot` copies where it is; ``default`` where there is no such layer."""
    if i >= len(tracker.layers):
        return default
    try:
        return getattr(tracker.layers[i], factor)[tracker.adapter].weight.device
    except (AttributeError, KeyError):
        return default

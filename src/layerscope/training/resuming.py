"""Resuming fine-tuning from the HF Trainer's checkpoints: which one is the newest intact, and
whether it belongs to this run (options, data, selection, model), refused in one line otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from layerscope.core import distributed
from layerscope.core.checkpoint import changed_settings
from layerscope.core.errors import ConfigError, error_line
from layerscope.training.config import FinetuneConfig, option_name

# ----------------------------------------------------------------------------- checkpoints


def checkpoints(trainer_dir: str) -> list[Path]:
    """The Trainer's checkpoint folders, newest first."""
    folder = Path(trainer_dir)
    found = (
        [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        if folder.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def _note(text: str) -> None:
    """A note on stderr, once: under DDP every process meets the same checkpoints."""
    if distributed.is_main_process():
        print(f"note: {text}", file=sys.stderr)


def latest_checkpoint(trainer_dir: str) -> str | None:
    """The newest intact Trainer checkpoint, or None (then --resume starts from scratch).

    The Trainer writes trainer_state.json last and not atomically: a kill during a save leaves a
    folder without a readable one. That folder, and one with a damaged file (:func:`checkpoint_damage`),
    is skipped with a note naming what is wrong, in favour of the one before it."""
    found = checkpoints(trainer_dir)
    for ckpt in found:
        damage = checkpoint_damage(ckpt)
        if damage is None:
            return str(ckpt)
        _note(f"skipping the {damage[0]} checkpoint {ckpt} ({damage[1]}); delete that folder")
    _note(f"no {'intact ' if found else ''}Trainer checkpoint in {trainer_dir}; --resume starts from scratch")
    return None


def checkpoint_damage(ckpt: Path) -> tuple[str, str] | None:
    """None for a checkpoint whose files look whole, else (``"incomplete"`` or ``"damaged"``, what is wrong).

    Cheap checks, no tensor is read: trainer_state.json and the other JSON files parse; the files the
    Trainer ``torch.load``s on resume (optimizer.pt, scheduler.pt, rng_state*.pth, ...) are complete
    torch zip archives (a truncated one has lost the central directory at its end); safetensors files
    have a header that covers the whole file. Damage inside a tensor's bytes is not seen here."""
    state = ckpt / "trainer_state.json"
    try:
        step = json.loads(state.read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return "incomplete", "no readable trainer_state.json"
    if not isinstance(step, int):
        return "damaged", "trainer_state.json: no global_step"
    for path in sorted(ckpt.iterdir()):
        why = _file_damage(path)
        if why:
            return "damaged", f"{path.name}: {why}"
    return None


def _file_damage(path: Path) -> str | None:
    """What is wrong with one checkpoint file, or None (also for files resuming does not read)."""
    if not path.is_file():
        return None
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return f"not valid JSON ({e})"
        return None
    if path.suffix in (".pt", ".pth") or (path.suffix == ".bin" and path.name != "training_args.bin"):
        try:
            with zipfile.ZipFile(path) as z:  # torch.save's format; opening reads the directory at the end
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    return "not a torch.save file"
        except (OSError, zipfile.BadZipFile):
            return "not a complete torch.save file (truncated or overwritten)"
        return None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt"):  # reads the header, checks it covers the file
                pass
        except Exception as e:  # SafetensorError, OSError
            return f"not a complete safetensors file ({error_line(e)})"
    return None


def checkpoint_step(ckpt: str) -> int:
    """The optimizer steps a checkpoint holds (its trainer_state.json, checked by :func:`latest_checkpoint`)."""
    return int(json.loads((Path(ckpt) / "trainer_state.json").read_text())["global_step"])


# ----------------------------------------------------------------------------- what a checkpoint belongs to

RUN_FINGERPRINT = "layerscope_run.json"  # in each checkpoint folder: the run that wrote it

# FinetuneConfig fields that do not change what is trained: a resume may change them. ``lr`` is
# recorded as ``learning_rate`` (the rate used, default or not); ``use_cpu`` as the placement's device;
# activation checkpointing trades memory for time (non-reentrant: the same gradients).
_NOT_TRAINING = (
    "lr",
    "use_cpu",
    "eval_batch_size",
    "eval_tasks",
    "eval_limit",
    "eval_before",
    "out_dir",
    "save_adapter",
    "save_checkpoints",
    "checkpoint_every",
    "resume",
    "gradient_checkpointing",
    "logging_steps",
    "progress",
    "model_name",
)


def run_fingerprint(
    config: FinetuneConfig,
    modules: list[str],
    examples,
    pad_id: int,
    weights: str,
    placement: dict[str, Any],
    processes: int,
) -> dict[str, Any]:
    """What determines training, as a resumed run must match it: the options that change training
    (method, steps, learning rate, batch size, seed, LoRA and LISA settings, ...), the number of
    processes (another count takes other data per step), the selected modules, a digest of the
    tokenised training examples, the base weights' fingerprint and where they train (dtype, device
    type, quantization, CPU threads)."""
    cfg = {k: v for k, v in config.to_dict().items() if k not in _NOT_TRAINING}
    if config.method != "lora":
        for k in ("lora_r", "lora_alpha", "lora_dropout"):
            cfg.pop(k)
    if not config.lisa_layers:
        cfg.pop("lisa_interval")
    cfg["processes"] = processes
    h = hashlib.sha256(f"pad={pad_id}".encode())
    for e in examples:
        h.update(json.dumps([list(e.input_ids), list(e.labels)]).encode())
    return json.loads(
        json.dumps(
            {
                "config": cfg,
                "modules": sorted(modules),
                "data": h.hexdigest()[:16],
                "model": weights,
                "placement": placement,
            }
        )
    )


def check_run_fingerprint(ckpt: str, fingerprint: dict[str, Any]) -> None:
    """Refuse, in one line naming what differs, to resume a checkpoint another run wrote; a
    checkpoint of an older layerscope, which recorded none, resumes with a note."""
    path = Path(ckpt) / RUN_FINGERPRINT
    if not path.is_file():
        _note(
            f"{ckpt} records no run fingerprint (an older layerscope wrote it): resuming without checking "
            "that the options and data match"
        )
        return
    diffs = fingerprint_differences(json.loads(path.read_text()), fingerprint)
    if diffs:
        raise ConfigError(
            f"{ckpt}: checkpoint of a run with other settings ({'; '.join(diffs)}); resume with the same "
            "options and data, or use another --out"
        )


def fingerprint_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two run fingerprints, each part in a few words (options as the CLI spells them)."""
    option = {"learning_rate": "--lr", "method": "--method"}
    diffs = changed_settings(
        saved.get("config", {}), now.get("config", {}), name=lambda k: option.get(k) or option_name(k)
    )
    old, new = saved.get("modules", []), now.get("modules", [])
    if old != new:
        other = sorted(set(new) - set(old)) or sorted(set(old) - set(new))
        diffs.append(
            f"selected modules ({len(old)} -> {len(new)}" + (f", e.g. {other[0]})" if other else ", reordered)")
        )
    if saved.get("data") != now.get("data"):
        diffs.append("training data differ")
    if saved.get("model") != now.get("model"):
        diffs.append("model weights differ")
    placement = (saved.get("placement", {}), now.get("placement", {}))
    diffs += changed_settings(*placement, name=lambda k: "--threads" if k == "threads" else k, show=str)
    return diffs


def fingerprint_recorder(trainer_dir: str, fingerprint: dict[str, Any]):
    """A callback writing ``fingerprint`` into each checkpoint folder just before the Trainer saves it
    (``on_step_end``, once its flow callback has decided to save), so that a checkpoint with a
    trainer_state.json, which the Trainer writes last, has its fingerprint too."""
    from transformers import TrainerCallback

    from layerscope.core import atomic

    class RecordRun(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if control.should_save and state.is_world_process_zero:
                atomic.write_json(Path(trainer_dir) / f"checkpoint-{state.global_step}" / RUN_FINGERPRINT, fingerprint)

    return RecordRun()


def load_finished(trainer, ckpt: str, lisa) -> None:
    """Take over a checkpoint that already reached ``max_steps`` without a training step: its weights
    and state (loss history, step count; LISA's draws replayed for the report). Resumed there, the HF
    Trainer would train one step more before it checks the step count."""
    from transformers.trainer_callback import TrainerState

    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        raise ConfigError(
            f"{ckpt}: the run already finished training (step {checkpoint_step(ckpt)}); under DeepSpeed / FSDP it "
            "cannot be loaded without training on: take the trained weights from that folder, or drop --resume"
        )
    _note(f"{ckpt} already reached --max-steps {trainer.args.max_steps}: nothing left to train, evaluating it")
    trainer._load_from_checkpoint(ckpt)  # what train() does first on a resume (weights, or the adapter)
    trainer.state = TrainerState.load_from_json(os.path.join(ckpt, "trainer_state.json"))
    if lisa is not None:
        lisa.on_train_begin(trainer.args, trainer.state, trainer.control)


TRAINED_PARAMETERS = "trained_parameters.json"  # beside the checkpoints: what they hold state for


def check_checkpoints_fit(trainer_dir: str, model) -> None:
    """Checkpoints kept for --resume belong to one set of trained parameters. The first start
    records it; a resume that would train others (another --mode, --fraction, --lora-r, seed of a
    random selection, ...) is refused: the Trainer would restore optimizer state onto other
    parameters, or stop on a shape it cannot load."""
    from layerscope.core import atomic

    trained = sorted(f"{n} {list(p.shape)}" for n, p in model.named_parameters() if p.requires_grad)
    path = Path(trainer_dir) / TRAINED_PARAMETERS
    if path.is_file() and checkpoints(trainer_dir):
        before = json.loads(path.read_text())
        if before != trained:
            gone, new = sorted(set(before) - set(trained)), sorted(set(trained) - set(before))
            example = (gone or new)[0].split(" ")[0]
            raise ConfigError(
                f"{trainer_dir}: its checkpoints trained {len(before)} parameter tensors, this run would train "
                f"{len(trained)} ({len(gone)} of theirs not, {len(new)} others; e.g. {example}); resume with the "
                "same selection and LoRA settings, or remove the folder"
            )
    if distributed.is_main_process():
        atomic.write_json(path, trained)


def note_resuming(ckpt: str, max_steps: int) -> None:
    _note(f"resuming from {ckpt} (step {checkpoint_step(ckpt)} of {max_steps})")


def refuse_earlier_checkpoints(config: FinetuneConfig) -> None:
    """A run that keeps checkpoints and does not resume must find none there: an earlier run's would
    be mixed with this run's, and a later --resume could pick theirs. Checked before the model loads
    (the CLI) and again where the Trainer starts (the Python API)."""
    if not (config.out_dir and config.save_checkpoints) or config.resume:
        return
    folder = Path(config.out_dir) / "checkpoints"
    if checkpoints(str(folder)):
        raise ConfigError(
            f"{folder} holds checkpoints of an earlier run; pass --resume to continue it, or remove the folder"
        )


def trainer_folder(config: FinetuneConfig, scratch: str) -> str:
    """Where the Trainer writes: ``out_dir/checkpoints`` when checkpoints are kept, else ``scratch``."""
    if not (config.out_dir and config.save_checkpoints):
        return scratch
    refuse_earlier_checkpoints(config)
    return str(Path(config.out_dir) / "checkpoints")

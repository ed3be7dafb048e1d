"""What a fine-tuning run is asked to do (:class:`FinetuneConfig`) and what it measured (:class:`FinetuneReport`)."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from layerscope.core import atomic
from layerscope.core.errors import ConfigError, option_label

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}

# the command-line option that sets each field (``finetune --max-steps``): errors name both, resume refusals
# name the option
_FLAGS = {
    "method": "--method",
    "max_steps": "--max-steps",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "seed": "--seed",
    "lora_r": "--lora-r",
    "lora_alpha": "--lora-alpha",
    "eval_batch_size": "--eval-batch-size",
    "eval_tasks": "--eval-tasks",
    "eval_limit": "--eval-limit",
    "checkpoint_every": "--checkpoint-every",
    "lisa_layers": "--lisa-layers",
    "lisa_interval": "--lisa-interval",
    "bf16": "--bf16",
}
# options that count something, so must be at least 1
_AT_LEAST_ONE = (
    "max_steps",
    "batch_size",
    "grad_accum",
    "eval_batch_size",
    "lora_r",
    "logging_steps",
    "checkpoint_every",
)
_INTS = (*_AT_LEAST_ONE, "seed", "warmup_steps", "lisa_layers", "lisa_interval")
_NUMBERS = ("lora_alpha", "lora_dropout", "weight_decay", "max_grad_norm")


def option_name(name: str) -> str:
    """The CLI option that sets config field ``name`` (resume refusals name it), or the field's name."""
    return _FLAGS.get(name, name)


def _label(name: str) -> str:
    """How an error names field ``name``: ``--max-steps (max_steps)``, or ``finetune option warmup_steps``."""
    return option_label(name, _FLAGS, "finetune")


def _is_int(value) -> bool:
    """A real integer (Python's or NumPy's): not a bool (True is 1), a float (1.5 would be cut to 1) or a string."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _task_list(tasks) -> list[str]:
    """``eval_tasks`` as a list of names or files: one name is one task (a string iterated would be one
    task per character), a tuple or a path is as good as a list of strings."""
    if isinstance(tasks, (str, os.PathLike)):
        tasks = [tasks]
    wrong = [t for t in tasks if not isinstance(t, (str, os.PathLike))] if isinstance(tasks, (list, tuple)) else [tasks]
    if wrong:
        got = type(wrong[0]).__name__
        raise ConfigError(f"{_label('eval_tasks')} must be a task name or file, or a list of them; got {got}")
    tasks = [os.fspath(t) for t in tasks]
    # loss:FILE (what eval, ablate and prune take) would reach the task reader as a file name and be "not
    # found"; a held-out loss is measured already, on the held-out set
    loss = next((t for t in tasks if t.strip().startswith("loss:")), None)
    if loss is not None:
        raise ConfigError(
            f"{_label('eval_tasks')} {loss}: takes multiple-choice tasks; the held-out loss is reported already "
            "(--heldout FILE measures it on that file)"
        )
    return tasks


# transformers' SchedulerType values, listed here so that building a config (as parsing does) imports no
# transformers; tests/test_api_misuse.py checks the list against the installed transformers
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)


@dataclass
class FinetuneConfig:
    method: str = "lora"  # lora | full
    max_steps: int = 100
    lr: float | None = None  # default DEFAULT_LR[method]
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 0
    lora_r: int = 8
    lora_alpha: float = 16  # a whole number stays an int (configs print 16)
    lora_dropout: float = 0.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    eval_batch_size: int = 16  # as eval and ablate --batch-size
    eval_tasks: list[str] = field(default_factory=list)  # e.g. ["arc_easy", "piqa", "hellaswag"]
    eval_limit: int | None = 200
    eval_before: bool = True  # held-out loss of the untouched model too
    out_dir: str | None = None  # writes report.json and adapter/ (LoRA) or trained/ (full) when set
    save_adapter: bool = True
    save_checkpoints: bool = False  # Trainer checkpoints under out_dir/checkpoints
    checkpoint_every: int = 50  # steps between Trainer checkpoints (with save_checkpoints)
    resume: bool = False  # continue from the newest Trainer checkpoint in out_dir/checkpoints
    gradient_checkpointing: bool = False  # non-reentrant, so it does not force input grads
    lisa_layers: int = 0  # > 0: LISA schedule with this many active blocks
    lisa_interval: int = 20
    logging_steps: int = 10
    bf16: bool = False
    use_cpu: bool | None = None  # None: train where the model already is
    progress: bool = False
    model_name: str | None = None  # recorded in the report

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"{_label('method')} {self.method!r} must be one of {', '.join(METHODS)}")
        self._check_types()
        self.eval_tasks = _task_list(self.eval_tasks)
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_label(name)} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"{_label('lr')} must be a positive number, got {self.lr}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"{_label('eval_limit')} must be >= 1, got {self.eval_limit}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{_label('warmup_steps')} must be >= 0, got {self.warmup_steps}")
        if self.lisa_layers < 0 or (self.lisa_layers and self.lisa_interval < 1):
            raise ConfigError(f"{_label('lisa_layers')} must be >= 0 and {_label('lisa_interval')} >= 1")
        self._check_scheduler()

    def _check_scheduler(self) -> None:
        """The Trainer's scheduler names, checked here rather than as its ValueError once training starts."""
        if self.lr_scheduler not in SCHEDULERS:
            raise ConfigError(f"{_label('lr_scheduler')} {self.lr_scheduler!r} must be one of {', '.join(SCHEDULERS)}")

    def _check_types(self) -> None:
        """Refuse a value of the wrong type here, in one line, rather than deep inside torch later
        (a string batch size) or silently changed (max_steps=1.5 would train 1 step)."""
        ints = _INTS if self.eval_limit is None else (*_INTS, "eval_limit")  # None: no limit
        reals = _NUMBERS if self.lr is None else (*_NUMBERS, "lr")  # None: the method's default
        for name in ints:
            if not _is_int(getattr(self, name)):
                raise ConfigError(f"{_label(name)} must be a whole number, got {getattr(self, name)!r}")
            setattr(self, name, int(getattr(self, name)))  # a NumPy integer reaches report.json as a Python one
        for name in reals:
            if not _is_number(getattr(self, name)):
                raise ConfigError(f"{_label(name)} must be a finite number, got {getattr(self, name)!r}")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.method])

    def to_dict(self) -> dict[str, Any]:
        """The options as given, plus the learning rate actually used."""
        return {**asdict(self), "learning_rate": self.learning_rate}


@dataclass
class FinetuneReport:
    method: str
    selection: dict[str, Any]
    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    trainable_params: int
    total_params: int
    trainable_modules: int
    steps: int
    # speed of the steps this run trained; None when it trained none (--resume of a finished run)
    time_per_step_s: float | None  # mean over steps, the first (warm-up) step excluded when there are more
    time_per_step_median_s: float | None
    cpu_time_per_step_s: float | None  # process CPU time per step, same steps (steadier on a shared CPU)
    tokens_per_s: float | None  # non-pad tokens through forward+backward per second of training
    peak_memory_bytes: int  # CUDA max allocated, or peak process RSS on CPU
    peak_memory_delta_bytes: int  # peak minus the level when training started
    memory_kind: str  # "cuda_allocated" | "rss"
    heldout_loss_before: float | None
    heldout_loss: float
    train_loss: list[tuple[int, float]]
    grad_flow: dict[str, Any]
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    lisa_history: list[tuple[int, list[int]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    trained_model: Any = field(default=None, repr=False)  # the model after training (not serialised)

    def to_dict(self) -> dict[str, Any]:
        from layerscope.core.importance import jsonable

        d = asdict(replace(self, trained_model=None))  # asdict would deep-copy the whole model
        d.pop("trained_model")
        return jsonable(d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON to ``path``, or to ``path/report.json`` when ``path`` is a folder."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "report.json"
        atomic.write_json(path, self.to_dict())
        return path

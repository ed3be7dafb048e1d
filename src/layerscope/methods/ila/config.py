"""The options of an ILA run (``ILAConfig``, validated on creation) and what a stage logs (``StageLog``)."""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from layerscope.core.errors import ConfigError, option_label, percent_hint

# The choices and defaults live here, not beside the torch code that uses them, so that the CLI can
# read them (for --help) without importing torch.
SPARSITY_MODES = ("penalty", "budget")
GATE_OPTIMIZERS = ("auto", "adam", "nsgd")
# stage 1's learning rate after warm-up: falling linearly to 0 at max_steps, or held at its peak. The
# stability criterion sees a decaying rate as settling, so "constant" separates the two (docs/ila.md).
LR_SCHEDULES = ("linear", "constant")
CHECKPOINT_EVERY = 10  # optimizer steps between checkpoints (0: none)
STAGE_NAMES = {"lora": "stage 1", "gates": "stage 2"}  # a checkpoint's stage, as messages name it

_POSITIVE_INTS = ("r", "max_steps", "check_every", "patience", "batch_size", "grad_accum", "gate_steps")
_POSITIVE_NUMBERS = ("alpha", "lr", "eps", "gate_lr", "max_grad_norm")
_FRACTIONS = ("dropout", "warmup_ratio", "budget_warmup")  # in [0, 1)
# the fields only stage 1 reads: a reused ``adapter`` skips stage 1, so any of them set is a mistake (the
# adapter's own rank, alpha and dropout are used and recorded; see run.py's ``_method_config``)
STAGE1_FIELDS = (
    "r",
    "alpha",
    "dropout",
    "lr",
    "weight_decay",
    "warmup_ratio",
    "lr_schedule",
    "max_steps",
    "min_steps",
    "check_every",
    "eps",
    "patience",
)
# the stage-2 fields only one --sparsity mode reads: set away from their defaults under the other mode, a
# mistake (they would have no effect); recorded as None there (run.py's ``_method_config``)
SPARSITY_FIELDS = {"penalty": ("lam",), "budget": ("budget_fraction", "budget_warmup")}
# the ``layerscope ila`` option that sets each field: errors name both (a field no option sets by its name)
OPTION_FLAGS = {
    "r": "--rank",
    "alpha": "--alpha",
    "dropout": "--lora-dropout",
    "lr": "--lr",
    "lr_schedule": "--lr-schedule",
    "max_steps": "--max-steps",
    "min_steps": "--min-steps",
    "check_every": "--check-every",
    "eps": "--eps",
    "patience": "--patience",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "gate_steps": "--gate-steps",
    "gate_lr": "--gate-lr",
    "gate_init": "--gate-init",
    "gate_optimizer": "--gate-optimizer",
    "sparsity": "--sparsity",
    "lam": "--lambda",
    "budget_fraction": "--budget-fraction",
}


def _option(name: str) -> str:
    """How an error names field ``name``: ``--max-steps (max_steps)``, or ``ILA option weight_decay``."""
    return option_label(name, OPTION_FLAGS, "ILA")


@dataclass
class ILAConfig:
    """Options of both ILA stages; validated on creation (``ConfigError`` names the option).

    The defaults of stage 2 and why they were chosen: docs/ila.md, "Stage-2 defaults".
    """

    # LoRA (stage 1)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # of max_steps
    lr_schedule: str = "linear"  # after warm-up: linear decay to 0 at max_steps, or constant
    max_steps: int = 200
    min_steps: int = 20  # capped at max_steps
    check_every: int = 10
    eps: float = 0.05
    patience: int = 2
    # batching (both stages)
    batch_size: int = 4
    grad_accum: int = 1  # micro-batches per step and process (a step uses grad_accum x processes)
    max_grad_norm: float = 1.0
    # gates (stage 2)
    gate_steps: int = 100
    gate_lr: float = 0.1
    gate_init: float = 3.0  # sigmoid(3) = 0.9526
    gate_optimizer: str = "auto"  # adam | nsgd (normalised SGD) | auto: adam for penalty, nsgd for budget
    sparsity: str = "penalty"  # penalty | budget
    lam: float = 1.0  # penalty weight on mean(sigmoid(s)) (penalty mode only)
    budget_fraction: float = 0.3  # H as a fraction of the modules (budget mode)
    budget_warmup: float = 0.5  # fraction of gate_steps over which H anneals from N
    # run
    seed: int = 0
    adapter: str | None = None  # reuse a saved stage-1 adapter (skips stage 1)
    save_adapter: str | None = None  # save the stage-1 adapter here (peft save_pretrained)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{_option(name)} must be a positive integer, got {v!r}")
            setattr(self, name, int(v))  # a NumPy integer reaches the JSON result as a Python one
        if not isinstance(self.min_steps, numbers.Integral) or isinstance(self.min_steps, bool) or self.min_steps < 0:
            raise ConfigError(f"{_option('min_steps')} must be a non-negative integer, got {self.min_steps!r}")
        self.min_steps = int(self.min_steps)
        for name in _POSITIVE_NUMBERS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{_option(name)} must be a positive number, got {v!r}")
        for name in _FRACTIONS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ConfigError(f"{_option(name)} must be in [0, 1), got {v!r}")
        if not (isinstance(self.budget_fraction, (int, float)) and 0 < self.budget_fraction <= 1):
            raise ConfigError(
                f"{_option('budget_fraction')} must be in (0, 1], got {self.budget_fraction!r}"
                f"{percent_hint(self.budget_fraction)}"
            )
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"{_option('lam')} must be a non-negative number, got {self.lam!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ConfigError(f"{_option('weight_decay')} must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.gate_init, (int, float)) and math.isfinite(self.gate_init)):
            raise ConfigError(f"{_option('gate_init')} must be a finite number, got {self.gate_init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ConfigError(f"{_option('seed')} must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)  # NumPy's too, recorded in the result as a Python int
        if self.gate_optimizer not in GATE_OPTIMIZERS:
            raise ConfigError(
                f"{_option('gate_optimizer')} {self.gate_optimizer!r} must be one of {', '.join(GATE_OPTIMIZERS)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"{_option('lr_schedule')} {self.lr_schedule!r} must be one of {', '.join(LR_SCHEDULES)}")
        if self.sparsity not in SPARSITY_MODES:
            raise ConfigError(f"{_option('sparsity')} {self.sparsity!r} must be one of {', '.join(SPARSITY_MODES)}")
        self._check_adapter_skips_stage1()
        self._check_sparsity_fields()

    def _check_adapter_skips_stage1(self) -> None:
        """Refuse stage-1 options set away from their defaults together with ``adapter``: stage 1 does
        not run, so they would have no effect, and the run would record the adapter's settings instead.
        (``layerscope ila`` refuses the flags first, in its own words.)"""
        if self.adapter is None:
            return
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        given = [f"{name}={getattr(self, name)!r}" for name in STAGE1_FIELDS if getattr(self, name) != defaults[name]]
        if given:
            raise ConfigError(
                f"ILAConfig {', '.join(given)}: stage-1 option{'s' if len(given) > 1 else ''}, but adapter= skips "
                f"stage 1 and uses the adapter's own settings: drop {'it' if len(given) == 1 else 'them'}"
            )

    def _check_sparsity_fields(self) -> None:
        """Refuse the other sparsity mode's fields set away from their defaults (``lam`` weighs the
        penalty mode's penalty; ``budget_fraction`` and ``budget_warmup`` shape the budget mode's mask):
        they would have no effect. (``layerscope ila`` refuses a given --lambda / --budget-fraction first.)"""
        other = next(mode for mode in SPARSITY_MODES if mode != self.sparsity)
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        given = [f"{n}={getattr(self, n)!r}" for n in SPARSITY_FIELDS[other] if getattr(self, n) != defaults[n]]
        if given:
            raise ConfigError(
                f"ILAConfig {', '.join(given)}: sparsity={other!r} option{'s' if len(given) > 1 else ''}, but "
                f"sparsity={self.sparsity!r} does not use {'it' if len(given) == 1 else 'them'}: drop "
                f"{'it' if len(given) == 1 else 'them'}, or set sparsity={other!r}"
            )


@dataclass
class StageLog:
    """What one stage records: the loss of every optimizer step, stage-specific series and notes
    (``extra``), the steps taken and the wall time. Saved in checkpoints as a dict."""

    loss: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

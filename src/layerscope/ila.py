"""ILA (arXiv 2410.17875): learn which LoRA-adapted modules matter for alignment.

Stage 1 trains LoRA on every linear module of every decoder block (response-only SFT loss)
until training is *epsilon-stable*; stage 2 freezes base and LoRA weights and learns one
score ``s_i`` per module whose update becomes ``sigmoid(s_i) * (alpha/r) * B_i A_i``, under a
sparsity pressure (``ila_gates``). The scores rank the modules.

Training loop: a lean, deterministic torch loop (AdamW, linear warm-up then linear decay to
zero at ``max_steps``, gradient clipping, gradient accumulation), not the HF Trainer: both
stages need exact control of the step (stability checks between optimizer steps, gate
annealing, a loss made of task loss plus a penalty) and no hidden state (no dataloader
workers, no schedulers or callbacks that reorder RNG use), and it is faster on CPU.

Epsilon-stability (METHODS.md §1 leaves it open; our default): every ``check_every``
optimizer steps compute ``r = ||dW_t - dW_{t-k}|| / ||dW_t||`` over the concatenated LoRA
updates of all modules (exact, via r x r Gram matrices, see ``ila_gates``); stop once
``r < eps`` at ``patience`` consecutive checks and at least ``min_steps`` steps were taken
(reason "stable"), else at ``max_steps`` (reason "max_steps"). While ||dW|| still grows about linearly (Adam takes near-constant
steps) r is about k / t, so eps = 0.05 with k = 10 needs t of order 200 unless the updates
settle sooner; the learning rate also decays linearly to zero at ``max_steps``, which shrinks
r late in training. Set eps from this scale (e.g. eps = 0.15 with k = 4 for short CPU runs).

Stage-2 defaults and why (all [open] in the paper, all options):
- sparsity "penalty" (loss + lambda * mean(sigmoid(s)), lambda = 1): in our checks on
  stories260K it gave top-30% sets that agree across seeds far better than the hard budget
  (Jaccard 0.83-1.0 vs 0.47-0.69, Spearman ~0.95 vs ~0.93); both find a planted module
  (tests/test_ila.py). The budget reading is kept as ``sparsity="budget"``.
- gate_init 3 (gate 0.953, not 1: sigmoid cannot reach 1): the gated model starts within
  ~5% of the LoRA model's update; ``LoraGates.force(ones)`` reproduces it exactly.
- gate_lr 0.1 with Adam: the penalty must pull unimportant gates down a few logits before
  important ones visibly resist; with 0.1 that takes ~50 steps. For runs of only ~15
  gate steps raise it (0.3).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .models import pad_token_id
from .errors import ConfigError, DataError, TrainingError
from .ila_gates import (GATE_OPTIMIZERS, SPARSITY_MODES, LoraGates, StabilityTracker, gate_optimizer,
                        resolve_gate_optimizer)
from .importance import LayerImportance, model_info
from .layermap import LayerMap, build_layer_map, linear_types

ADAPTER = "default"


@dataclass
class ILAConfig:
    """Options of both ILA stages; validated on creation (``ConfigError`` names the option)."""

    # LoRA (stage 1)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1           # of max_steps
    max_steps: int = 200
    min_steps: int = 20                 # capped at max_steps
    check_every: int = 10
    eps: float = 0.05
    patience: int = 2
    # batching (both stages)
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    # gates (stage 2)
    gate_steps: int = 100
    gate_lr: float = 0.1
    gate_init: float = 3.0              # sigmoid(3) = 0.9526
    gate_optimizer: str = "auto"        # adam | nsgd (normalised SGD) | auto: adam for penalty, nsgd for budget
    sparsity: str = "penalty"           # penalty | budget
    lam: float = 1.0                    # penalty weight on mean(sigmoid(s)) (penalty mode only)
    budget_fraction: float = 0.3        # H as a fraction of the modules (budget mode)
    budget_warmup: float = 0.5          # fraction of gate_steps over which H anneals from N
    # run
    seed: int = 0
    adapter: str | None = None          # reuse a saved stage-1 adapter (skips stage 1)
    save_adapter: str | None = None     # save the stage-1 adapter here (peft save_pretrained)
    progress: bool = True

    def __post_init__(self) -> None:
        positive_int = ("r", "max_steps", "check_every", "patience", "batch_size", "grad_accum", "gate_steps")
        for name in positive_int:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ILA option {name} must be a positive integer, got {v!r}")
        if not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise ConfigError(f"ILA option min_steps must be a non-negative integer, got {self.min_steps!r}")
        for name in ("alpha", "lr", "eps", "gate_lr", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"ILA option {name} must be a positive number, got {v!r}")
        for name in ("dropout", "warmup_ratio", "budget_warmup"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ConfigError(f"ILA option {name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.budget_fraction, (int, float)) and 0 < self.budget_fraction <= 1):
            raise ConfigError(f"ILA option budget_fraction must be in (0, 1], got {self.budget_fraction!r}")
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"ILA option lam (lambda) must be a non-negative number, got {self.lam!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ConfigError(f"ILA option weight_decay must be >= 0, got {self.weight_decay!r}")
        if not math.isfinite(self.gate_init):
            raise ConfigError(f"ILA option gate_init must be finite, got {self.gate_init!r}")
        if self.gate_optimizer not in GATE_OPTIMIZERS:
            raise ConfigError(f"ILA option gate_optimizer {self.gate_optimizer!r} must be one of {', '.join(GATE_OPTIMIZERS)}")
        if self.sparsity not in SPARSITY_MODES:
            raise ConfigError(f"ILA option sparsity {self.sparsity!r} must be one of {', '.join(SPARSITY_MODES)}")


@dataclass
class StageLog:
    loss: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


# ---- data ------------------------------------------------------------------------------


def _check_data(data) -> list:
    examples = getattr(data, "examples", data)
    if not examples:
        raise DataError(f"{getattr(data, 'source', 'data')}: no SFT examples")
    if not any(any(x != -100 for x in e.labels) for e in examples):
        raise DataError(f"{getattr(data, 'source', 'data')}: no response tokens to train on (all labels are -100)")
    return list(examples)


def _batches(examples: list, batch_size: int, seed: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches; the order depends only on ``seed``."""
    from .data import collate

    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            yield collate([examples[j] for j in order[i:i + batch_size]], pad_id)




def _loss(model: nn.Module, batch: dict[str, torch.Tensor], device) -> torch.Tensor:
    out = model(**{k: v.to(device) for k, v in batch.items()})
    loss = out.loss
    if not torch.isfinite(loss):
        raise TrainingError(f"ILA: loss became {loss.item()} (lower --lr / --gate-lr?)")
    return loss


# ---- LoRA wrapping ------------------------------------------------------------------------


def lora_targets(model: nn.Module, layer_map: LayerMap) -> list[str]:
    """peft ``target_modules``: the module types of the layer map (q_proj, ...), or the exact
    module paths if a type name would also match a linear outside the decoder blocks."""
    types = layer_map.module_types()
    wanted = {m.path for m in layer_map.linears}
    lin = linear_types()
    stray = [n for n, m in model.named_modules()
             if isinstance(m, lin) and n.rsplit(".", 1)[-1] in types and n not in wanted]
    return sorted(wanted) if stray else types


def wrap_lora(model: nn.Module, layer_map: LayerMap, config: ILAConfig):
    """A fresh peft LoRA model on every linear of every block (seeded init), or a saved adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers.pytorch_utils import Conv1D

    if config.adapter is not None:
        if not (Path(config.adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"{config.adapter}: no LoRA adapter there (expected a folder with adapter_config.json)")
        try:
            with _quiet():
                return PeftModel.from_pretrained(model, config.adapter, adapter_name=ADAPTER, is_trainable=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{config.adapter}: cannot load LoRA adapter ({str(e).splitlines()[0][:200]})") from e
    conv1d = any(isinstance(model.get_submodule(m.path), Conv1D) for m in layer_map.linears)
    lcfg = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=lora_targets(model, layer_map), fan_in_fan_out=conv1d, bias="none")
    torch.manual_seed(config.seed)  # LoRA A is randomly initialised
    with _quiet():
        return get_peft_model(model, lcfg, adapter_name=ADAPTER)


@contextlib.contextmanager
def _quiet():
    """peft 0.21 calls a transformers API that warns of its own deprecation; not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_layers(peft_model, layer_map: LayerMap) -> list[nn.Module]:
    """The peft LoRA layer of every layer-map linear, in forward order."""
    inner = peft_model.base_model.model  # the user's model: layer-map paths are relative to it
    out = []
    for m in layer_map.linears:
        layer = inner.get_submodule(m.path)
        if not hasattr(layer, "lora_B") or ADAPTER not in layer.lora_B:
            raise ConfigError(f"LoRA adapter does not cover module {m.name}: ILA needs LoRA on every linear module")
        out.append(layer)
    return out


# ---- stage 1 ------------------------------------------------------------------------------


def train_lora(peft_model, layers: list[nn.Module], examples: list, config: ILAConfig, pad_id: int) -> StageLog:
    """LoRA SFT until epsilon-stable (see module docstring); returns losses and the stop reason."""
    device = next(peft_model.parameters()).device
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = int(round(config.warmup_ratio * config.max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warm + 1) if s < warm else max(0.0, (config.max_steps - s) / max(1, config.max_steps - warm)))
    tracker = StabilityTracker(layers, ADAPTER)
    tracker.check()  # reference at step 0 (dW = 0)
    min_steps = min(config.min_steps, config.max_steps)
    batches = _batches(examples, config.batch_size, config.seed, pad_id)
    log = StageLog(extra={"stability": [], "stop_reason": "max_steps"})
    calm = 0
    peft_model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(1, config.max_steps + 1), desc="ILA stage 1 (LoRA)", disable=not config.progress, leave=False)
    for step in bar:
        total = 0.0
        for _ in range(config.grad_accum):
            loss = _loss(peft_model, next(batches), device) / config.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.loss.append(total)
        log.steps = step
        bar.set_postfix(loss=f"{total:.3f}")
        if step % config.check_every == 0:
            ratio = tracker.check()
            log.extra["stability"].append([step, ratio])
            calm = calm + 1 if ratio < config.eps else 0
            if calm >= config.patience and step >= min_steps:
                log.extra["stop_reason"] = "stable"
                break
    bar.close()
    log.seconds = time.perf_counter() - t0
    log.extra["stop_step"] = log.steps
    log.extra["lora_delta_norm"] = tracker.module_norms()
    return log


# ---- stage 2 ------------------------------------------------------------------------------


def train_gates(peft_model, gates: LoraGates, examples: list, config: ILAConfig, pad_id: int) -> StageLog:
    """Learn the gate scores with base and LoRA weights frozen and dropout off."""
    device = next(peft_model.parameters()).device
    for p in peft_model.parameters():
        p.requires_grad_(False)
    peft_model.eval()  # dropout off: the hooked update is exactly g * (alpha/r) B A x
    gates.to(device)
    gates.attach(peft_model.base_model.model)
    opt_name = resolve_gate_optimizer(config.gate_optimizer, config.sparsity)
    opt = gate_optimizer(opt_name, gates.parameters(), config.gate_lr)
    warm = int(round(config.budget_warmup * config.gate_steps))
    batches = _batches(examples, config.batch_size, config.seed + 1, pad_id)
    log = StageLog(extra={"penalty": [], "open_gates": [], "optimizer": opt_name})
    t0 = time.perf_counter()
    bar = tqdm(range(config.gate_steps), desc="ILA stage 2 (gates)", disable=not config.progress, leave=False)
    try:
        for step in bar:
            gates.anneal(step, warm)
            pen = float(gates.penalty().detach())  # the value this step's loss sees
            total = 0.0
            for _ in range(config.grad_accum):
                loss = _loss(peft_model, next(batches), device) / config.grad_accum
                if config.sparsity == "penalty" and config.lam > 0:
                    loss = loss + config.lam * gates.penalty() / config.grad_accum
                loss.backward()
                total += loss.item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            task = total - (config.lam * pen if config.sparsity == "penalty" else 0.0)
            log.loss.append(task)
            log.extra["penalty"].append(pen)
            log.extra["open_gates"].append(int((gates.values().detach() > 0.5).sum()))
            log.steps = step + 1
            bar.set_postfix(loss=f"{task:.3f}", gates=f"{pen:.2f}")
    finally:
        bar.close()
        gates.detach()
    log.seconds = time.perf_counter() - t0
    return log


# ---- the whole method ------------------------------------------------------------------------


def run_ila(model: nn.Module, tokenizer, data, config: ILAConfig | None = None, *,
            model_name: str | None = None) -> LayerImportance:
    """Run both ILA stages on ``data`` (an ``SFTData`` or a list of ``SFTExample``).

    The model is wrapped with peft for the run and restored afterwards (LoRA layers removed,
    ``requires_grad`` flags and train/eval mode as before), so it can be reused.
    """
    config = config or ILAConfig()
    examples = _check_data(data)
    layer_map = build_layer_map(model)
    name = model_name or getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
    info = model_info(model, layer_map, name)  # fingerprint of the base weights, before peft
    pad_id = pad_token_id(tokenizer)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    torch.manual_seed(config.seed)
    peft_model = wrap_lora(model, layer_map, config)
    try:
        layers = lora_layers(peft_model, layer_map)
        if config.adapter is None:
            s1 = train_lora(peft_model, layers, examples, config, pad_id)
        else:
            s1 = StageLog(extra={"stop_reason": "loaded", "stop_step": 0, "stability": [],
                                 "lora_delta_norm": StabilityTracker(layers, ADAPTER).module_norms()})
        if config.save_adapter is not None:
            peft_model.save_pretrained(config.save_adapter)
        lcfg = peft_model.peft_config[ADAPTER]
        gates = LoraGates(layers, ADAPTER, init=config.gate_init, mode=config.sparsity,
                          budget_fraction=config.budget_fraction)
        torch.manual_seed(config.seed + 1)
        s2 = train_gates(peft_model, gates, examples, config, pad_id)
    finally:
        peft_model.unload()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
        model.train(was_training)
    return _result(layer_map, info, data, config, lcfg, gates, s1, s2)


def _result(layer_map: LayerMap, info: dict, data, config: ILAConfig, lcfg, gates: LoraGates,
            s1: StageLog, s2: StageLog) -> LayerImportance:
    players = layer_map.players("module")
    scores = [float(x) for x in gates.scores.detach()]
    gate_values = [float(x) for x in torch.sigmoid(gates.scores.detach())]
    by_block: dict[str, list[float]] = {}
    by_type: dict[str, list[float]] = {}
    for m, s in zip(layer_map.linears, scores):
        by_block.setdefault(str(m.block), []).append(s)
        by_type.setdefault(m.type, []).append(s)
    extras = {
        "stop_step": s1.extra["stop_step"], "stop_reason": s1.extra["stop_reason"],
        "stage1_loss": s1.loss, "stage1_stability": s1.extra["stability"],
        "stage2_loss": s2.loss, "stage2_penalty": s2.extra["penalty"], "stage2_open_gates": s2.extra["open_gates"],
        "gate_optimizer": s2.extra["optimizer"],
        "gates": gate_values, "lora_delta_norm": s1.extra["lora_delta_norm"],
        "score_by_block": {k: sum(v) / len(v) for k, v in by_block.items()},
        "score_by_type": {k: sum(v) / len(v) for k, v in by_type.items()},
        "lora": {"r": int(lcfg.r), "alpha": float(lcfg.lora_alpha), "dropout": float(lcfg.lora_dropout),
                 "target_modules": sorted(lcfg.target_modules) if lcfg.target_modules else None},
        "score_meaning": "gate logit s_i; the gate is sigmoid(s_i); higher = more important",
    }
    if config.sparsity == "budget":
        extras["final_mask"] = [int(x) for x in gates.hard_mask(gates.budget_k)]
    examples = getattr(data, "examples", data)
    data_info = {"source": getattr(data, "source", None), "format": getattr(data, "format", None),
                 "n_items": len(examples), "fingerprint": getattr(data, "fingerprint", None),
                 "stats": getattr(data, "stats", None)}
    return LayerImportance(
        method="ila", granularity="module", players=players, scores=scores, model=info, data=data_info,
        method_config=asdict(config), seed=config.seed,
        timings={"stage1_s": round(s1.seconds, 3), "stage2_s": round(s2.seconds, 3),
                 "total_s": round(s1.seconds + s2.seconds, 3)},
        extras=extras)

"""Layer-selective fine-tuning: train only the linear modules a :class:`Selection` names.

Two methods:

- ``lora``: peft ``LoraConfig`` whose ``target_modules`` is the explicit list of the selected
  modules' full paths; after injection we check that peft adapted exactly those modules.
- ``full``: every parameter frozen except the selected modules' own parameters (weight and,
  where present, bias).

Training runs through the Hugging Face ``Trainer`` (``report_to="none"``, no checkpoints
unless asked), so ``accelerate launch`` with DDP / DeepSpeed works unchanged; with FSDP,
partly frozen units need ``use_orig_params=True`` (FSDP1) or FSDP2. Parameters are frozen
before the Trainer builds its optimizer: the default optimizer only holds parameters that
are trainable when it is created.

Why freezing the bottom saves compute: autograd only records operations on tensors that
require grad. With the embeddings and all lower blocks frozen, the hidden state entering
the lowest block that holds a trainable module does not require grad, so no graph is built
below it and the backward pass stops there. This holds as long as nothing forces inputs to
require grad: we never call ``enable_input_require_grads`` and leave gradient checkpointing
off by default (reentrant checkpointing needs it). :func:`probe_grad_flow` verifies it on
every run and :func:`time_forward_backward` measures what it saves.

LISA (Pan et al. 2024) is available as a schedule on top of any selection: every K steps
only ``lisa_layers`` randomly drawn blocks (among those holding selected modules) are
trainable. Unlike LMFlow's LISA, embeddings and LM head stay frozen (we tune only linear
modules of the blocks). Under DDP it needs ``ddp_find_unused_parameters``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerscope.core import atomic, distributed
from layerscope.core.errors import ConfigError, TrainingError
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.training.lora import inject_lora, module_paths
from layerscope.training.selection import Selection

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}


@dataclass
class FinetuneConfig:
    method: str = "lora"  # lora | full
    max_steps: int = 100
    lr: float | None = None  # default 2e-4 (lora) / 2e-5 (full)
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    eval_batch_size: int = 8
    eval_tasks: list[str] = field(default_factory=list)  # e.g. ["arc_easy", "piqa", "hellaswag"]
    eval_limit: int | None = 200
    eval_before: bool = True  # held-out loss of the untouched model too
    out_dir: str | None = None  # writes report.json and adapter/ when set
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

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} must be one of {', '.join(METHODS)}")
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "eval_batch_size",
            "lora_r",
            "logging_steps",
            "checkpoint_every",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"--eval-limit must be >= 1, got {self.eval_limit}")
        if self.lisa_layers < 0 or (self.lisa_layers and self.lisa_interval < 1):
            raise ConfigError("--lisa-layers must be >= 0 and --lisa-interval >= 1")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.method])


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
    time_per_step_s: float  # mean over steps, the first (warm-up) step excluded when there are more
    time_per_step_median_s: float
    cpu_time_per_step_s: float  # process CPU time per step, same steps (steadier on a shared CPU)
    tokens_per_s: float  # non-pad tokens through forward+backward per second of training
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
        d = asdict(self)
        d.pop("trained_model", None)
        from layerscope.core.importance import _jsonable

        return _jsonable(d)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != ".json":
            path = path / "report.json"
        atomic.write_json(path, self.to_dict())
        return path


# ----------------------------------------------------------------------------- freezing


def freeze_except(model: torch.nn.Module, layer_map: LayerMap, modules: list[str]) -> int:
    """Full fine-tuning of ``modules`` only: freeze everything else. Returns trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for path in module_paths(layer_map, modules):
        for p in model.get_submodule(path).parameters():
            p.requires_grad_(True)
            n += p.numel()
    return n


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


# ----------------------------------------------------------------------------- graph checks


def _block_modules(model: torch.nn.Module, layer_map: LayerMap) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [base.get_submodule(layer_map.block_path(i)) for i in range(layer_map.n_blocks)]


def lowest_trainable_block(model: torch.nn.Module, layer_map: LayerMap) -> int | None:
    for i, block in enumerate(_block_modules(model, layer_map)):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return None


def probe_grad_flow(model: torch.nn.Module, layer_map: LayerMap, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One forward in training mode: does the hidden state entering each block require grad?

    With nothing trainable below block L, the inputs of blocks 0..L must not require grad
    (autograd builds no graph there, so backward stops inside block L) and the inputs of the
    blocks above L must. ``truncated`` says whether that holds.
    """
    seen: dict[int, bool] = {}

    def hook(i):
        def pre(_module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if isinstance(h, torch.Tensor):
                seen[i] = bool(h.requires_grad)

        return pre

    blocks = _block_modules(model, layer_map)
    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    was_training = model.training
    model.train()
    try:
        device = next(model.parameters()).device
        with torch.enable_grad():
            model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    lowest = lowest_trainable_block(model, layer_map)
    needs = [seen.get(i, False) for i in range(layer_map.n_blocks)]
    expected = [lowest is not None and i > lowest for i in range(layer_map.n_blocks)]
    return {
        "lowest_trainable_block": lowest,
        "input_requires_grad": needs,
        "blocks_in_backward": (layer_map.n_blocks - lowest) if lowest is not None else 0,
        "n_blocks": layer_map.n_blocks,
        "truncated": needs == expected,
    }


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
    device = next(model.parameters()).device
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


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- measuring


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
            self.start = self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is nearly always there
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _Collator:
    """data.collate plus a count of the non-pad tokens handed to training."""

    def __init__(self, pad_id: int):
        self.pad_id, self.tokens = pad_id, 0

    def __call__(self, examples):
        from layerscope.core.data import collate

        batch = collate(list(examples), self.pad_id)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def _callbacks():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (forward, backward, clip, step, zero_grad), and the process's
        CPU time for it: on a shared CPU the wall clock counts other jobs' time too, CPU time does not."""

        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._t0 = self._c0 = 0.0
            self._device: torch.device | None = None

        def on_step_begin(self, args, state, control, **kw):
            synchronize(args.device)
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            synchronize(args.device)
            self.times.append(time.perf_counter() - self._t0)
            self.cpu_times.append(time.process_time() - self._c0)

    class Lisa(TrainerCallback):
        """Every ``interval`` steps, only ``n_active`` random blocks' selected parameters train.

        All candidates are trainable when the optimizer is built (so it holds them); blocks
        switched off get no gradient, and AdamW skips parameters whose grad is None.
        """

        def __init__(self, groups: dict[int, list[torch.nn.Parameter]], n_active: int, interval: int, seed: int):
            self.groups, self.n_active, self.interval = groups, min(n_active, len(groups)), interval
            self.rng = random.Random(seed)
            self.history: list[tuple[int, list[int]]] = []

        def _switch(self, step: int) -> None:
            active = sorted(self.rng.sample(sorted(self.groups), self.n_active))
            for b, params in self.groups.items():
                for p in params:
                    p.requires_grad_(b in active)
            self.history.append((step, active))

        def on_train_begin(self, args, state, control, **kw):
            # a resumed run (global_step g > 0) replays the draws made at steps 0, interval, ... below g, so
            # it trains the blocks the uninterrupted run trained and its history is complete
            g = state.global_step
            for step in range(0, max(g, 1), self.interval):
                self._switch(step)

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step > 0 and state.global_step % self.interval == 0:
                self._switch(state.global_step)

    return StepTimer, Lisa


# ----------------------------------------------------------------------------- evaluation


def heldout_loss(model, tokenizer, examples, batch_size: int = 8) -> float:
    from layerscope.scoring.evaluate import LossEvaluator

    was_training = model.training
    model.eval()
    try:
        return float(LossEvaluator(tokenizer, examples, batch_size=batch_size).evaluate(model).metrics["loss"])
    finally:
        model.train(was_training)


def eval_tasks(
    model, tokenizer, tasks: list[str], limit: int | None, batch_size: int = 16, progress: bool = False
) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per task name (headline metric under ``value``)."""
    from layerscope.core.tasks import load_task
    from layerscope.scoring.evaluate import evaluate_task

    out: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    try:
        for name in tasks:
            task = load_task(name, limit=limit)
            res = evaluate_task(model, tokenizer, task, batch_size=batch_size, progress=progress)
            out[name] = {
                "value": float(res.value),
                "metric": task.metric,
                "n": res.n_items,
                **{k: float(v) for k, v in res.metrics.items()},
            }
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- training


def finetune(model, tokenizer, train, heldout, selection: Selection, config: FinetuneConfig) -> FinetuneReport:
    """Fine-tune the modules in ``selection`` on ``train``; measure cost and held-out loss.

    ``model`` is changed in place (LoRA layers injected, or weights updated); the trained
    model is returned in ``report.trained_model`` (a ``PeftModel`` for LoRA).
    """
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from layerscope.core.importance import library_versions
    from layerscope.core.models import weights_fingerprint

    config.validate()
    if hasattr(model, "peft_config"):
        raise ConfigError("model already carries peft adapters; pass the plain base model")
    if not train.examples:
        raise ConfigError("no training examples")
    if not heldout.examples:
        raise ConfigError("no held-out examples")
    t_start = time.perf_counter()
    layer_map = build_layer_map(model)
    modules = list(selection.modules)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("tokenizer has no pad or eos token")
    device = next(model.parameters()).device
    use_cpu = (device.type == "cpu") if config.use_cpu is None else config.use_cpu
    fingerprint = weights_fingerprint(model)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    loss_before = None
    if config.eval_before:
        loss_before = heldout_loss(model, tokenizer, heldout.examples, config.eval_batch_size)
    timings["eval_before_s"] = time.perf_counter() - t0

    # Freeze (and inject LoRA) before the Trainer exists: its optimizer takes only trainable parameters.
    set_seed(config.seed)
    if config.method == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        train_model = inject_lora(
            model,
            layer_map,
            modules,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            task_type="CAUSAL_LM",
        )
    else:
        freeze_except(model, layer_map, modules)
        train_model = model
    trainable, total = count_params(train_model)
    if trainable == 0:
        raise TrainingError("nothing to train: the selection left no trainable parameter")

    probe = _Collator(pad_id)([e for e in train.examples[:2]])
    probe = {k: v[:, :64] for k, v in probe.items()}
    grad_flow = probe_grad_flow(train_model, layer_map, probe)
    if not grad_flow["truncated"]:  # costs time, not correctness: say so and go on
        warnings.warn(
            f"autograd records blocks below the lowest trainable block {grad_flow['lowest_trainable_block']} "
            "(something makes inputs require grad), so the backward pass will not stop there",
            stacklevel=2,
        )

    StepTimer, Lisa = _callbacks()
    timer = StepTimer()
    callbacks: list = [timer]
    lisa = None
    if config.lisa_layers:
        groups = _lisa_groups(train_model, layer_map)
        lisa = Lisa(groups, config.lisa_layers, config.lisa_interval, config.seed)
        callbacks.append(lisa)

    out_dir = Path(config.out_dir) if config.out_dir else None
    tmp_ctx = tempfile.TemporaryDirectory(prefix="layerscope-trainer-")
    trainer_dir = str(out_dir / "checkpoints") if (out_dir and config.save_checkpoints) else tmp_ctx.name
    if config.save_checkpoints and not config.resume and _checkpoints(trainer_dir):
        # an earlier run's checkpoints would be mixed with this run's, and a later --resume could pick theirs
        raise ConfigError(
            f"{trainer_dir} holds checkpoints of an earlier run; pass --resume to continue it, or remove the folder"
        )
    args = TrainingArguments(
        output_dir=trainer_dir,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_checkpoints else "no",
        save_steps=config.checkpoint_every,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=use_cpu,
        bf16=config.bf16,
        disable_tqdm=not config.progress,
        **_checkpointing_args(config.gradient_checkpointing),
    )
    collator = _Collator(pad_id)
    trainer = Trainer(
        model=train_model,
        args=args,
        train_dataset=_Examples(train.examples),
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    if not config.progress:
        trainer.remove_callback(ProgressCallback)
    train_device = args.device
    try:
        with MemoryMonitor(train_device) as mem:
            t0 = time.perf_counter()
            trainer.train(resume_from_checkpoint=_latest_checkpoint(trainer_dir) if config.resume else None)
            timings["train_s"] = time.perf_counter() - t0
    except torch.OutOfMemoryError as e:
        raise TrainingError(
            f"out of memory while training (batch size {config.batch_size}); lower --batch-size or --seq-len"
        ) from e
    finally:
        tmp_ctx.cleanup()
    history = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    if history and not math.isfinite(history[-1][1]):
        raise TrainingError(f"training loss is {history[-1][1]} at step {history[-1][0]}; lower --lr")

    eval_model = train_model.get_base_model() if config.method == "lora" else train_model
    t0 = time.perf_counter()
    loss_after = heldout_loss(eval_model, tokenizer, heldout.examples, config.eval_batch_size)
    if not math.isfinite(loss_after):
        raise TrainingError(f"held-out loss is {loss_after} after training; lower --lr")
    evals = (
        eval_tasks(eval_model, tokenizer, config.eval_tasks, config.eval_limit, progress=config.progress)
        if config.eval_tasks
        else {}
    )
    timings["eval_after_s"] = time.perf_counter() - t0

    steps = timer.times
    train_time = sum(steps) or timings.get("train_s", 0.0)
    report = FinetuneReport(
        method=config.method,
        selection=selection.to_dict(),
        config=_config_dict(config),
        model={
            "name": config.model_name,
            "architecture": layer_map.architecture,
            "n_blocks": layer_map.n_blocks,
            "fingerprint": fingerprint,
        },
        data={
            "train": {"source": train.source, "examples": len(train.examples), "fingerprint": train.fingerprint},
            "heldout": {
                "source": heldout.source,
                "examples": len(heldout.examples),
                "fingerprint": heldout.fingerprint,
            },
        },
        trainable_params=trainable,
        total_params=total,
        trainable_modules=len(modules),
        steps=int(trainer.state.global_step),
        time_per_step_s=_steady_mean(steps),
        time_per_step_median_s=_median(steps),
        cpu_time_per_step_s=_steady_mean(timer.cpu_times),
        tokens_per_s=collator.tokens / train_time if train_time else 0.0,
        peak_memory_bytes=int(mem.peak),
        peak_memory_delta_bytes=int(mem.delta),
        memory_kind=mem.kind,
        heldout_loss_before=loss_before,
        heldout_loss=loss_after,
        train_loss=history,
        grad_flow=grad_flow,
        eval=evals,
        lisa_history=lisa.history if lisa else [],
        timings=timings,
        versions=library_versions(),
        trained_model=train_model,
    )
    report.config["processes"] = distributed.world_size()  # DDP under accelerate launch / torchrun
    if out_dir is not None and distributed.is_main_process():  # the ranks hold identical weights: one writes
        saved = None
        try:
            if config.save_adapter:
                saved = save_trained(train_model, layer_map, modules, config.method, out_dir / "adapter")
                report.paths["adapter"] = str(saved)
            report.timings["total_s"] = time.perf_counter() - t_start
            report.paths["report"] = str(out_dir / "report.json")
            report.save(out_dir / "report.json")
        except BaseException:
            # An adapter without its report looks like a finished run: take it back out (disk full, killed).
            if saved is not None:
                shutil.rmtree(saved, ignore_errors=True)
            raise
    else:
        report.timings["total_s"] = time.perf_counter() - t_start
    return report


def _steady_mean(xs: list[float]) -> float:
    """Mean without the first (warm-up) step, when there is more than one."""
    steady = xs[1:] if len(xs) > 1 else xs
    return sum(steady) / max(1, len(steady))


def _checkpoints(trainer_dir: str) -> list[Path]:
    """The Trainer's checkpoint folders, newest first."""
    folder = Path(trainer_dir)
    found = (
        [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        if folder.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def _latest_checkpoint(trainer_dir: str) -> str | None:
    """The newest complete Trainer checkpoint, or None (then --resume starts from scratch).

    The Trainer writes trainer_state.json last and not atomically: a kill during a save leaves a
    folder without a readable one, which is skipped in favour of the one before it."""
    for ckpt in _checkpoints(trainer_dir):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            print(f"note: skipping the incomplete checkpoint {ckpt}", file=sys.stderr)
    print(f"note: no Trainer checkpoint in {trainer_dir}; --resume starts from scratch", file=sys.stderr)
    return None


def _checkpointing_args(on: bool) -> dict[str, Any]:
    """Activation checkpointing, non-reentrant (the reentrant kind needs inputs that require grad).

    Passed only when on: transformers 5 renamed the option and warns about the old name.
    """
    if not on:
        return {}
    import inspect

    from transformers import TrainingArguments

    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters
        else "gradient_checkpointing"
    )
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _lisa_groups(model, layer_map: LayerMap) -> dict[int, list[torch.nn.Parameter]]:
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for i, block in enumerate(_block_modules(model, layer_map)):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups[i] = params
    if not groups:
        raise TrainingError("LISA: no block holds a trainable parameter")
    return groups


def save_trained(model, layer_map: LayerMap, modules: list[str], method: str, dest: Path) -> Path:
    """LoRA: ``save_pretrained`` (adapter_config.json + weights). Full: only the trained tensors.

    The folder is built beside ``dest`` and renamed into place, so a killed run leaves no
    half-written adapter behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if method == "lora":
            model.save_pretrained(str(tmp))
        else:
            from safetensors.torch import save_file

            paths = set(module_paths(layer_map, modules))
            tensors = {
                n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in paths
            }
            save_file(tensors, str(tmp / "trained_weights.safetensors"))
            atomic.write_json(
                tmp / "trained_modules.json",
                {
                    "modules": modules,
                    "parameters": sorted(tensors),
                    "load": "model.load_state_dict(safetensors.torch.load_file(...), strict=False)",
                },
            )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def _config_dict(config: FinetuneConfig) -> dict[str, Any]:
    d = asdict(config)
    d["learning_rate"] = config.learning_rate
    return d


def _median(xs: list[float]) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

"""The Hugging Face ``Trainer`` as fine-tuning uses it: batches, arguments, callbacks, checkpoints.

``report_to="none"`` and no checkpoints unless asked, so ``accelerate launch`` with DDP /
DeepSpeed works unchanged; with FSDP, partly frozen units need ``use_orig_params=True`` (FSDP1)
or FSDP2. transformers is imported only inside functions: ``layerscope export`` and ``--help``
reach this package without needing it.
"""

from __future__ import annotations

import inspect
import math
import random
import sys
import time
from typing import Any

import torch

from layerscope.core.data import collate
from layerscope.core.errors import TrainingError
from layerscope.core.layermap import LayerMap
from layerscope.training.config import FinetuneConfig
from layerscope.training.freezing import trainable_blocks
from layerscope.training.measure import synchronize


class Collator:
    """data.collate plus a count of the non-pad tokens handed to training."""

    def __init__(self, pad_id: int):
        self.pad_id, self.tokens = pad_id, 0

    def __call__(self, examples):
        batch = collate(list(examples), self.pad_id)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class Examples(torch.utils.data.Dataset):
    def __init__(self, examples):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


# ----------------------------------------------------------------------------- callbacks


def _callback_classes():
    """(StepTimer, Lisa, ProgressBar): defined on first use, since they subclass transformers' TrainerCallback."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (forward, backward, clip, step, zero_grad), and the process's
        CPU time for it: on a shared CPU the wall clock counts other jobs' time too, CPU time does not."""

        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._t0 = self._c0 = 0.0
            self.began = False  # a training step started: whatever a resume loads was loaded by then

        def on_step_begin(self, args, state, control, **kw):
            self.began = True
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

    class ProgressBar(TrainerCallback):
        """transformers' ProgressCallback without its log lines: one labelled bar on stderr, the latest
        training loss in its postfix. The stock one writes every log dict (``{'loss': ..., 'grad_norm':
        ...}``, ``{'train_runtime': ...}``) to stdout and redraws the bar around each, which a log file
        keeps as repeated copies of the bar's last line."""

        label = "fine-tuning"

        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:  # one bar, not one per process
                from tqdm import tqdm

                self.bar = tqdm(
                    total=state.max_steps,
                    initial=state.global_step,  # a resumed run starts where its checkpoint left off
                    desc=self.label,
                    unit="step",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            # the loss of the steps just logged, shown with the next redraw (a log file gets no extra line);
            # a run shorter than logging_steps logs only its summary: then its mean loss
            if self.bar is None or not logs:
                return
            loss = logs.get("loss", logs.get("train_loss") if not self.bar.postfix else None)
            if isinstance(loss, (int, float)):
                self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StepTimer, Lisa, ProgressBar


def _lisa_groups(model: torch.nn.Module, layer_map: LayerMap) -> dict[int, list[torch.nn.Parameter]]:
    """The blocks LISA draws from: those holding a trainable parameter, with those parameters."""
    groups = trainable_blocks(model, layer_map)
    if not groups:
        raise TrainingError("LISA: no block holds a trainable parameter")
    return groups


def make_callbacks(model: torch.nn.Module, layer_map: LayerMap, config: FinetuneConfig) -> tuple[Any, Any | None]:
    """A step timer, and the LISA schedule when ``config.lisa_layers`` asks for one (else None)."""
    StepTimer, Lisa, _ = _callback_classes()
    lisa = None
    if config.lisa_layers:
        lisa = Lisa(_lisa_groups(model, layer_map), config.lisa_layers, config.lisa_interval, config.seed)
    return StepTimer(), lisa


# ----------------------------------------------------------------------------- the Trainer


def _checkpointing_args(on: bool) -> dict[str, Any]:
    """Activation checkpointing, non-reentrant (the reentrant kind needs inputs that require grad).

    Passed only when on: transformers 5 renamed the option and warns about the old name.
    """
    if not on:
        return {}
    from transformers import TrainingArguments

    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters
        else "gradient_checkpointing"
    )
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def logged_every(config: FinetuneConfig) -> int:
    """Steps per logged training loss: ``logging_steps``, or, where checkpoints are kept, the largest
    interval dividing both it and ``checkpoint_every``. The Trainer starts a new window at the
    checkpoint a run resumes from, so only then does a resumed run log the same means as one that
    ran through (every 10 steps with checkpoints every 25: its first window after step 125 held 5)."""
    if not config.save_checkpoints:
        return config.logging_steps
    return math.gcd(config.logging_steps, config.checkpoint_every)


def training_arguments(config: FinetuneConfig, output_dir: str, use_cpu: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        logging_strategy="steps",
        logging_steps=logged_every(config),
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


def build_trainer(model, args, examples, collator: Collator, callbacks: list, progress: bool):
    """A quiet ``Trainer``: no log dicts printed to stdout, and a progress bar only when asked.

    transformers adds a PrinterCallback (``disable_tqdm``) or a ProgressCallback, and both print every
    log dict; both are removed, and ``progress`` adds the package's own bar (loss in its postfix)."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = Trainer(
        model=model, args=args, train_dataset=Examples(examples), data_collator=collator, callbacks=callbacks
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_callback_classes()[2])
    from layerscope.core.devices import is_dispatched

    if is_dispatched(model):  # accelerate placed it (e.g. all on disk: a one-entry map accelerate would .to())
        trainer.accelerator.device_placement = False
    return trainer

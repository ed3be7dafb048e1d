"""Layer-selective fine-tuning: train only the linear modules a :class:`Selection` names.

Two methods:

- ``lora``: peft ``LoraConfig`` whose ``target_modules`` is the explicit list of the selected
  modules' full paths; after injection we check that peft adapted exactly those modules.
- ``full``: every parameter frozen except the selected modules' own parameters (weight and,
  where present, bias).

Training runs through the Hugging Face ``Trainer`` (:mod:`layerscope.training.trainer`); resuming
from its checkpoints is :mod:`layerscope.training.resuming`. What is checked before any work is
:mod:`layerscope.training.preflight`, the held-out and zero-shot evaluation before and after training
:mod:`layerscope.training.evaluation`, and giving the model back as it came :mod:`layerscope.training.restoring`.
Parameters are frozen before the Trainer builds its optimizer: the default optimizer only
holds parameters that are trainable when it is created.

Freezing the bottom saves compute because the backward pass then stops at the lowest
trainable block (:mod:`layerscope.training.probes` says why). That holds as long as nothing
forces inputs to require grad: we never call ``enable_input_require_grads`` and leave gradient
checkpointing off by default (reentrant checkpointing needs it). :func:`probe_grad_flow`
verifies it on every run and :func:`time_forward_backward` measures what it saves.

LISA (Pan et al. 2024) is available as a schedule on top of any selection: every K steps
only ``lisa_layers`` randomly drawn blocks (among those holding selected modules) are
trainable. Unlike LMFlow's LISA, embeddings and LM head stay frozen (we tune only linear
modules of the blocks). Under DDP it needs ``ddp_find_unused_parameters``.
"""

from __future__ import annotations

import math
import pickle
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerscope.core import distributed
from layerscope.core.agreement import same_model_hint
from layerscope.core.devices import input_device, placement_record
from layerscope.core.errors import ConfigError, LayerscopeError, TrainingError, error_line
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.core.player_names import listed
from layerscope.training.config import FinetuneConfig, FinetuneReport
from layerscope.training.evaluation import evaluate_after, evaluate_before, load_eval_tasks, share_evaluation
from layerscope.training.freezing import (
    count_params,
    freeze_all,
    freeze_except,
    half_precision_trainable,
    launcher_keeps_float32_weights,
)
from layerscope.training.lora import inject_lora, module_paths
from layerscope.training.measure import MemoryMonitor, median, steady_mean
from layerscope.training.preflight import (
    check_inputs,
    check_lisa,
    check_out_dir,
    check_selection,
    pad_id_of,
    refuse_offloaded,
    remove_if_empty,
)
from layerscope.training.probes import probe_grad_flow
from layerscope.training.restoring import Restore
from layerscope.training.resuming import (
    check_checkpoints_fit,
    check_run_fingerprint,
    checkpoint_step,
    fingerprint_recorder,
    latest_checkpoint,
    load_finished,
    note_resuming,
    run_fingerprint,
    trainer_folder,
)
from layerscope.training.saving import note_kept_adapter, save_trained, saved_folder
from layerscope.training.selection import Selection
from layerscope.training.trainer import Collator, build_trainer, make_callbacks, training_arguments

PROBE_TOKENS = 64  # the grad-flow probe needs the graph's shape, not a full-length forward


@dataclass
class _Trained:
    """What one Trainer run leaves behind."""

    steps: int
    train_loss: list[tuple[int, float]]
    step_times: list[float]  # wall seconds per optimizer step
    cpu_times: list[float]  # process CPU seconds per optimizer step
    tokens: int  # non-pad tokens trained on
    train_s: float
    memory: MemoryMonitor
    lisa_history: list[tuple[int, list[int]]]


def finetune(
    model, tokenizer, train, heldout, selection: Selection, config: FinetuneConfig, *, ignore_fingerprint: bool = False
) -> FinetuneReport:
    """Fine-tune the modules in ``selection`` on ``train``; measure cost and held-out loss.

    ``model`` is changed in place (LoRA layers injected, or weights updated); the trained
    model is returned in ``report.trained_model`` (a ``PeftModel`` for LoRA), in the train/eval
    mode ``model`` came in (a loaded model is in eval mode, as scoring needs); after full fine-tuning
    with the ``requires_grad`` flags it came with too (the selected weights keep what they learnt, the
    rest is no longer frozen). The selection, the zero-shot tasks and the output folder are checked
    before any work. A run that fails gives the model back as it came (``requires_grad`` flags,
    train/eval mode, no LoRA layers), except for weights full fine-tuning already changed; the
    adapter is saved as soon as training ends, so a later failure keeps it
    (:mod:`layerscope.training.saving`). A selection made from a ranking of other weights is refused
    (``ignore_fingerprint=True``: the same model in float16), as the CLI refuses it.
    """
    from layerscope.core.models import ModelFingerprint, check_trains_on_any_length

    check_inputs(model, train, heldout, selection, config)
    check_trains_on_any_length(model)
    layer_map = build_layer_map(model)
    modules = check_selection(layer_map, selection)  # a wrong name fails before the model is touched
    check_lisa(layer_map, modules, config)
    weights = ModelFingerprint(model)  # of the base weights, before training changes them; each hash read once
    if not ignore_fingerprint:
        _check_ranked_on(selection, weights.like(selection.source.get("fingerprint")))
    tasks = load_eval_tasks(config.eval_tasks, config.eval_limit)  # a typo fails now, not after training
    made_out_dir = check_out_dir(config)
    try:
        return _finetune_checked(
            model, tokenizer, train, heldout, selection, config, layer_map, modules, weights, tasks
        )
    except BaseException:
        if made_out_dir:
            remove_if_empty(config.out_dir)
        raise


def _finetune_checked(model, tokenizer, train, heldout, selection, config, layer_map, modules, weights, tasks):
    """``finetune`` once its inputs are checked and its output folder exists."""
    from transformers import set_seed

    from layerscope.core.importance import recorded_model_name

    t_start = time.perf_counter()
    pad_id = pad_id_of(tokenizer)
    use_cpu = (input_device(model).type == "cpu") if config.use_cpu is None else config.use_cpu  # dispatched: not p[0]
    identity = _identity(model, modules, weights.exact, use_cpu)  # resumed checkpoints match it
    fingerprint = weights.value  # read now (report.json): training changes the weights
    name = recorded_model_name(model, config.model_name)  # as every method's result names it; a bad one fails now

    timings: dict[str, float] = {"threads": torch.get_num_threads()}  # CPU threads: step times depend on them
    share_evaluation(str(input_device(model)))  # before the first evaluation: under DDP it is split too
    loss_before = evaluate_before(model, tokenizer, heldout, config, timings)

    set_seed(config.seed)  # LoRA's random init draws from it
    with Restore(model) as restore:
        train_model = restore.trained = _make_trainable(model, layer_map, modules, config)
        counts = count_params(train_model)  # counted now: LISA switches blocks on and off while training
        if counts[0] == 0:
            raise TrainingError("nothing to train: the selection left no trainable parameter")
        grad_flow = _check_grad_flow(train_model, layer_map, train.examples, pad_id)
        run = _train(train_model, layer_map, train.examples, pad_id, use_cpu, config, identity)
        timings["train_s"] = run.train_s
        grad_flow["untrained_modules"] = _warn_untrained(train_model, layer_map, modules, config)
        saved = _save_now(train_model, layer_map, modules, config)  # before anything after training can fail
        try:
            t0 = time.perf_counter()
            loss_after, evals = evaluate_after(train_model, tokenizer, heldout, config, tasks, saved)
            timings["eval_after_s"] = time.perf_counter() - t0
            report = _report(
                config,
                selection,
                layer_map,
                train,
                heldout,
                train_model,
                name=name,
                fingerprint=fingerprint,
                counts=counts,
                run=run,
                grad_flow=grad_flow,
                losses=(loss_before, loss_after),
                evals=evals,
                timings=timings,
            )
            _write_report(report, saved, config, t_start)
        except BaseException as e:
            if saved is not None and saved.exists():
                note_kept_adapter(e, saved)
            raise
    return report


# ----------------------------------------------------------------------------- the steps


def _check_ranked_on(selection: Selection, fingerprint: str) -> None:
    """The selection's ranking was computed on these weights (``select_modules`` checks it only when given
    a fingerprint; a selection built without one reached training unchecked)."""
    ranked_on = selection.source.get("fingerprint")
    if ranked_on and ranked_on != fingerprint:
        raise ConfigError(
            f"the selection comes from a ranking of model {selection.source.get('model')!r} (weights fingerprint "
            f"{ranked_on}), not of this model (fingerprint {fingerprint}); a ranking applies to the model it was "
            f"computed on ({same_model_hint(selection.source, 'ignore_fingerprint=True', loaded=True)})"
        )


def _make_trainable(model, layer_map: LayerMap, modules: list[str], config: FinetuneConfig):
    """Freeze all but ``modules`` (and inject LoRA there). Done before the Trainer exists: its
    optimizer takes only the parameters that are trainable then."""
    if config.method == "full":
        refuse_offloaded(model)
        freeze_except(model, layer_map, modules)
        _warn_half_precision_weights(model, config)
        return model
    freeze_all(model)
    return inject_lora(
        model,
        layer_map,
        modules,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        task_type="CAUSAL_LM",
    )


def _warn_half_precision_weights(model, config: FinetuneConfig) -> None:
    """Full fine-tuning updates the weights themselves: in bfloat16 (or float16), with no float32 copy, most
    of AdamW's small steps round away and the run trains far less than its loss curve suggests. The CLI
    refuses such a dtype (``--dtype auto`` loads float32 there and trains in bf16 mixed precision); a model
    passed in is warned about. Not under FSDP with mixed precision, which keeps float32 weights itself."""
    dtype = half_precision_trainable(model)
    if dtype is None or launcher_keeps_float32_weights():
        return
    warnings.warn(
        f"full fine-tuning updates {str(dtype).removeprefix('torch.')} weights with no float32 copy: at lr "
        f"{config.learning_rate:g} most of AdamW's updates round away; load the model in float32 (bf16=True "
        "then trains it in bf16 mixed precision)",
        stacklevel=3,
    )


def _check_grad_flow(model, layer_map: LayerMap, examples, pad_id: int) -> dict[str, Any]:
    """Probe the autograd graph on two short examples; warn when the backward would not stop early."""
    probe = Collator(pad_id)(examples[:2])
    grad_flow = probe_grad_flow(model, layer_map, {k: v[:, :PROBE_TOKENS] for k, v in probe.items()})
    if not grad_flow["truncated"]:  # costs time, not correctness: say so and go on
        warnings.warn(
            f"autograd records blocks below the lowest trainable block {grad_flow['lowest_trainable_block']} "
            "(something makes inputs require grad), so the backward pass will not stop there",
            stacklevel=3,
        )
    return grad_flow


def _warn_untrained(train_model, layer_map: LayerMap, modules: list[str], config: FinetuneConfig) -> list[str]:
    """The selected modules whose LoRA update is still exactly zero after training (its B factors start
    at zero and stay there only if no gradient reached them: a sparse-attention indexer picking top-k
    positions, say): named in a warning, as budget spent on nothing. Full fine-tuning and LISA (which
    leaves blocks out on purpose) are not checked."""
    if config.method != "lora" or config.lisa_layers:
        return []
    base = train_model.get_base_model()
    untrained = []
    for name, path in zip(modules, module_paths(layer_map, modules)):
        factors = [p for n, p in base.get_submodule(path).named_parameters() if ".lora_B." in f".{n}"]
        if factors and not any(bool(p.detach().any()) for p in factors):
            untrained.append(name)
    if untrained:
        warnings.warn(
            f"{len(untrained)} of {len(modules)} selected modules did not train (no gradient reached their "
            f"LoRA update): {listed(untrained)}",
            stacklevel=3,
        )
    return untrained


def _identity(model, modules: list[str], weights: str, use_cpu: bool) -> dict[str, Any]:
    """The model side of a run's fingerprint (:func:`~layerscope.training.resuming.run_fingerprint`): the
    selected modules, the base weights and where they train. On the CPU also the thread count: torch
    splits a matrix product's sums over its threads, so another count gives other last digits, and a
    resumed run would not match an uninterrupted one (as ``ila`` and ``ablate`` hold their runs to it)."""
    where = placement_record(model)
    placement = {
        "dtype": where["dtype"],
        "device": "cpu" if use_cpu else where["device"].split(":", 1)[0],  # which GPU does not matter
        "quantization": where.get("quantization"),
    }
    if placement["device"] == "cpu":
        placement["threads"] = torch.get_num_threads()
    return {"modules": modules, "weights": weights, "placement": placement}


def _train(
    model,
    layer_map: LayerMap,
    examples,
    pad_id: int,
    use_cpu: bool,
    config: FinetuneConfig,
    identity: dict[str, Any],
) -> _Trained:
    timer, lisa = make_callbacks(model, layer_map, config)
    collator = Collator(pad_id)
    with tempfile.TemporaryDirectory(prefix="layerscope-trainer-") as scratch:
        trainer_dir = trainer_folder(config, scratch)
        args = training_arguments(config, trainer_dir, use_cpu)
        callbacks = [timer] if lisa is None else [timer, lisa]
        resume_from = None
        if trainer_dir != scratch:  # checkpoints kept: each records the run that wrote it
            fingerprint = run_fingerprint(
                config,
                identity["modules"],
                examples,
                pad_id,
                identity["weights"],
                identity["placement"],
                args.world_size,
            )
            resume_from = latest_checkpoint(trainer_dir) if config.resume else None
            if resume_from is not None:
                check_run_fingerprint(resume_from, fingerprint)
            check_checkpoints_fit(trainer_dir, model)
            callbacks.append(fingerprint_recorder(trainer_dir, fingerprint))
        finished = resume_from is not None and checkpoint_step(resume_from) >= config.max_steps
        if resume_from is not None and not finished:  # accepted: this run's, and steps are left to train
            note_resuming(resume_from, config.max_steps)
        trainer = build_trainer(model, args, examples, collator, callbacks, config.progress)
        try:
            with MemoryMonitor(args.device) as memory:
                t0 = time.perf_counter()
                if finished:  # the Trainer would train one more step
                    load_finished(trainer, resume_from, lisa)
                else:
                    trainer.train(resume_from_checkpoint=resume_from)
                train_s = time.perf_counter() - t0
        except torch.OutOfMemoryError as e:
            raise TrainingError(
                f"out of memory while training (batch size {config.batch_size}); lower --batch-size or --max-length"
            ) from e
        except LayerscopeError:
            raise
        except _load_errors() as e:
            if resume_from is None or timer.began:
                raise
            # failed while the Trainer restored the checkpoint (weights, optimizer, scheduler, RNG), before
            # any step: damage checkpoint_damage's cheap checks do not see, or state that does not fit
            raise ConfigError(
                f"{resume_from}: cannot resume from this checkpoint ({error_line(e, 160, with_type=True)}); "
                "delete that folder to resume from the one before it"
            ) from e
    history = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    if history and not math.isfinite(history[-1][1]):
        raise TrainingError(f"training loss is {history[-1][1]} at step {history[-1][0]}; lower --lr")
    return _Trained(
        steps=int(trainer.state.global_step),
        train_loss=history,
        step_times=timer.times,
        cpu_times=timer.cpu_times,
        tokens=collator.tokens,
        train_s=train_s,
        memory=memory,
        lisa_history=lisa.history if lisa else [],
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    """What restoring a damaged or foreign checkpoint raises: torch.load (RuntimeError from its zip reader,
    UnpicklingError), safetensors, load_state_dict (KeyError, ValueError, RuntimeError on shapes)."""
    from safetensors import SafetensorError

    return (RuntimeError, ValueError, KeyError, IndexError, EOFError, OSError, pickle.UnpicklingError, SafetensorError)


def _report(
    config: FinetuneConfig,
    selection: Selection,
    layer_map: LayerMap,
    train,
    heldout,
    train_model,
    *,
    name: str,
    fingerprint: str,
    counts: tuple[int, int],
    run: _Trained,
    grad_flow: dict[str, Any],
    losses: tuple[float | None, float],
    evals: dict[str, Any],
    timings: dict[str, float],
) -> FinetuneReport:
    """The report of a finished run (``losses``: held-out loss before and after training)."""
    from layerscope.core.importance import library_versions
    from layerscope.core.models import FINGERPRINT_PRECISION

    trainable, total = counts
    train_time = sum(run.step_times) or run.train_s
    report = FinetuneReport(
        method=config.method,
        selection=selection.to_dict(),
        config=config.to_dict(),
        model={
            "name": name,
            "architecture": layer_map.architecture,
            "n_blocks": layer_map.n_blocks,
            "fingerprint": fingerprint,
            "fingerprint_precision": FINGERPRINT_PRECISION,
            **_trained_precision(train_model, config),
        },
        data={name: _data_info(d) for name, d in (("train", train), ("heldout", heldout))},
        trainable_params=trainable,
        total_params=total,
        trainable_modules=len(selection.modules),
        steps=run.steps,
        # no step trained here (resumed at max_steps): no speed measured, not a speed of 0
        time_per_step_s=steady_mean(run.step_times) if run.step_times else None,
        time_per_step_median_s=median(run.step_times) if run.step_times else None,
        cpu_time_per_step_s=steady_mean(run.cpu_times) if run.cpu_times else None,
        tokens_per_s=run.tokens / train_time if run.step_times and train_time else None,
        peak_memory_bytes=int(run.memory.peak),
        peak_memory_delta_bytes=int(run.memory.delta),
        memory_kind=run.memory.kind,
        heldout_loss_before=losses[0],
        heldout_loss=losses[1],
        train_loss=run.train_loss,
        grad_flow=grad_flow,
        eval=evals,
        lisa_history=run.lisa_history,
        timings=timings,
        versions=library_versions(),
        trained_model=train_model,
    )
    report.config["processes"] = distributed.world_size()  # DDP under accelerate launch / torchrun
    return report


def _trained_precision(train_model, config: FinetuneConfig) -> dict[str, Any]:
    """Where and in what precision the base model trained, as results record placement (device, dtype,
    device map, quantisation), and ``mixed_precision``: "bf16" when the Trainer computed in bfloat16
    autocast over these weights (``--bf16``, or ``--method full`` with ``--dtype auto`` on a GPU), else None."""
    base = train_model.get_base_model() if config.method == "lora" else train_model
    return {**placement_record(base), "mixed_precision": "bf16" if config.bf16 else None}


def _data_info(data) -> dict[str, Any]:
    """What one side of the data was, for report.json: its file, its records' format (detected, or forced with
    --format, as ila's result records it), the examples it gave and their fingerprint."""
    return {
        "source": data.source,
        "format": data.format,
        "examples": len(data.examples),
        "fingerprint": data.fingerprint,
    }


def _save_now(train_model, layer_map: LayerMap, modules: list[str], config: FinetuneConfig) -> Path | None:
    """What was trained, right after training: ``OUT/adapter`` for LoRA, ``OUT/trained`` for full
    fine-tuning (:func:`saved_folder`); one rank writes."""
    if not (config.out_dir and config.save_adapter and distributed.is_main_process()):
        return None
    return save_trained(train_model, layer_map, modules, config.method, saved_folder(config.out_dir, config.method))


def _write_report(report: FinetuneReport, saved: Path | None, config: FinetuneConfig, t_start: float) -> None:
    """report.json under ``config.out_dir``, last: a folder without it holds a run that did not finish."""
    if saved is not None:
        report.paths["adapter" if config.method == "lora" else "trained"] = str(saved)
    report.timings["total_s"] = time.perf_counter() - t_start
    if not config.out_dir or not distributed.is_main_process():
        return
    report.paths["report"] = str(Path(config.out_dir) / "report.json")
    report.save(Path(config.out_dir) / "report.json")

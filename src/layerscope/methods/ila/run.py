"""ILA as a whole (arXiv 2410.17875): wrap the model with LoRA, run both stages, return the gate scores
as a ``LayerImportance`` over the LoRA-adapted modules.

Data parallel (``torchrun`` / ``accelerate launch``, see ``core/distributed.py``): every process runs
this with the same arguments. Parameters start identical (same seed) and get identical averaged
gradients (``loop.py``), so they stay identical and every process ends with the same result; the
work of each step is split between them (``batches.process_batches``). Dropout draws differ per
process (rank r > 0 reseeds), as they differ between the micro-batches of one process; a checkpoint
holds every process's RNG state. Only the main process writes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from layerscope.core import distributed
from layerscope.core.devices import input_device
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, cpu_threads, model_info
from layerscope.core.layermap import LayerMap, build_layer_map
from layerscope.core.models import (
    check_trains_on_any_length,
    exact_weights_fingerprint,
    pad_token_id,
    refuse_adapted_model,
)
from layerscope.core.player_names import listed
from layerscope.core.ties import TiedRankingWarning, ranking_tie_warning
from layerscope.methods.ila.batches import check_examples, check_examples_fit
from layerscope.methods.ila.checkpoints import (
    CHECKPOINT_EVERY,
    Checkpoints,
    Resume,
    load_lora_tensors,
    lora_tensors,
    run_fingerprint,
)
from layerscope.methods.ila.config import (
    SPARSITY_FIELDS,
    SPARSITY_MODES,
    STAGE1_FIELDS,
    STAGE_NAMES,
    ILAConfig,
    StageLog,
)
from layerscope.methods.ila.gates import LoraGates, StabilityTracker
from layerscope.methods.ila.stages import train_gates, train_lora
from layerscope.training.freezing import TrainingState
from layerscope.training.lora import ADAPTER, inject_lora, load_lora

DROPOUT_SEED_STRIDE = 1_000_003  # rank r > 0 draws dropout from seed + r * this (a prime: no overlap with seed + 1)
SCORE_MEANING = "gate logit s_i; the gate is sigmoid(s_i); higher = more important"


def run_ila(
    model: nn.Module,
    tokenizer,
    data,
    config: ILAConfig | None = None,
    *,
    model_name: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    on_step: Callable[[str, int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> LayerImportance:
    """Run both ILA stages on ``data`` (an ``SFTData`` or a list of ``SFTExample``).

    The model is wrapped with peft for the run and restored afterwards (LoRA layers removed,
    ``requires_grad`` flags and train/eval mode as before), so it can be reused.

    Checkpoints: with ``checkpoint_dir`` the run saves its state there every ``checkpoint_every``
    optimizer steps (0: never) and at the end of stage 1, replacing the previous checkpoint.
    ``resume=True`` continues from a checkpoint found there (``ConfigError`` if it belongs to a
    different config, data or model) and starts from scratch if there is none; without it an
    existing checkpoint is ignored and overwritten. The checkpoint is left in place when the
    run ends: remove it (``checkpoint.remove``) once the result is saved. ``on_step(stage, step)``
    is called after every optimizer step (a progress or test hook; raising from it stops the run).
    ``note`` gets a line for people once a checkpoint is accepted: where the run resumes.

    Under ``torchrun`` / ``accelerate launch`` (process group joined, ``distributed.init_from_env``)
    every process calls this with the same arguments and gets the same result (module docstring).
    """
    config = ILAConfig() if config is None else config
    if not isinstance(config, ILAConfig):  # a dict of options fails later, naming no argument
        raise ConfigError(f"run_ila: config must be an ILAConfig (ILAConfig(...)), not {type(config).__name__}")
    _check_run_options(checkpoint_dir, resume, checkpoint_every)
    examples = check_examples(data)
    refuse_adapted_model(model)
    check_trains_on_any_length(model)
    check_examples_fit(examples, model)  # after the model's own refusals: they hold whatever the data
    layer_map = build_layer_map(model)
    name = model_name or getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
    info = model_info(model, layer_map, name)  # fingerprint of the base weights, before peft
    pad_id = pad_token_id(tokenizer)
    checkpoints = Checkpoints(
        None if checkpoint_dir is None else Path(checkpoint_dir),
        checkpoint_every,
        on_step=on_step,
        device=input_device(model),
    )
    if checkpoint_dir is not None:
        placement = {
            "dtype": info.get("dtype"),
            "device": str(info.get("device", "")).split(":", 1)[0],  # cpu / cuda: which GPU does not matter
            "quantization": info.get("quantization"),
        }
        weights = exact_weights_fingerprint(model)  # the resumed values hold to the last bit
        checkpoints.fingerprint = run_fingerprint(config, examples, pad_id, weights, placement)
    saved = checkpoints.load() if resume else None
    if saved is not None and note is not None:  # only now: a checkpoint of another run was refused above
        stage = STAGE_NAMES.get(saved[0].get("stage"), "stage ?")
        note(f"resuming from {checkpoint_dir} ({stage}, step {saved[0].get('step')})")
    with _restored(model), torch.random.fork_rng(devices=_seeded_cuda_devices()):  # the caller's RNG, given back
        torch.manual_seed(config.seed)
        peft_model = wrap_lora(model, layer_map, config)
        _own_dropout_stream(config.seed)
        try:
            s1, s2, gates = _train(peft_model, layer_map, examples, config, pad_id, checkpoints, saved)
            lora = _lora_options(peft_model)
        finally:
            peft_model.unload()
    result = ila_importance(layer_map, info, data, config, lora, gates, s1, s2)
    _warn_untrained(result)
    tied = ranking_tie_warning(result)
    if tied:  # the gates did not separate the modules: the order would be layer order, silently
        warnings.warn(tied, TiedRankingWarning, stacklevel=2)
    return result


def _warn_untrained(result: LayerImportance) -> None:
    """Name the modules whose LoRA update is exactly zero after stage 1: no gradient reached them (a
    sparse-attention indexer picking top-k positions, a linear whose output a zero parameter multiplies),
    so their gates move with the sparsity penalty alone: their rank says nothing about the data."""
    untrained = result.extras["untrained_modules"]
    if not untrained:
        return
    loaded = result.extras["stop_reason"] == "loaded"
    source = "the reused adapter does not change them" if loaded else "no gradient reached them in stage 1"
    warnings.warn(
        f"{len(untrained)} of {len(result.players)} LoRA-adapted modules have a zero LoRA update ({source}), "
        f"so their scores come from the sparsity penalty alone, not from the data: {listed(untrained)}",
        stacklevel=3,
    )


def wrap_lora(model: nn.Module, layer_map: LayerMap, config: ILAConfig):
    """A fresh peft LoRA model on every linear of every block (seeded init), or a saved adapter."""
    if config.adapter is not None:
        return load_lora(model, config.adapter)
    return inject_lora(model, layer_map, r=config.r, alpha=config.alpha, dropout=config.dropout, seed=config.seed)


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


def _check_run_options(checkpoint_dir, resume: bool, checkpoint_every) -> None:
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be a non-negative integer, got {checkpoint_every!r}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs checkpoint_dir: the folder to resume from")


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Give ``model`` back its ``requires_grad`` flags, train/eval mode and input-embedding hooks on the way out."""
    state = TrainingState(model)
    try:
        yield
    finally:
        state.restore_flags()
        state.restore_mode()
        state.restore_input_grads()


def _seeded_cuda_devices() -> list[int]:
    """The CUDA devices whose generators ``torch.manual_seed`` reseeds: every visible one once CUDA is
    initialised (fork_rng's own default, which warns past one device; none before CUDA starts)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _own_dropout_stream(seed: int) -> None:
    """Give each process other than the main one its own dropout draws (after the LoRA init, which
    must be the same everywhere): the micro-batches of one process get different draws too."""
    r = distributed.rank()
    if r > 0:
        torch.manual_seed(seed + r * DROPOUT_SEED_STRIDE)


def _train(
    peft_model,
    layer_map: LayerMap,
    examples: list,
    config: ILAConfig,
    pad_id: int,
    checkpoints: Checkpoints,
    saved: Resume | None,
) -> tuple[StageLog, StageLog, LoraGates]:
    """Both stages, each from where ``saved`` left it (or from the start); the stage-1 adapter saved
    (``config.save_adapter``) and checkpointed in between."""
    layers = lora_layers(peft_model, layer_map)
    if saved is not None:
        load_lora_tensors(peft_model, saved[1])
    stage1_done = saved is not None and saved[0]["stage"] == "gates"
    if stage1_done:
        s1 = StageLog(**saved[0]["stage1"])
    elif config.adapter is None:
        s1 = train_lora(peft_model, layers, examples, config, pad_id, checkpoints, saved)
    else:
        s1 = _loaded_adapter_log(layers)
    if config.save_adapter is not None and distributed.is_main_process():
        peft_model.save_pretrained(config.save_adapter)
    if not stage1_done and config.adapter is None:
        checkpoints.save({"stage": "gates", "step": 0, "stage1": asdict(s1), "stage2": None}, lora_tensors(peft_model))
    gates = LoraGates(
        layers, ADAPTER, init=config.gate_init, mode=config.sparsity, budget_fraction=config.budget_fraction
    )
    torch.manual_seed(config.seed + 1)
    in_stage2 = stage1_done and saved[0]["step"] > 0
    s2 = train_gates(peft_model, gates, examples, config, pad_id, checkpoints, saved if in_stage2 else None, s1)
    return s1, s2, gates


def _sorted(names) -> list[str] | None:
    return sorted(names) if names else None


def _loaded_adapter_log(layers: list[nn.Module]) -> StageLog:
    """Stage 1's log when a saved adapter stands in for it."""
    norms = StabilityTracker(layers, ADAPTER).module_norms()
    if not any(n > 0 for n in norms):
        # peft only warns when an adapter's keys match no module: every gate would then move alike
        raise ConfigError(
            "the LoRA adapter's updates are all zero: its weights did not load into this model "
            "(saved from another model?) or it was never trained"
        )
    return StageLog(extra={"stop_reason": "loaded", "stop_step": 0, "stability": [], "lora_delta_norm": norms})


def _lora_options(peft_model) -> dict[str, Any]:
    lcfg = peft_model.peft_config[ADAPTER]
    return {
        "r": int(lcfg.r),
        "alpha": float(lcfg.lora_alpha),
        "dropout": float(lcfg.lora_dropout),
        # a regex string (adapters from other tools) is kept as written, a list sorted
        "target_modules": lcfg.target_modules if isinstance(lcfg.target_modules, str) else _sorted(lcfg.target_modules),
    }


# ---- the result ------------------------------------------------------------------------------


# stage 1's training options: None in the record of a run on a reused adapter (stage 1 did not run); the
# adapter's own LoRA settings (r, alpha, dropout) are recorded instead
ADAPTER_SETTINGS = ("r", "alpha", "dropout")
STAGE1_TRAINING = tuple(name for name in STAGE1_FIELDS if name not in ADAPTER_SETTINGS)


def _method_config(config: ILAConfig, lora: dict[str, Any]) -> dict[str, Any]:
    """The run's options as recorded. On a reused adapter (``config.adapter``) its own LoRA settings
    (adapter_config.json as peft read it: ``lora``) replace the config's, and stage 1's training options
    are None: a report must not show r=8 for an adapter of rank 64. So are the fields of the other
    sparsity mode (``lam`` in budget mode, ``budget_fraction`` and ``budget_warmup`` in penalty mode):
    they did not shape the scores."""
    mc = {**asdict(config), "processes": distributed.world_size()}
    if config.adapter:
        mc.update({key: lora.get(key) for key in (*ADAPTER_SETTINGS, "target_modules")})
        mc.update(dict.fromkeys(STAGE1_TRAINING))
    other = next(mode for mode in SPARSITY_MODES if mode != config.sparsity)
    mc.update(dict.fromkeys(SPARSITY_FIELDS[other]))
    return mc


def ila_importance(
    layer_map: LayerMap,
    info: dict,
    data,
    config: ILAConfig,
    lora: dict[str, Any],
    gates: LoraGates,
    s1: StageLog,
    s2: StageLog,
) -> LayerImportance:
    """The gate logits as a module-level ``LayerImportance``, with both stages' logs in ``extras``."""
    scores = [float(x) for x in gates.scores.detach()]
    extras = {
        "stop_step": s1.extra["stop_step"],
        "stop_reason": s1.extra["stop_reason"],
        # True: epsilon-stable; False: stopped at max_steps (the ranking may not have settled); None: adapter reused
        "stage1_stable": None if s1.extra["stop_reason"] == "loaded" else s1.extra["stop_reason"] == "stable",
        "stage1_loss": s1.loss,
        "stage1_stability": s1.extra["stability"],
        "stage2_loss": s2.loss,
        "stage2_penalty": s2.extra["penalty"],
        "stage2_open_gates": s2.extra["open_gates"],
        "gate_optimizer": s2.extra["optimizer"],
        "gates": [float(x) for x in torch.sigmoid(gates.scores.detach())],
        "lora_delta_norm": s1.extra["lora_delta_norm"],
        # modules stage 1 left at a zero update (no gradient reached them): scored by the penalty alone
        "untrained_modules": [m.name for m, n in zip(layer_map.linears, s1.extra["lora_delta_norm"]) if n == 0],
        "score_by_block": _mean_by([str(m.block) for m in layer_map.linears], scores),
        "score_by_type": _mean_by([m.type for m in layer_map.linears], scores),
        "lora": lora,
        "score_meaning": SCORE_MEANING,
    }
    if config.sparsity == "budget":
        extras["final_mask"] = [int(x) for x in gates.hard_mask(gates.budget_k)]
    return LayerImportance(
        method="ila",
        granularity="module",
        players=layer_map.players("module"),
        scores=scores,
        model=info,
        data=_data_info(data),
        method_config=_method_config(config, lora),
        seed=config.seed,
        timings={
            "stage1_s": round(s1.seconds, 3),
            "stage2_s": round(s2.seconds, 3),
            "total_s": round(s1.seconds + s2.seconds, 3),
            "threads": cpu_threads(),
        },
        extras=extras,
    )


def _mean_by(groups: list[str], scores: list[float]) -> dict[str, float]:
    """Mean score per group, groups in order of first appearance. Summed left to right in Python, not
    with ``LayerImportance.aggregate`` (numpy's pairwise sum): from 8 members on the two differ in the
    last bits, and the saved numbers must stay what they were."""
    members: dict[str, list[float]] = {}
    for g, s in zip(groups, scores):
        members.setdefault(g, []).append(s)
    return {g: sum(v) / len(v) for g, v in members.items()}


def _data_info(data) -> dict[str, Any]:
    examples = getattr(data, "examples", data)
    return {
        "source": getattr(data, "source", None),
        "format": getattr(data, "format", None),
        "n_items": len(examples),
        "fingerprint": getattr(data, "fingerprint", None),
        "stats": getattr(data, "stats", None),
    }

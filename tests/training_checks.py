"""The training half of the breadth test (tests/test_architectures.py): ILA, selective LoRA fine-tuning
and the three exports, run on one tiny family; each check asserts and returns its note."""

from __future__ import annotations

import re
import tempfile
import warnings

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from tiny_models import tiny_model

from layerscope.core.data import IGNORE_INDEX, SFTData, SFTExample
from layerscope.core.errors import LayerscopeError
from layerscope.core.importance import LayerImportance
from layerscope.core.ties import TiedRankingWarning
from layerscope.methods.ila import ILAConfig, run_ila
from layerscope.training import FinetuneConfig, export_selection, finetune, select_modules, write_export
from layerscope.training.choices import FORMATS
from layerscope.training.freezing import freeze_all
from layerscope.training.lora import inject_lora, lora_adapted_paths, module_paths, targets_as_given

TRAINING_STEPS = ("ILA", "finetune", "exports")
SFT_PAIRS = [
    ("Once upon a time, there was a", " little girl named Lily."),
    ("The cat sat on the", " mat and went to sleep."),
    ("One day, Tim went to the store to buy", " some milk for his mom."),
    ("She loved to play outside in the", " park with her friends."),
]


def toy_sft(tok) -> SFTData:
    """Four prompt/reply pairs, loss on the reply (and eos) only."""
    examples = []
    for prompt, reply in SFT_PAIRS:
        p = tok(prompt).input_ids
        r = tok(reply, add_special_tokens=False).input_ids + [tok.eos_token_id]
        examples.append(SFTExample(input_ids=p + r, labels=[IGNORE_INDEX] * len(p) + r))
    return SFTData(examples=examples, stats={}, source="toy", format="alpaca", fingerprint="toy")


def probe_logits(model) -> torch.Tensor:
    ids = torch.randint(2, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


def check_training(name: str, model, lm, tok) -> tuple[dict[str, str], str]:
    """ILA on ``model``, then fine-tuning and the three exports of the top half of its ranking.
    Returns each step's outcome ("works", or "refused" with the one-line reason in the notes) and the notes."""
    outcome, notes = {}, []
    data = toy_sft(tok)
    try:
        importance = _check_ila(model, lm, tok, data)
        outcome["ILA"] = "works"
    except LayerscopeError as e:
        outcome["ILA"], importance = "refused", None
        notes.append(f"ILA: {e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TiedRankingWarning)  # two gate steps may leave ties: any top half will do
        selection = select_modules(lm, importance, "top" if importance else "random", 0.5)
    for step, check in (("finetune", _check_finetune), ("exports", _check_exports)):
        try:
            note = check(name, lm, tok, data, selection)
            outcome[step] = "works" if not note or step == "finetune" else "not exact"
            notes += [f"{step}: {note}"] if note else []
        except LayerscopeError as e:
            outcome[step] = "refused"
            notes.append(f"{step}: {e}")
    return outcome, "; ".join(notes)


def _check_ila(model, lm, tok, data) -> LayerImportance:
    """Two LoRA and two gate steps: one finite score per LoRA-adapted module, the model given back untouched."""
    before = probe_logits(model)
    config = ILAConfig(max_steps=2, min_steps=0, gate_steps=2, batch_size=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # peft on tiny models (e.g. GPT-2's Conv1D fan_in_fan_out)
        importance = run_ila(model, tok, data, config)
    assert importance.players == lm.players("module") == [m.name for m in lm.linears]
    assert len(importance.scores) == len(lm.linears) and all(np.isfinite(importance.scores))
    assert not hasattr(model, "peft_config") and not any(isinstance(m, LoraLayer) for m in model.modules())
    assert not any("lora_" in n or "base_layer" in n for n, _ in model.named_parameters())
    assert not model.training and torch.equal(probe_logits(model), before)
    return importance


def _check_finetune(name: str, lm, tok, data, selection) -> str:
    """Two LoRA steps on a fresh copy: only the selected modules' adapters train, and every one of them moved
    but those fine-tuning names as reached by no gradient (their B factors stay zero; returned as the note)."""
    model = tiny_model(name, n_layers=2, vocab=512)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = FinetuneConfig(max_steps=2, batch_size=2, lr=1e-2, eval_before=False, save_adapter=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = finetune(model, tok, data, data, selection, config)
        start = _lora_start(name, lm, selection.modules, config)
    trained = report.trained_model.get_base_model()
    selected = paths(lm, selection.modules)
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert {n.split(".lora_")[0] for n in trainable} == selected and all(".lora_" in n for n in trainable)
    assert set(start) == trainable and report.steps == 2
    untrained = report.grad_flow["untrained_modules"]
    no_gradient = paths(lm, untrained)
    for n, p in trained.named_parameters():
        if n in start and n.split(".lora_")[0] in no_gradient:
            assert ".lora_A." in n or not p.detach().any(), f"{name}: {n} trained, but was named untrained"
        elif n in start:
            assert not torch.equal(p.detach(), start[n]), f"{name}: {n} did not train"
        else:
            assert torch.equal(p.detach(), base[n.replace(".base_layer", "")]), f"{name}: frozen {n} changed"
    return f"no gradient reached {len(untrained)} modules, named (e.g. {untrained[0]})" if untrained else ""


def _lora_start(name: str, lm, modules: list[str], config) -> dict[str, torch.Tensor]:
    """The LoRA weights fine-tuning starts from: the same injection under the same seed on a fresh copy."""
    from transformers import set_seed

    set_seed(config.seed)
    model = tiny_model(name, n_layers=2, vocab=512)
    freeze_all(model)
    peft_model = inject_lora(
        model, lm, modules, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, task_type="CAUSAL_LM"
    )
    return {n: p.detach().clone() for n, p in peft_model.get_base_model().named_parameters() if p.requires_grad}


def paths(lm, modules) -> set[str]:
    return set(module_paths(lm, modules))


def _check_exports(name: str, lm, tok, data, selection) -> str:
    """Every format names exactly the selected modules of the model; returns the note of a format that
    peft reads differently (and then checks the config itself is right)."""
    selected, inexact = paths(lm, selection.modules), {}
    for fmt in FORMATS:
        ex = export_selection(selection, lm, fmt)
        kwargs = _lora_kwargs(fmt, ex)
        try:
            adapted = _adapted(name, kwargs)
        except ValueError:  # peft refuses the config outright (e.g. gate_proj without its fused partner)
            assert not ex.exact and "refuses" in ex.notes[-1], fmt
            adapted = None
        if ex.exact:
            assert adapted == selected, fmt
        else:  # peft renames some targets: say so, and check the config names exactly the selection
            assert adapted != selected and "NOT EXACT" in ex.notes[-1], fmt
            inexact.setdefault(re.sub(r" \(e\.g\. [^)]*\)", "", ex.notes[-1].split(";")[0]), []).append(fmt)
            with targets_as_given():
                assert _adapted(name, kwargs) == selected, fmt
    full = export_selection(selection, lm, "axolotl", "full")
    unfrozen = [re.compile(p.replace(".", "\\.")) for p in full.config["unfrozen_parameters"]]  # axolotl's rule
    model = tiny_model(name, n_layers=2, vocab=512)
    matched = {n for n, _ in model.named_parameters() if any(r.match(n) for r in unfrozen)}
    assert matched == {f"{p}.{n}" for p in selected for n, _ in model.get_submodule(p).named_parameters()}
    return "; ".join(f"{', '.join(formats)}: {note}" for note, formats in inexact.items())


def _lora_kwargs(fmt: str, ex) -> dict:
    """The LoraConfig each tool builds from the export (peft: the file itself, loaded back by peft)."""
    if fmt == "peft":
        with tempfile.TemporaryDirectory() as folder:
            write_export(ex, folder)
            return LoraConfig.from_pretrained(folder).to_dict()
    if fmt == "axolotl":
        return {
            "target_modules": ex.config["lora_target_modules"],
            "layers_to_transform": ex.config.get("peft_layers_to_transform"),
            "layers_pattern": (ex.config.get("peft_layers_pattern") or [None])[0],
        }
    return {"target_modules": ex.config["lora_target"].split(",")}


def _adapted(name: str, kwargs: dict) -> set[str]:
    """The modules peft adapts on a fresh copy of the model with this config; every target it names exists
    there, and the adapted model's output is the base model's (LoRA B starts at zero)."""
    model = tiny_model(name, n_layers=2, vocab=512)
    module_names = [n for n, _ in model.named_modules()]
    for target in kwargs["target_modules"]:
        assert any(n == target or n.endswith(f".{target}") for n in module_names), target
    before = probe_logits(model)
    config = {k: v for k, v in kwargs.items() if k not in ("peft_type", "auto_mapping", "revision")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. GPT-2's Conv1D: peft sets fan_in_fan_out itself, with a warning
        peft_model = get_peft_model(model, LoraConfig(**config))
    assert torch.allclose(probe_logits(peft_model), before, atol=1e-6)
    return set(lora_adapted_paths(peft_model))

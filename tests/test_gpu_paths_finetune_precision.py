"""Full fine-tuning keeps float32 weights (cli/finetune.py, training/finetuning.py, training/freezing.py):
``--dtype auto`` on a bfloat16 GPU would load bfloat16 weights, which AdamW updates with no float32 copy
(most updates at lr 2e-5 round away). On the CPU: CUDA and its bfloat16 support are faked."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.cli import finetune as cli_finetune
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.training import FinetuneConfig, finetune
from layerscope.training.finetuning import _make_trainable
from layerscope.training.freezing import freeze_except
from layerscope.training.selection import select_modules


def cli_args(**kw) -> argparse.Namespace:
    given = dict(method="full", dtype="auto", device="auto", load_in=None, lr=None, bf16=False)
    return argparse.Namespace(**{**given, **kw})


@pytest.fixture
def bf16_gpu(monkeypatch):
    """A machine whose GPU computes in bfloat16 natively (what --dtype auto picks bfloat16 on)."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def test_full_with_dtype_auto_on_a_bf16_gpu_trains_float32_weights_in_bf16_mixed_precision(bf16_gpu, capsys):
    args = cli_args()
    cli_finetune._choose_precision(args)
    assert (args.dtype, args.bf16) == ("float32", True)  # was: bfloat16 weights, no mixed precision
    assert "trains float32 weights in bf16 mixed precision" in capsys.readouterr().err
    config = cli_finetune._finetune_config(
        argparse.Namespace(
            **{
                **vars(args),
                **dict(max_steps=1, batch_size=1, grad_accum=1, seed=0, lora_r=8, lora_alpha=16, lora_dropout=0.0),
            },
            lisa_layers=0,
            lisa_interval=None,
            eval_tasks=[],
            eval_limit=None,
            eval_batch_size=1,
            out=None,
            mode="all",
            save_checkpoints=False,
            checkpoint_every=None,
            resume=False,
            gradient_checkpointing=False,
            no_progress=True,
            model="default",
        )
    )
    assert config.bf16  # the Trainer gets bf16=True (training/trainer.py: training_arguments)


def test_lora_and_explicit_float32_are_left_alone(bf16_gpu, capsys):
    for args in (cli_args(method="lora"), cli_args(dtype="float32"), cli_args(method="lora", dtype="bfloat16")):
        before = vars(args).copy()
        cli_finetune._choose_precision(args)
        assert vars(args) == before
    assert capsys.readouterr().err == ""


def test_full_on_the_cpu_is_unchanged(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = cli_args()
    cli_finetune._choose_precision(args)
    assert (args.dtype, args.bf16) == ("auto", False)  # auto is float32 there already
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16", "float16"])
def test_full_in_half_precision_is_refused_in_one_line(dtype):
    with pytest.raises(ConfigError, match="with no float32 copy") as e:
        cli_finetune._choose_precision(cli_args(dtype=dtype))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16", "float16"])
def test_full_in_half_precision_is_still_refused_without_resume(bf16_gpu, dtype, capsys):
    with pytest.raises(ConfigError, match="with no float32 copy"):
        cli_finetune._choose_precision(cli_args(dtype=dtype, resume=False))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("dtype", "name"), [("bfloat16", "bfloat16"), ("bf16", "bfloat16"), ("float16", "float16")])
def test_full_in_half_precision_with_resume_is_kept_with_a_note(bf16_gpu, dtype, name, capsys):
    # an earlier version's --dtype auto on a GPU trained bfloat16 weights with bf16 off: its checkpoint resumes so
    args = cli_args(dtype=dtype, resume=True)
    cli_finetune._choose_precision(args)
    assert (args.dtype, args.bf16) == (dtype, False)  # as given: not turned into float32 + bf16 mixed precision
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: ")
    assert f"--dtype {dtype}" in err and f"train in {name} with no float32 copy" in err
    assert "so that a run started so can resume" in err


def test_the_resume_note_is_printed_by_the_main_process_only(bf16_gpu, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")  # under torchrun, before the process group exists
    args = cli_args(dtype="bfloat16", resume=True)
    cli_finetune._choose_precision(args)
    assert args.dtype == "bfloat16"
    assert capsys.readouterr().err == ""


def test_full_with_dtype_auto_and_resume_is_unchanged(bf16_gpu, capsys):
    args = cli_args(resume=True)
    cli_finetune._choose_precision(args)
    assert (args.dtype, args.bf16) == ("float32", True)
    assert "trains float32 weights in bf16 mixed precision" in capsys.readouterr().err


def test_a_resume_refusal_names_the_bf16_option():
    from layerscope.training.config import option_name
    from layerscope.training.resuming import fingerprint_differences

    assert option_name("bf16") == "--bf16"
    saved = {"config": {"bf16": False}, "placement": {"dtype": "bfloat16"}}
    now = {"config": {"bf16": True}, "placement": {"dtype": "float32"}}
    diffs = "; ".join(fingerprint_differences(saved, now))
    assert "--bf16" in diffs


def test_full_in_bfloat16_under_fsdp_with_mixed_precision_is_accepted(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate upcasts trainable weights to float32 itself
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    args = cli_args(dtype="bfloat16", device="cpu")
    cli_finetune._choose_precision(args)
    assert args.dtype == "bfloat16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    with pytest.raises(ConfigError, match="with no float32 copy"):
        cli_finetune._choose_precision(args)


def test_full_of_a_quantised_model_is_refused_before_and_at_freezing():
    with pytest.raises(ConfigError, match="quantised weights cannot be trained"):
        cli_finetune._choose_precision(cli_args(load_in="4bit"))
    cli_finetune._choose_precision(cli_args(method="lora", dtype="float32", load_in="4bit"))  # QLoRA: unchanged
    model = tiny_model("llama", n_layers=2)
    model.is_loaded_in_8bit = True  # what transformers marks a bitsandbytes 8-bit model with
    layer_map = build_layer_map(model)
    with pytest.raises(ConfigError, match="full fine-tuning needs the model's plain weights"):
        freeze_except(model, layer_map, [layer_map.players("module")[0]])


def test_a_bfloat16_model_given_to_full_fine_tuning_is_warned_about():
    model = tiny_model("llama", n_layers=2)
    layer_map = build_layer_map(model)
    modules = layer_map.players("module")[:2]
    config = FinetuneConfig(method="full", max_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _make_trainable(model, layer_map, modules, config)  # float32: no warning
    model.to(torch.bfloat16)
    with pytest.warns(UserWarning, match="updates bfloat16 weights with no float32 copy"):
        _make_trainable(model, layer_map, modules, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _make_trainable(model, layer_map, modules, FinetuneConfig(method="lora", max_steps=1))  # LoRA: float32 adapters


def test_the_report_records_the_precision_it_trained_in():
    model = tiny_model("llama", n_layers=2)
    layer_map = build_layer_map(model)
    players = layer_map.players("module")
    ranking = LayerImportance(
        method="t",
        granularity="module",
        players=players,
        scores=list(range(len(players))),
        model=model_info(model, layer_map, "tiny"),
    )
    selection = select_modules(layer_map, ranking, "top", 0.25)
    config = FinetuneConfig(method="full", max_steps=1, batch_size=4, lr=1e-2, eval_before=False)
    rep = finetune(model, TinyTokenizer(), random_sft(8, 0), random_sft(4, 1), selection, config)
    assert rep.model["dtype"] == "float32" and rep.model["device"] == "cpu"
    assert rep.model["mixed_precision"] is None

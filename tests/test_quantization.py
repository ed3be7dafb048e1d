"""4-/8-bit loading (bitsandbytes): refused with one line where it cannot work; real loads on the CPU
(bitsandbytes 0.50 has CPU kernels; the test extra installs it) and on a GPU.

The GPU tests run only where CUDA is present (bench/gpu_checks.sh runs them on a lent GPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerscope.core.errors import ConfigError
from layerscope.core.quantization import check_load_in, quantization_config, quantization_record, refuse_quantized

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
HAS_CUDA = torch.cuda.is_available()


def test_nothing_to_check_without_load_in():
    check_load_in(None, "cpu")


def test_unknown_mode_and_gguf_are_refused():
    with pytest.raises(ConfigError, match="--load-in '3bit' must be one of 4bit, 8bit"):
        check_load_in("3bit", "cpu")
    with pytest.raises(ConfigError, match="a .gguf file is dequantised on load"):
        check_load_in("4bit", "cpu", gguf=True)


def test_where_bitsandbytes_has_no_cpu_kernels_the_load_is_refused_before_reading_weights(monkeypatch):
    pytest.importorskip("bitsandbytes")
    from unittest import mock

    from layerscope.core import quantization
    from layerscope.core.models import load_model

    monkeypatch.setattr(quantization, "runs_on_cpu", lambda load_in: False)
    read = mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=AssertionError("read weights"))
    with read, pytest.raises(ConfigError, match=r"^--load-in 4bit on the CPU: bitsandbytes \S+ has no CPU kernels"):
        load_model(str(STORIES), load_in="4bit")


def test_without_bitsandbytes_the_message_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    for device in ("cpu", "cuda"):
        with pytest.raises(ConfigError, match=r"needs bitsandbytes: pip install 'layerscope\[quantization\]'"):
            check_load_in("8bit", device)


def test_configs_follow_qlora_and_llm_int8():
    four = quantization_config("4bit", torch.float32)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16  # float32 compute would undo 4-bit's speed
    assert quantization_config("4bit", torch.float16).bnb_4bit_compute_dtype == torch.float16
    assert quantization_config("8bit", torch.bfloat16).load_in_8bit


def test_a_plain_model_records_no_quantization_and_saves():
    model = torch.nn.Linear(2, 2)
    assert quantization_record(model) is None
    refuse_quantized(model, "saving a pruned model")
    model.is_loaded_in_4bit = True
    assert quantization_record(model) == {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4"}
    # asked for float32, a 4-bit model computes in bfloat16: the record says which
    from types import SimpleNamespace

    model.config = SimpleNamespace(quantization_config=quantization_config("4bit", torch.float32))
    assert quantization_record(model)["compute_dtype"] == "bfloat16"
    model.config = SimpleNamespace(quantization_config={"bnb_4bit_compute_dtype": "float16"})  # as a saved config
    assert quantization_record(model)["compute_dtype"] == "float16"
    with pytest.raises(ConfigError, match="needs the model.s plain weights; it was loaded in 4-bit"):
        refuse_quantized(model, "saving a pruned model")


def _quantised_here(device: str, load_in: str) -> None:
    """Skip unless bitsandbytes computes ``load_in`` on ``device`` on this machine."""
    pytest.importorskip("bitsandbytes")
    from layerscope.core.quantization import runs_on_cpu

    if device == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    if device == "cpu" and not runs_on_cpu(load_in):
        pytest.skip(f"this bitsandbytes has no CPU kernels for {load_in}")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("load_in", ["4bit", "8bit"])
def test_quantised_stories_evaluates_close_to_the_original(load_in, device):
    _quantised_here(device, load_in)
    from layerscope.core.importance import model_info
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model

    dtype = "bfloat16" if device == "cuda" else "float32"
    plain = load_model(str(STORIES), device=device, dtype=dtype)
    quant = load_model(str(STORIES), device=device, dtype=dtype, load_in=load_in)
    lm = build_layer_map(quant.model)
    assert lm.n_blocks == 5 and len(lm.linears) == 35  # bnb layers are nn.Linear: the map is unchanged
    assert model_info(quant.model, lm)["quantization"]["bits"] == int(load_in[0])
    ids = torch.tensor([[1, 403, 407, 261, 378]], device=device)
    with torch.no_grad():
        a, b = plain.model(input_ids=ids).logits.float(), quant.model(input_ids=ids).logits.float()
    assert torch.isfinite(b).all()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9


def test_an_evaluation_leaves_4bit_weights_as_loaded(stories_path):
    """bitsandbytes repacks 4-bit weights in place on a CPU's first inference forward (AVX-512 bf16 CPUs):
    the weights fingerprint a result records would then differ from the one a fresh load reads, and a
    ranking made on the quantised model would be refused for it."""
    _quantised_here("cpu", "4bit")
    from layerscope.core.models import exact_weights_fingerprint, load_model

    quant = load_model(str(stories_path), load_in="4bit").model
    before = exact_weights_fingerprint(quant)
    with torch.no_grad():
        quant(input_ids=torch.tensor([[1, 403, 407, 261, 378]]))
    assert exact_weights_fingerprint(quant) == before


def test_a_ranking_of_the_4bit_model_fine_tunes_it_qlora_style(tmp_path, stories_path, shared_dir, capsys):
    """ablate and ILA on the 4-bit model, then finetune's LoRA on top of the same 4-bit weights: each result
    records the quantisation, and the ranking applies to the model loaded again."""
    _quantised_here("cpu", "4bit")
    from layerscope.cli.app import main
    from layerscope.core.importance import LayerImportance

    model = ["--model", str(stories_path), "--load-in", "4bit", "--no-progress"]
    task = ["--task", str(shared_dir / "data/eval/arc_easy.jsonl"), "--limit", "8"]
    assert main(["ablate", *model, *task, "--out", str(tmp_path / "abl")]) == 0
    ila = ["--data", "demo", "--limit", "16", "--seq-len", "64", "--max-steps", "3", "--gate-steps", "2"]
    assert main(["ila", *model, *ila, "--out", str(tmp_path / "ila")]) == 0
    for run in ("abl", "ila"):
        assert LayerImportance.load(tmp_path / run / "importance.json").model["quantization"]["bits"] == 4
    assert (tmp_path / "ila" / "adapter" / "adapter_config.json").is_file()
    ft = ["--data", "demo", "--limit", "8", "--seq-len", "64", "--max-steps", "1", "--fraction", "0.3"]
    assert main(["finetune", *model, *ft, "--importance", str(tmp_path / "abl"), "--out", str(tmp_path / "ft")]) == 0
    assert "4-bit (bitsandbytes)" in capsys.readouterr().out
    assert (tmp_path / "ft" / "adapter" / "adapter_config.json").is_file()


def test_a_map_that_keeps_the_model_on_the_cpu_is_checked_for_cpu_kernels_on_a_gpu_machine(monkeypatch):
    """--device cpu --max-memory cpu=... on a machine with a GPU computes on the CPU: its kernels are checked."""
    pytest.importorskip("bitsandbytes")
    from layerscope.core import quantization

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quantization, "runs_on_cpu", lambda load_in: False)
    with pytest.raises(ConfigError, match="on the CPU: bitsandbytes .* has no CPU kernels"):
        check_load_in("4bit", "cpu", device_map="auto", max_memory={"cpu": 10**9})
    with pytest.raises(ConfigError, match="on the CPU"):
        check_load_in("8bit", "cpu", device_map={"": "cpu"})
    check_load_in("4bit", "cuda", device_map="auto")  # a map that may use the GPU: bitsandbytes' CUDA kernels
    check_load_in("4bit", "cuda")


def test_only_the_unactionable_bitsandbytes_lines_are_dropped(caplog):
    import logging

    from layerscope.core.quantization import quiet_bitsandbytes

    quiet_bitsandbytes()
    quiet_bitsandbytes()  # twice: one filter
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    assert len(logger.filters) == 1 and logger.level == logging.NOTSET  # its level is the user's to set
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", torch.float32)
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_importing_peft_after_layerscope_prints_no_bitsandbytes_line():
    """Python callers get the CLI's quiet: peft imports bitsandbytes, whose import logs a line about
    missing CPU kernels that nothing in a run can act on."""
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")

    def stderr_of(code: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        ).stderr

    if "kernels" not in stderr_of("import peft"):  # the control: this bitsandbytes, here, logs nothing to filter
        pytest.skip("bitsandbytes logs no CPU-kernel line on import on this machine")
    quiet = stderr_of("import layerscope, peft")
    assert "kernels" not in quiet and "bitsandbytes" not in quiet, quiet

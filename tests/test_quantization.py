"""4-/8-bit loading (bitsandbytes): refused with one line where it cannot work; on a GPU, a real load.

The GPU test runs only where CUDA and bitsandbytes are present (bench/gpu_checks.sh runs it on a lent GPU).
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


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_load_is_refused_before_reading_weights():
    from unittest import mock

    from layerscope.core.models import load_model

    read = mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=AssertionError("read weights"))
    with read, pytest.raises(ConfigError, match=r"^--load-in 4bit needs a CUDA GPU \(bitsandbytes' kernels\)"):
        load_model(str(STORIES), load_in="4bit")


def test_without_bitsandbytes_the_message_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ConfigError, match=r"needs bitsandbytes: pip install 'layerscope\[quantization\]'"):
        check_load_in("8bit", "cuda")
    with pytest.raises(ConfigError, match="with --device cpu: quantised weights run on a CUDA device"):
        check_load_in("8bit", "cpu")


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


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and bitsandbytes")
@pytest.mark.parametrize("load_in", ["4bit", "8bit"])
def test_quantised_stories_evaluates_close_to_the_original(load_in):
    pytest.importorskip("bitsandbytes")
    from layerscope.core.importance import model_info
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model

    plain = load_model(str(STORIES), device="cuda", dtype="bfloat16")
    quant = load_model(str(STORIES), device="cuda", dtype="bfloat16", load_in=load_in)
    lm = build_layer_map(quant.model)
    assert lm.n_blocks == 5 and len(lm.linears) == 35  # bnb layers are nn.Linear: the map is unchanged
    assert model_info(quant.model, lm)["quantization"]["bits"] == int(load_in[0])
    ids = torch.tensor([[1, 403, 407, 261, 378]], device="cuda")
    with torch.no_grad():
        a, b = plain.model(input_ids=ids).logits.float(), quant.model(input_ids=ids).logits.float()
    assert torch.isfinite(b).all()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9

"""A bitsandbytes model's numeric tolerances follow the dtype it computes in, not its float parameters'.

Asked for float32, a 4-bit model keeps float32 embeddings and norms but computes its matmuls in bfloat16
(``quantization_config``); LLM.int8() casts its inputs to float16. Every tolerance (the engine's
self-check and coalition stacking, the packed-rows probe, the removal check) must be bfloat16's or
float16's there, or a quantised model is refused or falls back for nothing. Without bitsandbytes (or a
GPU) the quantisation is faked by what the code reads: ``is_loaded_in_4bit`` / ``is_loaded_in_8bit``
and ``config.quantization_config``, as transformers' bitsandbytes quantizers set them.
"""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from tiny_models import tiny_model

from layerscope.core.errors import ModelError
from layerscope.core.layermap import build_layer_map
from layerscope.core.quantization import compute_dtype, quantization_config
from layerscope.core.tasks import MCItem, Task
from layerscope.engine import capture, stacked
from layerscope.engine.capture import check_tolerance
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.engine.removal_check import check_removal, tolerance_for
from layerscope.scoring import PACKING_TOLERANCE, MCEvaluator, mc_evaluator, packing_tolerance

BF16_EPS = torch.finfo(torch.bfloat16).eps
FP16_EPS = torch.finfo(torch.float16).eps

TASK = Task(
    name="toy",
    items=[
        MCItem("Once upon a time, there was a little girl named", [" Lily", "Tom", "a big red ball"], 0),
        MCItem("The cat sat on the", ["mat", "dog", "moon and the stars"], 2),
        MCItem("One day, Tim went to the store to buy some", ["milk", "toys for his sister", "b"], 1),
    ],
    chance=1 / 3,
    metric="acc_norm",
    source="test",
    fingerprint="x",
)


def fake_4bit(model, compute="bfloat16"):
    """``model`` marked as transformers marks a 4-bit load (its weights stay float32 here)."""
    model.is_loaded_in_4bit = True
    if compute == "bfloat16":  # as loaded: a BitsAndBytesConfig holding a torch.dtype
        model.config.quantization_config = quantization_config("4bit", torch.float32)
    else:  # as a saved config.json has it: a dict holding the dtype's name
        model.config.quantization_config = {"load_in_4bit": True, "bnb_4bit_compute_dtype": compute}
    return model


def test_compute_dtype_of_plain_and_quantised_models():
    model = tiny_model("llama", n_layers=1)
    assert compute_dtype(model) == torch.float32
    assert compute_dtype(copy.deepcopy(model).to(torch.bfloat16)) == torch.bfloat16
    assert compute_dtype(torch.nn.ReLU()) is None  # nothing floating: callers keep their float32 floor
    # float32 asked for, 4-bit computes in bfloat16 (the library's default dtype=None on a GPU)
    assert quantization_config("4bit", torch.float32).bnb_4bit_compute_dtype == torch.bfloat16
    assert compute_dtype(fake_4bit(copy.deepcopy(model))) == torch.bfloat16
    assert compute_dtype(fake_4bit(copy.deepcopy(model), "float16")) == torch.float16
    assert compute_dtype(fake_4bit(copy.deepcopy(model), "torch.bfloat16")) == torch.bfloat16
    # a 4-bit config without a compute dtype: bitsandbytes computes in the input's dtype
    four = copy.deepcopy(model)
    four.is_loaded_in_4bit, four.config.quantization_config = True, {"load_in_4bit": True}
    assert compute_dtype(four) == torch.float32
    # the least precise dtype wins: bfloat16 parameters stay bfloat16 under a float16 compute dtype
    assert compute_dtype(fake_4bit(copy.deepcopy(model).to(torch.bfloat16), "float16")) == torch.bfloat16
    # LLM.int8() casts its inputs to float16 on a CUDA device (bitsandbytes' MatMul8bitLt)
    eight = copy.deepcopy(model)
    eight.is_loaded_in_8bit = True
    assert compute_dtype(eight) == torch.float16
    assert compute_dtype(copy.deepcopy(eight).to(torch.bfloat16)) == torch.bfloat16
    # the attributes are read, not the class: a bare module marked quantised works too
    linear = torch.nn.Linear(2, 2)
    linear.is_loaded_in_4bit = True
    linear.config = SimpleNamespace(quantization_config=quantization_config("4bit", torch.float32))
    assert compute_dtype(linear) == torch.bfloat16


def test_every_tolerance_is_the_compute_dtypes():
    model = tiny_model("llama", n_layers=1)
    quant = fake_4bit(copy.deepcopy(model))
    assert check_tolerance(model) == capture.FLOAT32_TOLERANCE
    assert packing_tolerance(model) == PACKING_TOLERANCE
    assert check_tolerance(quant) == capture.ROUNDING_STEPS * BF16_EPS == check_tolerance(model.to(torch.bfloat16))
    assert packing_tolerance(quant) == 1.0  # 128 bfloat16 eps, as for a bfloat16 model
    eight = copy.deepcopy(tiny_model("llama", n_layers=1))
    eight.is_loaded_in_8bit = True
    assert check_tolerance(eight) == capture.ROUNDING_STEPS * FP16_EPS
    assert packing_tolerance(eight) == 0.125


def test_removal_check_tolerates_the_compute_dtypes_rounding():
    """A 4-bit model's hidden states are float32, its sub-layers' contributions bfloat16-rounded."""
    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    quant = fake_4bit(copy.deepcopy(model))
    assert check_removal(quant, lm)["block"] <= tolerance_for(torch.float32)  # the fake computes in float32
    between = 10 * tolerance_for(torch.float32)
    assert between < tolerance_for(torch.bfloat16)
    with mock.patch("layerscope.engine.removal_check._pattern_difference", return_value=between):
        assert set(check_removal(quant, lm).values()) == {between}
        with pytest.raises(ModelError, match="does not leave the residual stream intact"):
            check_removal(model, lm)  # float32 computing: the same difference is refused
        big = 2 * tolerance_for(torch.bfloat16)
    with (
        mock.patch("layerscope.engine.removal_check._pattern_difference", return_value=big),
        pytest.raises(ModelError, match="does not leave the residual stream intact"),
    ):
        check_removal(quant, lm)  # order-one differences are still refused


def test_packed_evaluation_of_a_quantised_model_is_not_refused(stories):
    """Packed and plain rows round apart like bfloat16 on a 4-bit model: within its bound, not refused."""
    model, tok = stories
    quant = fake_4bit(copy.deepcopy(model))
    diff = 0.5  # SmolLM2 in bfloat16 differs by up to ~0.5 nats; a mask-ignoring model by 5-67
    with mock.patch.object(MCEvaluator, "check_packing", return_value=diff):
        ev = MCEvaluator(tok, TASK, batch_size=4)
        assert ev.evaluate(quant).n_items == len(TASK.items)
        assert mc_evaluator(tok, TASK, 4, quant).layout == "packed"
        with pytest.raises(ModelError, match="does not honour custom 4-D attention masks"):
            MCEvaluator(tok, TASK, batch_size=4).evaluate(model)
    with mock.patch.object(MCEvaluator, "check_packing", return_value=5.0):
        with pytest.raises(ModelError, match="does not honour custom 4-D attention masks"):
            MCEvaluator(tok, TASK, batch_size=4).evaluate(quant)


def test_engine_self_check_and_stacking_use_the_compute_dtypes_tolerance(tok):
    model = tiny_model("llama", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    quant = fake_4bit(copy.deepcopy(model))
    ev = MCEvaluator(tok, TASK, batch_size=2, model=model)
    between = 10 * capture.FLOAT32_TOLERANCE  # float32 would fall back, bfloat16 rounding is larger
    real = capture.relative_diff

    def rounded_apart(a, ref):
        return max(real(a, ref), between)

    with (
        mock.patch.object(capture, "relative_diff", rounded_apart),
        mock.patch.object(stacked, "relative_diff", rounded_apart),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither falls back nor unstacks
            engine = CoalitionEngine(quant, lm, ev, "sublayer", coalition_batch=2)
        assert engine.mode == "cached" and engine.use_stubs and engine.coalition_batch == 2
        assert engine.check_diff["full"] == engine.check_diff["stacked"] == between
        # the same differences on a model computing in float32: the self-check falls back ...
        with pytest.warns(RuntimeWarning, match="falls back to plain hooked forwards"):
            assert CoalitionEngine(model, lm, ev, "sublayer").mode == "uncached"
        # ... and, without the self-check, stacking is refused
        with pytest.warns(RuntimeWarning, match="evaluated one per forward"):
            unstacked = CoalitionEngine(model, lm, ev, "sublayer", check=False, coalition_batch=2)
        assert unstacked.mode == "cached" and unstacked.coalition_batch == 1

"""The same computations on a CUDA device as on the CPU.

Skipped where no GPU is visible (CI has none). Each test runs one method on both devices
and compares: a device-placement bug (a tensor left on the CPU, a hook that builds its
zeros on the wrong device, a memory reading taken from the wrong counter) shows up as an
error or a different number here. TF32 is left off (PyTorch's default for matmuls), so
float32 results agree to rounding.
"""

import copy
import json

import numpy as np
import pytest
import torch
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.core.tasks import load_task
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.methods.ablation import ablate
from layerscope.methods.ila import ILAConfig, run_ila
from layerscope.methods.similarity import load_sequences, similarity
from layerscope.scoring import MCEvaluator
from layerscope.training import FinetuneConfig, finetune, probe_grad_flow, select_modules

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def test_ablation_on_cuda_matches_cpu(stories, shared_dir):
    model, tok = stories
    arc = load_task("arc_easy", limit=24)
    cpu = ablate(model, MCEvaluator(tok, arc, batch_size=8, model=model), "sublayer")
    gpu_model = copy.deepcopy(model).to(CUDA)
    gpu = ablate(gpu_model, MCEvaluator(tok, arc, batch_size=8, model=gpu_model), "sublayer")
    assert gpu.baseline["full"] == cpu.baseline["full"]
    # accuracies over 24 items: equal unless a near-tie flips one item (1/24)
    assert np.allclose(gpu.extras["removed_value"], cpu.extras["removed_value"], atol=1 / 24 + 1e-9)
    assert sum(a == b for a, b in zip(gpu.extras["removed_value"], cpu.extras["removed_value"])) >= 8


def test_similarity_on_cuda_matches_cpu(stories, shared_dir):
    model, tok = stories
    lm = build_layer_map(model)
    seqs, _ = load_sequences("arc_easy", tok, max_length=64, limit=10)
    cpu = similarity(model, lm, seqs, window=2, batch_size=4, tokenizer=tok)
    gpu_model = copy.deepcopy(model).to(CUDA)
    gpu = similarity(gpu_model, build_layer_map(gpu_model), seqs, window=2, batch_size=4, tokenizer=tok)
    for key in ("block_influence", "angular_distance"):
        assert np.allclose(gpu[key].scores, cpu[key].scores, atol=1e-4), key


def test_lora_finetune_on_cuda_trains_only_the_selection_and_reads_cuda_memory(tmp_path):
    train, held = random_sft(12, 0), random_sft(4, 1)
    reports = {}
    for device in ("cpu", "cuda"):
        model = tiny_model("llama", n_layers=4).to(device)
        lm = build_layer_map(model)
        players = lm.players("module")
        imp = LayerImportance(
            method="t",
            granularity="module",
            players=players,
            scores=list(range(len(players))),
            model=model_info(model, lm, "tiny"),
        )
        sel = select_modules(lm, imp, "top", 0.3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = FinetuneConfig(
            method="lora", max_steps=3, batch_size=4, lr=1e-2, out_dir=str(tmp_path / device), logging_steps=1
        )
        rep = finetune(model, TinyTokenizer(), train, held, sel, cfg)
        base = rep.trained_model.get_base_model()
        assert next(base.parameters()).device.type == device
        for n, p in base.named_parameters():
            if "lora_" not in n:
                assert torch.equal(p.detach(), before[n.replace(".base_layer", "")]), n
        reports[device] = json.loads((tmp_path / device / "report.json").read_text())
    cpu, gpu = reports["cpu"], reports["cuda"]
    assert gpu["memory_kind"] == "cuda_allocated" and cpu["memory_kind"] == "rss"
    assert gpu["peak_memory_bytes"] > 0
    assert gpu["trainable_params"] == cpu["trainable_params"]
    assert gpu["grad_flow"] == cpu["grad_flow"] and gpu["grad_flow"]["truncated"]
    assert gpu["heldout_loss_before"] == pytest.approx(cpu["heldout_loss_before"], abs=1e-4)
    assert gpu["heldout_loss"] == pytest.approx(cpu["heldout_loss"], abs=1e-3)


def test_backward_cut_on_cuda():
    from layerscope.training.lora import inject_lora

    model = tiny_model("llama", n_layers=4).to(CUDA)
    lm = build_layer_map(model)
    players = lm.players("block")
    imp = LayerImportance(
        method="t", granularity="block", players=players, scores=[0, 1, 2, 3], model=model_info(model, lm, "tiny")
    )
    sel = select_modules(lm, imp, "top", 0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    pm = inject_lora(model, lm, sel.modules, task_type="CAUSAL_LM")
    ids = torch.randint(2, 128, (2, 16), device=CUDA)
    flow = probe_grad_flow(pm, lm, {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    assert flow["lowest_trainable_block"] == 2 and flow["blocks_in_backward"] == 2


def test_ila_on_cuda_ranks_like_cpu():
    ex = random_sft(12, 0).examples
    scores = {}
    for device in ("cpu", "cuda"):
        model = tiny_model("llama").to(device)
        imp = run_ila(
            model,
            None,
            ex,
            # 30 gate steps at a large gate lr: on the CPU the 21 scores then spread over 4e-3 in 18 distinct
            # values (5 steps at the default lr: 8e-5, 6 values, a comparison that would check little).
            # No LoRA dropout: the CPU and CUDA generators draw different masks from one seed (on an H200 the
            # scores then differed by 1.3e-3, 30% of their spread; without dropout float32 and float64 on
            # the CPU agree to 5e-7)
            ILAConfig(
                max_steps=6, min_steps=0, gate_steps=30, gate_lr=0.5, seed=3, progress=False, batch_size=4, dropout=0.0
            ),
            model_name="tiny",
        )
        assert all(np.isfinite(imp.scores))
        scores[device] = np.array(imp.scores)
    # the same seed draws the same batches and LoRA init on both devices: the scores agree up to rounding,
    # measured against how far apart they are
    spread = np.ptp(scores["cpu"])
    assert spread > 1e-3
    assert np.abs(scores["cuda"] - scores["cpu"]).max() < 0.05 * spread


def test_cli_finetune_on_cuda(tmp_path, stories_path, shared_dir, capsys):
    from layerscope.cli.app import main

    rc = main(
        [
            "similarity",
            "--model",
            str(stories_path),
            "--data",
            "arc_easy",
            "--limit",
            "8",
            "--max-length",
            "64",
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "sim"),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    imp = tmp_path / "sim" / "block_influence" / "importance.json"
    out = tmp_path / "run"
    rc = main(
        [
            "finetune",
            "--model",
            str(stories_path),
            "--data",
            str(shared_dir / "data/alignment/alpaca_gpt4_1k.json"),
            "--limit",
            "12",
            "--importance",
            str(imp),
            "--mode",
            "top",
            "--fraction",
            "0.4",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--device",
            "cuda",
            "--out",
            str(out),
            "--no-progress",
            "--eval-tasks",
            "arc_easy",
            "--eval-limit",
            "8",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "report.json").read_text())
    assert d["memory_kind"] == "cuda_allocated" and d["steps"] == 2 and "arc_easy" in d["eval"]


def test_engine_on_a_model_split_between_gpu_memory_and_offload_equals_it_in_gpu_memory(tok, tmp_path):
    """One GPU stands in for several: blocks 1 and 3 and the LM head wait in CPU memory and accelerate
    loads them onto the GPU for each call (dispatch_model offloads every "cpu" entry when the main device is
    a GPU); the rest stay on the GPU. The engine's cached states must meet each block where it computes."""
    from accelerate import dispatch_model
    from test_offload import COALITIONS, logliks, offload_map, toy_task

    from layerscope.core.devices import offloaded_parameters

    ref = tiny_model("llama", n_layers=4, vocab=512).eval()
    lm = build_layer_map(ref)
    device_map = offload_map(ref, lm.blocks_path, lambda k: False)
    device_map = {k: ("cpu" if k.endswith((".1", ".3", "lm_head")) else 0) for k in device_map}
    split = dispatch_model(copy.deepcopy(ref), device_map)
    assert offloaded_parameters(split), "nothing was offloaded: the test would prove nothing"
    whole = copy.deepcopy(ref).to(CUDA)
    task = toy_task()
    got = {}
    for name, model in (("gpu", whole), ("split", split)):
        engine = CoalitionEngine(model, lm, MCEvaluator(tok, task, batch_size=2, model=model), "sublayer")
        assert engine.mode == "cached"
        got[name] = logliks(engine.results(COALITIONS))
    assert np.array_equal(got["split"], got["gpu"])

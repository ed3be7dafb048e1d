"""A model accelerate dispatched, with blocks offloaded to CPU memory or disk, gives exactly the values
of the same model in memory: eval, the coalition engine (cached and uncached), similarity, ILA and
LoRA fine-tuning (docs/large-models.md). On the CPU an offloaded module's weights sit on ``meta`` and
are loaded by its accelerate hook for each call, which is what a GPU run with offloading does too."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.core.devices import input_device, offloaded_parameters
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.core.models import load_model, weights_fingerprint
from layerscope.core.tasks import MCItem, Task
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.scoring import MCEvaluator

accelerate = pytest.importorskip("accelerate")


def toy_task() -> Task:
    items = [
        MCItem("Once upon a time, there was a little girl named", [" Lily", "Tom", "a big red ball"], 0),
        MCItem("The cat sat on the", ["mat", "dog", "moon and the stars", "a"], 2),
        MCItem("One day, Tim went to the store to buy some", ["milk", "toys for his sister", "b"], 1),
        MCItem('Ben said: "I want to play!"', ["Mom said yes.", "No.", "They played all day."], 1),
    ]
    return Task(name="toy", items=items, chance=0.3, metric="acc_norm", source="test", fingerprint="x")


def offload_map(model, blocks_path: str, on_disk) -> dict[str, str]:
    """A device map over every module: blocks and the modules beside them on "disk" where ``on_disk``
    says (given a block index or a module path), else on "cpu"."""
    device_map, module, prefix = {}, model, ""
    for part in blocks_path.split("."):
        for name, _ in module.named_children():
            if name != part:
                device_map[prefix + name] = "disk" if on_disk(prefix + name) else "cpu"
        prefix, module = prefix + part + ".", getattr(module, part)
    for i in range(len(module)):
        device_map[f"{blocks_path}.{i}"] = "disk" if on_disk(i) else "cpu"
    return device_map


def dispatched(model, tmp_path, on_disk=lambda k: k == 1 or k == 3 or str(k).endswith("lm_head")):
    """A copy of ``model`` with blocks 1 and 3 and the LM head offloaded to disk (weights on meta)."""
    from accelerate import dispatch_model

    lm = build_layer_map(model)
    device_map = offload_map(model, lm.blocks_path, on_disk)
    assert "disk" in device_map.values() and "cpu" in device_map.values()
    out = dispatch_model(copy.deepcopy(model), device_map, offload_dir=str(tmp_path / "offload"))
    assert offloaded_parameters(out), "nothing was offloaded: the test would prove nothing"
    return out


def logliks(results) -> np.ndarray:
    return np.concatenate([np.concatenate([np.array(x) for x in r.loglikelihoods]) for r in results])


COALITIONS = [frozenset({0, 2, 3, 5, 6}), frozenset({1, 4, 7}), frozenset({0}), frozenset()]


# ----------------------------------------------------------------------------- eval and the engine


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: Conv1D and an LM head tied to the embedding
def test_engine_on_offloaded_model_equals_in_memory(tok, tmp_path, arch):
    ref = tiny_model(arch, n_layers=4, vocab=512).eval()
    off = dispatched(ref, tmp_path)
    lm = build_layer_map(ref)
    task = toy_task()
    plain = [MCEvaluator(tok, task, batch_size=2, model=m).evaluate(m) for m in (ref, off)]
    assert np.array_equal(logliks(plain[:1]), logliks(plain[1:]))  # a plain forward through the hooks
    for granularity in ("sublayer", "block"):
        coalitions = [c for c in COALITIONS if max(c, default=0) < len(lm.players(granularity))]
        got = {}
        for name, model in (("memory", ref), ("offloaded", off)):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no fallback to plain forwards on the dispatched model
                engine = CoalitionEngine(model, lm, MCEvaluator(tok, task, batch_size=2, model=model), granularity)
            assert engine.mode == "cached"
            got[name] = logliks(engine.results(coalitions))
            uncached = CoalitionEngine(
                model, lm, MCEvaluator(tok, task, batch_size=2, model=model), granularity, uncached=True
            )
            got[name + " uncached"] = logliks(uncached.results(coalitions))
        for name, values in got.items():
            assert np.array_equal(values, got["memory"]), (granularity, name)
    assert offloaded_parameters(off)  # still offloaded afterwards: nothing was loaded for good


def test_everything_offloaded_to_cpu_memory(tok):
    """``accelerate.cpu_offload``: every weight on meta, loaded from a CPU copy for each call."""
    from accelerate import cpu_offload

    ref = tiny_model("llama", n_layers=3, vocab=512).eval()
    off = cpu_offload(copy.deepcopy(ref), execution_device="cpu")
    assert {p.device.type for p in off.parameters()} == {"meta"}
    assert input_device(off) == torch.device("cpu")  # not meta: where the embedding computes
    assert weights_fingerprint(off) == weights_fingerprint(ref)  # offloaded weights are read where they lie
    lm = build_layer_map(ref)
    coalitions = [frozenset({0, 2}), frozenset({1}), frozenset()]
    values = [
        logliks(
            CoalitionEngine(m, lm, MCEvaluator(tok, toy_task(), batch_size=2, model=m), "block").results(coalitions)
        )
        for m in (ref, off)
    ]
    assert np.array_equal(values[0], values[1])


def _log_header(model) -> dict:
    from layerscope.engine.coalition_log import describe_run

    players = build_layer_map(model).players("block")
    return describe_run(
        model, "tiny", players, granularity="block", data={}, batch_size=2, max_length=8, uncached=False
    )


def test_a_coalition_log_header_names_where_the_model_computes_not_where_its_weights_wait(tmp_path):
    """An offloaded weight waits on ``meta`` and computes on its hook's device, with the values of the
    model in memory: the coalition log's header (what --resume must match) is the same for all three,
    and records the thread count when every weight is offloaded too (the CPU computes with them)."""
    from accelerate import cpu_offload

    ref = tiny_model("llama", n_layers=4).eval()
    all_offloaded = cpu_offload(copy.deepcopy(ref), execution_device="cpu")
    assert {p.device.type for p in all_offloaded.parameters()} == {"meta"}
    embedding_on_disk = dispatched(ref, tmp_path, on_disk=lambda k: k != "lm_head")  # the first weight offloaded
    assert next(embedding_on_disk.parameters()).device.type == "meta"
    header = _log_header(ref)
    assert header["device"] == "cpu" and header["threads"] == torch.get_num_threads()
    assert _log_header(all_offloaded) == header
    assert _log_header(embedding_on_disk) == header


def test_similarity_on_offloaded_model(tmp_path):
    from layerscope.methods.similarity import similarity

    ref = tiny_model("llama", n_layers=4).eval()
    off = dispatched(ref, tmp_path)
    lm = build_layer_map(ref)
    seqs = [list(range(3, 3 + n)) for n in (12, 9, 16, 5)]
    a, b = (similarity(m, lm, seqs, window=2, batch_size=2, model_name="tiny") for m in (ref, off))
    for key in ("block_influence", "angular_distance"):
        assert a[key].scores == b[key].scores, key


def test_results_record_where_the_model_ran(tmp_path):
    ref = tiny_model("llama", n_layers=4).eval()
    off = dispatched(ref, tmp_path)
    lm = build_layer_map(ref)
    mem, disp = model_info(ref, lm, "tiny"), model_info(off, lm, "tiny")
    assert mem["device"] == "cpu" and mem["dtype"] == "float32" and "device_map" not in mem
    assert disp["fingerprint"] == mem["fingerprint"]  # the same weights, wherever they lie
    assert disp["device"] == "cpu" and disp["dtype"] == "float32"
    assert disp["device_map"]["model.layers.1"] == "disk" and disp["device_map"]["model.layers.0"] == "cpu"
    imp = LayerImportance(method="t", granularity="block", players=lm.players("block"), scores=[0, 1, 2, 3], model=disp)
    assert LayerImportance.from_dict(json.loads(json.dumps(imp.to_dict()))).model["device_map"] == disp["device_map"]


# ----------------------------------------------------------------------------- loading with a device map


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, stories_path):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", n_layers=4, vocab=512).save_pretrained(folder)
    AutoTokenizer.from_pretrained(stories_path).save_pretrained(folder)
    return folder


def test_load_model_with_a_json_device_map_offloads_to_disk(tiny_folder, tmp_path):
    ref = load_model(tiny_folder)
    device_map = offload_map(ref.model, "model.layers", lambda k: k in (1, 2) or k == "lm_head")
    off = load_model(tiny_folder, device_map=json.dumps(device_map), offload_folder=str(tmp_path / "off"))
    assert off.model.hf_device_map == device_map
    assert {n.split(".weight")[0] for n in offloaded_parameters(off.model)} >= {"lm_head"}
    assert off.describe() == "device map: json (5 modules on cpu, 3 on disk), dtype: float32"
    lm = build_layer_map(ref.model)
    values = [
        logliks(CoalitionEngine(x.model, lm, MCEvaluator(x.tokenizer, toy_task(), model=x.model)).results(COALITIONS))
        for x in (ref, off)
    ]
    assert np.array_equal(values[0], values[1])
    assert weights_fingerprint(off.model) == weights_fingerprint(ref.model)


def test_max_memory_alone_places_with_device_map_auto(tiny_folder):
    off = load_model(tiny_folder, max_memory="cpu=150KB")  # less than the model: the rest goes to disk
    assert off.placement.device_map == "auto" and off.placement.max_memory == {"cpu": "150KB"}
    assert "disk" in set(off.model.hf_device_map.values()) and offloaded_parameters(off.model)
    assert off.describe().startswith("device map: auto (")


def test_device_cpu_with_max_memory_offloads_and_computes_on_the_cpu(tiny_folder):
    """--device cpu says where the model computes, which CPU and disk offloading keep: it combines with
    --max-memory naming only those (it was refused, naming a --device-map never given)."""
    off = load_model(tiny_folder, device="cpu", max_memory="cpu=150KB")
    assert "disk" in set(off.model.hf_device_map.values()) and offloaded_parameters(off.model)
    assert input_device(off.model) == torch.device("cpu")


def test_an_offload_folder_that_is_a_file_is_refused_before_loading(stories_path, tmp_path, capsys, monkeypatch):
    """accelerate made the folder during the load, which failed as "failed to load ([Errno 17] File exists)"."""
    from layerscope.cli.app import main
    from layerscope.core import models

    monkeypatch.setattr(models, "_from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    afile = tmp_path / "afile"
    afile.write_text("")
    command = ["eval", "--model", str(stories_path), "--task", "loss:demo", "--device-map", '{"": "disk"}']
    assert main([*command, "--offload-folder", str(afile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"layerscope eval: error: --offload-folder {afile}: a file is in the way, not a folder"]
    assert main([*command, "--offload-folder", str(afile / "under")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_a_device_map_with_nothing_to_spread_over_says_where_the_model_is(tiny_folder):
    """On one CPU and no GPU, device_map="auto" places the whole model on the CPU and transformers
    records no map; the run note said "no modules placed", as if nothing had loaded."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is there to place the model on")
    loaded = load_model(tiny_folder, device_map="auto")
    assert not getattr(loaded.model, "hf_device_map", None)
    assert loaded.describe() == "device map: auto (whole model on cpu), dtype: float32"


# ----------------------------------------------------------------------------- training on a dispatched model


def test_lora_adapters_on_offloaded_layers_live_on_the_execution_device(tmp_path):
    from layerscope.training.lora import inject_lora

    ref = tiny_model("llama", n_layers=4).eval()
    off = dispatched(ref, tmp_path)
    lm = build_layer_map(ref)
    offloaded = set(offloaded_parameters(off))
    peft_models = [inject_lora(m, lm, seed=0) for m in (ref, off)]
    lora = [{n: p for n, p in pm.named_parameters() if "lora_" in n} for pm in peft_models]
    assert lora[1] and all(p.device.type == "cpu" for p in lora[1].values())  # not meta: values kept
    assert all(torch.equal(lora[0][n], lora[1][n]) for n in lora[0])  # the same initial adapters
    base = peft_models[1].get_base_model()
    still = {n.replace(".base_layer", "") for n, p in base.named_parameters() if p.device.type == "meta"}
    assert still == offloaded  # the offloaded weights went back to meta
    assert not any(p.requires_grad for n, p in base.named_parameters() if "lora_" not in n)  # peft froze them


def test_ila_on_offloaded_model_equals_in_memory(tmp_path):
    from layerscope.core.data import SFTExample
    from layerscope.methods.ila import ILAConfig, run_ila

    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(8):
        ids = torch.randint(0, 128, (16,), generator=g).tolist()
        examples.append(SFTExample(ids, [-100] * 4 + ids[4:]))
    config = ILAConfig(r=4, alpha=8, max_steps=3, min_steps=1, gate_steps=2, batch_size=4, progress=False)
    ref = tiny_model("llama", n_layers=4).eval()
    off = dispatched(ref, tmp_path)
    a, b = (run_ila(m, None, examples, config, model_name="tiny") for m in (ref, off))
    assert a.scores == b.scores and a.model["fingerprint"] == b.model["fingerprint"]
    assert b.model["device_map"]["model.layers.1"] == "disk"
    assert not hasattr(off, "peft_config") and offloaded_parameters(off)  # left as it was found


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_finetune_lora_on_offloaded_model_and_full_refused(tmp_path, stories_path):
    from transformers import AutoTokenizer

    from layerscope.training import FinetuneConfig, finetune
    from layerscope.training.selection import select_modules

    ref = tiny_model("llama", n_layers=4).eval()
    off = dispatched(ref, tmp_path)
    # one entry for the whole model, as from_pretrained writes it: accelerate would .to() it unless told
    ref.save_pretrained(tmp_path / "ref")
    AutoTokenizer.from_pretrained(stories_path).save_pretrained(tmp_path / "ref")
    all_on_disk = load_model(tmp_path / "ref", device_map='{"": "disk"}', offload_folder=str(tmp_path / "all")).model
    assert all_on_disk.hf_device_map == {"": "disk"}
    lm = build_layer_map(ref)
    players = lm.players("module")
    imp = LayerImportance(
        method="t", granularity="module", players=players, scores=list(range(len(players))), model=model_info(ref, lm)
    )
    sel = select_modules(lm, imp, "top", 0.3)
    train, held = random_sft(8, 0), random_sft(4, 1)
    losses = []
    for i, model in enumerate((ref, off, all_on_disk)):
        cfg = FinetuneConfig(method="lora", max_steps=2, batch_size=4, lr=1e-2, out_dir=str(tmp_path / f"run{i}"))
        rep = finetune(model, TinyTokenizer(), train, held, sel, cfg)
        losses.append((rep.heldout_loss_before, rep.heldout_loss))
    assert losses[0] == losses[1] == losses[2] and losses[0][0] != losses[0][1]
    full = FinetuneConfig(method="full", max_steps=1, batch_size=4, eval_before=False, out_dir=str(tmp_path / "full"))
    with pytest.raises(ConfigError, match="--method full needs every weight in memory.*offloads"):
        fresh = dispatched(tiny_model("llama", n_layers=4).eval(), tmp_path / "again")  # finetune left LoRA on ``ref``
        finetune(fresh, TinyTokenizer(), train, held, sel, full)


# ----------------------------------------------------------------------------- moves between devices


def test_cached_block_arguments_move_to_the_block_device_once():
    """Across GPUs a cached state may lie on the previous block's device; "meta" stands in for another
    device here (the CPU has only one), given as the block's accelerate execution device."""
    from types import SimpleNamespace

    from torch import nn

    from layerscope.engine.prefix_cache import BlockArgs

    seen = []

    class Block(nn.Module):
        def forward(self, hidden, mask=None):
            seen.append((hidden.device.type, mask[0].device.type, mask[1].device.type))
            return (hidden,)

    block = Block()
    block._hf_hook = SimpleNamespace(execution_device=torch.device("meta"))
    mask = torch.ones(2)
    args = BlockArgs((), {"mask": (mask, mask)}, False)
    out = args.replay(block, torch.zeros(1, 2, 3))
    assert out.device.type == "meta" and seen == [("meta", "meta", "meta")]
    moved = args.kwargs["mask"][0]
    args.replay(block, torch.zeros(1, 2, 3))
    assert args.kwargs["mask"][0] is moved  # moved once, kept there
    seen.clear()
    BlockArgs((), {"mask": (mask, mask)}, False).replay(Block(), torch.zeros(1, 2, 3))  # no hook, no weights: as is
    assert seen == [("cpu", "cpu", "cpu")]


def test_prune_an_offloaded_model(tmp_path):
    """The pruned model is built in memory from the weights, read where they lie (disk here)."""
    from layerscope.pruning.blocks import prune

    ref = tiny_model("llama", n_layers=4).eval()
    off = dispatched(ref, tmp_path)
    a, b = prune(ref, [1, 2]), prune(off, [1, 2])  # each checks its logits against removal in place
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not offloaded_parameters(b)


def test_an_offloaded_models_own_linear_class_is_recognised(tmp_path):
    """Falcon's FalconLinear overrides nn.Linear.forward, so the layer map calls it once to see that it maps
    like a linear: where it computes, not on its meta weight (an offloaded Falcon had no linears, and the
    verdict was cached for the class)."""
    import layerscope.core.linears as linears

    model = tiny_model("falcon", n_layers=4)
    off = dispatched(model, tmp_path, on_disk=lambda k: isinstance(k, int) or str(k).endswith("lm_head"))
    linears._ACTS_LINEAR.clear()  # dispatched() mapped the in-memory model, which decided it there
    offloaded = build_layer_map(off).linears
    falcon_linear = type(off.get_submodule(offloaded[0].path))
    assert linears._ACTS_LINEAR == {falcon_linear: True}  # decided by a call where it computes, not guessed
    assert [m.path for m in offloaded] == [m.path for m in build_layer_map(model).linears]

"""Mixture-of-experts models: MoE sub-layers in the layer map, and each expert as a player.

Tiny random Qwen2-MoE (4 routed experts + a gated shared expert per block) and Mixtral (4 fused
routed experts, no linear module in the MLP) from tests/tiny_models.py. Removal of an expert is
its output zeroed (``engine/removal.py``): the engine at expert granularity must equal plain
``removed()`` forwards exactly, removing every expert of a block must equal removing its MLP, and
each expert's removal must change the output exactly when the router chose it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_architectures import toy_task  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

from layerscope.core.errors import ConfigError  # noqa: E402
from layerscope.core.layermap import build_layer_map, records_from_names  # noqa: E402
from layerscope.core.levels import coarsest, to_level  # noqa: E402
from layerscope.engine.coalitions import CoalitionEngine  # noqa: E402
from layerscope.engine.hooks import expert_mask_hook  # noqa: E402
from layerscope.engine.removal import removed  # noqa: E402
from layerscope.methods.ablation import ablate  # noqa: E402
from layerscope.methods.shapley import shapley  # noqa: E402
from layerscope.scoring import MCEvaluator  # noqa: E402
from layerscope.viz.plots import short_label  # noqa: E402

MOE = ["qwen2_moe", "mixtral"]
N_EXPERTS = 4  # tiny_models' _MOE / num_local_experts


def _ids() -> torch.Tensor:
    return torch.randint(2, 512, (2, 9), generator=torch.Generator().manual_seed(0))


def _logits(model, lm, players=(), granularity="expert") -> torch.Tensor:
    with torch.no_grad(), removed(model, lm, list(players), granularity):
        return model(input_ids=_ids()).logits


def _chosen_experts(model, lm) -> dict[str, set[int]]:
    """Experts module path -> the experts the router chose on _ids() in the full model."""
    chosen: dict[str, set[int]] = {}
    paths = {p.targets[0] for p in lm.player_records("expert") if p.expert is not None}

    def record(path):
        def hook(module, args, kwargs):
            chosen.setdefault(path, set()).update(int(e) for e in args[1].flatten())

        return hook

    handles = [model.get_submodule(p).register_forward_pre_hook(record(p), with_kwargs=True) for p in paths]
    try:
        with torch.no_grad():
            model(input_ids=_ids())
    finally:
        for h in handles:
            h.remove()
    return chosen


# ----------------------------------------------------------------------------- the layer map


@pytest.mark.parametrize("name", MOE)
def test_expert_players_are_listed_per_moe_layer(name):
    lm = build_layer_map(tiny_model(name, n_layers=2, vocab=512))
    records = lm.player_records("expert")
    routed = [f"layers.{b}.mlp.experts.{e}" for b in range(2) for e in range(N_EXPERTS)]
    shared = {"qwen2_moe": ["layers.0.mlp.shared_expert", "layers.1.mlp.shared_expert"], "mixtral": []}[name]
    assert sorted(p.name for p in records) == sorted(routed + shared)
    assert [p.block for p in records] == sorted(p.block for p in records)  # forward order
    for p in records:
        assert p.kind == "expert" and p.block == int(p.name.split(".")[1])
        if p.expert is not None:  # routed: masked inside the fused experts module
            assert p.targets == (f"model.layers.{p.block}.mlp.experts",) and p.name.endswith(f".{p.expert}")
            assert p.linears == ()
        else:  # shared: its own module, whose linears fine-tuning could adapt
            assert p.targets == (f"model.layers.{p.block}.mlp.shared_expert",) and len(p.linears) == 3
    assert [s.kind for s in lm.sublayers] == ["attn", "mlp", "attn", "mlp"]
    assert "experts" in lm.summary()


def test_fused_experts_mlp_is_a_sublayer_without_linear_modules():
    """Mixtral's MLP holds no nn.Linear (fused expert tensors): the MoE module itself is the sub-layer."""
    lm = build_layer_map(tiny_model("mixtral", n_layers=2, vocab=512))
    mlp = lm.sublayers[1]
    assert (mlp.name, mlp.hook_path, mlp.output_path, mlp.linears) == (
        "layers.0.mlp",
        "model.layers.0.mlp",
        "model.layers.0.mlp",
        (),
    )
    assert {m.sublayer for m in lm.linears} == {"attn"}


def test_granite_moe_and_shared_mlp_form_one_sublayer():
    """GraniteMoE-shared adds a shared MLP beside the MoE: removing the MLP sub-layer removes both."""
    model = tiny_model("granitemoeshared", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    mlp = lm.sublayers[1]
    assert mlp.name == "layers.0.block_sparse_moe"
    assert mlp.hook_paths == ("model.layers.0.block_sparse_moe", "model.layers.0.shared_mlp")
    assert lm.player_records("block")[0].targets == ("model.layers.0.self_attn", *mlp.hook_paths)
    assert lm.players("expert")[-1] == "layers.1.shared_mlp"
    experts0 = [p.name for p in lm.player_records("expert") if p.block == 0]
    assert torch.equal(_logits(model, lm, experts0), _logits(model, lm, [mlp.name], "sublayer"))


def test_dense_model_has_no_expert_players():
    lm = build_layer_map(tiny_model("llama", n_layers=2))
    with pytest.raises(ConfigError, match="LlamaForCausalLM has no mixture-of-experts layer"):
        lm.players("expert")


def test_expert_names_rebuild_records_without_a_model():
    names = build_layer_map(tiny_model("qwen2_moe", n_layers=2, vocab=512)).players("expert")
    records = records_from_names(names, "expert")
    assert [(p.block, p.kind, p.expert) for p in records[:5]] == [(0, "expert", e) for e in range(4)] + [
        (0, "expert", None)
    ]
    assert [short_label(n, "expert") for n in names[3:6]] == ["e3.0", "shared_expert.0", "e0.1"]


# ----------------------------------------------------------------------------- removal


@pytest.mark.parametrize("name", MOE)
def test_each_expert_removal_changes_the_output_exactly_when_routed(name):
    """A chosen expert's removal changes the logits; one the router never chose changes nothing."""
    model = tiny_model(name, n_layers=2, vocab=512)
    lm = build_layer_map(model)
    full = _logits(model, lm)
    chosen = _chosen_experts(model, lm)
    for i, p in enumerate(lm.player_records("expert")):
        used = p.expert is None or p.expert in chosen[p.targets[0]]
        assert torch.equal(_logits(model, lm, [i]), full) != used, p.name


@pytest.mark.parametrize("name", MOE)
def test_each_expert_player_removes_that_expert(name):
    """Player i is the expert it names: removing it gives the logits of a copy whose expert (that index of
    its fused weights, or the whole shared expert) is zeroed. On these ids the router picks every expert,
    so the test above cannot tell experts apart; a player-to-expert mix-up shows here."""
    import copy

    model = tiny_model(name, n_layers=2, vocab=512)
    lm = build_layer_map(model)
    for i, p in enumerate(lm.player_records("expert")):
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            for param in zeroed.get_submodule(p.targets[0]).parameters():
                if p.expert is None:
                    param.zero_()
                elif param.shape[0] == zeroed.get_submodule(p.targets[0]).num_experts:
                    param[p.expert] = 0
            expected = zeroed(input_ids=_ids()).logits
        assert torch.allclose(_logits(model, lm, [i]), expected, atol=1e-6, rtol=0), p.name


@pytest.mark.parametrize("name", MOE)
def test_removing_every_expert_of_a_block_removes_its_mlp(name):
    """The MoE output is the sum of its experts' contributions: all removed is the MLP removed, exactly."""
    model = tiny_model(name, n_layers=2, vocab=512)
    lm = build_layer_map(model)
    for b in range(2):
        experts = [p.name for p in lm.player_records("expert") if p.block == b]
        assert torch.equal(_logits(model, lm, experts), _logits(model, lm, [f"layers.{b}.mlp"], "sublayer"))


def test_expert_mask_leaves_other_experts_weights_alone():
    """Masking zeroes the removed experts' routing weights only: no renormalisation, no re-routing."""
    index = torch.tensor([[0, 2], [1, 2], [3, 0]])
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    hook = expert_mask_hook([2])
    args, kwargs = hook(None, (torch.zeros(3, 8), index, weights), {})
    assert torch.equal(args[2], torch.tensor([[0.6, 0.0], [0.7, 0.0], [0.5, 0.5]]))
    assert torch.equal(args[1], index) and weights[0, 1] == 0.4  # the router's own tensors untouched
    _, kwargs = hook(None, (torch.zeros(3, 8),), {"top_k_index": index, "top_k_weights": weights})
    assert torch.equal(kwargs["top_k_weights"][:, 1], torch.tensor([0.0, 0.0, 0.5]))


# ----------------------------------------------------------------------------- the engine and methods


def _loglik(results) -> np.ndarray:
    return np.concatenate([np.concatenate([np.array(x) for x in r.loglikelihoods]) for r in results])


@pytest.mark.parametrize("name", MOE)
def test_engine_equals_the_removed_reference_exactly(name, tok):
    model = tiny_model(name, n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, toy_task(), 4, model=model)
    engine = CoalitionEngine(model, lm, ev, "expert")
    assert engine.mode == "uncached"  # expert masks act inside a module: plain hooked forwards
    rng = np.random.default_rng(0)
    coalitions = [sorted(rng.choice(engine.n, size=k, replace=False).tolist()) for k in (0, 1, 3, 5, 7)]
    coalitions.append(list(range(engine.n)))
    got = engine.results(coalitions)
    for kept, r in zip(coalitions, got):
        gone = [p for p in range(engine.n) if p not in kept]
        with torch.no_grad(), removed(model, lm, gone, "expert"):
            ref = ev.evaluate(model)
        assert np.array_equal(_loglik([r]), _loglik([ref])) and r.value == ref.value


@pytest.mark.parametrize("name", MOE)
def test_ablation_and_shapley_at_expert_granularity(name, tok):
    model = tiny_model(name, n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, toy_task(), 4, model=model)
    engine = CoalitionEngine(model, lm, ev, "expert")
    imp = ablate(engine)
    assert imp.granularity == "expert" and imp.players == lm.players("expert")
    assert all(math.isfinite(s) for s in imp.scores)
    assert {p.kind for p in imp.player_records()} == {"expert"}
    blocks = to_level(imp, "block")
    assert blocks.players == ["layers.0", "layers.1"]
    assert blocks.scores[0] == pytest.approx(np.mean(imp.scores[: len(imp.players) // 2]))
    sv = shapley(engine, engine.n, "permutation", budget=2 * engine.n + 2, seed=0)
    assert len(sv.values) == engine.n and np.all(np.isfinite(sv.values))


def test_expert_results_meet_other_granularities_at_block_level():
    assert coarsest(["expert"]) == "expert"
    assert coarsest(["expert", "module"]) == coarsest(["expert", "sublayer"]) == "block"
    from layerscope.core.importance import LayerImportance

    imp = LayerImportance(
        method="test",
        granularity="expert",
        players=["layers.0.mlp.experts.0", "layers.0.mlp.experts.1"],
        scores=[1.0, 2.0],
        model={"name": "tiny"},
    )
    with pytest.raises(ConfigError, match="cannot bring an expert-level test result to sublayer level"):
        to_level(imp, "sublayer")
    assert to_level(imp, "block").scores == [1.5]


def test_cli_refuses_expert_granularity_on_a_dense_model(stories_path, tmp_path, capsys):
    from layerscope.cli.app import main

    code = main(["ablate", "--model", str(stories_path), "--granularity", "expert", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "has no mixture-of-experts layer" in err[-1]
    assert not (tmp_path / "o" / "importance.json").exists()

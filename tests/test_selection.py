import math
import re

import numpy as np
import pytest
from tiny_models import tiny_model

from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.training.selection import select_modules
from layerscope.training.virtual_layermap import layer_map_from_importance


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama", n_layers=4)  # 4 blocks x 7 linear modules = 28
    return model, build_layer_map(model)


def ranking(model, lm, granularity="module", scores=None, **model_overrides):
    players = lm.players(granularity)
    scores = list(range(len(players))) if scores is None else scores  # later players more important
    info = {**model_info(model, lm, "tiny"), **model_overrides}
    return LayerImportance(method="test", granularity=granularity, players=players, scores=scores, model=info)


@pytest.mark.parametrize(
    "mode,fraction,expected",
    [
        ("all", None, 28),
        ("freeze-bottom", 0.25, 21),
        ("freeze-bottom", None, 21),
        ("top", 0.3, 9),
        ("top", 0.1, 3),
        ("random", 0.3, 9),
        ("top", 1.0, 28),
    ],
)
def test_mode_counts(tiny, mode, fraction, expected):
    model, lm = tiny
    sel = select_modules(lm, ranking(model, lm), mode, fraction, seed=0)
    assert len(sel.modules) == expected
    assert sel.n_modules_total == 28
    order = [m.name for m in lm.linears]
    assert sel.modules == [m for m in order if m in set(sel.modules)]  # forward order


def test_freeze_bottom_leaves_out_the_least_important(tiny):
    model, lm = tiny
    scores = [(i * 5) % 28 for i in range(28)]  # a permutation of 0..27
    imp = ranking(model, lm, scores=scores)
    sel = select_modules(lm, imp, "freeze-bottom", 0.25)
    frozen = set(lm.players("module")) - set(sel.modules)
    assert frozen == {p for p, s in zip(imp.players, scores) if s < 7}
    top = select_modules(lm, imp, "top", 0.1)
    assert set(top.modules) == {p for p, s in zip(imp.players, scores) if s >= 25}


def test_block_and_sublayer_rankings_expand_to_linears(tiny):
    model, lm = tiny
    sel = select_modules(lm, ranking(model, lm, "block"), "top", 0.5)
    assert sel.players == ["layers.2", "layers.3"] and len(sel.modules) == 14 and sel.blocks == [2, 3]
    sub = select_modules(lm, ranking(model, lm, "sublayer"), "top", 0.125)  # 1 of 8 sub-layers: layers.3.mlp
    assert sub.modules == ["layers.3.mlp.gate_proj", "layers.3.mlp.up_proj", "layers.3.mlp.down_proj"]
    fb = select_modules(lm, ranking(model, lm, "block"), "freeze-bottom", 0.25)
    assert fb.blocks == [1, 2, 3] and len(fb.modules) == 21


def test_random_is_seeded_and_matches_budget(tiny):
    model, lm = tiny
    imp = ranking(model, lm)
    a = select_modules(lm, imp, "random", 0.3, seed=7)
    b = select_modules(lm, imp, "random", 0.3, seed=7)
    c = select_modules(lm, imp, "random", 0.3, seed=8)
    assert a.modules == b.modules and a.seed == 7
    assert a.modules != c.modules and len(c.modules) == len(a.modules)
    blocks = select_modules(lm, ranking(model, lm, "block"), "random", 0.5, seed=1)
    assert len(blocks.modules) == 14  # random whole blocks when the ranking is per block: same budget as top
    no_rank = select_modules(lm, None, "random", 0.25, seed=3)
    assert len(no_rank.modules) == 7


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, math.nan, True])
def test_fraction_out_of_range(tiny, bad):
    model, lm = tiny
    with pytest.raises(ConfigError, match="fraction"):
        select_modules(lm, ranking(model, lm), "top", bad)


def test_nothing_left_and_missing_ranking(tiny):
    model, lm = tiny
    with pytest.raises(ConfigError, match="nothing left"):
        select_modules(lm, ranking(model, lm), "freeze-bottom", 1.0)
    with pytest.raises(ConfigError, match="needs an importance"):
        select_modules(lm, None, "top", 0.3)
    with pytest.raises(ConfigError, match="mode"):
        select_modules(lm, ranking(model, lm), "bottom", 0.3)


def test_arguments_of_the_wrong_type_are_one_line(tiny):
    """``select_modules(importance, layer_map)`` (swapped) was an AttributeError on ``linears``; the API's
    messages name arguments, not the CLI's --mode / --fraction (which the CLI checks itself)."""
    model, lm = tiny
    imp = ranking(model, lm)
    with pytest.raises(ConfigError, match=r"the layer map comes first, then the ranking"):
        select_modules(imp, lm, "top", 0.3)
    with pytest.raises(ConfigError, match=r"^layer_map must be a LayerMap .* got str$"):
        select_modules("layers", imp)
    with pytest.raises(ConfigError, match=r"^importance must be a LayerImportance .* got str"):
        select_modules(lm, "importance.json")
    with pytest.raises(ConfigError, match=r"^unknown mode 'topp'"):
        select_modules(lm, imp, "topp")
    with pytest.raises(ConfigError, match=r"^fraction 30 for mode 'top' must be in \(0, 1\]$"):
        select_modules(lm, imp, "top", 30)
    with pytest.raises(ConfigError, match=r"^mode 'top' needs an importance ranking"):
        select_modules(lm, None, "top")


def test_min_block_cuts_every_mode_at_the_same_budget(tiny):
    model, lm = tiny
    # most important first: block 0's modules, then block 1's ... so an uncut top-k starts at block 0
    imp = ranking(model, lm, scores=[-i for i in range(28)])
    top = select_modules(lm, imp, "top", 0.3)
    assert top.blocks[0] == 0 and top.min_block is None
    cut = select_modules(lm, imp, "top", 0.3, min_block=2)
    assert len(cut.modules) == len(top.modules) == 9 and cut.min_block == 2
    assert cut.blocks == [2, 3]
    assert cut.modules == [m.name for m in lm.linears if m.block >= 2][:9]  # the best 9 at or above block 2
    rnd = select_modules(lm, imp, "random", 0.3, seed=4, min_block=2)
    assert len(rnd.modules) == 9 and min(rnd.blocks) >= 2
    fb = select_modules(lm, imp, "freeze-bottom", 0.25, min_block=1)
    frozen_low = set(imp.bottom(0.25))  # the least important 7: all of block 3
    assert set(fb.modules) == {m.name for m in lm.linears if m.block >= 1} - frozen_low and fb.blocks == [1, 2]
    everything = select_modules(lm, imp, "all", min_block=3)
    assert everything.blocks == [3] and len(everything.modules) == 7
    assert select_modules(lm, imp, "top", 0.3, min_block=0).modules == top.modules


@pytest.mark.parametrize("bad,match", [(4, "out of range.*4 blocks"), (-1, "out of range"), (True, "out of range")])
def test_min_block_out_of_range(tiny, bad, match):
    model, lm = tiny
    with pytest.raises(ConfigError, match=match):
        select_modules(lm, ranking(model, lm), "top", 0.3, min_block=bad)


def test_min_block_leaving_too_few_players(tiny):
    model, lm = tiny
    with pytest.raises(ConfigError, match="needs 9 players but only 7 are at or above --min-block 3"):
        select_modules(lm, ranking(model, lm), "top", 0.3, min_block=3)
    with pytest.raises(ConfigError, match="nothing left to train"):
        # block 3 holds the 7 least important modules, the very ones freeze-bottom 25% freezes
        select_modules(lm, ranking(model, lm, scores=[-i for i in range(28)]), "freeze-bottom", 0.25, min_block=3)


def test_ranking_from_another_model_fails(tiny):
    model, lm = tiny
    from layerscope.core.models import weights_fingerprint

    fp = weights_fingerprint(model)
    other = tiny_model("llama", n_layers=4, seed=1)
    imp_other = ranking(other, build_layer_map(other))
    with pytest.raises(ConfigError, match="fingerprint"):
        select_modules(lm, imp_other, "top", 0.3, fingerprint=fp)
    select_modules(lm, imp_other, "top", 0.3, fingerprint=None)  # --ignore-fingerprint: names still match

    six = tiny_model("llama", n_layers=6)
    imp_six = ranking(six, build_layer_map(six))
    with pytest.raises(ConfigError, match="6 blocks"):
        select_modules(lm, imp_six, "top", 0.3, fingerprint=fp)
    # a smaller model's ranking that does not record its block count: every name exists here, but blocks are missing
    two = tiny_model("llama", n_layers=2)
    imp_two = ranking(two, build_layer_map(two))
    imp_two.model.pop("n_blocks", None)
    with pytest.raises(ConfigError, match="no module players in 2 of the loaded model's blocks .e.g. block 2."):
        select_modules(lm, imp_two, "freeze-bottom", 0.25)
    gpt2 = tiny_model("gpt2", n_layers=4)
    imp_gpt2 = ranking(gpt2, build_layer_map(gpt2))
    with pytest.raises(ConfigError, match="not in the loaded model"):
        select_modules(lm, imp_gpt2, "top", 0.3)


def test_layer_map_from_importance(tiny):
    model, lm = tiny
    virtual = layer_map_from_importance(ranking(model, lm))
    assert [m.name for m in virtual.linears] == [m.name for m in lm.linears]
    assert [s.name for s in virtual.sublayers] == [s.name for s in lm.sublayers]
    vb = layer_map_from_importance(ranking(model, lm, "block"))
    assert [m.name for m in vb.linears] == [m.name for m in lm.linears]
    sel = select_modules(vb, ranking(model, lm, "block"), "top", 0.25)
    assert sel.modules == [m.name for m in lm.linears if m.block == 3]
    with pytest.raises(ConfigError, match="--model"):
        layer_map_from_importance(ranking(model, lm, "block", model_type="mystery"))


def test_parse_selection_spec_short_form_and_errors():
    from layerscope.training.selection import parse_selection_spec

    assert parse_selection_spec("all") == ("all", None, None)
    assert parse_selection_spec(" top:0.3@15 ") == ("top", 0.3, 15)
    assert parse_selection_spec("random:0.3") == ("random", 0.3, None)
    assert parse_selection_spec("freeze-bottom@4") == ("freeze-bottom", None, 4)
    for bad, what in [
        ("best:0.3", "unknown mode"),
        ("top:x", "mode[:fraction][@min_block]"),
        ("top:0.3@", "mode[:fraction][@min_block]"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(what)):
            parse_selection_spec(bad)


def test_random_matched_draws_tops_kinds_and_parameter_count(tiny):
    from collections import Counter

    model, lm = tiny
    types = {m.name: m.type for m in lm.linears}
    scores = [10.0 if types[p].endswith("proj") and "mlp" in p else 0.0 for p in lm.players("module")]
    scores = [s + i / 100 for i, s in enumerate(scores)]  # MLP modules on top, like ILA on SmolLM2
    imp = ranking(model, lm, scores=scores)
    top = select_modules(lm, imp, "top", 0.3)
    draws = [select_modules(lm, imp, "random-matched", 0.3, seed=s) for s in range(4)]
    for sel in draws:
        assert Counter(types[m] for m in sel.modules) == Counter(types[m] for m in top.modules)
        assert sel.mode == "random-matched" and sel.seed is not None
    assert len({tuple(s.modules) for s in draws}) > 1  # seeds differ
    assert select_modules(lm, imp, "random-matched", 0.3, seed=1).modules == draws[1].modules  # and repeat
    assert any(d.modules != top.modules for d in draws)
    # the plain random control ignores kinds; this one keeps them even above a cut
    cut = select_modules(lm, imp, "random-matched", 0.3, seed=0, min_block=2)
    top_cut = select_modules(lm, imp, "top", 0.3, min_block=2)
    assert min(cut.blocks) >= 2 and Counter(types[m] for m in cut.modules) == Counter(types[m] for m in top_cut.modules)
    # sub-layer rankings match attn / mlp counts
    sub = ranking(model, lm, "sublayer", scores=[1.0 if "mlp" in p else 0.0 for p in lm.players("sublayer")])
    s = select_modules(lm, sub, "random-matched", 0.5, seed=3)
    assert all(p.endswith("mlp") for p in s.players) and len(s.players) == 4
    with pytest.raises(ConfigError, match="needs an importance ranking"):
        select_modules(lm, None, "random-matched", 0.3)


def test_the_module_docstring_names_keywords_select_modules_takes():
    import inspect

    import layerscope.training.selection as selection

    named = re.findall(r"(\w+)=False", selection.__doc__)  # "skip with ... check=False"
    assert named and set(named) <= set(inspect.signature(select_modules).parameters)


def test_a_ranking_measured_at_chance_is_noted_where_it_selects():
    """report warns that such scores mean little; export and finetune, selecting by them, say so too."""
    from layerscope.core.importance import LayerImportance
    from layerscope.training.inputs import ranking_at_chance_note

    blocks = [f"layers.{i}" for i in range(4)]

    def ranking(full):
        return LayerImportance("ablation", "block", blocks, [4, 3, 2, 1], {}, baseline={"full": full, "chance": 0.25})

    note = ranking_at_chance_note(ranking(0.1875), "top")
    assert note.startswith("the ablation ranking was measured where the full model scores 0.1875, no better than ")
    assert ranking_at_chance_note(ranking(0.1875), "all") is None  # --mode all reads no ranking
    assert ranking_at_chance_note(ranking(0.7), "top") is None
    assert ranking_at_chance_note(LayerImportance("ila", "block", blocks, [4, 3, 2, 1], {}), "top") is None


@pytest.mark.parametrize("seed", [None, "3", 1.5, -1])
def test_a_random_selection_needs_a_seed_it_can_record(seed):
    """seed=None drew from the clock: another selection on every run, and Selection.seed recorded None."""
    lm = build_layer_map(tiny_model("llama", n_layers=4))
    with pytest.raises(ConfigError, match=r"^seed must be an integer >= 0"):
        select_modules(lm, None, "random", 0.5, seed=seed)
    assert (
        select_modules(lm, None, "random", 0.5, seed=np.int64(3)).modules
        == select_modules(lm, None, "random", 0.5, seed=3).modules
    )

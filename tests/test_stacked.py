"""Several coalitions in one forward, rows stacked (engine/stacked.py): the same values as one at a time."""

import warnings

import numpy as np
import pytest
from test_coalitions import NextTokenLoss, logliks, make_task, random_coalitions
from tiny_models import ARCHS, tiny_model

from layerscope.core.errors import ConfigError
from layerscope.core.layermap import build_layer_map
from layerscope.engine import stacked
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.scoring import MCEvaluator

TOL = 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_stacked_coalitions_equal_the_reference(tok, arch):
    model = tiny_model(arch, n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    for granularity in ("sublayer", "block"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # stacking passes its check on every architecture here
            fast = CoalitionEngine(model, lm, ev, granularity, coalition_batch=3)
        assert fast.coalition_batch == 3 and fast.check_diff["stacked"] <= TOL
        ref = CoalitionEngine(model, lm, ev, granularity, uncached=True)
        coalitions = random_coalitions(fast.n, 10, seed=len(arch))
        a, r = fast.results(coalitions), ref.results(coalitions)
        assert np.abs(logliks(a) - logliks(r)).max() <= TOL
        assert [x.predictions for x in a] == [x.predictions for x in r]
        assert fast.describe()["coalition_batch"] == 3


def test_full_logits_evaluator_and_groups_of_any_size():
    """An evaluator that reads every position (no scored-row list), groups larger than the batch of
    coalitions, and a last group smaller than the others."""
    model = tiny_model("llama", n_layers=3, vocab=128)
    lm = build_layer_map(model)
    ev = NextTokenLoss(128)
    ref = CoalitionEngine(model, lm, ev, "sublayer")
    cs = random_coalitions(6, 7)
    want = ref.values(cs)
    for size in (2, 4, 16):
        got = CoalitionEngine(model, lm, ev, "sublayer", coalition_batch=size).values(cs)
        assert np.allclose(got, want, atol=1e-6, rtol=0)


def test_members_states_count_against_the_cache_budget(tok):
    """The other members' scored states of every batch wait for their own passes: they fit in what
    --cache-mb leaves, and a batch that does not fit is recomputed alone, to the same values."""
    model = tiny_model("llama", n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    ref = CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    coalitions = random_coalitions(6, 8, seed=1)
    want = logliks(ref.results(coalitions))
    roomy = CoalitionEngine(model, lm, ev, "sublayer", coalition_batch=4)
    assert np.abs(logliks(roomy.results(coalitions)) - want).max() <= TOL
    assert roomy.stats.stacked_recomputed == 0
    tight = CoalitionEngine(model, lm, ev, "sublayer", coalition_batch=4, cache_mb=0)  # no room at all
    assert np.abs(logliks(tight.results(coalitions)) - want).max() <= TOL
    distinct = tight.stats.evaluations
    waiting = distinct - -(-distinct // 4)  # every member of a group of 4 but its lead
    assert waiting > 0 and tight.stats.stacked_recomputed == waiting * len(ev.batches)


def test_a_failed_check_keeps_one_coalition_per_forward(tok, monkeypatch):
    model = tiny_model("qwen2", n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    real = stacked.Stacker.run_group

    def off(*a, **k):  # a stacked forward that is slightly wrong
        return [z + 1e-2 for z in real(*a, **k)]

    monkeypatch.setattr(stacked.Stacker, "run_group", off)
    with pytest.warns(RuntimeWarning, match="one per forward, not 4 stacked"):
        engine = CoalitionEngine(model, lm, ev, "sublayer", coalition_batch=4)
    assert engine.coalition_batch == 1
    ref = CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    cs = random_coalitions(6, 4)
    assert np.allclose(engine.values(cs), ref.values(cs), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_group_size_is_refused(tok, bad):
    model = tiny_model("llama", n_layers=2, vocab=512)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    with pytest.raises(ConfigError, match="coalition_batch"):
        CoalitionEngine(model, build_layer_map(model), ev, coalition_batch=bad)


class PaddedNextTokenLoss(NextTokenLoss):
    """Two batches: the first without padding (the model may then pass its blocks no mask at all), the
    second right-padded (a mask): the stacked rows must learn the second layout too."""

    def __init__(self, vocab: int):
        super().__init__(vocab)
        padded = self.batches[1].attention_mask.clone()
        padded[0, -2:] = 0
        padded[2, -3:] = 0
        self.batches[1] = type(self.batches[1])(self.batches[1].input_ids, padded)


def test_batches_whose_blocks_get_other_arguments():
    model = tiny_model("llama", n_layers=3, vocab=128)
    lm = build_layer_map(model)
    ev = PaddedNextTokenLoss(128)
    cs = random_coalitions(6, 6)
    want = CoalitionEngine(model, lm, ev, "sublayer", uncached=True).values(cs)
    engine = CoalitionEngine(model, lm, ev, "sublayer", coalition_batch=4)
    assert np.allclose(engine.values(cs), want, atol=1e-6, rtol=0)
    # the unpadded batch's blocks get no mask, the padded one's a mask: two layouts, each learnt
    assert len(engine._stacker._by_batch) == 2 and len(engine._stacker._learnt) == 2

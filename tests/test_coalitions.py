import random
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import ARCHS, TinyTokenizer, random_sft, tiny_model

from layerscope.core.data import SFTExample
from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.layermap import build_layer_map
from layerscope.core.tasks import MCItem, Task
from layerscope.engine.coalitions import CoalitionEngine, removal_targets, removed, resolve_players
from layerscope.methods.shapley import shapley
from layerscope.scoring import LossEvaluator, MCEvaluator

TOL = 1e-5


def make_task() -> Task:
    items = [
        MCItem("Once upon a time, there was a little girl named", [" Lily", "Tom", "a big red ball"], 0),
        MCItem("The cat sat on the", ["mat", "dog", "moon and the stars", "a"], 2),
        MCItem("One day, Tim went to the store to buy some", ["milk", "toys for his sister", "b"], 1),
        MCItem("She loved to play outside in the", ["park.", "sky with her mom", "x"], 0),
        MCItem('Ben said: "I want to play!"', ["Mom said yes.", "No.", "They played all day."], 1),
    ]
    return Task(name="toy", items=items, chance=0.3, metric="acc_norm", source="test", fingerprint="x")


def logliks(results) -> np.ndarray:
    return np.concatenate([np.concatenate([np.array(x) for x in r.loglikelihoods]) for r in results])


def random_coalitions(n: int, k: int, seed: int = 0) -> list[frozenset]:
    rng = random.Random(seed)
    out = [frozenset(i for i in range(n) if rng.random() < p) for p in np.linspace(0.3, 0.95, k)]
    return out + [frozenset(range(n)), frozenset()]


# ----------------------------------------------------------------------------- the engine equals the reference


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_uncached(tok, arch):
    model = tiny_model(arch, n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    for granularity in ("sublayer", "block"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback for any supported architecture
            fast = CoalitionEngine(model, lm, ev, granularity)
        assert fast.mode == "cached" and fast.use_stubs
        ref = CoalitionEngine(model, lm, ev, granularity, uncached=True)
        coalitions = random_coalitions(fast.n, 10, seed=len(arch))
        a, r = fast.results(coalitions), ref.results(coalitions)
        assert np.abs(logliks(a) - logliks(r)).max() <= TOL
        assert [x.predictions for x in a] == [x.predictions for x in r]
        assert [x.value for x in a] == [x.value for x in r]
        # work saved: suffixes only, never more block calls than plain forwards
        assert fast.stats.block_forwards < ref.stats.block_forwards


def test_module_granularity_and_single_calls(tok):
    model = tiny_model("llama", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=3, model=model)
    fast = CoalitionEngine(model, lm, ev, "module")
    ref = CoalitionEngine(model, lm, ev, "module", uncached=True)
    assert fast.n == len(lm.linears) == 14
    for c in random_coalitions(fast.n, 4, seed=3):
        assert fast.value(c) == ref.value(c)  # __call__ / value path, one coalition at a time
    assert abs(fast(range(fast.n)) - ref.full().value) <= TOL


# ----------------------------------------------------------------------------- what removal means


@pytest.mark.parametrize("arch", ARCHS)
def test_sublayer_removal_equals_zeroing_output_projection(arch):
    model = tiny_model(arch, n_layers=2)
    lm = build_layer_map(model)
    ids = torch.randint(0, 128, (2, 9))
    for i, s in enumerate(lm.sublayers):
        with torch.no_grad(), removed(model, lm, [i], "sublayer") as names:
            a = model(input_ids=ids).logits
        assert names == [s.name]
        h = model.get_submodule(s.output_path).register_forward_hook(lambda m, args, out: out * 0)
        try:
            with torch.no_grad():
                b = model(input_ids=ids).logits
        finally:
            h.remove()
        assert torch.allclose(a, b, atol=1e-6), (arch, s.name)
    # the hooks are gone afterwards
    assert all(not model.get_submodule(p)._forward_hooks for ps in removal_targets(lm, "block") for p in ps)


@pytest.mark.parametrize("arch", ARCHS)
def test_block_removal_is_identity(arch):
    model = tiny_model(arch, n_layers=3)
    lm = build_layer_map(model)
    block = model.get_submodule(lm.block_path(1))
    seen = {}
    h1 = block.register_forward_pre_hook(
        lambda m, args, kw: seen.__setitem__("in", (args[0] if args else kw["hidden_states"]).clone()), with_kwargs=True
    )
    h2 = block.register_forward_hook(
        lambda m, args, out: seen.__setitem__("out", out if torch.is_tensor(out) else out[0])
    )
    try:
        with torch.no_grad(), removed(model, lm, ["layers.1" if lm.prefix == "layers" else f"{lm.prefix}.1"], "block"):
            model(input_ids=torch.randint(0, 128, (2, 7)))
    finally:
        h1.remove()
        h2.remove()
    assert torch.equal(seen["in"], seen["out"])


def test_hooks_removed_after_error():
    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    with pytest.raises(RuntimeError):
        with removed(model, lm, [0, 1], "sublayer"):
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- memo, trie and memory bound


def test_memo_counts(tok):
    model = tiny_model("llama", n_layers=3, vocab=512)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    eng = CoalitionEngine(model, build_layer_map(model), ev, "sublayer")
    c = frozenset({0, 2, 3})
    v1 = eng.value(c)
    assert eng.stats.evaluations == 1 and eng.stats.memo_hits == 0
    assert eng.value(set(c)) == v1 and eng.stats.evaluations == 1 and eng.stats.memo_hits == 1
    eng.values([c, c, frozenset(range(6))])  # c memoised, the full model memoised at capture
    assert eng.stats.evaluations == 1 and eng.stats.memo_hits == 4
    nomemo = CoalitionEngine(model, build_layer_map(model), ev, "sublayer", memo=False)
    assert nomemo.value(c) == v1 and nomemo.value(c) == v1 and nomemo.stats.evaluations == 2
    assert nomemo.values([c, c]) == [v1, v1] and nomemo.stats.evaluations == 3  # duplicates in one call run once


def test_trie_reuses_prefixes_and_respects_cache_bound(tok):
    model = tiny_model("llama", n_layers=4, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    ref = CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    n = 8
    # siblings: the same first removal (player 2, block 1), different later patterns
    coalitions = [frozenset(range(n)) - {2} - set(rest) for rest in ([], [4], [5], [4, 6], [5, 7], [6], [7])]
    want = ref.values(coalitions)
    big = CoalitionEngine(model, lm, ev, "sublayer")
    assert big.values(coalitions) == want
    assert big.stats.path_hits > 0 and big.stats.path_refused == 0
    assert big.stats.base_blocks_cached == 4
    base_bytes = big._forward.cache.base_bytes
    assert big.stats.cache_bytes == base_bytes  # path states are freed after values()
    per_block = base_bytes / 4
    # room for two block inputs of every batch: base states evenly spaced, no path states
    small = CoalitionEngine(model, lm, ev, "sublayer", cache_mb=2.2 * per_block / 2**20)
    assert small.stats.base_blocks_cached == 2
    assert small.values(coalitions) == want
    assert small.stats.peak_cache_bytes <= small.budget
    assert small.stats.path_refused > 0
    # nothing cached at all: prefixes recomputed by cut-short forwards
    none = CoalitionEngine(model, lm, ev, "sublayer", cache_mb=0)
    assert none.stats.base_blocks_cached == 0 and none.stats.peak_cache_bytes == 0
    assert none.values(coalitions) == want


def test_engine_is_a_shapley_value_object(tok):
    model = tiny_model("gpt2", n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=5, model=model)
    fast = CoalitionEngine(model, lm, ev, "block")
    ref = CoalitionEngine(model, lm, ev, "block", uncached=True)
    a, b = shapley(fast, fast.n, "exact"), shapley(ref, ref.n, "exact")
    assert a.n_evaluations == 8 and np.allclose(a.values, b.values)
    assert abs(a.values.sum() - (fast.full().value - fast.value(frozenset()))) < 1e-9


def test_removed_mask_convention_and_nothing_left_behind(tok):
    model = tiny_model("llama", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    eng = CoalitionEngine(model, lm, ev, "sublayer")
    assert eng.removed_mask(range(eng.n)) == 0  # the full model removes nothing
    assert eng.removed_mask({1, 3}) == 0b0101  # players 0 and 2 removed
    assert eng.result({1, 3}).value == eng.value({1, 3}) == eng.values([{1, 3}])[0] == eng.results([{1, 3}])[0].value
    # stubs restored, every hook removed: the model is as it was
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in model.modules())


# ----------------------------------------------------------------------------- other evaluators


def test_loss_evaluator(tok):
    @dataclass
    class Ex:
        input_ids: list
        labels: list

    g = torch.Generator().manual_seed(0)
    exs = []
    for n in (12, 9, 15, 7):
        ids = torch.randint(3, 512, (n,), generator=g).tolist()
        exs.append(Ex(ids, [-100] * 3 + ids[3:]))
    model = tiny_model("qwen2", n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = LossEvaluator(tok, exs, batch_size=2)
    fast, ref = CoalitionEngine(model, lm, ev, "sublayer"), CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    cs = random_coalitions(6, 5)
    assert np.allclose(fast.values(cs), ref.values(cs), atol=1e-6, rtol=0)


@dataclass
class PlainBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: None = None


class NextTokenLoss:
    """A minimal evaluator of the contract: mean next-token loss on random token batches, full logits."""

    def __init__(self, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [
            PlainBatch(torch.randint(0, vocab, (3, T), generator=g), torch.ones(3, T, dtype=torch.long))
            for T in (10, 6)
        ]

    def evaluate(self, model, forward=None, progress=False):
        from layerscope.scoring import EvalResult

        total, count = 0.0, 0
        with torch.no_grad():
            for i, b in enumerate(self.batches):
                logits = (
                    forward(i, b) if forward else model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
                )
                lp = logits[:, :-1].log_softmax(-1).gather(-1, b.input_ids[:, 1:, None])
                total, count = total - float(lp.sum()), count + lp.numel()
        return EvalResult(value=-total / count, metrics={"loss": total / count}, predictions=None, n_items=count)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_stand_in_evaluator_with_full_logits(arch):
    model = tiny_model(arch, n_layers=2)
    lm = build_layer_map(model)
    ev = NextTokenLoss(128)
    fast, ref = CoalitionEngine(model, lm, ev, "sublayer"), CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    cs = random_coalitions(4, 6)
    assert np.allclose(fast.values(cs), ref.values(cs), atol=1e-6, rtol=0)


def test_soft_capped_gemma2_is_reproduced_and_exotic_models_fall_back():
    torch.manual_seed(0)
    cfg = tf.Gemma2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=128,
        final_logit_softcapping=2.0,
    )
    gemma2 = tf.AutoModelForCausalLM.from_config(cfg).eval()
    ev = NextTokenLoss(128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng = CoalitionEngine(gemma2, build_layer_map(gemma2), ev, "sublayer")
    assert eng.mode == "cached"
    # OPT with an extra projection after the final norm: the engine cannot reproduce it, falls back once
    cfg = tf.OPTConfig(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
    )
    opt = tf.AutoModelForCausalLM.from_config(cfg).eval()
    lm = build_layer_map(opt)
    with pytest.warns(RuntimeWarning, match="falls back"):
        eng = CoalitionEngine(opt, lm, ev, "sublayer")
    assert eng.mode == "uncached"
    ref = CoalitionEngine(opt, lm, ev, "sublayer", uncached=True)
    cs = random_coalitions(4, 3)
    assert eng.values(cs) == ref.values(cs)


def test_a_block_taking_an_earlier_blocks_output_beside_its_hidden_states_falls_back():
    """Zaya hands its router states from block to block: replayed from the cache they would be stale
    under a removal (logits off by up to 4.5e-3, relative, on some batches of the toy task; 7e-6 on the
    first), so the engine refuses to cache, naming the argument, and gives the plain hooked forwards' values."""
    torch.manual_seed(0)
    cfg = tf.AutoConfig.for_model(
        "zaya",
        vocab_size=128,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=1,
        moe_intermediate_size=32,
        pad_token_id=0,
    )
    zaya = tf.AutoModelForCausalLM.from_config(cfg).eval()
    lm, ev = build_layer_map(zaya), NextTokenLoss(128)
    with pytest.warns(RuntimeWarning, match="block 1 takes 'prev_router_hidden_states' from an earlier block"):
        eng = CoalitionEngine(zaya, lm, ev, "sublayer")
    assert eng.mode == "uncached"
    ref = CoalitionEngine(zaya, lm, ev, "sublayer", uncached=True)
    cs = random_coalitions(4, 3)
    assert eng.values(cs) == ref.values(cs)


# ----------------------------------------------------------------------------- the trie walk


def all_coalitions(n: int) -> list[frozenset]:
    return [frozenset(i for i in range(n) if (k >> i) & 1) for k in range(1 << n)]


def test_exact_shapley_computes_each_prefix_state_once(tok):
    """1024 coalitions in exact Shapley's four chunks: each distinct (stage, prefix pattern) state is
    computed once, and the values equal the whole-block traversal's bit for bit."""
    model = tiny_model("llama", n_layers=5, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=8, model=model)
    batches = len(ev.batches)
    eng = CoalitionEngine(model, lm, ev, "sublayer")
    assert eng.describe()["stages"] == "sub-layer stages, removed skipped"
    n = eng.n
    res = shapley(eng, n, "exact")
    everyone = all_coalitions(n)
    # a sub-layer runs once per pattern of the players before it when kept (the empty pattern: the
    # full model's state mid-block, once per block); its own removal is skipped
    bound = (sum(2**s - 1 for s in range(n)) + lm.n_blocks) * batches
    assert eng.prefix_bound(everyone) == bound
    assert eng.stats.stage_runs == eng.stats.block_forwards == bound  # every mid-block state is shared here
    old = CoalitionEngine(model, lm, ev, "sublayer", whole_blocks=True)
    assert old.describe()["stages"] == "whole blocks, removed run"
    assert old.values(everyone) == eng.values(everyone)
    # whole blocks: one call per (block, pattern of the players up to it), the full model's aside
    whole = sum(4 ** (d + 1) - 1 for d in range(5)) * batches
    assert old.stats.block_forwards == old.stats.stage_runs == old.prefix_bound(everyone) == whole
    assert eng.stats.block_forwards < whole
    np.testing.assert_array_equal(shapley(old, n, "exact").values, res.values)


def test_walk_holds_one_state_per_stage_within_the_cache_bound(tok):
    model = tiny_model("llama", n_layers=3, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    ref = CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    everyone = all_coalitions(6)
    want = ref.values(everyone)
    eng = CoalitionEngine(model, lm, ev, "sublayer")
    assert eng.values(everyone) == want
    base = eng._forward.cache.base_bytes
    one_state = base / lm.n_blocks  # one block input over every batch: the path holds one per stage
    assert eng.stats.peak_cache_bytes <= base + eng._forward.plan.n_stages * one_state
    assert eng.stats.path_refused == 0 and eng.stats.stage_runs == eng.prefix_bound(everyone)
    small = CoalitionEngine(model, lm, ev, "sublayer", cache_mb=1.01 * base / 2**20)  # no room for path states
    assert small.values(everyone) == want
    assert small.stats.peak_cache_bytes <= small.budget and small.stats.path_refused > 0
    assert small.stats.stage_runs > eng.stats.stage_runs


@pytest.mark.parametrize("arch", ["gpt_neox", "phi"])
def test_parallel_residual_blocks_stay_whole(tok, arch):
    """attn and MLP both read the block input: the sub-layer split would be wrong, the check refuses it."""
    model = tiny_model(arch, n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    eng = CoalitionEngine(model, lm, ev, "sublayer")
    assert eng.describe()["stages"] == "whole blocks, removed skipped"
    everyone = all_coalitions(eng.n)
    assert eng.values(everyone) == CoalitionEngine(model, lm, ev, "sublayer", uncached=True).values(everyone)


def test_few_removals_make_no_more_block_calls_than_whole_blocks(tok):
    """Proximity windows share little: sub-layer stages must not split blocks where nothing is reused."""
    model = tiny_model("llama", n_layers=4, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    n, everyone = 8, frozenset(range(8))
    windows = [everyone - set(range(s, s + w)) for w in (1, 2, 3) for s in range(n - w + 1)]
    new = CoalitionEngine(model, lm, ev, "sublayer")
    old = CoalitionEngine(model, lm, ev, "sublayer", whole_blocks=True)
    assert new.values(windows) == old.values(windows)
    assert new.stats.block_forwards <= old.stats.block_forwards
    assert new.stats.stage_runs == new.prefix_bound(windows)


def test_exact_chunks_are_subtrees_of_the_engine_order():
    from layerscope.methods.shapley.enumeration import trie_order

    n, full = 6, 63
    order = [int(m) for m in trie_order(n)]
    assert sorted(order) == list(range(1 << n))
    removed_masks = [full ^ m for m in order]
    assert removed_masks == sorted(removed_masks, key=lambda r: tuple((r >> p) & 1 for p in range(n)))
    for k in (2, 4):  # chunks of 2**k share the first n - k players' removal pattern
        first = (1 << (n - k)) - 1
        for c in range(0, 1 << n, 1 << k):
            assert len({r & first for r in removed_masks[c : c + (1 << k)]}) == 1


# ----------------------------------------------------------------------------- bad input


def test_bad_input_fails_clearly(tok):
    model = tiny_model("llama", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    eng = CoalitionEngine(model, lm, ev, "sublayer")
    with pytest.raises(ConfigError, match="out of range"):
        eng.value({0, 4})
    with pytest.raises(ConfigError, match="out of range"):
        eng.value({-1})
    with pytest.raises(ConfigError, match="not an integer"):
        eng.value({0.5})
    with pytest.raises(ConfigError, match="not an integer"):
        eng.value({"layers.0.mlp"})
    # a boolean keep-mask is not a list of indices: torch's and numpy's bools index as 0 / 1
    with pytest.raises(ConfigError, match="not an integer"):
        eng.value(torch.tensor([True, False, True]))
    with pytest.raises(ConfigError, match="not an integer"):
        eng.value(np.array([True, False, True]))
    assert eng.value(torch.tensor([0, 2])) == eng.value([0, 2])  # integer tensors are indices
    with pytest.raises(ConfigError, match="not an index"):
        resolve_players(torch.tensor([True, False]), lm.players("sublayer"))
    with pytest.raises(ConfigError, match="unknown granularity"):
        CoalitionEngine(model, lm, ev, "head")
    with pytest.raises(ConfigError, match="unknown granularity"):
        with removed(model, lm, [0], "layer"):
            pass
    with pytest.raises(ConfigError, match="no player named"):
        resolve_players(["layers.9.mlp"], lm.players("sublayer"))
    with pytest.raises(ConfigError, match="out of range"):
        with removed(model, lm, [7], "sublayer"):
            pass
    empty = NextTokenLoss(128)
    empty.batches = []
    with pytest.raises(ConfigError, match="empty item set"):
        CoalitionEngine(model, lm, empty, "sublayer")
    with pytest.raises(ConfigError, match="not an evaluator"):
        CoalitionEngine(model, lm, object(), "sublayer")
    with pytest.raises(ConfigError, match="cache_mb"):
        CoalitionEngine(model, lm, ev, "sublayer", cache_mb=-1)
    model.train()
    try:
        with pytest.raises(ConfigError, match="training mode"):
            CoalitionEngine(model, lm, ev, "sublayer")
    finally:
        model.eval()


def test_the_loaded_model_wrapper_or_swapped_arguments_are_named(tok):
    """``load_model`` returns a LoadedModel; passing it (not its .model), or a tokenizer where the model
    goes, is one ModelError saying what to pass, not an AttributeError from deep inside."""
    from layerscope.core.models import LoadedModel
    from layerscope.scoring import evaluator_for, mc_evaluator

    model = tiny_model("llama", n_layers=2, vocab=512)
    loaded = LoadedModel(model=model, tokenizer=tok, name="tiny")
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    wrapper = "got the LoadedModel that load_model returns: pass its .model"
    with pytest.raises(ModelError, match=wrapper):
        build_layer_map(loaded)
    with pytest.raises(ModelError, match=wrapper):
        CoalitionEngine(loaded, build_layer_map(model), ev, "sublayer")
    with pytest.raises(ModelError, match=wrapper):
        mc_evaluator(tok, make_task(), 2, loaded)
    with pytest.raises(ModelError, match=r"expected a torch model \(nn.Module\), got "):
        evaluator_for("arc_easy", tok, model, limit=4, batch_size=2, max_length=64)  # model and tokenizer swapped


def test_a_block_that_cannot_run_with_a_sublayer_stubbed_is_refused_in_one_line(monkeypatch):
    """Reformer's attention returns an output object its removal's stand-in is not: the block fails
    inside the removal check, which names the model and the player instead of a traceback."""
    from layerscope.core.errors import ModelError
    from layerscope.engine import removal_check

    def breaks(*args, **kwargs):
        raise AttributeError("'tuple' object has no attribute 'hidden_states'")

    monkeypatch.setattr(removal_check, "_pattern_difference", breaks)
    model = tiny_model("llama", n_layers=2)
    with pytest.raises(ModelError, match=r"removing layers.0.self_attn breaks the block's forward \(AttributeError"):
        removal_check.check_removal(model, build_layer_map(model))


@pytest.mark.parametrize(
    "other, fragment",
    [
        (
            lambda: tiny_model("llama", n_layers=3),
            r"\(3 blocks at 'model.layers'\) is not .*: the model has 2 blocks there",
        ),
        (
            lambda: tiny_model("llama", n_layers=1),
            r"\(1 block at 'model.layers'\) is not .*: the model has 2 blocks there",
        ),
        (lambda: tiny_model("gpt_neox", n_layers=2), r"the model has no block list at 'gpt_neox.layers'"),
        (lambda: tiny_model("phi", n_layers=2), r"the model has no module 'model.layers.0.self_attn.dense'"),
    ],
)
def test_a_layer_map_of_another_model_is_refused_in_one_line(other, fragment):
    """``ablate(model, ev, layer_map=<another model's>)`` was an AttributeError naming a module index (more
    blocks) or a misleading residual-stream refusal (fewer): the removal check first checks that the
    layer map's block list and modules are the model's."""
    from layerscope.engine.removal_check import check_layer_map_fits
    from layerscope.methods.ablation import ablate

    model = tiny_model("llama", n_layers=2)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 2).examples, batch_size=2)
    wrong = build_layer_map(other())
    hint = r" \(a layer map of another model\? build it with build_layer_map\(model\)\)$"
    with pytest.raises(ConfigError, match=fragment + hint):
        ablate(model, ev, layer_map=wrong, granularity="block")
    with pytest.raises(ConfigError, match=fragment):
        CoalitionEngine(model, wrong, ev, "sublayer", uncached=True)
    with pytest.raises(ConfigError, match=fragment):
        with removed(model, wrong, [0], "block"):
            pass
    check_layer_map_fits(model, build_layer_map(model))  # its own: fine


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.model.layers[1].mlp.down_proj.weight.mul_(5.0),  # in place, as autograd sees it
        lambda m: m.model.layers[1].mlp.down_proj.weight.data.mul_(5.0),  # through .data: no version bump
        lambda m: m.to(torch.bfloat16),
        lambda m: m.load_state_dict({k: v * 2 for k, v in m.state_dict().items()}),
    ],
    ids=["in-place", "through-data", "dtype", "load-state-dict"],
)
def test_a_model_changed_after_the_engine_was_built_is_refused_not_given_old_values(tok, edit, request):
    model = tiny_model("llama", n_layers=3, vocab=512)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    before = engine.values([[0, 1], [1, 2]])
    assert engine.values([[0, 1], [1, 2]]) == before  # unchanged weights: the memo answers
    with torch.no_grad():
        edit(model)
    with pytest.raises(ModelError, match="the model changed after this CoalitionEngine was built") as refused:
        engine.values([[0, 1]])
    said = {"in-place": "written in place", "through-data": "edited in place", "dtype": "has another dtype"}
    assert said.get(request.node.callspec.id, "") in str(refused.value)
    with pytest.raises(ModelError, match="build a new engine"):
        engine.full()


def test_an_unchanged_model_is_not_refused_after_other_work_on_it(tok):
    """The weights check must not fire on a model that did not change: other methods run on it in
    between (ILA wraps it in peft and unloads), inference mode, a non-contiguous weight."""
    from layerscope.methods.ila import ILAConfig, run_ila
    from layerscope.methods.similarity import similarity

    model = tiny_model("llama", n_layers=3, vocab=512)
    down = model.model.layers[1].mlp.down_proj
    down.weight = torch.nn.Parameter(down.weight.detach().t().contiguous().t())  # same values, transposed layout
    assert not down.weight.is_contiguous()
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    before = engine.values([[0, 1], [2]])
    similarity(model, engine.layer_map, [[1, 2, 3, 4, 5]])
    examples = [SFTExample(list(range(1, 13)), [-100] * 4 + list(range(5, 13)))] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 2-step ILA ranks nothing worth reading
        run_ila(model, None, examples, ILAConfig(max_steps=2, min_steps=1, gate_steps=1, progress=False))
    with torch.inference_mode():
        assert engine.values([[0, 1], [2]]) == before
    engine.memo_enabled = False  # computed again, not read from the memo
    assert engine.values([[0, 1], [2]]) == before
    with torch.no_grad():
        down.weight.data[0, 0] += 1.0  # through .data (no version bump); the first element is sampled
    with pytest.raises(ModelError, match=r"edited in place \(through \.data"):
        engine.values([[0, 1]])


def test_a_block_deleted_in_place_after_the_removal_check_passed_is_refused():
    model = tiny_model("llama", n_layers=3)
    lm = build_layer_map(model)
    with removed(model, lm, [0], "block"):  # the removal check runs and passes once
        pass
    del model.model.layers[2]
    with pytest.raises(ConfigError, match=r"\(3 blocks at 'model.layers'\) is not .*: the model has 2 blocks there"):
        with removed(model, lm, [0], "block"):
            pass

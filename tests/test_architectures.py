"""Breadth: every decoder-only family in tests/tiny_models.FAMILIES either works end to end or is refused by name.

Per family (a tiny random 2-block model): the layer map; multiple-choice evaluation, packed rows (when
the model supports them) agreeing with plain rows; the removal check; ablation and one Shapley estimator
at sub-layer and block granularity, the coalition engine equal to plain hooked forwards; similarity; on
a MoE family, expert players (removing every expert of a block equals removing its MLP, exactly). A
family the removal check (or the layer map) refuses must be refused by the engine too, with the same
one-line error. Then, on every family with a layer map (refused ones too: none of these removes a layer;
tests/training_checks.py): ILA (two LoRA and two gate steps: one finite score per LoRA-adapted module,
the model given back with the same logits), LoRA fine-tuning of the top half of ILA's ranking (two
steps: only the selected modules' adapters train, and all of them move) and the peft / axolotl /
llama-factory exports of that selection (each config, built by peft on a fresh copy, adapts exactly the
selected modules; axolotl's full-tuning regexes match exactly their parameters; a format the installed
peft reads differently must say "NOT EXACT"). docs/architectures.md lists every family with its results;
the test fails when the page disagrees. Regenerate the page with ``python tests/test_architectures.py``.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import FAMILIES, FAMILY_NAMES, tiny_model  # noqa: E402
from training_checks import TRAINING_STEPS, check_training, paths, probe_logits  # noqa: E402

from layerscope.core.errors import ModelError  # noqa: E402
from layerscope.core.layermap import build_layer_map  # noqa: E402
from layerscope.core.tasks import MCItem, Task  # noqa: E402
from layerscope.engine.coalitions import CoalitionEngine, removed  # noqa: E402
from layerscope.engine.hooks import residual_position  # noqa: E402
from layerscope.engine.removal_check import check_removal  # noqa: E402
from layerscope.methods.ablation import ablate  # noqa: E402
from layerscope.methods.shapley import shapley  # noqa: E402
from layerscope.methods.similarity import block_influence  # noqa: E402
from layerscope.scoring import MCEvaluator, mc_evaluator  # noqa: E402
from layerscope.scoring.multiple_choice import PACKING_TOLERANCE  # noqa: E402
from layerscope.training.lora import inject_lora, load_lora, lora_adapted_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architectures.md"
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
LOGLIK_TOL = 1e-5  # cached engine vs plain hooked forwards (the self-check's own tolerance)


def toy_task() -> Task:
    items = [
        MCItem("Once upon a time, there was a little girl named", [" Lily", "Tom", "a big red ball"], 0),
        MCItem("The cat sat on the", ["mat", "dog", "moon and the stars", "a"], 2),
        MCItem("One day, Tim went to the store to buy some", ["milk", "toys for his sister", "b"], 1),
        MCItem("She loved to play outside in the", ["park.", "sky with her mom", "x"], 0),
    ]
    return Task(name="toy", items=items, chance=0.3, metric="acc_norm", source="test", fingerprint="x")


def _logliks(results) -> np.ndarray:
    return np.concatenate([np.concatenate([np.array(x) for x in r.loglikelihoods]) for r in results])


def _without_numbers(message: str) -> str:
    """A refusal message as the page shows it: the measured difference (a float) left out."""
    return re.sub(r" \([^()]*\d\.\d+e[+-]\d+[^()]*\)", "", message).split("; layer scores would be")[0]


def run_family(name: str, tok) -> tuple[str, str, dict[str, str]]:
    """(result, notes, training) of one family, asserting along the way; result is "works" or "refused",
    training maps each of ILA / finetune / exports to its outcome."""
    model = tiny_model(name, n_layers=2, vocab=512)
    try:
        lm = build_layer_map(model)
    except ModelError as e:
        return "refused", f"layer map: {_without_numbers(str(e))}", dict.fromkeys(TRAINING_STEPS, "not run")
    result, notes = _check_removal_methods(model, lm, tok)
    training, training_notes = check_training(name, model, lm, tok)  # needs no removal: run on refused ones too
    return result, "; ".join(n for n in (notes, training_notes) if n), training


def _check_removal_methods(model, lm, tok) -> tuple[str, str]:
    """Evaluation, the removal check, ablation, Shapley, similarity and experts: (result, notes)."""
    assert lm.n_blocks == 2 and [s.kind for s in lm.sublayers] == ["attn", "mlp", "attn", "mlp"]
    assert lm.players("block") == [lm.block_name(0), lm.block_name(1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "packing is not supported": recorded below
        ev = mc_evaluator(tok, toy_task(), 4, model)
    try:
        check_removal(model, lm)
    except ModelError as e:
        with pytest.raises(ModelError, match="does not leave the residual stream intact"):
            CoalitionEngine(model, lm, ev, "block")
        return "refused", _without_numbers(str(e))
    notes = [_check_eval(model, tok, ev)]
    for granularity in ("sublayer", "block"):
        notes.append(_check_engine(model, lm, ev, granularity))
    sim = block_influence(model, lm, [list(range(2, 14)), list(range(20, 29))])
    assert len(sim.scores) == 2 and all(np.isfinite(sim.scores))
    notes.append(_check_experts(model, lm) if lm.experts else "")
    return "works", "; ".join(dict.fromkeys(n for n in notes if n))


def _check_experts(model, lm) -> str:
    """Removing every expert of block 0 is removing its MLP, exactly. Returns the note on the experts."""
    ids = torch.randint(2, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    records = lm.player_records("expert")
    logits = []
    for players, granularity in (([p.name for p in records if p.block == 0], "expert"), ([1], "sublayer")):
        with torch.no_grad(), removed(model, lm, players, granularity):
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(*logits)
    layers = len({p.targets[0] for p in records if p.expert is not None})
    routed = sum(p.expert is not None for p in records) // layers
    shared = sum(p.expert is None for p in records) // layers
    return f"expert players: {routed} routed" + (f" + {shared} shared" if shared else "") + " per MoE layer"


def _check_eval(model, tok, ev) -> str:
    """Packed rows (when the model supports them) agree with plain rows; returns the note on the layout."""
    plain = MCEvaluator(tok, toy_task(), 4, layout="plain", model=model)
    a, b = ev.evaluate(model), plain.evaluate(model)
    assert np.abs(_logliks([a]) - _logliks([b])).max() <= PACKING_TOLERANCE
    assert a.predictions == b.predictions
    if ev.layout == "packed":
        return ""
    probe = MCEvaluator(tok, toy_task(), 4, model=model)
    probe.packing_difference(model)
    return (
        "plain rows: the forward fails on packed rows"
        if probe.packing_failure(model)
        else "plain rows: packed scores differ"
    )


def _check_engine(model, lm, ev, granularity: str) -> str:
    """Ablation and permutation Shapley: the engine equals plain hooked forwards. Returns the note on the engine."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        fast = CoalitionEngine(model, lm, ev, granularity)
    ref = CoalitionEngine(model, lm, ev, granularity, uncached=True)
    a, b = ablate(fast), ablate(ref)
    assert a.scores == b.scores, granularity
    singles = [[q for q in range(fast.n) if q != p] for p in range(fast.n)]
    assert np.abs(_logliks(fast.results(singles)) - _logliks(ref.results(singles))).max() <= LOGLIK_TOL
    sa = shapley(fast, fast.n, "permutation", budget=12, seed=0)
    sb = shapley(ref, ref.n, "permutation", budget=12, seed=0)
    assert list(sa.values) == list(sb.values), granularity
    if fast.mode == "cached":
        notes = [] if fast.use_stubs else ["engine: removed modules run (stubs disagree)"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            stacked = CoalitionEngine(model, lm, ev, granularity, coalition_batch=3)
        if stacked.coalition_batch == 3:
            assert np.abs(_logliks(stacked.results(singles)) - _logliks(ref.results(singles))).max() <= LOGLIK_TOL
        else:
            notes.append("coalitions one per forward (stacked rows refused)")
        return "; ".join(notes)
    assert any("falls back" in str(w.message) for w in caught)
    return "engine: plain hooked forwards (self-check fallback)"


def test_lora_on_shared_experts_stays_where_asked(tmp_path):
    """DeepSeek-V3's shared-expert projections are named like transformers-4 expert weights: layerscope's
    LoRA adapts (and reloads) them as named, never the fused experts peft would move them to."""
    model = tiny_model("deepseek_v3", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    modules = [m.name for m in lm.linears if ".shared_experts." in m.name or m.name.endswith("o_proj")]
    peft_model = inject_lora(model, lm, modules, dropout=0.05)  # peft's fused-expert wrapper refuses dropout
    assert set(lora_adapted_paths(peft_model)) == paths(lm, modules)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    peft_model.eval()
    peft_model.save_pretrained(tmp_path)
    reloaded = load_lora(tiny_model("deepseek_v3", n_layers=2, vocab=512), tmp_path)
    assert set(lora_adapted_paths(reloaded)) == paths(lm, modules)
    assert torch.equal(probe_logits(reloaded), probe_logits(peft_model))


# ----------------------------------------------------------------------------- residual-adding modules, the check


@pytest.mark.parametrize("name, adding", [("bloom", {"self_attention", "mlp"}), ("mpt", {"ffn"})])
def test_residual_adding_modules_are_removed_by_passing_their_residual(name, adding):
    """BLOOM's attention and MLP and MPT's MLP add the residual themselves: removing them must return it."""
    model = tiny_model(name, n_layers=3, vocab=512)
    lm = build_layer_map(model)
    found = {
        s.name.rsplit(".", 1)[-1]
        for s in lm.sublayers
        if residual_position(model.get_submodule(s.hook_path)) is not None
    }
    assert found == adding, name
    block, seen = model.get_submodule(lm.block_path(1)), {}

    def keep_input(module, args, kwargs) -> None:
        seen["in"] = (args or (kwargs["hidden_states"],))[0].clone()

    def keep_output(module, args, out) -> None:
        seen["out"] = out if torch.is_tensor(out) else out[0]

    pre = block.register_forward_pre_hook(keep_input, with_kwargs=True)
    post = block.register_forward_hook(keep_output)
    ids = torch.randint(2, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), removed(model, lm, [lm.block_name(1)], "block"):
            model(input_ids=ids)
    finally:
        pre.remove()
        post.remove()
    assert torch.equal(seen["in"], seen["out"]), name  # the block is an identity map, not a wipe
    with torch.no_grad(), removed(model, lm, range(3), "block"):
        logits = model(input_ids=ids).logits
    assert float(logits.std(-1).min()) > 0, name  # not the uniform prediction of a wiped hidden state


def test_the_check_refuses_a_removal_that_wipes_the_hidden_state(monkeypatch):
    """Zeroing BLOOM's residual-adding modules (the old removal) must be refused, never scored."""
    import layerscope.engine.hooks as hooks

    model = tiny_model("bloom", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    assert set(check_removal(model, lm)) == {"attn", "mlp", "block"}
    monkeypatch.setattr(hooks, "residual_position", lambda module: None)
    with pytest.raises(ModelError, match=r"^BloomForCausalLM: removing h\.0\.self_attention does not leave"):
        check_removal(model, lm)


def test_post_norm_model_is_refused_everywhere_removal_is_used(tok):
    model = tiny_model("opt_postnorm", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, toy_task(), 4, model=model)
    for uncached in (False, True):
        with pytest.raises(ModelError, match="OPTForCausalLM: removing layers.0.self_attn does not leave"):
            CoalitionEngine(model, lm, ev, "sublayer", uncached=uncached)
    with pytest.raises(ModelError, match="residual stream intact"):
        with removed(model, lm, [0], "sublayer"):
            pass
    with pytest.raises(ModelError, match="residual stream intact"):
        ablate(model, ev, "block", layer_map=lm)


def test_engine_stubs_return_the_residual(tok):
    """MPT's MLP stub (not run at all) returns its residual; the engine then equals plain forwards."""
    model = tiny_model("mpt", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, toy_task(), 4, layout="plain", model=model)
    fast = CoalitionEngine(model, lm, ev, "sublayer")
    assert fast.mode == "cached" and fast.use_stubs
    sig = fast._forward.signatures[lm.sublayers[1].hook_path]
    assert sig.ok and sig.residual is not None
    ref = CoalitionEngine(model, lm, ev, "sublayer", uncached=True)
    cs = [[0, 2, 3], [0, 1, 2], [1, 3], []]
    assert np.abs(_logliks(fast.results(cs)) - _logliks(ref.results(cs))).max() <= LOGLIK_TOL


def test_packing_probe_failure_means_plain_rows(tok):
    """An ALiBi model's own mask code fails on packed rows: plain rows with one warning, never a traceback."""
    model = tiny_model("bloom", n_layers=2, vocab=512)
    with pytest.warns(RuntimeWarning, match="fails on packed rows"):
        ev = mc_evaluator(tok, toy_task(), 4, model)
    assert ev.layout == "plain"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per model
        assert mc_evaluator(tok, toy_task(), 4, model).layout == "plain"
    packed = MCEvaluator(tok, toy_task(), 4, model=model)
    assert packed.packing_difference(model) == float("inf") and "ValueError" in packed.packing_failure(model)
    with pytest.raises(ModelError, match="fails on packed rows .*layout='plain'"):
        packed.evaluate(model)


# ----------------------------------------------------------------------------- the page


def page_rows() -> dict[str, tuple[str, ...]]:
    """family -> (result, ILA, finetune, exports, notes) as docs/architectures.md lists them."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 8:
            rows[cells[0].strip("`")] = tuple(cells[3:])
    return rows


def render_row(name: str, model_class: str, cells: tuple[str, ...]) -> str:
    return f"| `{name}` | {model_class} | {FAMILIES[name].features} | " + " | ".join(cells) + " |"


def test_page_lists_every_family():
    assert list(page_rows()) == FAMILY_NAMES, "docs/architectures.md is stale: run python tests/test_architectures.py"


def page_cells(name: str, result: str, notes: str, training: dict[str, str]) -> tuple[str, ...]:
    """The cells of a family's row after its name: result, ILA, finetune, exports, notes (a refusal
    gives its one-line error and why)."""
    why = FAMILIES[name].refused_because
    assert bool(why) == (result == "refused"), f"{name}: {result}, but tiny_models says refused_because={why!r}"
    return result, *(training[s] for s in TRAINING_STEPS), f"{notes}; why: {why}" if why else notes


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family(name, tok):
    got = page_cells(name, *run_family(name, tok))
    assert page_rows().get(name) == got, f"docs/architectures.md is stale for {name}: {got}"


def _write_page(tok) -> None:
    rows = []
    for name in FAMILY_NAMES:
        cells = page_cells(name, *run_family(name, tok))
        rows.append(render_row(name, type(tiny_model(name, 2, vocab=512)).__name__, cells))
        print(rows[-1])
    text = DOC.read_text()
    start, end = text.index("<!-- table -->\n"), text.index("<!-- /table -->")
    header = (
        "| family | model class | what it exercises | result | ILA | finetune | exports | notes |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    DOC.write_text(text[: start + len("<!-- table -->\n")] + header + "\n".join(rows) + "\n" + text[end:])


if __name__ == "__main__":  # regenerate the table in docs/architectures.md
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from transformers import AutoTokenizer

    _write_page(AutoTokenizer.from_pretrained(STORIES))

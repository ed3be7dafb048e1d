import copy
import json
import math
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import torch
from tiny_models import ARCHS, tiny_model

from layerscope.core.data import load_sft
from layerscope.core.errors import ConfigError, DataError, ModelError
from layerscope.core.tasks import MCItem, Task, load_task
from layerscope.scoring import (
    LAYOUTS,
    PACKING_TOLERANCE,
    Batch,
    EvalResult,
    LossEvaluator,
    MCEvaluator,
    default_forward,
    evaluate_task,
    evaluator_for,
    evaluator_info,
    mc_evaluator,
    packing_tolerance,
    partition_sorted,
)
from layerscope.scoring.encoding import encode_pairs

TOL = 1e-4


def make_task(items, metric="acc_norm", name="toy") -> Task:
    chance = sum(1 / len(it.choices) for it in items) / len(items)
    return Task(name=name, items=items, chance=chance, metric=metric, source="test", fingerprint="x")


TOY = make_task(
    [
        MCItem("Once upon a time, there was a little girl named", [" Lily", "Tom", "a big red ball that could fly"], 0),
        MCItem("She loved to play outside in the ", ["park.", "sky with her mom and dad", "x"], 0),  # trailing space
        MCItem("The cat sat on the", ["mat", "dog", "moon and the stars", "a"], 2),
        MCItem("One day, Tim went to the store to buy some", ["milk", "toys for his sister", "b"], 1),
        MCItem("", ["Once upon a time", "The end."], 0),  # empty context
        MCItem('Ben said: "I want to play!"', ["Mom said yes.", "No.", "They played all day long in the sun."], 1),
    ]
)


def reference_logliks(model, tok, task: Task, max_length: int | None = None) -> list[list[float]]:
    """The obvious implementation: one full forward per (context, choice), lm-eval's tokenization."""
    out = []
    with torch.no_grad():
        for it in task.items:
            row = []
            for choice in it.choices:
                ctx, cont = it.context, task.target_delimiter + choice
                n = len(ctx) - len(ctx.rstrip())
                if n:
                    ctx, cont = ctx[:-n], ctx[-n:] + cont
                if ctx:
                    ce = tok.encode(ctx)
                    ke = tok.encode(ctx + cont)[len(ce) :]
                else:
                    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                    ce, ke = [prefix], tok.encode(cont, add_special_tokens=False)
                full = ce + ke
                if max_length is not None:
                    full = full[-(max_length + 1) :]
                inp = full[:-1]
                lp = model(input_ids=torch.tensor([inp])).logits[0].float().log_softmax(-1)
                start = len(inp) - len(ke)
                row.append(sum(lp[start + i, t].item() for i, t in enumerate(ke)))
            out.append(row)
    return out


def assert_matches(res: EvalResult, ref: list[list[float]], task: Task) -> None:
    got = np.concatenate([np.array(r) for r in res.loglikelihoods])
    want = np.concatenate([np.array(r) for r in ref])
    assert np.abs(got - want).max() < TOL
    acc_pred = [int(np.argmax(r)) for r in ref]
    norm_pred = [int(np.argmax(np.array(r) / [len(c) for c in it.choices])) for r, it in zip(ref, task.items)]
    want_pred = norm_pred if task.metric == "acc_norm" else acc_pred
    assert res.predictions == want_pred
    golds = [it.gold for it in task.items]
    assert res.metrics["acc"] == pytest.approx(np.mean([p == g for p, g in zip(acc_pred, golds)]))
    assert res.metrics["acc_norm"] == pytest.approx(np.mean([p == g for p, g in zip(norm_pred, golds)]))


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name, limit", [("arc_easy", 8), ("hellaswag", 4), ("mmlu", 4), ("boolq", 3)])
def test_real_tasks_match_reference_stories(stories, name, limit):
    model, tok = stories
    task = load_task(name, limit=limit)
    res = MCEvaluator(tok, task, batch_size=3).evaluate(model)
    assert res.n_items == limit and res.value == res.metrics[task.metric]
    assert_matches(res, reference_logliks(model, tok, task), task)


def test_toy_task_matches_reference_stories(stories):
    model, tok = stories
    ref = reference_logliks(model, tok, TOY)
    for layout in ("packed", "plain"):
        for bs in (1, 4):
            ev = MCEvaluator(tok, TOY, batch_size=bs, layout=layout)
            assert all(b.size <= bs for b in ev.batches)
            assert_matches(ev.evaluate(model), ref, TOY)
    assert any(b.attention_mask.dim() == 4 for b in MCEvaluator(tok, TOY, 4).batches)


def test_log_softmax_taken_a_chunk_of_positions_at_a_time_gives_the_same_values(stories, monkeypatch):
    """The normaliser is computed over chunks of scored positions (so the float32 copy of the logits is never
    whole): chunks of 7 positions give the evaluator's values to the last bit, in float32 and in bfloat16."""
    from layerscope.scoring import runner

    model, tok = stories
    calls, chunk_elements = [], runner._LSE_CHUNK_ELEMENTS
    logsumexp = torch.logsumexp
    monkeypatch.setattr(torch, "logsumexp", lambda *a, **k: calls.append(1) or logsumexp(*a, **k))
    for dtype in (torch.float32, torch.bfloat16):
        m = copy.deepcopy(model).to(dtype)  # not the shared fixture: bfloat16 would round its weights
        ev = MCEvaluator(tok, TOY, batch_size=4)
        ev.evaluate(m)  # the first evaluation also probes the packing
        calls.clear()
        whole = ev.evaluate(m)
        assert len(calls) == len(ev.batches)  # one chunk per batch
        monkeypatch.setattr(runner, "_LSE_CHUNK_ELEMENTS", 7 * m.config.vocab_size)
        calls.clear()
        chunked = ev.evaluate(m)
        assert len(calls) > len(ev.batches)  # several
        monkeypatch.setattr(runner, "_LSE_CHUNK_ELEMENTS", chunk_elements)
        calls.clear()
        assert chunked.loglikelihoods == whole.loglikelihoods


@pytest.mark.parametrize("arch", sorted(set(ARCHS) | {"llama", "gpt2", "gpt_neox", "opt", "phi", "qwen2"}))
def test_tiny_architectures_match_reference(tok, arch):
    model = tiny_model(arch, n_layers=2, vocab=512)
    ref = reference_logliks(model, tok, TOY)
    ev = MCEvaluator(tok, TOY, batch_size=3)
    assert ev.check_packing(model) < TOL
    assert_matches(ev.evaluate(model), ref, TOY)
    assert_matches(evaluate_task(model, tok, TOY, batch_size=2), ref, TOY)


def test_truncation_like_lm_eval(stories):
    model, tok = stories
    ref = reference_logliks(model, tok, TOY, max_length=16)
    ev = MCEvaluator(tok, TOY, batch_size=4, max_length=16)
    assert_matches(ev.evaluate(model), ref, TOY)


def test_same_as_lm_eval_harness(stories):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = stories
    task = make_task(TOY.items + load_task("arc_easy", limit=4).items)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    reqs = [
        Instance(request_type="loglikelihood", doc={}, idx=j, arguments=(it.context, " " + c))
        for it in task.items
        for j, c in enumerate(it.choices)
    ]
    theirs = np.array([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
    ev = MCEvaluator(tok, task, batch_size=4)
    ours = ev.evaluate(model)
    got = np.concatenate([np.array(r) for r in ours.loglikelihoods])
    assert np.abs(got - theirs).max() < TOL
    assert ev.result_from_loglikelihoods(theirs).predictions == ours.predictions


# ----------------------------------------------------------------------------- metrics


def test_acc_norm_and_stderr(tok):
    task = make_task([MCItem("Q", ["aaaa", "b"], 0), MCItem("Q", ["cc", "dddddddd"], 1), MCItem("R", ["e", "f"], 0)])
    ev = MCEvaluator(tok, task)
    # item 0: raw picks 1 (-2 > -3) but per char picks 0 (-3/4 > -2/1); item 1: raw 0, norm 1; item 2: tie -> first
    r = ev.result_from_loglikelihoods(np.array([-3.0, -2.0, -4.0, -10.0, -1.0, -1.0]))
    assert r.loglikelihoods == [[-3.0, -2.0], [-4.0, -10.0], [-1.0, -1.0]]
    assert r.metrics["acc"] == pytest.approx(1 / 3)
    assert r.metrics["acc_norm"] == pytest.approx(1.0)
    assert r.predictions == [0, 1, 0] and r.value == 1.0
    assert r.metrics["acc_stderr"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 2))
    assert r.metrics["acc_norm_stderr"] == 0.0 and r.metrics["chance"] == 0.5
    acc_task = make_task(task.items, metric="acc")
    r2 = MCEvaluator(tok, acc_task).result_from_loglikelihoods(np.array([-3.0, -2.0, -4.0, -10.0, -1.0, -1.0]))
    assert r2.predictions == [1, 0, 0] and r2.value == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- forward callbacks


def test_custom_forward_is_honoured(stories):
    model, tok = stories
    ev = MCEvaluator(tok, TOY, batch_size=2)
    base = ev.evaluate(model)
    seen = []

    def full(i: int, b: Batch) -> torch.Tensor:  # all positions, exactly the batch's inputs
        seen.append(i)
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids).logits

    r = ev.evaluate(model, forward=full)
    assert seen == list(range(len(ev.batches)))
    assert np.allclose(np.concatenate(r.loglikelihoods), np.concatenate(base.loglikelihoods), atol=TOL)
    assert r.predictions == base.predictions
    # a forward returning only the last logits_to_keep positions, and no model at all
    r2 = ev.evaluate(None, forward=default_forward(model))
    assert np.allclose(np.concatenate(r2.loglikelihoods), np.concatenate(base.loglikelihoods), atol=TOL)
    # a forward that changes the model changes the result (it is really used)
    r3 = ev.evaluate(model, forward=lambda i, b: -full(i, b))
    assert not np.allclose(np.concatenate(r3.loglikelihoods), np.concatenate(base.loglikelihoods))
    with pytest.raises(ModelError, match="logits of shape"):
        ev.evaluate(model, forward=lambda i, b: full(i, b)[:, :1])
    with pytest.raises(ConfigError, match="needs a model or a forward"):
        ev.evaluate(None)


class MaskIgnoringLM(torch.nn.Module):
    """A causal LM that drops the attention mask and position ids: packing must be refused."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **_):
        return self.inner(input_ids=input_ids)


def test_packing_probe_refuses_mask_ignoring_models(stories):
    model, tok = stories
    bad = MaskIgnoringLM(model).eval()
    ev = MCEvaluator(tok, TOY, batch_size=4)
    assert ev.check_packing(bad) > 1e-3
    with pytest.raises(ModelError, match="layout='plain'"):
        ev.evaluate(bad)
    # evaluate_task falls back to one row per choice, which such a model scores correctly
    assert_matches(evaluate_task(bad, tok, TOY, batch_size=4), reference_logliks(model, tok, TOY), TOY)
    with mock.patch("layerscope.scoring.multiple_choice.encode_pairs", wraps=encode_pairs) as tokenized:
        fallen_back = mc_evaluator(tok, TOY, 4, bad)
    assert fallen_back.layout == "plain" and tokenized.call_count == 1  # the fallback re-rows, it does not re-tokenize
    fresh = MCEvaluator(tok, TOY, 4, layout="plain")
    assert [b.input_ids.tolist() for b in fallen_back.batches] == [b.input_ids.tolist() for b in fresh.batches]
    assert fallen_back.n_tokens == fresh.n_tokens and not fallen_back._probed
    good = mc_evaluator(tok, TOY, 4, model)
    assert good.layout == "packed" and good.packs and model in good._probed  # probed once, not again on evaluate


def test_evaluator_for_specs(stories):
    model, tok = stories
    ev, info = evaluator_for("arc_easy", model, tok, limit=4, batch_size=4, max_length=64)
    assert isinstance(ev, MCEvaluator) and info == evaluator_info(ev)
    assert info["task"] == "arc_easy" and info["n_items"] == 4 and info["metric"] == ev.task.metric
    ev, info = evaluator_for("loss:demo", model, tok, limit=3, batch_size=2, max_length=64)
    assert isinstance(ev, LossEvaluator) and info["task"] == "loss" and info["n_examples"] == 3
    assert set(info) == {"task", "source", "fingerprint", "n_examples", "metric"}
    with pytest.raises(ConfigError, match="give an SFT file"):
        evaluator_for("loss:", model, tok, limit=None, batch_size=2, max_length=64)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        evaluator_for("arc_easy", model, tok, limit=None, batch_size=0, max_length=64)


def test_evaluator_for_items_after_the_first(stories):
    """``skip``: the items after the first ones (what prune-curve --selection-items chooses on)."""
    model, tok = stories
    both, _ = evaluator_for("arc_easy", model, tok, limit=8, batch_size=4, max_length=64)
    later, info = evaluator_for("arc_easy", model, tok, limit=4, batch_size=4, max_length=64, skip=4)
    assert later.task.items == both.task.items[4:] and info["first_item"] == 4 and info["n_items"] == 4
    assert info["fingerprint"] != evaluator_info(both)["fingerprint"]
    ev, info = evaluator_for("loss:demo", model, tok, limit=3, batch_size=2, max_length=64, skip=3)
    assert info["first_item"] == 3 and info["n_examples"] == 3
    six = load_sft("demo", tok, max_length=64, limit=6).examples
    assert ev.evaluate(model).value == LossEvaluator(tok, six[3:], batch_size=2).evaluate(model).value
    with pytest.raises(DataError, match="none left after the first 100000"):
        evaluator_for("loss:demo", model, tok, limit=3, batch_size=2, max_length=64, skip=100000)


def test_item_numbers_in_errors_count_the_skipped_items(stories, tmp_path):
    """An error about an item after ``skip`` names it by its place in the file, not in the window."""
    model, tok = stories
    rows = [{"query": "Q", "choices": ["a", "b"], "gold": 0}] * 3 + [
        {"query": "Q", "choices": ["a", "b " * 3000], "gold": 0}
    ]
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"mc.jsonl: line 4: a choice alone is longer than max_length=\d+$"):
        evaluator_for(str(p), model, tok, limit=2, batch_size=2, max_length=16, skip=2)


def test_items_cut_to_the_context_are_said_in_one_note(stories, tmp_path, capsys):
    """A query longer than the model's context was cut from the left (as lm-eval cuts it) without a word,
    where SFT examples cut at the length get a note."""
    model, tok = stories
    long = "The cat sat on the mat. " * 200  # past stories260K's 512 positions
    rows = [{"query": q, "choices": ["yes", "no"], "gold": 0} for q in ("Short?", long, "Short?", long)]
    p = tmp_path / "long.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(str(p))
    for _ in range(2):  # a command may build its evaluator twice: one note
        MCEvaluator(tok, task, batch_size=2, model=model)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"note: task long: 2 of 4 items are longer than the model's context (512 tokens) and cut from the left, as "
        f"lm-eval cuts them: their choices are scored without the start of the query (first: {p}: line 2)"
    ]
    MCEvaluator(tok, load_task(str(p), limit=1), batch_size=2, model=model)  # nothing cut: nothing said
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- batching


def test_batches_prepared_once_and_deterministic(tok):
    task = make_task(TOY.items * 5)
    a, b = MCEvaluator(tok, task, batch_size=4), MCEvaluator(tok, task, batch_size=4)
    assert len(a.batches) == len(b.batches)
    for x, y in zip(a.batches, b.batches):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.attention_mask, y.attention_mask)
        assert 0 < x.logits_to_keep <= x.width and x.size <= 4
    widths = [x.width for x in a.batches]
    assert widths == sorted(widths, reverse=True)  # longest first: memory problems show up at once
    # prepared once: evaluating (twice) neither tokenizes nor batches again, and keeps the same batches
    model = tiny_model("llama", n_layers=2, vocab=tok.vocab_size if hasattr(tok, "vocab_size") else 512)
    batches = list(a.batches)
    with (
        mock.patch("layerscope.scoring.multiple_choice.encode_pairs", side_effect=AssertionError("tokenized")),
        mock.patch("layerscope.scoring.multiple_choice.sorted_batches", side_effect=AssertionError("batched")),
    ):
        first, second = a.evaluate(model), a.evaluate(model)
    assert all(x is y for x, y in zip(a.batches, batches)) and first.value == second.value


def test_partition_is_optimal():
    import itertools

    lengths = [40, 39, 30, 12, 11, 10, 9, 3]

    def cost(cuts):
        bounds = list(cuts) + [len(lengths)]
        return sum((b - a) * lengths[a] + 5 for a, b in zip(bounds[:-1], bounds[1:]))

    best = min(
        cost((0,) + c)
        for r in range(len(lengths))
        for c in itertools.combinations(range(1, len(lengths)), r)
        if all(b - a <= 3 for a, b in zip((0,) + c, c + (len(lengths),)))
    )
    cuts = partition_sorted(lengths, 3, overhead=5)
    assert cuts[0] == 0 and cost(cuts) == best
    assert all(b - a <= 3 for a, b in zip(cuts, cuts[1:] + [len(lengths)]))


def test_batch_to_dtype_rebuilds_mask(tok):
    b = next(x for x in MCEvaluator(tok, TOY, 4).batches if x.attention_mask.dim() == 4)
    h = b.to("cpu", torch.bfloat16)
    assert h.attention_mask.dtype == torch.bfloat16
    assert torch.equal(h.attention_mask == 0, b.attention_mask == 0)
    assert torch.isfinite(h.attention_mask).all()


def test_bad_evaluator_options(tok):
    with pytest.raises(ConfigError):
        MCEvaluator(tok, TOY, batch_size=0)
    with pytest.raises(ConfigError):
        MCEvaluator(tok, TOY, layout="zigzag")
    with pytest.raises(DataError, match="longer than max_length"):
        MCEvaluator(tok, TOY, max_length=2, layout="plain")


# ----------------------------------------------------------------------------- loss


@dataclass
class Ex:
    input_ids: list[int]
    labels: list[int]


def manual_loss(model, examples) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
            labels = torch.tensor(e.labels[1:])
            keep = labels != -100
            if keep.any():
                total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
                count += int(keep.sum())
    return total / count, count


def test_loss_evaluator_matches_manual(stories):
    model, tok = stories
    texts = [
        "Once upon a time, there was a cat.",
        "Tom and Lily went to the park to play with a ball.",
        "The end.",
        "She was happy. She smiled and said thank you to her mom.",
    ]
    examples = []
    for i, t in enumerate(texts):
        ids = tok.encode(t)
        cut = 1 + i % 3
        examples.append(Ex(ids, [-100] * cut + ids[cut:]))
    examples.append(Ex(tok.encode("No response here."), [-100] * len(tok.encode("No response here."))))
    loss, n = manual_loss(model, examples)
    ev = LossEvaluator(tok, examples, batch_size=2)
    r = ev.evaluate(model)
    assert r.metrics["loss"] == pytest.approx(loss, abs=TOL)
    assert r.metrics["ppl"] == pytest.approx(math.exp(loss), rel=1e-3)
    assert r.value == pytest.approx(-loss, abs=TOL) and r.predictions is None
    assert r.metrics["n_tokens"] == n and r.n_items == 4
    full = ev.evaluate(model, forward=lambda i, b: model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits)
    assert full.metrics["loss"] == pytest.approx(loss, abs=TOL)
    with pytest.raises(DataError, match="no example with response tokens"):
        LossEvaluator(tok, [examples[-1]])
    with pytest.raises(DataError, match="differ in length"):
        LossEvaluator(tok, [Ex([1, 2, 3], [1, 2])])


def test_token_ids_past_the_vocabulary_are_refused_once_per_model(tok):
    """Data tokenized for another model is refused in one line by every evaluator (and so by the engine),
    not by torch's IndexError deep in the embedding; a model that passed is not checked again."""
    from layerscope.core.layermap import build_layer_map
    from layerscope.engine import CoalitionEngine
    from layerscope.scoring import vocabulary

    small, fits = tiny_model("llama", n_layers=2, vocab=128), tiny_model("llama", n_layers=2, vocab=512)
    ids = tok.encode("Once upon a time, there was a big dog. He liked to play in the sun.")
    top = max(ids)
    assert top >= 128  # the stories260K tokenizer has 512 ids
    loss = LossEvaluator(tok, [Ex(ids, [-100] * 3 + ids[3:])], batch_size=2)
    far = rf"token id {top} >= the model's input vocabulary of 128 \(a tokenizer of another model\?\)$"
    with pytest.raises(DataError, match=f"^the loss examples: {far}"):
        loss.evaluate(small)
    with pytest.raises(DataError, match=f"^the loss examples: {far}"):
        CoalitionEngine(small, build_layer_map(small), loss, "block")
    with pytest.raises(
        DataError, match=r"^task toy: token id \d+ >= the model's input vocabulary of 128 \(a tokenizer"
    ):
        mc_evaluator(tok, TOY, 8, small)
    for layout in LAYOUTS:
        with pytest.raises(DataError, match=r"^task toy: token id \d+ >= the model's input vocabulary of 128"):
            MCEvaluator(tok, TOY, 8, layout=layout).evaluate(small)
    with pytest.raises(DataError, match=r"^the loss examples: token id -5 is negative, not a token id of the model"):
        LossEvaluator(tok, [Ex([1, -5, 3, 4], [-100, -100, 3, 4])]).evaluate(small)
    with mock.patch.object(vocabulary, "input_vocabulary", wraps=vocabulary.input_vocabulary) as looked_up:
        first, again = loss.evaluate(fits), loss.evaluate(fits)
        assert first.value == again.value and looked_up.call_count == 1  # once per evaluator and model


def test_input_ids_are_checked_against_the_embedding_and_scored_ids_against_the_head(tok):
    """Mllama embeds 8 more ids than its head scores: an id only in the context is fine, a scored one is not;
    a pad id past the vocabulary names the missing resize_token_embeddings."""
    model = tiny_model("llama", n_layers=2, vocab=512)
    model.model.embed_tokens = torch.nn.Embedding(520, model.config.hidden_size).eval()
    context_only = LossEvaluator(tok, [Ex([1, 515, 3, 4, 5], [-100, -100, -100, 4, 5])])
    context_only.evaluate(model)  # the forward takes id 515
    scored = LossEvaluator(tok, [Ex([1, 2, 3, 4, 515], [-100, -100, -100, 4, 515])])
    with pytest.raises(DataError, match=r"token id 515 >= the model's output vocabulary \(its LM head\) of 512"):
        scored.evaluate(model)
    small = tiny_model("llama", n_layers=2, vocab=128)
    check = vocabulary_check([Ex([1, 2, 3], [-100, 2, 3]), Ex([1], [1])], pad_id=200)
    with pytest.raises(DataError, match=r"pad token's id 200 is past .*resize_token_embeddings\(len\(tokenizer\)\)"):
        check(small)


def vocabulary_check(examples, pad_id: int):
    from layerscope.scoring.loss import _loss_batch, _LossRow
    from layerscope.scoring.vocabulary import VocabularyCheck

    rows = [_LossRow(e.input_ids, e.labels, i, 1, slot=i) for i, e in enumerate(examples)]
    return VocabularyCheck([_loss_batch(rows, pad_id)], "the loss examples", pad_id)


def test_evaluators_refuse_the_loaded_model_wrapper(tok):
    from layerscope.core.models import LoadedModel

    model = tiny_model("llama", n_layers=2, vocab=512)
    loaded = LoadedModel(model=model, tokenizer=tok, name="tiny")
    ids = tok.encode("Once upon a time")
    for evaluator in (LossEvaluator(tok, [Ex(ids, ids)]), MCEvaluator(tok, TOY, 4)):
        with pytest.raises(ModelError, match="^got the LoadedModel .*pass its \\.model"):
            evaluator.evaluate(loaded)


# ----------------------------------------------------------------------------- CLI


def test_eval_prints_no_nan_stderr():
    """A standard error needs two items: with one (NaN from the metrics) the line says so instead of "± nan"."""
    from layerscope.cli.eval import with_stderr

    assert with_stderr(0.5, 0.0512, 10) == "0.5000 ± 0.0512"
    assert with_stderr(0.0, float("nan"), 1) == "0.0000 (1 item: no standard error)"
    assert with_stderr(1.0, float("nan"), 3) == "1.0000 (3 items: no standard error)"


def test_cli_eval(stories_path, capsys, tmp_path):
    from layerscope.cli.app import main

    assert main(["eval", "--model", str(stories_path), "--task", "arc_easy", "--limit", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "arc_easy: 6 items" in out and "acc_norm" in out and "chance   0.2500" in out
    assert "acc_norm 0." in out and " ± 0." in out  # six items: a standard error
    assert (
        main(
            [
                "eval",
                "--model",
                str(stories_path),
                "--task",
                "mmlu",
                "--subject",
                "anatomy",
                "--limit",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mmlu:anatomy: 3 items" in out and "acc_norm" not in out
    p = tmp_path / "mc.jsonl"
    p.write_text('{"q": "The cat", "c": ["sat", "flew"], "a": 0}\n')
    assert (
        main(
            [
                "eval",
                "--model",
                str(stories_path),
                "--task",
                str(p),
                "--fields",
                "query=q,choices=c,gold=a",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mc: 1 items" in out and "nan" not in out  # one item: no standard error, not "± nan"
    assert "acc      1.0000 (1 item: no standard error)   <- headline" in out or "acc      0.0000 (1 item" in out
    lines = out.splitlines()  # a custom MC file reports acc_norm too, as lm-eval does; acc stays the headline
    norm = next(line for line in lines if line.startswith("acc_norm "))
    assert norm.endswith("(1 item: no standard error)") and "headline" not in norm
    assert main(["eval", "--model", str(stories_path), "--task", "arc_hard"]) == 2
    assert "unknown task 'arc_hard'" in capsys.readouterr().err
    # a loss named as ablate / shapley / prune-curve name it is the --data loss
    for how in (["--task", "loss:demo"], ["--data", "demo"]):
        assert main(["eval", "--model", str(stories_path), *how, "--limit", "4", "--no-progress"]) == 0
        assert "loss 6.1642" in capsys.readouterr().out
    assert main(["eval", "--task", "arc_easy", "--limit", "0"]) == 2


def test_a_custom_file_reports_acc_norm_as_the_named_task_computes_it(stories, shared_dir, tmp_path):
    """The same items and prompts from a file score the same acc and acc_norm as by name (acc_norm divides by
    each choice's characters either way); only the headline differs: acc for a file, lm-eval's for the name."""
    model, tok = stories
    named = load_task("arc_easy", limit=8)
    rows = [{"query": it.context, "choices": it.choices, "gold": it.gold} for it in named.items]
    path = tmp_path / "arc_prompted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    custom = load_task(str(path))
    assert (custom.metric, custom.reported, named.metric, named.reported) == (
        "acc",
        ("acc", "acc_norm"),
        "acc_norm",
        ("acc", "acc_norm"),
    )
    by_file, by_name = evaluate_task(model, tok, custom, batch_size=8), evaluate_task(model, tok, named, batch_size=8)
    for metric in ("acc", "acc_norm", "acc_norm_stderr"):
        assert by_file.metrics[metric] == by_name.metrics[metric]
    assert (by_file.value, by_name.value) == (by_file.metrics["acc"], by_name.metrics["acc_norm"])
    assert load_task("boolq", limit=2).reported == ("acc",)  # lm-eval's boolq reports acc alone


def test_packing_tolerance_follows_the_dtype_and_still_refuses_ignored_masks(stories):
    """bfloat16 rounds packed and plain rows differently (up to ~0.5 nats on SmolLM2), so its bound is
    1 nat; a model that ignores the packed mask is still refused in bfloat16."""
    import copy

    model, tok = stories
    assert packing_tolerance(model) == PACKING_TOLERANCE
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert packing_tolerance(low) == 1.0 and packing_tolerance(copy.deepcopy(model).half()) == 0.125
    ev = mc_evaluator(tok, TOY, 4, low)
    assert ev.layout == "packed" and ev.packs and low in ev._probed
    assert mc_evaluator(tok, TOY, 4, MaskIgnoringLM(low).eval()).layout == "plain"


def test_a_task_name_or_file_is_loaded_like_load_task(stories, tmp_path):
    """``mc_evaluator(tok, "arc_easy", ...)`` / ``evaluate_task(model, tok, path)``: a name or a file is what
    ``load_task`` reads, as ``--task`` takes it (it was an AttributeError on ``str.items``); other types are
    refused in one line."""
    model, tok = stories
    ev = mc_evaluator(tok, "arc_easy", 16, model)
    assert ev.task.name == "arc_easy" and ev.n_items == len(load_task("arc_easy").items)
    path = tmp_path / "mc.jsonl"
    path.write_text(
        "\n".join(json.dumps({"query": it.context, "choices": it.choices, "gold": it.gold}) for it in TOY.items)
    )
    res = evaluate_task(model, tok, path, batch_size=4)
    assert res.n_items == len(TOY.items)
    assert res.loglikelihoods == evaluate_task(model, tok, load_task(str(path)), batch_size=4).loglikelihoods
    with pytest.raises(ConfigError, match=r"task must be a Task .* got int$"):
        mc_evaluator(tok, 3, 16, model)
    with pytest.raises(DataError, match="unknown task 'arc_hard'"):
        MCEvaluator(tok, "arc_hard")


def test_sums_wait_on_a_gpu_and_add_up_in_token_order():
    """On a GPU each batch's log-probabilities stay there until the end (no copy back and wait per batch); the
    sums are added on the CPU in token order, so they are the same every run (CUDA's index_add_ is not)."""
    from types import SimpleNamespace

    from layerscope.scoring.runner import _Sums

    assert _Sums(3, torch.device("cuda", 1)).keep
    assert not any(_Sums(3, d).keep for d in (None, torch.device("cpu"), torch.device("mps")))
    sums = _Sums(3, torch.device("cpu"))
    parts = [
        (torch.tensor([0, 2, 0]), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)),
        (torch.tensor([2, 1]), torch.tensor([0.4, 0.5], dtype=torch.float64)),
    ]
    want = torch.zeros(3, dtype=torch.float64)
    for req, logp in parts:
        sums.add(SimpleNamespace(score_req=req), logp)
        want.index_add_(0, req, logp)  # batch by batch, as the sums were added before
    assert torch.equal(sums.total(), want)

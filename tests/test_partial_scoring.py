"""Partial scoring (lm-eval's ``multiple_input``, e.g. WinoGrande): several contexts, one continuation.

The reference is lm-eval itself: its own ``winogrande`` preprocessing builds the requests from the
same records, its ``HFLM.loglikelihood`` scores them, and its ``process_results`` turns them into
acc / acc_norm. layerscope must agree on every request text, every log-likelihood (1e-4), every
chosen answer and both metrics, and the coalition engine must agree with its uncached reference.
"""

import dataclasses
import json

import numpy as np
import pytest

from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks import MCItem, PartialItem, load_task
from layerscope.scoring import MCEvaluator, mc_evaluator

TOL = 1e-4

# WinoGrande-style records: options of different lengths (acc_norm divides by context characters),
# answers "1" and "2", a continuation starting with punctuation, a "_" right after a quote.
WINOGRANDE = [
    {"sentence": "Lily wanted the ball but Tom had it, so _ asked him to share.", "option1": "Lily",
     "option2": "Tom", "answer": "1"},
    {"sentence": "The cat sat on the mat because _ was soft and warm.", "option1": "the cat",
     "option2": "the little red mat", "answer": "2"},
    {"sentence": "Tim gave Sue his toy because _ was sad.", "option1": "Tim", "option2": "Sue", "answer": "2"},
    {"sentence": "Mom baked a cake for Ben, and _'s smile was big.", "option1": "Mom", "option2": "Ben",
     "answer": "2"},
    {"sentence": 'She said "_ is my best friend" to the dog.', "option1": "Spot", "option2": "the big bird",
     "answer": "1"},
]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def wg_file(tmp_path):
    return write_jsonl(tmp_path / "wg.jsonl", WINOGRANDE)


def as_contexts_records(task):
    return [{"contexts": it.contexts, "continuation": it.continuation, "gold": it.gold} for it in task.items]


# ----------------------------------------------------------------------------- reading


def test_winogrande_items_as_lm_eval_builds_them(wg_file):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks.winogrande import preprocess_winogrande as wg

    task = load_task(str(wg_file))
    assert task.partial and task.metric == "acc" and task.chance == 0.5 and len(task) == len(WINOGRANDE)
    for it, doc in zip(task.items, WINOGRANDE):
        assert isinstance(it, PartialItem)
        assert it.contexts == wg.doc_to_choice(doc)
        assert it.continuation == wg.doc_to_target(doc)
        assert it.gold == wg.doc_to_text(doc)


def test_contexts_records_equal_winogrande(tmp_path, wg_file):
    wg = load_task(str(wg_file))
    records = as_contexts_records(wg)
    records[0]["contexts"] = records[0]["contexts"] + ["Lily wanted the ball but Tom had it, so the dog"]
    plain = load_task(str(write_jsonl(tmp_path / "p.jsonl", records)))
    assert plain.partial and plain.items[1:] == wg.items[1:]
    assert plain.chance == pytest.approx((1 / 3 + 4 / 2) / 5)  # mean of 1/len(contexts)
    renamed = [{"ctxs": r["contexts"], "rest": r["continuation"], "label": r["gold"]} for r in records]
    mapped = load_task(
        str(write_jsonl(tmp_path / "r.jsonl", renamed)),
        fields={"contexts": "ctxs", "continuation": "rest", "gold": "label"},
    )
    assert mapped.items == plain.items and mapped.fingerprint == plain.fingerprint
    gold_only = [{"contexts": r["contexts"], "continuation": r["continuation"], "label": r["gold"]} for r in records]
    assert load_task(str(write_jsonl(tmp_path / "g.jsonl", gold_only)), fields={"gold": "label"}).items == plain.items


def test_fingerprint_tells_partial_from_ordinary(tmp_path):
    part = load_task(str(write_jsonl(tmp_path / "p.jsonl", [{"contexts": ["a", "b"], "continuation": "c", "gold": 0}])))
    mc = load_task(str(write_jsonl(tmp_path / "m.jsonl", [{"query": "c", "choices": ["a", "b"], "gold": 0}])))
    assert part.fingerprint != mc.fingerprint
    assert isinstance(mc.items[0], MCItem) and not mc.partial


@pytest.mark.parametrize(
    "records, fields, error, fragment",
    [
        # the wrong way round: the shared continuation read as the query, the contexts as choices
        ([{"contexts": ["a b", "a c"], "continuation": "d", "gold": 0}],
         {"query": "continuation", "choices": "contexts"}, DataError, "the wrong way round"),
        (WINOGRANDE[:1], {"query": "sentence", "choices": "options", "gold": "answer"}, DataError,
         "the wrong way round"),
        ([{"contexts": ["a", "b"], "continuation": "c", "gold": 0}], {"query": "q", "contexts": "contexts"},
         ConfigError, "map either"),
        (WINOGRANDE[:1], {"gold": "answer"}, ConfigError, "read by their own fields"),
        ([{"contexts": ["a", "b"], "continuation": "c", "gold": 0}], {"contexts": "x", "answer": "y"},
         ConfigError, "unknown key"),
        ([{"contexts": ["only one"], "continuation": "c", "gold": 0}], None, DataError,
         "contexts must be a list of at least 2"),
        ([{"contexts": ["a", "b"], "continuation": "  ", "gold": 0}], None, DataError, "empty continuation"),
        ([{"contexts": ["a", "b"], "continuation": "c", "gold": 2}], None, DataError, "gold 2 out of range"),
        ([dict(WINOGRANDE[0], answer="")], None, DataError, "test split has none"),
        ([dict(WINOGRANDE[0], answer="3")], None, DataError, 'answer must be "1" or "2", got "3"'),
        ([dict(WINOGRANDE[0], answer=None)], None, DataError, 'answer must be "1" or "2", got null'),  # not None
        ([{"contexts": ["a", "b"], "continuation": 7, "gold": 0}], None, DataError,
         "continuation must be a string, got a number"),
        ([dict(WINOGRANDE[0], sentence="no blank here")], None, DataError, "with a '_'"),
        ([dict(WINOGRANDE[0], sentence="Everything is before the _")], None, DataError, "nothing after the '_'"),
        # an empty context / option: an option the model can pick that no one wrote (as an empty MC choice)
        ([{"contexts": ["", "The dog"], "continuation": "barked.", "gold": 0}], None, DataError,
         "line 1: context 0 is empty"),
        ([dict(WINOGRANDE[0], option2=" ")], None, DataError, "line 1: option2 is empty"),
        # the gold among identical contexts: which copy scores higher is numeric noise
        ([{"contexts": ["The cat", "The dog", "The dog"], "continuation": "barked.", "gold": 1}], None, DataError,
         "line 1: the gold context 1 is the same text as context 2"),
        # two options: a copy is always the gold's twin, whichever the answer names
        ([dict(WINOGRANDE[0], option2="Lily")], None, DataError,
         "line 1: the gold option 1 is the same text as option 2 ('Lily')"),
        ([dict(WINOGRANDE[0], option2="Lily", answer="2")], None, DataError,
         "line 1: the gold option 2 is the same text as option 1 ('Lily')"),
    ],
)  # fmt: skip
def test_bad_partial_files_refused(tmp_path, records, fields, error, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(error, match=None) as e:
        load_task(str(path), fields=fields)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg


def test_repeated_wrong_context_is_scored_with_one_warning(tmp_path):
    """A context listed twice that is not the gold cannot change the accuracy: kept, named once per file."""
    rows = [{"contexts": ["The dog", "The dog", "The cat"], "continuation": "meowed.", "gold": 2}] * 3
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.warns(
        UserWarning, match=r"dup.jsonl: 3 item\(s\) list a wrong context twice \(first at line 1\)"
    ) as seen:
        task = load_task(str(path))
    assert len(seen) == 1 and [it.gold for it in task.items] == [2, 2, 2]


def test_continuation_with_a_leading_space_is_noted_once(tmp_path, capsys, wg_file):
    """As for an MC choice: the delimiter (one space) joins context and continuation, so " ran." is scored as
    "  ran.", which lowers its log-likelihood. Said once per file with the MC reader's note; items unchanged.
    WinoGrande's continuation is stripped, as lm-eval does: nothing to say."""
    rows = [
        {"contexts": ["A dog", "A cat"], "continuation": " ran.", "gold": 0},
        {"contexts": ["A dog", "A cat"], "continuation": "sat.", "gold": 1},
    ]
    path = write_jsonl(tmp_path / "spaced.jsonl", rows)
    task, _ = load_task(str(path)), load_task(str(path))
    assert task.items[0].requests(" ")[0] == ("A dog", "  ran.")
    assert capsys.readouterr().err.splitlines() == [
        f"note: {path}: 1 of 2 continuations start with whitespace (first: line 1, ' ran.'); context and "
        "continuation are joined with one space, as lm-eval does, so it is scored as '  ran.', which lowers its "
        "log-likelihood: drop the leading space"
    ]
    load_task(str(wg_file))
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- scoring equals lm-eval


@pytest.fixture(scope="module")
def lm_eval_task(tmp_path_factory):
    """lm-eval's own winogrande task definition over the fixture records (a local JSON dataset, offline)."""
    pytest.importorskip("lm_eval")
    import logging

    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks.winogrande import preprocess_winogrande as wg

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("lm_eval_wg")
    path = write_jsonl(root / "wg.jsonl", WINOGRANDE)
    config = dict(
        task="winogrande_local",
        dataset_path="json",
        dataset_kwargs={"data_files": {"validation": str(path)}, "cache_dir": str(root / "cache")},
        validation_split="validation",
        output_type="multiple_choice",
        doc_to_text=wg.doc_to_text,
        doc_to_target=wg.doc_to_target,
        doc_to_choice=wg.doc_to_choice,
        metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}],
    )
    task = ConfigurableTask(config=config)
    assert task.multiple_input == 2
    docs = list(task.eval_docs)
    requests = [
        task.construct_requests(d, task.fewshot_context(d, 0), metadata=("wg", i, 1)) for i, d in enumerate(docs)
    ]
    return task, docs, requests, path


def test_requests_and_scores_equal_lm_eval(stories, lm_eval_task):
    from lm_eval.models.huggingface import HFLM

    model, tok = stories
    lm_task, docs, requests, path = lm_eval_task
    task = load_task(str(path))
    for it, reqs in zip(task.items, requests):  # the same (context, continuation) texts, in the same order
        assert it.requests(task.target_delimiter) == [r.arguments for r in reqs]

    flat = [r for reqs in requests for r in reqs]
    out = HFLM(pretrained=model, tokenizer=tok, batch_size=3).loglikelihood(flat, disable_tqdm=True)
    theirs = np.array([ll for ll, _ in out])
    per_doc, k = [], 0
    for d, reqs in zip(docs, requests):
        per_doc.append(lm_task.process_results(d, out[k : k + len(reqs)]))
        k += len(reqs)

    ev = mc_evaluator(tok, task, 3, model)
    assert not ev.packs  # contexts differ: one plain row per (context, continuation) request
    ours = ev.evaluate(model)
    got = np.concatenate([np.array(x) for x in ours.loglikelihoods])
    assert np.abs(got - theirs).max() < TOL
    assert [float(p == it.gold) for p, it in zip(ours.predictions, task.items)] == [r["acc"] for r in per_doc]
    assert ours.metrics["acc"] == pytest.approx(np.mean([r["acc"] for r in per_doc]))
    assert ours.metrics["acc_norm"] == pytest.approx(np.mean([r["acc_norm"] for r in per_doc]))
    assert ours.value == ours.metrics["acc"] and ours.metrics["chance"] == 0.5


def test_acc_norm_rule_equals_lm_eval(tok_only, lm_eval_task):
    """Crafted log-likelihoods where dividing by the context's characters flips the answer: same picks as lm-eval."""
    lm_task, docs, requests, path = lm_eval_task
    task = dataclasses.replace(load_task(str(path)), metric="acc_norm")
    ev = MCEvaluator(tok_only, task, 4)
    rng = np.random.default_rng(0)
    flipped = 0
    for _ in range(20):
        lls = -rng.uniform(5, 30, size=ev.n_requests)
        res = ev.result_from_loglikelihoods(lls)
        raw = [int(np.argmax(lls[2 * i : 2 * i + 2])) for i in range(len(docs))]
        flipped += sum(a != b for a, b in zip(raw, res.predictions))
        theirs = [
            lm_task.process_results(d, [(float(x), False) for x in lls[2 * i : 2 * i + 2]]) for i, d in enumerate(docs)
        ]
        assert [float(p == it.gold) for p, it in zip(res.predictions, task.items)] == [r["acc_norm"] for r in theirs]
        assert res.metrics["acc"] == pytest.approx(np.mean([r["acc"] for r in theirs]))
    assert flipped  # the normalisation did change answers, so the rule was really compared


@pytest.fixture(scope="module")
def tok_only(stories_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stories_path)


# ----------------------------------------------------------------------------- through the coalition engine


def test_engine_equals_uncached_reference(stories, wg_file):
    from layerscope.core.layermap import build_layer_map
    from layerscope.engine.coalitions import CoalitionEngine

    model, tok = stories
    task = load_task(str(wg_file))
    ev = mc_evaluator(tok, task, 4, model)
    lm = build_layer_map(model)
    for granularity in ("block", "sublayer"):
        fast = CoalitionEngine(model, lm, ev, granularity)
        assert fast.mode == "cached"
        ref = CoalitionEngine(model, lm, ev, granularity, uncached=True)
        everyone = frozenset(range(fast.n))
        coalitions = [everyone, everyone - {0}, everyone - {fast.n - 1}, frozenset({1, 2}), frozenset()]
        a, r = fast.results(coalitions), ref.results(coalitions)
        for x, y in zip(a, r):
            lx = np.concatenate([np.array(v) for v in x.loglikelihoods])
            ly = np.concatenate([np.array(v) for v in y.loglikelihoods])
            assert np.abs(lx - ly).max() <= 1e-5
            assert x.predictions == y.predictions and x.value == y.value
        full = ev.evaluate(model)  # the full coalition is the model itself
        assert np.allclose(np.concatenate([np.array(v) for v in a[0].loglikelihoods]),
                           np.concatenate([np.array(v) for v in full.loglikelihoods]), atol=1e-5)  # fmt: skip

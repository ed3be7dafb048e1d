"""``prune-curve --orders``: which of its own orders prune-curve computes, and a given ranking that is one of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.cli.prune_curve import ORDERS, chosen_orders
from layerscope.core.errors import ConfigError
from layerscope.core.layermap import build_layer_map
from layerscope.engine import CoalitionEngine
from layerscope.pruning import curve as pc
from layerscope.scoring import LossEvaluator

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
needs_stories = pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
TINY = ["--model", str(STORIES), "--task", "loss:demo", "--limit", "8", "--k-max", "2", "--max-length", "64"]
TINY += ["--threads", "1", "--no-progress"]


def test_curve_orders_default_to_all_less_what_the_switches_take_out():
    assert chosen_orders(None) == ORDERS
    cheap = ("block-influence", "angular", "ablation", "last", "random")
    assert chosen_orders(None, greedy=False, shapley="none") == cheap
    # named in any order, drawn in ORDERS' order; spaces and a trailing comma are harmless
    assert chosen_orders("random, ablation,block-influence,") == ("block-influence", "ablation", "random")
    assert chosen_orders("none", given=True) == ()
    assert chosen_orders("last,random", greedy=False, shapley="none") == ("last", "random")


@pytest.mark.parametrize(
    "text, switches, message",
    [
        ("ablation,bogus", {}, r"^--orders 'ablation,bogus': unknown order 'bogus'; choose from block-influence, "),
        ("", {}, r"^--orders '': name one or more of block-influence, .*, or none$"),
        (",", {}, r"^--orders ',': name one or more of"),
        ("none", {}, r"^--orders 'none': no curve to draw; choose an order of .* or give --importance$"),
        ("none,last", {"given": True}, r"^--orders 'none,last': none \(only the --importance rankings\) stands alone$"),
        ("greedy,last", {"greedy": False}, r"^--orders 'greedy,last' names greedy, which --no-greedy switches off"),
        ("shapley", {"shapley": "none"}, r"^--orders 'shapley' names shapley, which --estimator none switches off"),
    ],
)
def test_curve_orders_refused_in_one_line(text, switches, message):
    with pytest.raises(ConfigError, match=message) as e:
        chosen_orders(text, **switches)
    assert "\n" not in str(e.value)


def test_pruning_curve_draws_the_baselines_asked_for():
    model = tiny_model("llama", n_layers=4)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 3).examples, batch_size=4)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    labels = {
        str(which): [c["label"] for c in pc.pruning_curve(engine, None, 2, greedy=False, baselines=which)["curves"]]
        for which in (["random"], ["last"], True)
    }
    assert labels["['random']"] == ["random-seed0", "random-seed1", "random-seed2"]
    assert labels["['last']"] == ["last"] and labels["True"] == ["last", "random-seed0", "random-seed1", "random-seed2"]
    with pytest.raises(ConfigError, match=r"^baselines: 'first' is not one of last, random"):
        pc.pruning_curve(engine, None, 2, greedy=False, baselines=["first"])


def _labels(folder: Path) -> tuple[list[str], dict]:
    curves = json.loads((folder / "curves.json").read_text())
    return [c["label"] for c in curves["curves"]], curves


@needs_stories
def test_prune_curve_orders_computes_only_those_and_records_them(tmp_path, monkeypatch):
    from layerscope.cli.app import main
    from layerscope.methods import similarity as sim_module

    def no_similarity(*a, **kw):
        raise AssertionError("similarity computed though no order of it was chosen")

    monkeypatch.setattr(sim_module, "similarity", no_similarity)
    assert main(["prune-curve", *TINY, "--orders", "last,random", "--out", str(tmp_path / "cheap")]) == 0
    labels, curves = _labels(tmp_path / "cheap" / "demo")
    assert labels == ["last", "random-seed0", "random-seed1", "random-seed2"]
    assert curves["orders"] == ["last", "random"] and curves["given_as"] == {}
    # --no-greedy and --estimator none take theirs out of the default, as before; the rest is recorded
    monkeypatch.undo()
    assert main(["prune-curve", *TINY, "--no-greedy", "--estimator", "none", "--out", str(tmp_path / "all")]) == 0
    labels, curves = _labels(tmp_path / "all" / "demo")
    assert curves["orders"] == ["block-influence", "angular", "ablation", "last", "random"]
    assert labels == ["block-influence", "angular", "ablation", "last", "random-seed0", "random-seed1", "random-seed2"]


@needs_stories
def test_prune_curve_takes_a_given_ablation_ranking_for_its_own(tmp_path, capsys, monkeypatch):
    """The QA run: --importance abl=<an ablation of these blocks on this task> made prune-curve ablate again
    and draw two identical curves. Now the given one stands for ablation, with a note, and nothing is ablated;
    the same ranking on other items (here: other --max-length) is not taken for it."""
    from layerscope.cli import prune_curve
    from layerscope.cli.app import main

    ablation = tmp_path / "abl"
    argv = ["ablate", "--model", str(STORIES), "--task", "loss:demo", "--limit", "8", "--max-length", "64"]
    assert main([*argv, "--granularity", "block", "--threads", "1", "--no-progress", "--out", str(ablation)]) == 0
    capsys.readouterr()
    import layerscope.methods.ablation as ablation_module

    calls = []
    real = ablation_module.ablate
    monkeypatch.setattr(ablation_module, "ablate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    given = ["--importance", f"abl={ablation}", "--orders", "ablation,last"]
    assert main(["prune-curve", *TINY, *given, "--out", str(tmp_path / "same")]) == 0
    err = capsys.readouterr().err
    assert "note: --importance abl is the ablation ranking of these blocks on this task's items" in err
    assert "not computed again" in err and calls == []
    labels, curves = _labels(tmp_path / "same" / "demo")
    assert labels == ["abl", "last"] and curves["given_as"] == {"ablation": "abl"}
    assert curves["orders"] == ["ablation", "last"]

    other = [a if a != "64" else "128" for a in TINY]  # the same items, tokenized otherwise: another ranking
    assert main(["prune-curve", *other, *given, "--out", str(tmp_path / "other")]) == 0
    assert "stands for ablation" not in capsys.readouterr().err and calls == [1]
    labels, curves = _labels(tmp_path / "other" / "demo")
    assert labels == ["ablation", "abl", "last"] and curves["given_as"] == {}
    assert prune_curve.REUSABLE["ablation"] == "ablation"

    # --orders none: only the given rankings
    only = ["--importance", f"abl={ablation}", "--orders", "none"]
    assert main(["prune-curve", *TINY, *only, "--out", str(tmp_path / "n")]) == 0
    labels, curves = _labels(tmp_path / "n" / "demo")
    assert labels == ["abl"] and curves["orders"] == []

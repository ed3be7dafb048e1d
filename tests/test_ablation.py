import json
import math
from unittest import mock

import numpy as np
import pytest
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.cli.app import main
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import build_layer_map
from layerscope.core.tasks import load_task
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.engine.coalitions import removed as removed_players
from layerscope.methods.ablation import ablate, cornerstones
from layerscope.scoring import LossEvaluator, MCEvaluator
from layerscope.viz.plots import bar_chart, player_kind, short_label

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def arc(shared_dir):
    return load_task("arc_easy", limit=12)


def test_ablation_on_real_model(stories, arc, tmp_path):
    model, tok = stories
    lm = build_layer_map(model)
    ev = MCEvaluator(tok, arc, batch_size=6, model=model)
    imp = ablate(model, ev, "sublayer", model_name="stories260K")
    assert imp.method == "ablation" and imp.granularity == "sublayer"
    assert imp.players == lm.players("sublayer") and len(imp.scores) == 10
    full, chance = imp.baseline["full"], imp.baseline["chance"]
    assert chance == pytest.approx(0.25) and 0 <= full <= 1
    removed = imp.extras["removed_value"]
    assert np.allclose(imp.scores, [full - v for v in removed])
    for i, player in enumerate(imp.players):  # each value is that player's removal, by plain hooked forwards
        with removed_players(model, lm, [player], "sublayer"):
            assert removed[i] == ev.evaluate(model).value, player
    assert len(set(removed)) > 2  # distinct values: a player order mix-up would show
    assert imp.n_evaluations == 11 and imp.stderr is not None and len(imp.stderr) == 10
    assert imp.extras["kinds"] == ["attn", "mlp"] * 5
    assert imp.data["task"] == "arc_easy" and imp.data["n_items"] == 12
    # the same sweep through the reference (uncached) path
    ref = ablate(CoalitionEngine(model, lm, ev, "sublayer", uncached=True))
    assert ref.scores == imp.scores and ref.extras["removed_value"] == removed
    # round trip and a chart
    loaded = LayerImportance.load(imp.save(tmp_path / "importance.json"))
    assert loaded.scores == imp.scores and loaded.extras["cornerstones"] == imp.extras["cornerstones"]
    for what in ("auto", "scores"):
        path = bar_chart(loaded, tmp_path / f"chart_{what}.png", what=what)
        assert path.read_bytes()[:8] == PNG


def test_block_ablation_tiny_model(stories, arc):
    _, tok = stories
    model = tiny_model("gpt_neox", n_layers=3, vocab=512)
    ev = MCEvaluator(tok, arc, batch_size=12, model=model)
    imp = ablate(model, ev, "block")
    assert imp.players == ["layers.0", "layers.1", "layers.2"]
    assert all(np.isfinite(imp.scores))


def test_cornerstone_rule():
    # full 0.6, chance 0.25: margin = max(0.02, 0.1 * 0.35) = 0.035 -> cornerstone iff value <= 0.285
    assert cornerstones([0.25, 0.285, 0.29, 0.59, 0.1], 0.6, 0.25) == [0, 1, 4]
    assert cornerstones([0.26, 0.3], 0.6, 0.25, abs_margin=0.06) == [0, 1]
    assert cornerstones([0.2, 0.3], 0.26, 0.25) == []  # full model at chance: none
    assert cornerstones([-5.0], -2.0, float("nan")) == []
    with pytest.raises(ConfigError):
        cornerstones([0.3], 0.6, 0.25, rel_margin=-0.1)


def test_bad_margins_are_refused_before_any_evaluation():
    model = tiny_model("llama", n_layers=2)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 2).examples, batch_size=2)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    with mock.patch.object(engine, "results", side_effect=AssertionError("evaluated before the margins were checked")):
        with pytest.raises(ConfigError, match="^rel_margin must be a number >= 0"):
            ablate(engine, rel_margin=-0.1)
        with pytest.raises(ConfigError, match="^abs_margin must be a number >= 0"):
            ablate(engine, abs_margin=math.nan)


def test_at_chance_rule_and_note():
    from layerscope.methods.ablation import at_chance, at_chance_note

    # the cornerstone margin: max(abs_margin, rel_margin * (full - chance))
    assert at_chance(0.26, 0.25) and at_chance(0.27, 0.25) and not at_chance(0.28, 0.25)
    assert at_chance(0.20, 0.25)  # below chance is at chance too
    assert at_chance(0.30, 0.25, abs_margin=0.06) and not at_chance(0.30, 0.25, abs_margin=0.04)
    assert at_chance(0.9, 0.25, abs_margin=0.0, rel_margin=1.0)  # the whole gap is the margin
    assert not at_chance(-2.0, float("nan"))  # chance unknown: no claim
    assert at_chance(-6.23, -6.24)  # loss: -ln(vocab) is chance
    assert at_chance_note(0.6, 0.25) is None
    note = at_chance_note(0.26, 0.25)
    assert "at chance" in note and "0.2600" in note and "0.2500" in note and "mean little" in note
    with pytest.raises(ConfigError, match="abs_margin"):
        at_chance(0.5, 0.25, abs_margin=float("nan"))
    # cornerstones() follows the same rule: a model at chance has none
    assert cornerstones([0.1], 0.27, 0.25) == [] and cornerstones([0.1], 0.28, 0.25) == [0]


def test_cli_ablate_says_when_the_model_is_at_chance(stories_path, shared_dir, tmp_path, capsys):
    base = ["ablate", "--model", str(stories_path), "--task", "arc_easy", "--limit", "6"]
    base += ["--granularity", "block", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    got = capsys.readouterr()
    full = LayerImportance.load(tmp_path / "a").baseline["full"]
    assert full > 0.25 + 0.02 and "at chance" not in got.out + got.err  # above chance on these 6 items
    # a margin wider than the model's lead over chance: the model counts as at chance
    margin = f"{full - 0.25 + 0.01:.4f}"
    assert main([*base, "--out", str(tmp_path / "b"), "--abs-margin", margin]) == 0
    got = capsys.readouterr()
    notes = [line for line in got.err.splitlines() if "at chance" in line]  # a note: on stderr, with the others
    assert len(notes) == 1 and notes[0].startswith("note: the full model scores") and "at chance" not in got.out
    assert "cornerstones (0): none" in got.out.splitlines()


def test_plot_helpers_and_bad_extras(tmp_path):
    assert player_kind("layers.3.self_attn", "sublayer") == "attn"
    assert player_kind("h.3.mlp", "sublayer") == "mlp"
    assert player_kind("layers.3.fc2", "module") == "mlp"
    assert short_label("layers.3.self_attn", "sublayer") == "a3"
    assert short_label("layers.12.mlp.down_proj", "module") == "down_proj.12"
    imp = LayerImportance(
        method="shapley-permutation",
        granularity="block",
        players=["layers.0", "layers.1"],
        scores=[0.1, -0.02],
        stderr=[0.01, float("nan")],
        model={"name": "m"},
    )
    assert bar_chart(imp, tmp_path / "s.png").read_bytes()[:8] == PNG
    with pytest.raises(ConfigError, match="removed_value"):
        bar_chart(imp, tmp_path / "x.png", what="removed_value")


def test_cli_ablate_and_shapley(stories_path, shared_dir, tmp_path, capsys):
    out = tmp_path / "abl"
    rc = main(
        [
            "ablate",
            "--model",
            str(stories_path),
            "--task",
            "arc_easy",
            "--limit",
            "6",
            "--granularity",
            "block",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "cornerstones" in text
    d = json.loads((out / "importance.json").read_text())
    assert d["method"] == "ablation" and len(d["players"]) == 5
    assert (out / "bar.png").read_bytes()[:8] == PNG  # the name layerscope plot gives it

    out = tmp_path / "shap"
    rc = main(
        [
            "shapley",
            "--model",
            str(stories_path),
            "--task",
            "arc_easy",
            "--limit",
            "6",
            "--granularity",
            "block",
            "--estimator",
            "exact",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    imp = LayerImportance.load(out / "importance.json")
    assert imp.method == "shapley-exact" and imp.n_evaluations == 32
    # efficiency: exact values sum to v(N) - v(empty)
    assert sum(imp.scores) == pytest.approx(imp.baseline["full"] - imp.baseline["empty"], abs=1e-9)
    assert (out / "bar.png").read_bytes()[:8] == PNG


def test_cli_loss_task(stories_path, shared_dir, tmp_path):
    sft = shared_dir / "data" / "alignment" / "alpaca_gpt4_1k.json"
    rc = main(
        [
            "ablate",
            "--model",
            str(stories_path),
            "--task",
            f"loss:{sft}",
            "--limit",
            "4",
            "--max-length",
            "64",
            "--granularity",
            "block",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    imp = LayerImportance.load(tmp_path)
    assert imp.baseline["full"] < 0 and imp.baseline["chance"] == pytest.approx(-np.log(512))
    assert imp.data["task"] == "loss" and imp.stderr is None


def test_cli_bad_options(stories_path, shared_dir, tmp_path, capsys):
    base = ["--model", str(stories_path), "--task", "arc_easy", "--limit", "4", "--out", str(tmp_path)]
    assert main(["shapley", *base, "--estimator", "permutation"]) == 2
    assert "needs --budget" in capsys.readouterr().err
    assert main(["shapley", *base, "--estimator", "proximity", "--budget", "10"]) == 2
    assert main(["shapley", *base, "--estimator", "exact", "--granularity", "module"]) == 2  # 35 players
    assert "exact Shapley" in capsys.readouterr().err
    assert main(["ablate", "--model", str(stories_path), "--task", "no_such_task", "--out", str(tmp_path)]) == 2
    assert main(["ablate", *base, "--batch-size", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["ablate", *base, "--granularity", "layer"])


# ---- an earlier run's result in --out; --resume with other threads --------------------------------


class Killed(Exception):
    """Stands for a kill once the run has started (after the coalition log is opened)."""


def _small_ablate(stories_path, out, *extra):
    base = ["ablate", "--model", str(stories_path), "--task", "loss:demo", "--limit", "4", "--max-length", "64"]
    return [*base, "--granularity", "block", "--no-progress", "--out", str(out), *extra]


def test_a_rerun_that_fails_leaves_the_earlier_result_whole(stories_path, tmp_path, capsys, monkeypatch):
    """A rerun into a folder holding a finished result touches none of it before its own is written:
    killed (or failing) once its log is open, it leaves importance.json and bar.png as they were; only
    a run that writes its own replaces them, with a note then. What layerscope did not write stays."""
    import layerscope.methods.ablation as ablation

    out = tmp_path / "o"
    assert main(_small_ablate(stories_path, out)) == 0
    before = {name: (out / name).read_bytes() for name in ("importance.json", "bar.png")}
    (out / "notes.txt").write_text("mine\n")
    capsys.readouterr()

    real = ablation.ablate

    def killed(*a, **k):
        raise Killed

    monkeypatch.setattr(ablation, "ablate", killed)
    with pytest.raises(Killed):
        main(_small_ablate(stories_path, out))
    assert {name: (out / name).read_bytes() for name in before} == before
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "coalitions.jsonl").is_file()
    err = capsys.readouterr().err
    assert "replaced the earlier result" not in err and "removed" not in err
    # the log it replaces is the finished result's, not an interrupted run's: said so, not "--resume would continue"
    assert f"the log of the earlier result in {out}; that result stays until this run writes its own" in err

    monkeypatch.setattr(ablation, "ablate", real)
    assert main(_small_ablate(stories_path, out, "--granularity", "module")) == 0  # a heatmap, not a bar chart
    notes = [line for line in capsys.readouterr().err.splitlines() if "earlier result" in line]
    said = (
        f"note: replaced the earlier result in {out} (importance.json, bar.png) with this run's "
        "(importance.json, heatmap.png)"
    )
    assert notes[-1] == said, notes
    assert sorted(p.name for p in out.iterdir()) == ["coalitions.jsonl", "heatmap.png", "importance.json", "notes.txt"]
    assert LayerImportance.load(out).granularity == "module"
    assert main(_small_ablate(stories_path, out, "--granularity", "module", "--resume")) == 0  # every value read back
    assert LayerImportance.load(out).extras["engine"]["resumed"] > 0


def test_a_refused_rerun_leaves_the_folder_as_it_was(stories_path, tmp_path, capsys):
    """A rerun refused once the model has loaded (a shapley --budget below one antithetic pair of its
    players: known once the layer map is built, checked before any evaluation) leaves every file as
    it was, the coalition log too."""
    out = tmp_path / "o"
    assert main(_small_ablate(stories_path, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    argv = ["shapley", "--model", str(stories_path), "--task", "loss:demo", "--limit", "4", "--max-length", "64"]
    argv += [
        "--granularity",
        "block",
        "--estimator",
        "permutation",
        "--budget",
        "5",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "budget=5 is too small for one antithetic pair of permutations of 5 players" in err
    assert "note:" not in err  # refused before the log was touched: nothing to say about it
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_with_another_thread_count_is_refused_in_one_line(stories_path, tmp_path, capsys):
    """Float sums in another order differ in the last digits (~1e-9): a resumed run must not mix them."""
    import torch

    out = tmp_path / "o"
    assert main(_small_ablate(stories_path, out)) == 0
    log = out / "coalitions.jsonl"
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["run"]["threads"] == torch.get_num_threads()
    header["run"]["threads"] = torch.get_num_threads() + 1  # as if written with another --threads
    log.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    capsys.readouterr()
    assert main(_small_ablate(stories_path, out, "--resume")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(err) == 1 and "differs in: threads" in err[0], err
    assert f"resume with --threads {torch.get_num_threads() + 1}" in err[0]


# ---- the Python API refuses what the CLI would never pass, and records what the CLI records ----------------
def test_ablate_refuses_options_an_engine_would_ignore():
    """An engine built for blocks ablates blocks: another granularity= is refused, not ignored; so are
    engine options (and a layer map) beside an engine already built."""
    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 2).examples, batch_size=2)
    engine = CoalitionEngine(model, lm, ev, "block")
    with mock.patch.object(engine, "results", side_effect=AssertionError("evaluated before the check")):
        with pytest.raises(ConfigError, match="^ablate: granularity='sublayer', but the engine was built for 'block'"):
            ablate(engine, granularity="sublayer")
        with pytest.raises(ConfigError, match="^ablate: cache_mb= sets up an engine ablate builds from a model"):
            ablate(engine, cache_mb=3)
        with pytest.raises(ConfigError, match="^ablate: layer_map= applies when ablate builds the engine"):
            ablate(engine, layer_map=build_layer_map(model))
    assert ablate(engine, granularity="block").granularity == "block"  # the engine's own: fine
    assert ablate(engine).granularity == "block"
    assert ablate(model, ev).granularity == "sublayer"  # a model: the default granularity as before


def test_ablate_names_an_unknown_engine_option():
    model = tiny_model("llama", n_layers=2)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 2).examples, batch_size=2)
    with pytest.raises(ConfigError, match=r"^ablate: unknown keyword cachemb \(did you mean cache_mb\?\); ablate "):
        ablate(model, ev, cachemb=3)
    with pytest.raises(ConfigError, match=r"^ablate: unknown keywords foo, bar; .* cache_mb, .*uncached"):
        ablate(model, ev, foo=1, bar=2)


def test_ablate_records_the_data_source_and_fingerprint_as_the_cli_does(stories, arc):
    """data=None: an MC evaluator's task gives source and fingerprint (as ``--task arc_easy`` records
    them); a LossEvaluator keeps only tokenized examples, so its SFT data (load_sft's) is passed as
    data= and described as ``--task loss:FILE`` describes it."""
    from layerscope.core.data import load_sft
    from layerscope.scoring import evaluator_for

    model, tok = stories
    ev = MCEvaluator(tok, arc, batch_size=12, model=model)
    imp = ablate(model, ev, "block")
    _, cli_data = evaluator_for("arc_easy", model, tok, limit=12, batch_size=12, max_length=512)
    assert imp.data == cli_data and imp.data["source"] == str(arc.source)
    assert imp.data["fingerprint"] == arc.fingerprint
    sft = load_sft("demo", tok, max_length=64, limit=4)
    ev, cli_data = evaluator_for("loss:demo", model, tok, limit=4, batch_size=2, max_length=64)
    imp = ablate(model, ev, "block", data=sft)
    assert imp.data == cli_data and imp.data["fingerprint"] == sft.fingerprint
    with pytest.raises(ConfigError, match="^data= must be a dict, SFT data"):
        ablate(model, ev, "block", data=["x"])

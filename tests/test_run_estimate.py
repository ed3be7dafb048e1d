"""The up-front estimate of long ablate / shapley runs, and the engine's bar weighted by work."""

from __future__ import annotations

import pytest
from tiny_models import tiny_model

from layerscope.cli.app import main
from layerscope.core.layermap import build_layer_map
from layerscope.core.tasks import MCItem, Task
from layerscope.engine import run_estimate
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.engine.run_estimate import estimate_note, format_seconds
from layerscope.scoring import MCEvaluator

# ----------------------------------------------------------------------------- the estimate, a pure function


def test_note_bounds_the_run_by_one_full_evaluation_per_coalition():
    text = estimate_note(61, 1.9, 2376, threshold=60)
    assert text == (
        "about 61 coalitions, each up to 1.9 s (one full evaluation of 2,376 items): up to 1.9 min; "
        "--limit N scores fewer items"
    )


def test_note_only_for_long_runs_and_known_counts():
    assert estimate_note(61, 1.9, 2376) is None  # 116 s: under the default 2 minutes
    assert estimate_note(64, 1.9, 2376) is not None  # 122 s
    assert estimate_note(61, 1.9, 2376, threshold=116) is None
    assert estimate_note(None, 1.9, 2376, threshold=0) is None  # --target-stderr alone: count unknown
    assert estimate_note(0, 1.9, 2376, threshold=0) is None  # all resumed
    assert estimate_note(61, 0.0, 2376, threshold=0) is None  # no timing (--uncached: no capture pass)


def test_note_for_a_budget_and_for_sft_examples():
    text = estimate_note(5000, 3.0, 40, items_word="examples", threshold=0, exact_count=False)
    assert text.startswith("at most about 5,000 coalitions, each up to 3.0 s (one full evaluation of 40 examples)")
    assert "up to 4.2 h" in text and text.endswith("--limit N scores fewer examples")


def test_default_threshold_is_a_module_constant(monkeypatch):
    monkeypatch.setattr(run_estimate, "LONG_RUN_SECONDS", 0.0)
    assert (
        estimate_note(2, 0.01)
        == "about 2 coalitions, each up to 0.01 s (one full evaluation): up to 0.02 s; --limit N scores fewer items"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.25 s"), (1.94, "1.9 s"), (43, "43 s"), (116, "1.9 min"), (161, "2.7 min"), (9000, "2.5 h")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


# ----------------------------------------------------------------------------- the engine's count and its bar


def make_task() -> Task:
    items = [
        MCItem("Once upon a time, there was a little girl named", [" Lily", "Tom", "a big red ball"], 0),
        MCItem("The cat sat on the", ["mat", "dog", "moon and the stars", "a"], 2),
        MCItem("One day, Tim went to the store to buy some", ["milk", "toys for his sister", "b"], 1),
    ]
    return Task(name="toy", items=items, chance=0.3, metric="acc_norm", source="test", fingerprint="x")


class RecordingBar:
    made: list[RecordingBar] = []

    def __init__(self, iterable=None, total=None, desc="", **kw):
        self.iterable, self.total, self.n, self.descs, self.kw = iterable, total, 0, [desc], kw
        RecordingBar.made.append(self)

    def __iter__(self):  # the evaluator's own bar over batches
        return iter(self.iterable)

    def update(self, k=1):
        self.n += k

    def set_description_str(self, text, refresh=True):
        self.descs.append(text)

    def set_postfix_str(self, text, refresh=True):
        pass

    def close(self):
        pass


def test_to_compute_leaves_out_the_memo_and_the_bar_weighs_by_recomputed_players(tok, monkeypatch):
    import tqdm

    model = tiny_model("llama", n_layers=4, vocab=512)
    ev = MCEvaluator(tok, make_task(), batch_size=2, model=model)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    assert engine.stats.capture_seconds > 0
    everyone = frozenset(range(4))
    singles = [everyone - {i} for i in range(4)]
    assert engine.to_compute([everyone, *singles, singles[0]]) == 4  # the full model is in the memo; repeats count once
    RecordingBar.made = []
    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    engine.results(singles, progress=True)
    bar = next(b for b in RecordingBar.made if b.iterable is None)
    # last block first: player 3 removed recomputes 1 player, then 2, 3, 4; plus the head each time
    head = engine._head_cost()
    assert head >= 1 and bar.total == (1 + 2 + 3 + 4) + 4 * head and bar.n == bar.total
    assert bar.descs[0] == "coalitions (block) 0/4" and bar.descs[-1] == "coalitions (block) 4/4"
    assert engine.to_compute(singles) == 0


# ----------------------------------------------------------------------------- the CLI note


def _run(command, stories_path, out, *extra):
    argv = [command, "--model", str(stories_path), "--task", "arc_easy", "--limit", "4", "--granularity", "block"]
    return main([*argv, "--threads", "1", "--no-progress", "--out", str(out), *extra])


def test_cli_prints_the_estimate_when_the_run_is_long(stories_path, tmp_path, capsys, monkeypatch):
    assert _run("ablate", stories_path, tmp_path / "quick") == 0
    assert "coalitions, each up to" not in capsys.readouterr().err  # a tiny run: no note

    monkeypatch.setattr(run_estimate, "LONG_RUN_SECONDS", 0.0)
    assert _run("ablate", stories_path, tmp_path / "a") == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "coalitions, each up to" in line]
    assert len(notes) == 1 and notes[0].startswith("note: about 5 coalitions, each up to ")  # 5 blocks
    assert "(one full evaluation of 4 items): up to " in notes[0] and notes[0].endswith("--limit N scores fewer items")

    assert _run("ablate", stories_path, tmp_path / "a", "--resume") == 0  # every value logged: nothing to estimate
    assert "coalitions, each up to" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "start"),
    [
        (("--estimator", "exact"), "note: about 31 coalitions"),  # 2^5, less the full model
        (("--estimator", "proximity"), "note: about 12 coalitions"),  # windows of 1..3 of 5 players
        (("--estimator", "permutation", "--budget", "20"), "note: at most about 20 coalitions"),
    ],
)
def test_cli_shapley_estimate_counts_the_estimators_coalitions(
    stories_path, tmp_path, capsys, monkeypatch, extra, start
):
    monkeypatch.setattr(run_estimate, "LONG_RUN_SECONDS", 0.0)
    assert _run("shapley", stories_path, tmp_path / "s", *extra) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "coalitions, each up to" in line]
    assert len(notes) == 1 and notes[0].startswith(start)

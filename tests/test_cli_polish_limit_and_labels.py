"""Two CLI fixes from a new-user QA pass: ``prune-curve --importance`` takes a plain path (labelled by its run
folder's name) beside LABEL=PATH, and ``ila`` says its ``--limit`` examples are drawn at random, and with which seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from layerscope.cli.ila import data_line
from layerscope.cli.prune_curve import importance_label
from layerscope.core.errors import ConfigError

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
needs_stories = pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
TINY = ["--model", str(STORIES), "--task", "loss:demo", "--limit", "8", "--k-max", "2", "--max-length", "64"]
TINY += ["--threads", "1", "--no-progress"]


# ----------------------------------------------------------------------------- prune-curve --importance


def test_a_plain_path_is_labelled_by_its_run_folder(tmp_path):
    run = tmp_path / "runs" / "ila"
    run.mkdir(parents=True)
    (run / "importance.json").write_text("{}")
    assert importance_label(str(run)) == ("ila", str(run), True)
    assert importance_label(str(run) + "/") == ("ila", str(run) + "/", True)
    assert importance_label(str(run / "importance.json")) == ("ila", str(run / "importance.json"), True)
    # not there (yet): a name with a suffix is a file, its folder labels it; else the folder itself
    assert importance_label("runs/abl/importance.json")[0] == "abl"
    assert importance_label("runs/abl")[0] == "abl"
    # LABEL=PATH as before; an existing path with '=' in it is a path
    assert importance_label(f"mine={run}") == ("mine", str(run), False)
    odd = tmp_path / "a=b" / "run"
    odd.mkdir(parents=True)
    assert importance_label(str(odd)) == ("run", str(odd), True)


def test_the_current_folder_is_labelled_by_its_name(tmp_path, monkeypatch):
    run = tmp_path / "ila-run"
    run.mkdir()
    (run / "importance.json").write_text("{}")
    monkeypatch.chdir(run)
    assert importance_label(".")[0] == "ila-run"
    assert importance_label("importance.json")[0] == "ila-run"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("=runs/ila", r"^--importance '=runs/ila': give PATH or LABEL=PATH \(e\.g\. ila=runs/ila\)$"),
        ("ila=", r"^--importance 'ila=': give PATH or LABEL=PATH"),
        ("a b=runs/ila", r"^--importance 'a b=runs/ila': a label is letters, digits"),
        ("runs/my run", r"^--importance 'runs/my run': its folder's name 'my run' cannot label a curve .*LABEL=PATH"),
    ],
)
def test_an_unusable_label_is_refused_in_one_line(spec, message):
    with pytest.raises(ConfigError, match=message):
        importance_label(spec)


def _refusal(argv, capsys) -> str:
    from layerscope.cli.app import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _two_runs(tmp_path) -> tuple[Path, Path]:
    """Two run folders both named ila (their content is never read: the labels are refused first)."""
    a, b = tmp_path / "a" / "ila", tmp_path / "b" / "ila"
    for run in (a, b):
        run.mkdir(parents=True)
        (run / "importance.json").write_text("{}")
    return a, b


def test_two_rankings_with_one_label_are_refused_naming_both(tmp_path, capsys):
    a, b = _two_runs(tmp_path)
    argv = ["prune-curve", *TINY, "--out", str(tmp_path / "out")]
    line = _refusal([*argv, "--importance", str(a), "--importance", str(b / "importance.json")], capsys)
    assert f"--importance '{a}' and --importance '{b / 'importance.json'}' would both be labelled 'ila'" in line
    assert "LABEL=PATH" in line
    # a plain path and a LABEL=PATH that agree, and two LABEL=PATH alike, too
    line = _refusal([*argv, "--importance", str(a), "--importance", f"ila={b}"], capsys)
    assert f"--importance '{a}' and --importance 'ila={b}' would both be labelled 'ila'" in line
    line = _refusal([*argv, "--importance", f"x={a}", "--importance", f"x={b}"], capsys)
    assert "would both be labelled 'x'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["ablation", "greedy", "last", "random-seed0", "curves.json", "selection"])
def test_a_run_folder_named_as_a_builtin_order_is_refused_as_its_label_is(tmp_path, capsys, name):
    run = tmp_path / name
    run.mkdir()
    (run / "importance.json").write_text("{}")
    argv = ["prune-curve", *TINY, "--out", str(tmp_path / "out")]
    line = _refusal([*argv, "--importance", str(run)], capsys)
    assert f"the label '{name}' (its folder's name) is taken" in line and f"LABEL=PATH (e.g. mine={run})" in line
    line = _refusal([*argv, "--importance", f"{name}={run}"], capsys)  # as LABEL=PATH is, unchanged
    assert line.endswith(f"the label '{name}' is taken; choose another")


def test_help_shows_a_plain_path(capsys):
    from layerscope.cli.app import main

    with pytest.raises(SystemExit):
        main(["prune-curve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--importance [LABEL=]PATH" in out and "the run folder's name" in out


@needs_stories
def test_a_plain_path_draws_its_curve_under_the_folder_name(tmp_path, capsys):
    """The QA run: ``--importance runs/abl`` was refused with "give LABEL=PATH"; now its curve is abl."""
    from layerscope.cli.app import main

    ablation = tmp_path / "abl"
    argv = ["ablate", "--model", str(STORIES), "--task", "loss:demo", "--limit", "8", "--max-length", "64"]
    assert main([*argv, "--granularity", "block", "--threads", "1", "--no-progress", "--out", str(ablation)]) == 0
    shutil.copytree(ablation, tmp_path / "ila")  # another folder name, the file named
    given = ["--importance", str(ablation), "--importance", str(tmp_path / "ila" / "importance.json")]
    assert main(["prune-curve", *TINY, *given, "--orders", "last", "--out", str(tmp_path / "curves")]) == 0
    curves = json.loads((tmp_path / "curves" / "demo" / "curves.json").read_text())
    assert [c["label"] for c in curves["curves"]] == ["abl", "ila", "last"]
    assert "| abl |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- ila --limit


def test_ila_data_line_says_the_limit_draw_is_random_and_its_seed():
    stats = {"records": 14, "drawn_from": 62, "response_tokens": 91}
    line = data_line(stats, 8, 14, 0)
    assert line == "14 random examples of 62 (--limit 14, --data-seed 0), 8 kept, 91 response tokens"
    assert data_line(stats, 14, 14, 3) == "14 random examples of 62 (--limit 14, --data-seed 3), 91 response tokens"
    every = {"records": 62, "drawn_from": 62, "response_tokens": 900}
    line = data_line(every, 62, 100, 0)
    assert line == "all 62 examples (--limit 100 is at least the 62 records), 900 response tokens"
    whole = {"records": 62, "drawn_from": None, "response_tokens": 900}
    assert data_line(whole, 60, None, 0) == "62 examples, 60 kept, 900 response tokens"


def test_ila_limit_help_says_random(capsys):
    from layerscope.cli.app import main

    with pytest.raises(SystemExit):
        main(["ila", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--limit N use N examples of --data drawn at random (with --data-seed), not the file's first N" in out
    assert "seed of the --limit random draw" in out


@needs_stories
def test_load_sft_records_how_many_records_a_limit_draw_came_from():
    from transformers import AutoTokenizer

    from layerscope.core.data import DEMO_DATA, load_sft

    tok = AutoTokenizer.from_pretrained(str(STORIES))
    n = len(json.loads(Path(DEMO_DATA).read_text()))
    drawn = load_sft(DEMO_DATA, tok, max_length=64, limit=5, shuffle_seed=0, quiet=True)
    assert drawn.stats["records"] == 5 and drawn.stats["drawn_from"] == n
    first = load_sft(DEMO_DATA, tok, max_length=64, limit=5, quiet=True)  # the first N: nothing drawn
    assert first.stats["drawn_from"] is None

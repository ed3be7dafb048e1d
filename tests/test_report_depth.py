"""``layerscope report`` over a folder of runs finds prune-curve output in its default layout:
``prune-curve --out runs/curves`` writes ``runs/curves/<task>/<label>/pruning.json``, a level deeper than
the report's search of ``runs``; the ``curves.json`` beside them (found within the search) brings the
curves it lists, and only those. Run files lying deeper for any other reason are still named on stderr."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from layerscope.cli.app import main
from layerscope.core.importance import SEARCH_DEPTH, LayerImportance
from layerscope.pruning.curve import summary, write_curves
from layerscope.viz.report import load_inputs

BLOCKS = [f"layers.{b}" for b in range(4)]
MODEL = {"name": "tiny-llama", "architecture": "LlamaForCausalLM", "model_type": "llama", "n_blocks": 4}
MODEL = {**MODEL, "fingerprint": "f00d"}


def _curves(task: str, labels: list[str]) -> dict:
    """A prune-curve result as ``pruning.curve.pruning_curves`` returns it (values made up)."""
    curves = []
    for i, label in enumerate(labels):
        values = [0.7, 0.6 - 0.1 * i, 0.4 - 0.05 * i]
        removed = [[], [BLOCKS[i]], [BLOCKS[i], BLOCKS[(i + 1) % 4]]]
        curves.append(
            {"label": label, "method": label, "source": {}, "values": values, "removed": removed, **summary(values)}
        )
    return {
        "kind": "pruning-curves",
        "model": MODEL,
        "data": {"task": task, "source": f"{task}.jsonl", "n_items": 8, "metric": "acc_norm"},
        "granularity": "block",
        "k_max": 2,
        "baseline": {"full": 0.7, "chance": 0.25},
        "point": 0.01,
        "rules": {},
        "curves": curves,
    }


def _runs(root: Path) -> Path:
    """runs/ablation (an importance result) and runs/curves (prune-curve --out runs/curves, two tasks)."""
    LayerImportance(method="block-influence", granularity="block", players=BLOCKS, scores=[0.4, 0.1, 0.2, 0.3],
                    model=MODEL).save(root / "similarity")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib's, where it has no font cache
        write_curves(_curves("arc_easy", ["ablation", "greedy"]), root / "curves" / "arc_easy")
        write_curves(_curves("piqa", ["ablation", "last"]), root / "curves" / "piqa")
    return root


def _sources(inputs) -> list[str]:
    return sorted(Path(c.source).relative_to(Path(c.source).parents[3]).as_posix() for c in inputs.prunings)


def test_the_layout_lies_deeper_than_the_search():
    """What the test is about: the curve files are a level below what a folder search reaches."""
    assert len(Path("curves/arc_easy/greedy/pruning.json").parts) - 1 == SEARCH_DEPTH + 1


def test_a_folder_of_runs_finds_prune_curves_output(tmp_path, capsys):
    root = _runs(tmp_path / "runs")
    inputs = load_inputs(root)
    assert _sources(inputs) == [
        "curves/arc_easy/ablation/pruning.json",
        "curves/arc_easy/greedy/pruning.json",
        "curves/piqa/ablation/pruning.json",
        "curves/piqa/last/pruning.json",
    ]
    assert sorted(c.label for c in inputs.prunings) == [  # each run's path below the folder given
        "curves/arc_easy/ablation",
        "curves/arc_easy/greedy",
        "curves/piqa/ablation",
        "curves/piqa/last",
    ]
    greedy = next(c for c in inputs.prunings if c.label == "curves/arc_easy/greedy")
    assert (
        greedy.values == pytest.approx([0.7, 0.5, 0.35]) and greedy.ranking == "greedy" and greedy.metric == "acc_norm"
    )
    assert [Path(src).parent.name for _, src, _ in inputs.results] == ["similarity"] and inputs.skipped == []
    assert "deeper" not in capsys.readouterr().err
    # the same curves, once each, whichever folder (or the summary itself) is given, and with both given
    for given in ([root / "curves"], [root / "curves" / "arc_easy", root / "curves" / "piqa"], [root, root / "curves"]):
        assert _sources(load_inputs(given)) == _sources(inputs), given
    named = load_inputs(root / "curves" / "arc_easy" / "curves.json")
    assert [c.label for c in named.prunings] == ["ablation", "greedy"]


def test_the_report_shows_them_and_notes_really_deeper_files(tmp_path, capsys):
    root = _runs(tmp_path / "runs")
    md = tmp_path / "r.md"
    assert main(["report", str(root), "--format", "md", "--out", str(md)]) == 0
    out, err = capsys.readouterr()
    assert "4 pruning curve(s)" in out and "deeper" not in err
    text = md.read_text()
    assert "## Pruning" in text and "arc_easy/greedy" in text and "piqa/last" in text
    # a pruning.json the summary does not list (an older run's, say) is not read as one of its curves, and
    # one lying deeper elsewhere is not either: both named by the note, as before
    stray = root / "curves" / "arc_easy" / "old"
    stray.mkdir()
    (stray / "pruning.json").write_text((root / "curves" / "arc_easy" / "greedy" / "pruning.json").read_text())
    other = root / "exp" / "arc_easy" / "greedy"
    other.mkdir(parents=True)
    (other / "pruning.json").write_text(stray.joinpath("pruning.json").read_text())
    inputs = load_inputs(root)
    assert len(inputs.prunings) == 4 and not any("old" in c.source or "exp" in c.source for c in inputs.prunings)
    err = capsys.readouterr().err
    assert "note: 2 result files lie deeper than 2 folders" in err
    assert str(root / "curves" / "arc_easy") in err and str(root / "exp" / "arc_easy") in err


def test_a_listed_curve_that_cannot_be_read_is_skipped_below_and_refused_by_name(tmp_path, capsys):
    root = _runs(tmp_path / "runs")
    (root / "curves" / "piqa" / "last" / "pruning.json").write_text('{"kind": "pruning-curve"')  # cut short
    (root / "curves" / "arc_easy" / "greedy" / "pruning.json").unlink()
    with pytest.warns(UserWarning, match="skipped"):
        inputs = load_inputs(root)
    assert _sources(inputs) == ["curves/arc_easy/ablation/pruning.json", "curves/piqa/ablation/pruning.json"]
    assert len(inputs.skipped) == 2
    assert any("greedy/pruning.json: missing" in why and "curves.json" in why for why in inputs.skipped)
    assert any("last/pruning.json: invalid JSON" in why for why in inputs.skipped)
    from layerscope.core.errors import DataError

    with pytest.raises(DataError, match="missing"):  # the summary named: its curves must read
        load_inputs(root / "curves" / "arc_easy" / "curves.json")

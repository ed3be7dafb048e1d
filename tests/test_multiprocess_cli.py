"""The CLI under ``torchrun --nproc_per_node 2`` (gloo on CPU): what each process says and does.

An error one process meets alone reaches the user in one line from that process; ``eval`` shares the
items and prints the single-process numbers once; ``prune-curve`` shares its coalitions; ``similarity``
and ``prune`` run on the main process only; notes come once. (Numbers under ``ablate`` / ``shapley``:
tests/test_coalition_sharding.py, test_resume.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH"),
]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "layerscope", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _ours(stderr: str) -> list[str]:
    """Our own stderr lines (torchrun adds its failure summary, and the progress bars their redraws)."""
    return [line for line in stderr.splitlines() if line.startswith(("layerscope ", "note: "))]


def test_a_damaged_log_of_one_process_is_said_by_that_process(stories_path, tmp_path):
    """--resume with a corrupt coalitions.rank1.jsonl: process 1 meets it alone, after the group is
    joined; its error is printed once, with its rank, and process 0 does not hang or show a traceback."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "coalitions.rank1.jsonl").write_text("{garbage\n{garbage\n")
    r = _torchrun(
        *("ablate", "--model", str(stories_path), "--task", "loss:demo", "--limit", "12", "--batch-size", "3"),
        *("--threads", "1", "--no-progress", "--shard", "coalitions", "--resume", "--out", str(out)),
    )
    assert r.returncode != 0
    said = _ours(r.stderr)
    rank1 = [line for line in said if line.startswith("layerscope ablate: error (process 1): ")]
    assert len(rank1) == 1 and "coalitions.rank1.jsonl: line 1 is not JSON" in rank1[0], r.stderr[-3000:]
    assert "[rank0]" not in r.stderr and "[rank1]" not in r.stderr, r.stderr[-3000:]  # no worker tracebacks
    assert not (out / "importance.json").exists()


def test_eval_shares_items_and_says_once_and_similarity_runs_on_the_main_process(stories_path, tmp_path):
    common = ["eval", "--model", str(stories_path), "--data", "demo", "--limit", "12", "--max-length", "100"]
    r = _torchrun(*common, "--batch-size", "3", "--threads", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    alone = subprocess.run(
        [sys.executable, "-m", "layerscope", *common, "--batch-size", "3", "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    loss = [line for line in r.stdout.splitlines() if line.startswith("loss ")]
    want = [line for line in alone.stdout.splitlines() if line.startswith("loss ")]
    assert len(loss) == 1 and loss[0].split("(")[0] == want[0].split("(")[0], (r.stdout, alone.stdout)
    notes = [line for line in _ours(r.stderr) if line.startswith("note: ")]
    assert len(notes) == 1 and "kept with their reply cut" in notes[0], r.stderr[-3000:]

    out = tmp_path / "sim"
    r = _torchrun(
        *("similarity", "--model", str(stories_path), "--data", "sft:demo", "--limit", "4", "--max-length", "64"),
        *("--threads", "1", "--no-progress", "--out", str(out)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("block-influence: least important blocks") == 1, r.stdout
    assert _ours(r.stderr) == [
        "note: similarity runs in one process; the launcher's other 1 process(es) have no share of it and ended"
    ]
    assert (out / "block_influence" / "importance.json").exists()


def test_prune_with_healing_runs_on_the_main_process_alone(stories_path, shared_dir, tmp_path):
    """prune shares no work: the main process runs it as if launched alone, so its healing Trainer
    does not wait in a process group for the process that ended."""
    out = tmp_path / "pruned"
    r = _torchrun(
        *("prune", "--model", str(stories_path), "--method", "last", "--remove", "1", "--max-length", "64"),
        *("--heal", str(shared_dir / "data" / "alignment" / "lima.json"), "--max-steps", "2"),
        *("--threads", "1", "--no-progress", "--out", str(out)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1 and "healed" in r.stdout, r.stdout
    assert _ours(r.stderr)[0].startswith("note: prune runs in one process"), r.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "pruning_note.json").exists()


def test_prune_curve_shares_its_coalitions_and_writes_the_single_process_curves(stories_path, tmp_path):
    import json

    common = ["prune-curve", "--model", str(stories_path), "--task", "loss:demo", "--limit", "8", "--k-max", "2"]
    common += ["--max-length", "64", "--threads", "1", "--no-progress"]
    r = _torchrun(*common, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    alone = subprocess.run(
        [sys.executable, "-m", "layerscope", *common, "--out", str(tmp_path / "one")],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    one, two = (json.loads((tmp_path / f / "demo" / "curves.json").read_text()) for f in ("one", "two"))
    assert two["curves"] == one["curves"] and two["baseline"] == one["baseline"]
    assert r.stdout.count("== loss:demo") == 1, r.stdout  # said once, by the main process
    assert (tmp_path / "two" / "demo" / "coalitions.rank1.jsonl").exists()  # process 1 logged its share

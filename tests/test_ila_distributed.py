"""ILA data-parallel: 2 processes under torchrun (gloo on CPU) train on the same data per step as
one process with --grad-accum 2, stop at the same step, end with the same scores; the main process
alone writes and prints; a stopped 2-process run resumes to the uninterrupted result.

Run as a script (``torchrun ... tests/test_ila_distributed.py STORIES OUT``) this file is the
worker of the resume test: run_ila called in-process by every rank, with a stop hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layerscope.cli.app import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# dropout 0: the processes' dropout draws cannot match one process's, everything else must agree;
# eps 0.5 with patience 2 stops "stable" at step 9 of 12, so the stop decision itself is compared
FLAGS = [
    "--data",
    "demo",
    "--limit",
    "16",
    "--seq-len",
    "64",
    "--batch-size",
    "2",
    "--max-steps",
    "12",
    "--min-steps",
    "6",
    "--check-every",
    "3",
    "--eps",
    "0.5",
    "--patience",
    "2",
    "--gate-steps",
    "8",
    "--gate-lr",
    "0.3",
    "--lora-dropout",
    "0",
    "--seed",
    "3",
    "--no-progress",
]
# Scores are gate logits of size ~0.5-5 after 8 Adam steps of lr 0.3. With 2 processes the step's
# gradient is (g0 + g1) / 2, in one process with --grad-accum 2 it is g0 / 2 + g1 / 2: equal in exact
# arithmetic and, since halving is exact in binary floating point, in float32 too (observed: identical
# scores). Other process counts or --grad-accum values group the float32 sums differently (~1e-7
# relative per step); with these flags 2 processes x --grad-accum 2 vs one process with --grad-accum 4
# differ by at most 4.3e-6 (measured), so 1e-4 leaves a 20x margin for other BLAS builds while still
# far below the spread of the scores. The top-30% set is compared too: the ranking is what ILA is for.
SCORE_ATOL = 1e-4
LOSS_RTOL = 1e-5  # the logged losses are averaged in the float32 gradient buffer (one collective per step)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _load(out: Path) -> dict:
    return json.loads((out / "importance.json").read_text())


def _top(result: dict, fraction: float = 0.3) -> set[str]:
    k = max(1, round(fraction * len(result["players"])))
    order = np.argsort(-np.asarray(result["scores"]), kind="stable")
    return {result["players"][i] for i in order[:k]}


@pytest.fixture(scope="module")
def two_processes(stories_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ila2") / "two"
    cmd = [*TORCHRUN, "-m", "layerscope", "ila", "--model", str(stories_path), *FLAGS, "--out", str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


@pytest.mark.slow
def test_two_processes_write_once_and_report_once(two_processes):
    r, out = two_processes
    assert [p.relative_to(out) for p in out.parent.rglob("importance.json")] == [Path("importance.json")]
    assert r.stdout.count("stage 1: stopped at step") == 1, r.stdout
    assert r.stdout.count("wrote ") == 1 and r.stdout.count("data parallel: 2 processes") == 1
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "heatmap.png").exists()
    assert not (out / "checkpoint").exists() and not (out / ".adapter.partial").exists()
    assert _load(out)["method_config"]["processes"] == 2


@pytest.mark.slow
def test_two_processes_equal_one_with_grad_accum_2(two_processes, stories_path, tmp_path):
    one = tmp_path / "one"
    assert main(["ila", "--model", str(stories_path), *FLAGS, "--grad-accum", "2", "--out", str(one)]) == 0
    a, b = _load(one), _load(two_processes[1])
    assert (a["method_config"]["processes"], b["method_config"]["processes"]) == (1, 2)
    ea, eb = a["extras"], b["extras"]
    assert (ea["stop_step"], ea["stop_reason"]) == (eb["stop_step"], eb["stop_reason"]) == (9, "stable")
    assert [s for s, _ in ea["stage1_stability"]] == [s for s, _ in eb["stage1_stability"]]
    assert np.allclose([r for _, r in ea["stage1_stability"]], [r for _, r in eb["stage1_stability"]], rtol=1e-6)
    assert np.allclose(ea["stage1_loss"], eb["stage1_loss"], rtol=LOSS_RTOL, atol=0)
    assert np.allclose(ea["stage2_loss"], eb["stage2_loss"], rtol=LOSS_RTOL, atol=0)
    assert np.allclose(a["scores"], b["scores"], rtol=0, atol=SCORE_ATOL)
    assert _top(a) == _top(b)


@pytest.mark.slow
def test_processes_split_the_micro_batches_of_one_process(monkeypatch, stories):
    """2 processes x --grad-accum 2 take, together, exactly the micro-batches of one process with 4."""
    from layerscope.core import distributed
    from layerscope.core.data import load_sft
    from layerscope.methods.ila import ILAConfig, process_batches

    examples = load_sft("demo", stories[1], max_length=64).examples
    steps, done = 4, 1  # from step 2 on, as after a resume: crosses an epoch boundary (10 examples, 3 per batch)

    def batches(world: int, rank: int, grad_accum: int) -> list[list[list[int]]]:
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        it = process_batches(examples, ILAConfig(batch_size=3, grad_accum=grad_accum), 5, 0, done)
        return [[next(it)["input_ids"].tolist() for _ in range(grad_accum)] for _ in range(steps)]

    alone = batches(1, 0, 4)
    r0, r1 = batches(2, 0, 2), batches(2, 1, 2)
    assert [a + b for a, b in zip(r0, r1)] == alone


@pytest.mark.slow
def test_stopped_two_process_run_resumes_to_the_uninterrupted_result(stories_path, tmp_path):
    r = subprocess.run(
        [*TORCHRUN, __file__, str(stories_path), str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["processes"] == 2
    assert report["stopped_at"] == {"lora": ["lora", 4], "gates": ["gates", 2]}
    for where in ("lora", "gates"):
        assert report[where]["scores_equal"] and report[where]["extras_equal"], where
    assert report["lora"]["first_step"] == ["lora", 5] and report["gates"]["first_step"] == ["gates", 3]


# ---- the torchrun worker of the resume test ----------------------------------------------------------


class _Stop(Exception):
    pass


def _stop_at(stage: str, step: int):
    def hook(s, k):
        if (s, k) == (stage, step):
            raise _Stop  # on every process at the same step, as a kill of the whole job would

    return hook


def _resume_worker(stories: str, out: str) -> None:
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerscope.core import checkpoint, distributed
    from layerscope.core.data import load_sft
    from layerscope.methods.ila import ILAConfig, run_ila

    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    tok = AutoTokenizer.from_pretrained(stories)
    model = AutoModelForCausalLM.from_pretrained(stories, dtype=torch.float32).eval()
    data = load_sft("demo", tok, max_length=64, limit=16, shuffle_seed=0)
    # dropout on: each process draws its own, so each must get its own RNG state back; the stop at
    # stage-1 step 5 resumes from the step-4 checkpoint and must restore the patience counter
    cfg = ILAConfig(
        max_steps=10,
        min_steps=6,
        check_every=3,
        eps=10.0,
        patience=2,
        dropout=0.1,
        gate_steps=5,
        gate_lr=0.3,
        batch_size=2,
        seed=1,
        progress=False,
    )
    whole = run_ila(model, tok, data, cfg)
    report = {"processes": distributed.world_size(), "stopped_at": {}}
    for stage, step in (("lora", 5), ("gates", 3)):
        ckpt = Path(out) / stage
        try:
            run_ila(model, tok, data, cfg, checkpoint_dir=ckpt, checkpoint_every=2, on_step=_stop_at(stage, step))
        except _Stop:
            pass
        header = checkpoint.read_header(ckpt)
        report["stopped_at"][stage] = [header["stage"], header["step"]]
        steps: list = []
        resumed = run_ila(
            model,
            tok,
            data,
            replace(cfg),
            checkpoint_dir=ckpt,
            checkpoint_every=2,
            resume=True,
            on_step=lambda s, k, steps=steps: steps.append([s, k]),
        )
        report[stage] = {
            "scores_equal": resumed.scores == whole.scores,
            "extras_equal": resumed.extras == whole.extras,
            "first_step": steps[0],  # right after the checkpoint: a run that started over would begin at lora 1
        }
    if distributed.is_main_process():
        (Path(out) / "report.json").write_text(json.dumps(report))
    distributed.finish()


if __name__ == "__main__":
    _resume_worker(*sys.argv[1:3])

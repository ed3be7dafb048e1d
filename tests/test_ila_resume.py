"""ILA checkpoints: a run stopped anywhere (an exception, or SIGKILL) and resumed ends with exactly the
scores of an uninterrupted run; a checkpoint of another run is refused; saves are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from layerscope.cli.app import main
from layerscope.core import checkpoint
from layerscope.core.data import load_sft
from layerscope.methods.ila import ILAConfig, run_ila, shuffled_batches

# dropout on (the RNG state must be restored), stage 1 stops "stable" at step 6 (the patience counter
# must be restored), the stability ratio at step 6 compares with the factors saved at the step-3 check,
# which a stop at step 5 must restore from the step-4 checkpoint
CFG = ILAConfig(
    max_steps=10,
    min_steps=6,
    check_every=3,
    eps=10.0,
    patience=2,
    dropout=0.1,
    gate_steps=6,
    gate_lr=0.3,
    batch_size=4,
    seed=1,
    progress=False,
)


class Stop(Exception):
    pass


def stop_at(stage: str, step: int):
    def hook(s, k):
        if (s, k) == (stage, step):
            raise Stop

    return hook


def recorder():
    """(steps, hook): the hook appends every (stage, step) a run takes."""
    steps: list[tuple[str, int]] = []
    return steps, lambda stage, step: steps.append((stage, step))


def assert_resumed_after(steps: list[tuple[str, int]], expect: tuple[str, int]) -> None:
    """The run took its first step right after the checkpoint ``expect`` (a fresh start would begin at lora 1)."""
    assert steps[0] == (expect[0], expect[1] + 1)
    if expect[0] == "gates":
        assert all(stage == "gates" for stage, _ in steps)  # stage 1 was not trained again


@pytest.fixture(scope="module")
def demo(stories):
    model, tok = stories
    return load_sft("demo", tok, max_length=64, limit=16, shuffle_seed=0)  # 10 examples fit in 64 tokens


@pytest.fixture(scope="module")
def uninterrupted(stories, demo):
    model, tok = stories
    return run_ila(model, tok, demo, CFG)


# ---- in-process: stop with an exception, resume -----------------------------------------------


@pytest.mark.parametrize(
    "stage,step,expect",
    [
        ("lora", 5, ("lora", 4)),  # mid stage 1: replays step 5 from the step-4 checkpoint
        ("lora", 6, ("lora", 4)),  # stage 1's last step, before its end-of-stage checkpoint
        ("gates", 1, ("gates", 0)),  # from the end-of-stage-1 checkpoint
        ("gates", 5, ("gates", 4)),  # mid stage 2
    ],
)
def test_stopped_and_resumed_run_equals_uninterrupted(stories, demo, uninterrupted, tmp_path, stage, step, expect):
    model, tok = stories
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Stop):
        run_ila(model, tok, demo, CFG, checkpoint_dir=ckpt, checkpoint_every=2, on_step=stop_at(stage, step))
    header = checkpoint.read_header(ckpt)
    assert (header["stage"], header["step"]) == expect
    steps, record = recorder()
    resumed = run_ila(model, tok, demo, CFG, checkpoint_dir=ckpt, checkpoint_every=2, resume=True, on_step=record)
    assert_resumed_after(steps, expect)
    assert resumed.scores == uninterrupted.scores  # exact floats
    assert resumed.extras == uninterrupted.extras  # losses, stability ratios, stop step, gates: all identical
    assert not any("lora" in n for n, _ in model.named_modules())  # the model is restored after a stop too


def test_resume_without_checkpoint_starts_fresh_and_without_resume_overwrites(stories, demo, uninterrupted, tmp_path):
    model, tok = stories
    ckpt = tmp_path / "checkpoint"
    assert run_ila(model, tok, demo, CFG, checkpoint_dir=ckpt, resume=True).scores == uninterrupted.scores
    other = replace(CFG, seed=2)
    with pytest.raises(Stop):
        run_ila(model, tok, demo, other, checkpoint_dir=ckpt, checkpoint_every=2, on_step=stop_at("lora", 3))
    # not resuming: the seed-2 checkpoint is ignored, then overwritten by this run's
    with pytest.raises(Stop):
        run_ila(model, tok, demo, CFG, checkpoint_dir=ckpt, checkpoint_every=2, on_step=stop_at("lora", 5))
    assert checkpoint.read_header(ckpt)["fingerprint"]["config"]["seed"] == CFG.seed
    steps, record = recorder()
    assert run_ila(model, tok, demo, CFG, checkpoint_dir=ckpt, resume=True, on_step=record).scores == (
        uninterrupted.scores
    )
    assert_resumed_after(steps, ("lora", 4))


def test_batch_order_depends_only_on_seed_and_position(demo):
    def ids(start, n):
        it = shuffled_batches(demo.examples, 4, 7, 0, start=start)
        return [next(it)["input_ids"].tolist() for _ in range(n)]

    run = ids(0, 9)  # 10 examples in batches of 4: 3 per epoch, so this crosses two epoch boundaries
    for start in (1, 3, 5):
        assert ids(start, 9 - start) == run[start:]


def test_checkpoint_saves_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"stage": "lora", "step": 1}, {"w": torch.ones(3)})
    import safetensors.torch

    def killed_midway(tensors, path, *args, **kwargs):  # half the file written, then the process dies
        Path(path).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", killed_midway)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(tmp_path, {"stage": "lora", "step": 9}, {"w": torch.zeros(3)})
    header, tensors = checkpoint.load(tmp_path)  # the step-1 checkpoint, whole
    assert header["step"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    (tmp_path / f".{checkpoint.STATE_FILE}.x.tmp").write_bytes(b"half a file from a killed save")
    checkpoint.save(tmp_path, {"stage": "lora", "step": 2}, {"w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.STATE_FILE]
    header, tensors = checkpoint.load(tmp_path)
    assert header["step"] == 2 and torch.equal(tensors["w"], torch.zeros(3))


# ---- the CLI: a real SIGKILL, refusals ------------------------------------------------------------


def cli_args(stories_path, out, *extra):
    return [
        "ila",
        "--model",
        str(stories_path),
        "--limit",
        "16",
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "60",
        "--min-steps",
        "60",
        "--check-every",
        "3",
        "--eps",
        "1e-9",
        "--gate-steps",
        "20",
        "--gate-lr",
        "0.3",
        "--lora-dropout",
        "0.1",
        "--seed",
        "3",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def result(out):
    d = json.loads((out / "importance.json").read_text())
    ranking = [p for _, p in sorted(zip(d["scores"], d["players"]), key=lambda t: -t[0])]
    return d["scores"], ranking, d["extras"]


def wait_for_checkpoint(proc, ckpt, min_step: int, timeout: float = 240.0) -> dict:
    # generous: ~20 s of it is the CLI's start on this host, and a slow CI host may be several times slower
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        try:
            header = checkpoint.read_header(ckpt)
        except Exception:  # the file is replaced under us: read again
            header = None
        if header is not None and header["stage"] == "lora" and header["step"] >= min_step:
            return header
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint with step >= {min_step} after {timeout}s")


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(stories_path, tmp_path, capsys, monkeypatch):
    import layerscope.methods.ila.outputs as ila  # where the CLI's run looks run_ila up

    killed = tmp_path / "killed"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerscope.cli", *cli_args(stories_path, killed, "--checkpoint-every", "1")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_checkpoint(proc, killed / "checkpoint", min_step=4)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (killed / "importance.json").exists()
    assert checkpoint.read_header(killed / "checkpoint")["step"] >= 4  # the last complete save survived

    saved = checkpoint.read_header(killed / "checkpoint")
    steps, record = recorder()
    real_run_ila = ila.run_ila
    monkeypatch.setattr(ila, "run_ila", lambda *a, **k: real_run_ila(*a, **k, on_step=record))
    assert main(cli_args(stories_path, killed, "--resume")) == 0
    monkeypatch.setattr(ila, "run_ila", real_run_ila)
    stage = "stage 1" if saved["stage"] == "lora" else "stage 2"
    assert f"note: resuming from {killed / 'checkpoint'} ({stage}, step {saved['step']})" in capsys.readouterr().err
    assert_resumed_after(steps, (saved["stage"], saved["step"]))
    assert not (killed / "checkpoint").exists()  # removed once the outputs are written

    whole = tmp_path / "whole"
    assert main(cli_args(stories_path, whole)) == 0
    scores, ranking, extras = result(killed)
    assert (scores, ranking) == result(whole)[:2]
    assert extras == result(whole)[2]


@pytest.mark.parametrize(
    "change,named",
    [
        (["--seed", "4"], "seed"),
        (["--lr", "0.002"], "lr"),
        (["--limit", "12"], "data differ"),
        (["--dtype", "bfloat16"], "placement dtype 'float32' -> 'bfloat16'"),
    ],
)
def test_checkpoint_of_another_run_is_refused(stories_path, tmp_path, capsys, monkeypatch, change, named):
    import layerscope.methods.ila.outputs as ila  # where the CLI's run looks run_ila up

    out = tmp_path / "run"
    real_run_ila = ila.run_ila
    monkeypatch.setattr(ila, "run_ila", lambda *a, **k: real_run_ila(*a, **k, on_step=stop_at("lora", 2)))
    with pytest.raises(Stop):
        main(cli_args(stories_path, out, "--checkpoint-every", "2"))
    monkeypatch.setattr(ila, "run_ila", real_run_ila)
    capsys.readouterr()

    assert main(cli_args(stories_path, out, "--resume", *change)) == 2
    # the error is one line; "note:" lines (e.g. examples dropped by --seq-len) are information, not errors
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(err) == 1 and "different run" in err[0] and named in err[0], err
    assert "resuming" not in captured.out + captured.err  # said only of a checkpoint that is resumed
    assert checkpoint.read_header(out / "checkpoint")["step"] == 2  # refused, not touched


def test_a_bfloat16_model_resumed_in_float32_is_refused(stories_path, tmp_path, capsys, monkeypatch):
    """Weights stored in bfloat16 and upcast to float32 keep their fingerprint, not their numerics."""
    import layerscope.methods.ila.outputs as ila
    from layerscope.core.models import load_model

    bf16 = tmp_path / "stories_bf16"
    loaded = load_model(str(stories_path))
    loaded.model.to(torch.bfloat16).save_pretrained(bf16)
    loaded.tokenizer.save_pretrained(bf16)
    out = tmp_path / "run"
    real_run_ila = ila.run_ila
    monkeypatch.setattr(ila, "run_ila", lambda *a, **k: real_run_ila(*a, **k, on_step=stop_at("lora", 2)))
    with pytest.raises(Stop):
        main(cli_args(bf16, out, "--checkpoint-every", "2", "--dtype", "bfloat16"))
    monkeypatch.setattr(ila, "run_ila", real_run_ila)
    capsys.readouterr()
    assert main(cli_args(bf16, out, "--resume", "--dtype", "float32")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(err) == 1 and "placement dtype 'bfloat16' -> 'float32'" in err[0], err
    assert "model weights differ" not in err[0]  # the fingerprint alone would have let it through


def test_cli_notes_on_ignored_or_missing_checkpoint(stories_path, tmp_path, capsys):
    out = tmp_path / "run"
    checkpoint.save(out / "checkpoint", {"stage": "lora", "step": 2}, {"w": torch.ones(1)})
    short = ["--max-steps", "3", "--min-steps", "3", "--gate-steps", "2"]
    assert main(cli_args(stories_path, out, *short)) == 0  # argparse: the later value wins
    assert "--resume would continue it" in capsys.readouterr().err
    assert (out / "importance.json").exists() and not (out / "checkpoint").exists()
    assert main(cli_args(stories_path, tmp_path / "fresh", "--resume", *short)) == 0
    assert "no checkpoint" in capsys.readouterr().err


def test_resuming_a_finished_run_is_refused_and_leaves_its_result(stories_path, tmp_path, capsys, monkeypatch):
    """Its checkpoint went when the result was written: there is nothing to resume, and training again from
    scratch is not what --resume asks. Refused before the model loads, the result untouched."""
    import layerscope.core.models as models

    out = tmp_path / "run"
    short = ["--max-steps", "3", "--min-steps", "3", "--gate-steps", "2"]
    assert main(cli_args(stories_path, out, *short)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(cli_args(stories_path, out, "--resume", *short)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a finished result (importance.json) and no checkpoint" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

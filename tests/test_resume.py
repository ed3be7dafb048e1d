"""Long runs: coalition log, SIGKILL + --resume, determinism, and multi-process (torchrun, gloo) runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from layerscope.cli.app import main
from layerscope.core.errors import ConfigError, DataError
from layerscope.engine.coalition_log import CoalitionLog, coalition_log_path, open_coalition_log
from layerscope.scoring import EvalResult

RUN = {"model": "m", "weights": "abc", "players": ["a", "b"]}
VOLATILE = ("created", "timings")  # the only fields allowed to differ between identical runs


def _result(v: float) -> EvalResult:
    return EvalResult(
        value=v,
        metrics={"acc": v, "chance": 0.25},
        predictions=[0, 1],
        n_items=2,
        loglikelihoods=[[-1.0 / 3, v], [1e-300, -7.123456789012345]],
    )


def _stable_bytes(path: Path) -> bytes:
    obj = json.loads(path.read_text())
    for k in VOLATILE:
        obj.pop(k, None)
    return json.dumps(obj, sort_keys=True).encode()


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---- the log itself -----------------------------------------------------------------------------
def test_log_round_trips_values_exactly(tmp_path):
    path = tmp_path / "c.jsonl"
    with CoalitionLog(path, RUN) as log:
        log.append(0b01, _result(0.1 + 0.2))
        log.append(0b11, _result(float("nan")))
    back = CoalitionLog(path, RUN, resume=True)
    assert set(back.results) == {0b01, 0b11}
    assert back.results[0b01] == _result(0.1 + 0.2)  # bit-exact floats, all fields
    assert back.results[0b11].value != back.results[0b11].value  # NaN survives
    back.close()


def test_log_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    path = tmp_path / "c.jsonl"
    with CoalitionLog(path, RUN) as log:
        log.append(1, _result(0.5))
    with open(path, "a") as f:
        f.write('{"removed":"2","value":0.7,"metr')  # killed mid-write
    with CoalitionLog(path, RUN, resume=True) as log:
        assert set(log.results) == {1}
        log.append(2, _result(0.7))
    with CoalitionLog(path, RUN, resume=True) as log:
        assert set(log.results) == {1, 2}


def test_log_refuses_another_runs_values(tmp_path):
    path = tmp_path / "c.jsonl"
    CoalitionLog(path, RUN).close()
    with pytest.raises(ConfigError, match="different run .*weights"):
        CoalitionLog(path, {**RUN, "weights": "other"}, resume=True)


def test_log_with_a_corrupt_middle_line_fails_clearly(tmp_path):
    path = tmp_path / "c.jsonl"
    with CoalitionLog(path, RUN) as log:
        log.append(1, _result(0.5))
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], "garbage", text[1]]) + "\n")
    with pytest.raises(DataError, match="line 2 is not JSON"):
        CoalitionLog(path, RUN, resume=True)


def test_without_resume_the_log_starts_afresh(tmp_path):
    path = tmp_path / "c.jsonl"
    with CoalitionLog(path, RUN) as log:
        log.append(1, _result(0.5))
    with CoalitionLog(path, RUN) as log:
        assert log.n_resumed == 0
    assert CoalitionLog(path, RUN, resume=True).n_resumed == 0


def test_open_coalition_log_under_an_output_folder(tmp_path):
    with open_coalition_log(tmp_path / "out", RUN, resume=False) as log:
        assert log.path == coalition_log_path(tmp_path / "out") == tmp_path / "out" / "coalitions.jsonl"
        log.append(0b10, _result(0.5))  # keyed by the removed-player mask: player 1 removed
    with open_coalition_log(tmp_path / "out", RUN, resume=True) as log:
        assert log.n_resumed == 1 and json.loads(log.path.read_text().splitlines()[1])["removed"] == "2"


# ---- commands ---------------------------------------------------------------------------------------
def _ablate_args(stories_path, out, *extra):
    return ["ablate", "--model", str(stories_path), "--task", "loss:demo", "--out", str(out), "--no-progress", *extra]


def _perm_args(stories_path, out, budget, *extra):
    return [
        "shapley",
        "--model",
        str(stories_path),
        "--task",
        "loss:demo",
        "--estimator",
        "permutation",
        "--budget",
        str(budget),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_same_command_and_seed_give_byte_identical_json(stories_path, tmp_path):
    for name, args in [
        ("ablate", lambda o: _ablate_args(stories_path, o)),
        ("shapley", lambda o: _perm_args(stories_path, o, 40)),
    ]:
        a, b = tmp_path / f"{name}1", tmp_path / f"{name}2"
        assert main(args(a)) == 0 and main(args(b)) == 0
        assert _stable_bytes(a / "importance.json") == _stable_bytes(b / "importance.json"), name


def test_ablate_resumes_from_a_partial_log(stories_path, tmp_path, capsys):
    fresh, partial = tmp_path / "fresh", tmp_path / "partial"
    assert main(_ablate_args(stories_path, fresh)) == 0
    # a run that logged only some of its coalitions before dying: keep the header and 4 values
    partial.mkdir()
    lines = (fresh / "coalitions.jsonl").read_text().splitlines()
    (partial / "coalitions.jsonl").write_text("\n".join(lines[:5]) + "\n")
    capsys.readouterr()
    assert main(_ablate_args(stories_path, partial, "--resume")) == 0
    err = capsys.readouterr().err
    assert "note: resuming: 4 coalition values read" in err and "starts from scratch" not in err
    done = json.loads((partial / "importance.json").read_text())
    assert done["extras"]["engine"]["resumed"] == 4
    assert done["scores"] == json.loads((fresh / "importance.json").read_text())["scores"]


def test_resume_takes_the_same_model_from_another_folder_not_another_tokenizer(stories_path, tmp_path, capsys):
    """The log fingerprints weights and tokenizer, so a moved model folder resumes (with a note naming the old
    name) while a copy whose tokenizer adds no BOS, same weights, is another run: its values would differ.
    --resume with no log starts afresh and says so."""
    out, moved, no_bos = tmp_path / "o", tmp_path / "moved_model", tmp_path / "no_bos"
    shutil.copytree(stories_path, moved)
    shutil.copytree(stories_path, no_bos)
    tok = json.loads((no_bos / "tokenizer.json").read_text())
    tok["post_processor"] = None  # its template added BOS to every text
    (no_bos / "tokenizer.json").write_text(json.dumps(tok))
    assert main(_ablate_args(stories_path, out)) == 0
    scores = json.loads((out / "importance.json").read_text())["scores"]
    capsys.readouterr()
    assert main(_ablate_args(no_bos, out, "--resume")) == 2
    assert "belongs to a different run (differs in: tokenizer)" in capsys.readouterr().err
    assert main(_ablate_args(moved, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "coalition values read from" in err and "the log was written with the model named 'stories260K'" in err
    assert json.loads((out / "importance.json").read_text())["scores"] == scores
    assert main(_ablate_args(stories_path, tmp_path / "new", "--resume")) == 0
    assert "coalitions.jsonl; --resume starts from scratch" in capsys.readouterr().err


def test_a_log_without_a_tokenizer_fingerprint_is_held_to_the_model_name(tmp_path):
    """Logs written before the tokenizer was fingerprinted resume as before: same name only."""
    path = tmp_path / "coalitions.jsonl"
    CoalitionLog(path, RUN).close()
    CoalitionLog(path, {**RUN, "tokenizer": "t1"}, resume=True).close()
    with pytest.raises(ConfigError, match="differs in: model"):
        CoalitionLog(path, {**RUN, "tokenizer": "t1", "model": "elsewhere"}, resume=True)


def test_resume_refuses_a_log_from_other_settings(stories_path, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_ablate_args(stories_path, out)) == 0
    assert main(_ablate_args(stories_path, out, "--resume", "--batch-size", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different run" in err[0] and "batch_size" in err[0]
    # stacked coalitions agree with one at a time within a tolerance only: another stacking is another run
    assert main(_ablate_args(stories_path, out, "--resume", "--coalition-batch", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different run" in err[0] and "coalition_batch" in err[0]


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_gives_identical_shapley_values(stories_path, tmp_path):
    budget = 120
    reference = tmp_path / "reference"
    assert main(_perm_args(stories_path, reference, budget)) == 0
    out = tmp_path / "killed"
    k = random.Random(os.getpid()).randint(15, 90)  # where to kill: some logged values, not all
    cmd = [sys.executable, "-m", "layerscope", *_perm_args(stories_path, out, budget)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "coalitions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") > k:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "importance.json").exists()  # no complete-looking result
    assert main(_perm_args(stories_path, out, budget, "--resume")) == 0
    got = json.loads((out / "importance.json").read_text())
    want = json.loads((reference / "importance.json").read_text())
    assert got["extras"]["engine"]["resumed"] >= k - 1
    assert got["scores"] == want["scores"] and got["stderr"] == want["stderr"]
    assert got["n_evaluations"] == want["n_evaluations"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("task", ["loss:demo", "mc"])
def test_two_processes_give_the_same_numbers_as_one(stories_path, shared_dir, tmp_path, task):
    if task == "mc":
        task = str(shared_dir / "data" / "eval" / "arc_easy.jsonl")
    common = ["--model", str(stories_path), "--task", task, "--limit", "24", "--batch-size", "5", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["ablate", *common, "--out", str(one)]) == 0
    cmd = [
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "layerscope",
        "ablate",
        *common,
        "--out",
        str(two),
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((one / "importance.json").read_text())
    b = json.loads((two / "importance.json").read_text())
    assert b["extras"]["engine"]["processes"] == 2 and a["extras"]["engine"]["processes"] == 1
    for key in ("scores", "baseline", "stderr", "data", "players", "model"):
        assert a[key] == b[key], key
    assert a["extras"]["removed_metrics"] == b["extras"]["removed_metrics"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate launcher not on PATH")
def test_finetune_runs_under_accelerate_launch_ddp(stories_path, tmp_path, free_port):
    out = tmp_path / "ft"
    # --multi_gpu is accelerate's switch for one-machine DDP; without a GPU the processes use gloo on CPU
    cmd = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "layerscope",
        "finetune",
        "--model",
        str(stories_path),
        "--data",
        "demo",
        "--mode",
        "all",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--out",
        str(out),
        "--no-progress",
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("training 35 of 35") == 1 and r.stdout.count("wrote ") == 1  # one process reports
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["processes"] == 2
    assert report["steps"] == 3 and report["heldout_loss"] < report["heldout_loss_before"]
    assert (out / "adapter" / "adapter_config.json").exists()


@pytest.mark.slow
def test_ila_same_seed_gives_byte_identical_json(stories_path, tmp_path):
    args = [
        "ila",
        "--model",
        str(stories_path),
        "--data",
        "demo",
        "--max-steps",
        "4",
        "--min-steps",
        "2",
        "--gate-steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--no-progress",
    ]
    out = tmp_path / "out"  # the same command: the output path is recorded (where the adapter is)
    assert main([*args, "--out", str(out)]) == 0
    first = _stable_bytes(out / "importance.json")
    (out / "importance.json").unlink()  # the second run must write its own
    assert main([*args, "--out", str(out)]) == 0
    assert _stable_bytes(out / "importance.json") == first


@pytest.mark.parametrize("lisa", [[], ["--lisa-layers", "2", "--lisa-interval", "2"]], ids=["lora", "lisa"])
def test_finetune_resume_from_a_trainer_checkpoint_matches_an_uninterrupted_run(stories_path, tmp_path, lisa):
    from safetensors.torch import load_file

    args = [
        "finetune",
        "--model",
        str(stories_path),
        "--data",
        "demo",
        "--mode",
        "all",
        "--max-steps",
        "5",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--no-progress",
        "--save-checkpoints",
        "--checkpoint-every",
        "3",
        *lisa,
    ]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert main([*args, "--out", str(ref)]) == 0
    # a run that died after its step-3 checkpoint: only that checkpoint is on disk
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    import transformers

    real_step = transformers.Trainer.training_step
    trained: list[int] = []

    def counted_step(trainer, *a, **k):
        trained.append(trainer.state.global_step + 1)
        return real_step(trainer, *a, **k)

    with mock.patch.object(transformers.Trainer, "training_step", counted_step):
        assert main([*args, "--out", str(resumed), "--resume"]) == 0
    assert trained == [4, 5]  # steps 1-3 came from the checkpoint (a fresh start would train all five)
    a = load_file(ref / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (ref, resumed))
    assert ra["steps"] == rb["steps"] == 5
    assert ra["lisa_history"] == rb["lisa_history"]
    # logged every gcd(10, 3) = 1 step, so the windows after the checkpoint are the same: the same means
    assert [s for s, _ in ra["train_loss"]] == [1, 2, 3, 4, 5] and ra["train_loss"] == rb["train_loss"]
    if lisa:
        return
    # a resume that would train other parameters than the checkpoints hold state for is refused
    other = tmp_path / "other"
    shutil.copytree(ref / "checkpoints", other / "checkpoints")
    i = args.index("all")
    changed = [*args[:i], "random", "--fraction", "0.3", *args[i + 1 :]]
    assert main([*changed, "--out", str(other), "--resume"]) == 2
    assert not (other / "report.json").exists()


def _fail_on_rank_zero(rank: int, port: int, results) -> None:
    """Worker: a 2-process gloo group evaluating one batch; rank 0 owns it and its forward raises.

    Also records whether each process's error asks to be printed by that process (the CLI prints
    errors on the main process only, unless the error was met by some processes alone).
    """
    import torch.distributed as dist

    from layerscope.core import distributed
    from layerscope.scoring.runner import run_batches as _run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    distributed.init_from_env("cpu")

    def forward(i, b):
        raise RuntimeError(f"boom on rank {distributed.rank()}")

    try:
        _run([object()], None, forward, False, "t", 3)
        results[rank] = "no error"
    except Exception as e:  # noqa: BLE001 - the point is which error each rank sees
        results[rank] = f"{type(e).__name__}: {e}"
        results[f"report{rank}"] = getattr(e, "report_on_every_process", False)
    finally:
        dist.destroy_process_group()


def _two_processes(worker, *args, hung: str) -> dict:
    """Run ``worker(rank, port, *args, results)`` in a gloo group of two; what each put in ``results``.
    Fails with ``hung`` if they have not both ended within three minutes (two interpreters importing
    torch on two busy cores take a good part of one)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    ctx = mp.spawn(worker, args=(port, *args, results), nprocs=2, join=False)
    deadline = time.time() + 180
    while not ctx.join(timeout=1):
        assert time.time() < deadline, hung
    return results


@pytest.mark.slow
def test_an_error_on_one_process_reaches_every_process_instead_of_hanging():
    results = _two_processes(_fail_on_rank_zero, hung="a process hung after another failed")
    assert results[0] == "RuntimeError: boom on rank 0"
    assert results[1] == "ModelError: evaluation failed in 1 other process(es)"
    assert results["report0"] is True and results["report1"] is False  # rank 0 alone knows what went wrong


def _open_log_on_each_process(rank: int, port: int, out: str, per_process: bool, results) -> None:
    """Worker: both processes of a gloo group open, with --resume, the coalition log(s) of run "this run"."""
    import torch.distributed as dist

    from layerscope.core import distributed
    from layerscope.engine.coalition_log import open_coalition_log

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    distributed.init_from_env("cpu")
    try:
        open_coalition_log(out, {"model": "this run"}, resume=True, per_process=per_process)
        results[rank] = "no error"
    except Exception as e:  # noqa: BLE001 - the point is which error each rank sees
        results[rank] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_refused_log_is_refused_on_every_process_instead_of_leaving_them_waiting(tmp_path):

    from layerscope.engine.coalition_log import CoalitionLog

    CoalitionLog(tmp_path / "coalitions.jsonl", {"model": "another run"}, resume=False)
    hung = "a process waited for ever after the main one refused the log"
    results = _two_processes(_open_log_on_each_process, str(tmp_path), False, hung=hung)
    assert results[0].startswith("ConfigError: ") and "different run" in results[0]  # the main process says why
    assert results[1] == "ModelError: opening the coalition log failed in 1 other process(es)"


@pytest.mark.slow
def test_a_log_refused_by_a_non_main_process_alone_is_told_to_the_main_one(tmp_path):
    """Rank 1's own log belongs to another run: rank 1 says why, rank 0 learns of it in one
    collective (not from gloo's lost connection once rank 1 is gone)."""

    from layerscope.engine.coalition_log import CoalitionLog, rank_log_path

    CoalitionLog(tmp_path / "coalitions.jsonl", {"model": "this run"}, resume=False).close()
    CoalitionLog(rank_log_path(tmp_path, 1), {"model": "another run"}, resume=False).close()
    hung = "a process waited for ever after another refused its log"
    results = _two_processes(_open_log_on_each_process, str(tmp_path), True, hung=hung)
    assert results[1].startswith("ConfigError: ") and "different run" in results[1]
    assert results[0] == "ModelError: opening the coalition log failed in 1 other process(es)"


def test_cli_prints_an_error_met_by_a_non_main_process_alone(monkeypatch, capsys):
    from layerscope.cli import app as cli
    from layerscope.core.errors import ModelError

    def failing(args):
        e = ModelError("out of memory on this process")
        e.report_on_every_process = flag
        raise e

    monkeypatch.setenv("RANK", "1")  # a non-main process of a torchrun launch
    monkeypatch.setattr("layerscope.cli.eval.run", failing)
    cases = [(False, ""), (True, "layerscope eval: error (process 1): out of memory on this process\n")]
    for flag, expected in cases:  # noqa: B007 (failing() reads flag through its closure)
        assert cli.main(["eval", "--task", "arc_easy"]) == 2
        assert capsys.readouterr().err == expected

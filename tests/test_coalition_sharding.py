"""Coalitions shared among processes (``--shard``, engine/sharding.py), and the self-check's
dtype tolerance. The fast tests fake the process group; the slow ones run torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from layerscope.cli.ablate import resumed_phrase
from layerscope.cli.app import main
from layerscope.core import distributed
from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.layermap import build_layer_map
from layerscope.engine import capture, sharding
from layerscope.engine.coalition_log import CoalitionLog, open_coalition_log, rank_log_path
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.scoring import EvalResult, LossEvaluator


@dataclass
class Ex:
    input_ids: list
    labels: list


def loss_evaluator(tok, n: int = 6, batch_size: int = 2) -> LossEvaluator:
    g = torch.Generator().manual_seed(0)
    exs = []
    for k in range(n):
        ids = torch.randint(3, 512, (8 + 3 * k,), generator=g).tolist()
        exs.append(Ex(ids, [-100] * 2 + ids[2:]))
    return LossEvaluator(tok, exs, batch_size=batch_size)


def some_coalitions(n: int, k: int, seed: int = 0) -> list[frozenset]:
    rng = random.Random(seed)
    return [frozenset(i for i in range(n) if rng.random() < 0.6) for _ in range(k)] + [frozenset()]


# ---- which process computes which coalition --------------------------------------------------------
def test_costs_count_the_players_a_forward_reruns():
    n = 6
    ablation_order = [1 << p for p in reversed(range(n))]  # the engine's order: last player removed first
    assert sharding.forward_costs(ablation_order, n) == [1, 2, 3, 4, 5, 6]
    # a coalition sharing players 0..2 with the one before reruns players 3.. only
    assert sharding.forward_costs([0b000001, 0b001001], n) == [6, 3]


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_shares_are_contiguous_cover_everything_and_balance(parts):
    costs = list(range(1, 31))
    shares = sharding.contiguous_shares(costs, parts)
    assert len(shares) == parts
    assert [i for s in shares for i in s] == list(range(30))  # in order, each once
    sums = [sum(costs[i] for i in s) for s in shares]
    assert max(sums) - min(sums) <= max(costs)  # within one coalition of even


def test_more_processes_than_coalitions_leaves_some_idle():
    assert [list(s) for s in sharding.contiguous_shares([4], 3)] == [[], [0], []]
    assert [list(s) for s in sharding.contiguous_shares([], 2)] == [[], []]


def _fake_group(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setattr(distributed, "working_together", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "is_main_process", lambda: rank == 0)
    monkeypatch.setattr(distributed, "sum_across", lambda t: t)  # the fallback vote: this process's own


def test_shares_of_all_processes_partition_the_batch(monkeypatch):
    todo = sorted(random.Random(1).sample(range(1, 1 << 8), 40))
    got = []
    for r in range(3):
        _fake_group(monkeypatch, r, 3)
        got += sharding.my_share(todo, 8)
    assert got == todo


def test_auto_splits_by_coalition_only_with_one_per_process(monkeypatch):
    assert not sharding.split_by_coalition(10, "coalitions")  # alone: nothing is split
    _fake_group(monkeypatch, 0, 4)
    assert [sharding.split_by_coalition(k, "auto") for k in (1, 3, 4, 9)] == [False, False, True, True]
    assert sharding.split_by_coalition(1, "coalitions") and not sharding.split_by_coalition(9, "items")
    with pytest.raises(ConfigError, match="shard must be one of"):
        sharding.check_shard("rows")


def test_the_cli_offers_the_engine_choices():
    import argparse

    from layerscope.cli import ablate

    p = argparse.ArgumentParser()
    ablate.add_arguments(p)
    shard = next(a for a in p._actions if a.dest == "shard")
    assert tuple(shard.choices) == sharding.SHARD_CHOICES and shard.default == "auto"


def _r(v: float) -> EvalResult:
    return EvalResult(value=v, metrics={}, predictions=None, n_items=1)


def test_gather_puts_every_process_result_together_and_sums_their_work(monkeypatch):
    others = [({1: _r(1.0)}, {"evaluations": 1, "path_hits": 4}), ({7: _r(7.0)}, {"evaluations": 2})]
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [others[0], mine, others[1]])
    got, work = sharding.gather_results({3: _r(3.0)}, None, {"evaluations": 5, "path_hits": 1})
    assert {m: r.value for m, r in got.items()} == {1: 1.0, 3: 3.0, 7: 7.0}
    assert work == {"evaluations": 8, "path_hits": 5}


def test_a_failure_anywhere_raises_everywhere(monkeypatch):
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [None, mine])
    with pytest.raises(ModelError, match="failed in 1 other process"):
        sharding.gather_results({3: _r(3.0)}, None)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [({1: _r(1.0)}, {}), mine])
    e = RuntimeError("out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        sharding.gather_results({}, e)
    assert e.report_on_every_process  # rank 0 alone does not know what failed here


# ---- the engine with a faked group of two --------------------------------------------------------------
@pytest.mark.parametrize("shard", ["coalitions", "auto"])
def test_engine_computes_its_share_and_returns_everything_in_order(monkeypatch, stories, tmp_path, shard):
    model, tok = stories
    lm = build_layer_map(model)
    ev = loss_evaluator(tok)
    ref = CoalitionEngine(model, lm, ev, "sublayer")
    coalitions = some_coalitions(ref.n, 12)
    want = ref.results(coalitions)
    todo = sorted({ref.removed_mask(c) for c in coalitions} - {0}, key=ref._order_key)  # what the engine computes
    for r in (0, 1):
        _fake_group(monkeypatch, r)

        def gather(mine, r=r, todo=todo):  # the other process computed the rest (as the reference did)
            results, _ = mine
            other = {m: ref.result([p for p in range(ref.n) if not (m >> p) & 1]) for m in todo if m not in results}
            other_work = {"evaluations": len(other), "path_hits": 1000}
            return [mine, (other, other_work)] if r == 0 else [(other, other_work), mine]

        monkeypatch.setattr(distributed, "all_gather_objects", gather)
        log = CoalitionLog(tmp_path / f"log{r}.jsonl", {"run": 1})
        eng = CoalitionEngine(model, lm, ev, "sublayer", shard=shard, log=log)
        got = eng.results(coalitions)
        assert [g.value for g in got] == [w.value for w in want]  # bit-identical, in the order given
        assert 0 < len(log.results) < len(todo)  # it computed its share only
        assert eng.stats.evaluations == len(todo)  # and counts every process's work, as one process would
        assert 1000 < eng.stats.path_hits < 2000  # its own path hits and the other's
        assert eng.describe()["counters"].startswith("the whole run's work, over its 2 processes;")
        assert set(log.results) == set(sharding.my_share(todo, eng.n))  # it logs what it computed
        assert eng.values(coalitions) == [w.value for w in want] and eng.stats.memo_hits >= len(coalitions)
        log.close()


def test_shard_has_no_effect_in_one_process(stories):
    model, tok = stories
    lm = build_layer_map(model)
    ev = loss_evaluator(tok)
    coalitions = some_coalitions(10, 8)
    values = {s: CoalitionEngine(model, lm, ev, "sublayer", shard=s).values(coalitions) for s in sharding.SHARD_CHOICES}
    assert values["auto"] == values["coalitions"] == values["items"]
    with pytest.raises(ConfigError, match="shard must be one of"):
        CoalitionEngine(model, lm, ev, "sublayer", shard="rows")


# ---- per-process logs ------------------------------------------------------------------------------
def test_resume_reads_every_process_log_and_a_fresh_start_drops_them(tmp_path):
    run = {"model": "m"}
    with open_coalition_log(tmp_path, run, resume=False) as main_log:
        main_log.append(1, _r(1.0))
    with CoalitionLog(rank_log_path(tmp_path, 1), run) as other:  # what process 1 of a 2-process run left
        other.append(2, _r(2.0))
    with open_coalition_log(tmp_path, run, resume=True) as log:  # one process resumes: it takes both
        assert {m: r.value for m, r in log.results.items()} == {1: 1.0, 2: 2.0}
        assert log.read_from == [tmp_path / "coalitions.jsonl", rank_log_path(tmp_path, 1)]
        # the note counts and names both logs (it named rank 0's alone)
        assert resumed_phrase(log) == (
            f"2 coalition values read from 2 logs: {tmp_path / 'coalitions.jsonl'}, {rank_log_path(tmp_path, 1)}"
        )
    with open_coalition_log(tmp_path, {"model": "other"}, resume=False) as log:
        assert log.n_resumed == 0 and not rank_log_path(tmp_path, 1).exists()


# ---- the self-check's tolerance follows the dtype -------------------------------------------------------------
def test_tolerance_follows_the_computing_dtype():
    m = torch.nn.Linear(2, 2)
    assert capture.check_tolerance(m) == 1e-5
    assert capture.check_tolerance(m.to(torch.float64)) == 1e-5
    assert capture.check_tolerance(m.to(torch.float16)) == 8 * 2**-10
    assert capture.check_tolerance(m.to(torch.bfloat16)) == 8 * 2**-7


def test_a_bfloat16_model_stays_cached_through_gpu_sized_rounding(monkeypatch, stories):
    """On CPU both paths round alike; a GPU's kernels for other shapes need not. Perturb the reference
    by a few bfloat16 roundings: the dtype's tolerance keeps the engine cached, float32's would not."""
    _, tok = stories
    model32 = tiny_model("llama", n_layers=3, vocab=512)
    model16 = tiny_model("llama", n_layers=3, vocab=512).to(torch.bfloat16)
    plain = capture.Probe.plain

    def rounded_apart(self, removed_mask):
        ref = plain(self, removed_mask)
        return ref + 2 * torch.finfo(torch.bfloat16).eps * max(1.0, float(ref.abs().max()))

    monkeypatch.setattr(capture.Probe, "plain", rounded_apart)
    ev = loss_evaluator(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        eng16 = CoalitionEngine(model16, build_layer_map(model16), ev, "sublayer")
    assert eng16.mode == "cached" and 0 < eng16.check_diff["full"] <= eng16.check_diff["tolerance"]
    with pytest.warns(RuntimeWarning, match="falls back"):
        CoalitionEngine(model16, build_layer_map(model16), ev, "sublayer", tolerance=1e-5)
    monkeypatch.setattr(capture.Probe, "plain", plain)
    eng32 = CoalitionEngine(model32, build_layer_map(model32), ev, "sublayer")
    coalitions = some_coalitions(eng32.n, 6)
    v16, v32 = eng16.values(coalitions), eng32.values(coalitions)
    assert max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(v16, v32)) < 0.05


# ---- two real processes (torchrun, gloo) -------------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "layerscope", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _command(stories_path, kind: str, out: Path, *extra: str) -> list[str]:
    common = ["--model", str(stories_path), "--task", "loss:demo", "--limit", "12", "--batch-size", "3"]
    common += ["--no-progress", "--threads", "1", "--out", str(out), *extra]
    if kind == "ablate":
        return ["ablate", *common]
    return ["shapley", *common, "--estimator", "permutation", "--budget", "60"]


def _same(a: Path, b: Path, *keys: str) -> None:
    x, y = (json.loads((d / "importance.json").read_text()) for d in (a, b))
    for key in keys:
        assert x[key] == y[key], key


needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")


@pytest.mark.slow
@needs_torchrun
@pytest.mark.parametrize(("kind", "shard"), [("ablate", "coalitions"), ("shapley", "coalitions"), ("shapley", "items")])
def test_two_processes_sharing_coalitions_give_one_process_numbers(stories_path, tmp_path, kind, shard):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_command(stories_path, kind, one)) == 0
    run = _torchrun(_command(stories_path, kind, two, "--shard", shard))
    _same(one, two, "scores", "stderr", "baseline", "n_evaluations", "players")
    engine = json.loads((two / "importance.json").read_text())["extras"]["engine"]
    assert engine["processes"] == 2 and engine["shard"] == shard
    alone = json.loads((one / "importance.json").read_text())["extras"]["engine"]
    assert engine["evaluations"] == alone["evaluations"]  # both processes' work (was process 0's alone)
    assert ("share of their batches" in engine["counters"]) == (shard == "items")  # block counters: its share
    assert "device: cpu (auto), dtype: float32 (auto)" in run.stdout  # as alone (the "(auto)" was dropped)
    assert (two / "coalitions.rank1.jsonl").exists() == (shard == "coalitions")


@pytest.mark.slow
@needs_torchrun
def test_a_cut_short_two_process_run_resumes_with_two_or_one_process(stories_path, tmp_path):
    """Each process's log ends where a kill left it (every line is flushed as written): keep a prefix
    of each, resume with 2 processes and with 1; both end with one process's numbers."""
    ref, two = tmp_path / "ref", tmp_path / "two"
    assert main(_command(stories_path, "shapley", ref)) == 0
    _torchrun(_command(stories_path, "shapley", two, "--shard", "coalitions"))
    logs = {p.name: p.read_text().splitlines() for p in two.glob("coalitions*.jsonl")}
    assert len(logs) == 2 and all(len(lines) > 5 for lines in logs.values())
    for resumed, launch in (("again2", _torchrun), ("again1", lambda a: main(a) == 0 or pytest.fail("exit"))):
        d = tmp_path / resumed
        d.mkdir()
        for name, lines in logs.items():
            (d / name).write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[len(lines) // 2][:7])  # torn
        launch(_command(stories_path, "shapley", d, "--shard", "coalitions", "--resume"))
        _same(ref, d, "scores", "stderr", "n_evaluations")
        got = json.loads((d / "importance.json").read_text())["extras"]["engine"]
        assert got["resumed"] == sum(len(lines) // 2 - 1 for lines in logs.values())


def test_one_named_gpu_for_every_launched_process_is_refused(monkeypatch):
    from layerscope.core.distributed import local_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert local_device("cuda") == "cuda:1"  # each process its own GPU
    with pytest.raises(ConfigError, match="every process on one GPU"):
        local_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # each process sees its own GPU only
    assert local_device("cuda:0") == "cuda:0"
    assert local_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device("cuda:0") == "cuda:0"  # alone, a named GPU is fine

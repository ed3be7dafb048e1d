"""What processes sharing a run say: the coalition bar names its share, callers count every process's
coalitions, and the collective helpers mark who prints an error. The process group is faked."""

from __future__ import annotations

import io
import sys

import pytest

from layerscope.core import distributed
from layerscope.core.errors import DataError, ModelError
from layerscope.core.layermap import build_layer_map
from layerscope.engine import sharding
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.scoring import LossEvaluator


class _Ex:
    def __init__(self, ids):
        self.input_ids, self.labels = ids, [-100] + ids[1:]


def _fake_group(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setattr(distributed, "working_together", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "is_main_process", lambda: rank == 0)
    monkeypatch.setattr(distributed, "sum_across", lambda t: t)


def test_the_bar_says_it_counts_one_share_and_callers_count_them_all(monkeypatch, stories):
    model, tok = stories
    lm = build_layer_map(model)
    ev = LossEvaluator(tok, [_Ex(list(range(5 + k, 17 + k))) for k in range(4)], batch_size=2)
    ref = CoalitionEngine(model, lm, ev, "sublayer")
    coalitions = [[p for p in range(ref.n) if p != i] for i in range(ref.n)]  # ablation: n to compute
    _fake_group(monkeypatch, 0)

    def gather(mine):  # process 1 computed the rest
        results, _ = mine
        rest = {m: ref.result([p for p in range(ref.n) if not (m >> p) & 1]) for m in todo if m not in results}
        return [mine, (rest, {"evaluations": len(rest)})]

    todo = [ref.removed_mask(c) for c in coalitions]
    monkeypatch.setattr(distributed, "all_gather_objects", gather)
    eng = CoalitionEngine(model, lm, ev, "sublayer", shard="coalitions")
    seen: list[float] = []
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    got = eng.values(coalitions, progress=True, on_result=seen.append)
    assert f"coalitions (sublayer; process 0's share of {ref.n})" in err.getvalue()
    assert eng.stats.evaluations == ref.n  # its own share and process 1's (gathered) ...
    assert sorted(seen) == sorted(got) and len(seen) == ref.n  # ... but the caller hears of every coalition


def test_who_prints_an_error_met_in_a_collective(monkeypatch):
    monkeypatch.setattr(distributed, "working_together", lambda: True)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda failed: [True, failed])
    alone = DataError("rank1.jsonl is corrupt")
    with pytest.raises(DataError), distributed.together("opening the log"):
        raise alone
    assert alone.report_on_every_process is False  # process 0 failed too: it says it, once
    monkeypatch.setattr(distributed, "all_gather_objects", lambda failed: [False, failed])
    with pytest.raises(DataError), distributed.together("opening the log"):
        raise alone
    assert alone.report_on_every_process is True  # only here: this process must say it
    monkeypatch.setattr(distributed, "all_gather_objects", lambda failed: [True, failed])
    with pytest.raises(ModelError, match="opening the log failed in 1 other process") as e:
        with distributed.together("opening the log"):
            pass
    assert e.value.report_on_every_process is False  # the main process says it; the failed one says why
    monkeypatch.setattr(distributed, "all_gather_objects", lambda mine: [None, mine])  # coalitions, likewise
    with pytest.raises(ModelError, match="evaluation failed in 1 other process") as e:
        sharding.gather_results({}, None)
    assert e.value.report_on_every_process is False
    with pytest.raises(DataError):
        sharding.gather_results({}, alone)  # both failed: process 0 says it
    assert alone.report_on_every_process is False


def test_together_alone_is_the_block_itself(monkeypatch):
    monkeypatch.setattr(distributed, "all_gather_objects", lambda x: pytest.fail("no collective alone"))
    with distributed.together("x"):
        pass
    with pytest.raises(DataError, match="bad"), distributed.together("x"):
        raise DataError("bad")


def test_a_lost_peer_is_told_from_a_bug(monkeypatch):
    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1")
    assert not distributed.lost_a_peer(gone)  # alone: no peer to lose
    monkeypatch.setattr(distributed, "working_together", lambda: True)
    assert distributed.lost_a_peer(gone)
    assert not distributed.lost_a_peer(RuntimeError("shape mismatch")) and not distributed.lost_a_peer(OSError())

import json

import pytest

from layerscope.core.errors import ConfigError, DataError
from layerscope.core.importance import LayerImportance, spearman, top_jaccard, top_k_count


def make(scores, fp="abc", players=None, gran="sublayer"):
    players = players or [f"layers.{i // 2}.{'self_attn' if i % 2 == 0 else 'mlp'}" for i in range(len(scores))]
    return LayerImportance(
        method="test",
        granularity=gran,
        players=players,
        scores=list(scores),
        model={"name": "m", "fingerprint": fp},
        seed=0,
    )


def test_roundtrip(tmp_path):
    r = make([0.1, 0.5, float("nan"), 0.2])
    path = r.save(tmp_path)
    assert path.name == "importance.json"
    d = json.loads(path.read_text())
    assert d["schema_version"] == 1 and d["scores"][2] is None  # NaN is not valid JSON
    back = LayerImportance.load(tmp_path)
    assert back.players == r.players and back.scores[:2] == [0.1, 0.5]
    assert back.ranking()[-1] == r.players[2]  # missing scores rank last
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left


def test_top_and_ranking():
    r = make([0.1, 0.5, 0.3, 0.2, 0.0, 0.4])
    assert r.top(0.3) == ["layers.0.mlp", "layers.2.mlp"]
    assert r.bottom(0.2) == ["layers.2.self_attn", "layers.0.self_attn"]
    assert top_k_count(0.1, 6) == 1 and top_k_count(1.0, 6) == 6


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range(bad):
    with pytest.raises(ConfigError, match="fraction"):
        make([1, 2]).top(bad)


def test_jaccard_spearman_and_incomparable():
    a, b = make([1, 2, 3, 4]), make([1, 2, 4, 3])
    assert top_jaccard(a, b, 0.5) == 1.0
    assert spearman(a, b) == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="different models"):
        top_jaccard(a, make([1, 2, 3, 4], fp="zzz"))
    with pytest.raises(ConfigError, match="granularit"):
        spearman(a, make([1, 2, 3, 4], gran="module"))


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LayerImportance.load(tmp_path / "x.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="invalid JSON"):
        LayerImportance.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(DataError, match="schema_version"):
        LayerImportance.load(tmp_path / "old.json")
    with pytest.raises(ConfigError, match="scores"):
        make([1, 2]).__class__(method="x", granularity="block", players=["a"], scores=[1, 2], model={})

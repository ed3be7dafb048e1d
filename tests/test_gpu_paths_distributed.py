"""Device choice under a launcher on a machine with several GPUs (core/distributed.py), on the CPU:
torch.cuda's device count is faked, and nothing touches a GPU."""

from __future__ import annotations

import argparse

import pytest
import torch

from layerscope.core import distributed
from layerscope.core.errors import ConfigError


@pytest.fixture
def launched(monkeypatch):
    """Process 1 of 2 under torchrun, two GPUs visible, no process group joined for real."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(str(d)))
    monkeypatch.setattr(distributed, "init_from_env", lambda device="cpu": None)
    monkeypatch.setattr(distributed, "_chosen_device", None)
    return current


def test_the_gpu_join_from_env_chose_is_not_refused_when_the_model_loads(launched, monkeypatch):
    device = distributed.join_from_env("cuda")
    assert device == "cuda:1" and launched == ["cuda:1"]
    assert distributed.local_device(device) == "cuda:1"  # was: "puts every process on one GPU"

    from layerscope.cli import common
    from layerscope.core import models

    seen = {}

    class Loaded:
        def describe(self):
            return "loaded"

    def fake_load(name, **kw):
        seen.update(kw)
        return Loaded()

    monkeypatch.setattr(models, "load_model", fake_load)
    args = argparse.Namespace(model="m", dtype="auto", device=device, trust_remote_code=False)
    common.load_from_args(args)
    assert seen["device"] == "cuda:1"


def test_auto_under_a_launcher_is_this_process_gpu(launched):
    assert distributed.join_from_env("auto") == "cuda:1"
    assert distributed.local_device("cuda:1") == "cuda:1"


def test_a_gpu_the_user_named_is_still_refused_with_several_visible(launched):
    with pytest.raises(ConfigError, match="every process on one GPU"):
        distributed.join_from_env("cuda:0")
    distributed.join_from_env("cuda")  # chose cuda:1 for this process
    with pytest.raises(ConfigError, match="every process on one GPU"):
        distributed.local_device("cuda:0")  # another GPU named later: still one GPU for every process


def test_each_process_seeing_only_its_own_gpu_takes_cuda_0(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES per process
    assert distributed.local_device("cuda") == "cuda:0"  # was cuda:1: invalid device ordinal
    assert distributed.join_from_env("cuda") == "cuda:0"


def test_local_rank_wraps_around_the_visible_gpus(launched, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")  # beyond the visible GPUs: wraps, never an invalid ordinal
    assert distributed.local_device("cuda") == "cuda:1"


def test_alone_nothing_changes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for d in ("cuda", "cuda:1", "auto", "cpu"):
        assert distributed.local_device(d) == d

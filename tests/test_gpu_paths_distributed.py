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
    monkeypatch.setattr(distributed, "_chosen_from_auto", False)
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


def test_more_processes_than_visible_gpus_are_refused_in_one_line(launched, monkeypatch):
    # 4 processes per machine, 2 GPUs visible: rank 2 used to wrap to cuda:0, rank 0's GPU ("Duplicate GPU" / a hang)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    for local_rank in ("2", "3"):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        for device in ("cuda", "auto"):
            with pytest.raises(ConfigError, match=f"LOCAL_RANK={local_rank} has no GPU of its own") as e:
                distributed.local_device(device)
            message = str(e.value)
            assert "\n" not in message
            assert "2 GPUs are visible to 4 processes per machine" in message
            assert "launch at most 2 processes per machine (--nproc-per-node)" in message
    with pytest.raises(ConfigError, match="has no GPU of its own"):
        distributed.join_from_env("cuda")
    assert launched == []  # refused before any GPU was made current
    assert distributed._chosen_device is None


def test_without_local_world_size_the_refusal_counts_the_processes_it_knows_of(launched, monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="2 GPUs are visible to at least 3 processes per machine"):
        distributed.local_device("cuda")


def test_each_local_rank_below_the_visible_gpus_takes_its_own(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    for local_rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert distributed.local_device("cuda") == f"cuda:{local_rank}"


def test_one_visible_gpu_is_every_process_own_whatever_its_local_rank(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES per process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    for local_rank in ("0", "2", "3"):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert distributed.local_device("cuda") == "cuda:0"


def test_alone_nothing_changes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for d in ("cuda", "cuda:1", "auto", "cpu"):
        assert distributed.local_device(d) == d

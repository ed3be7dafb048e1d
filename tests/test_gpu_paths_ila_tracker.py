"""ILA resume on a model spread over several devices: each saved reference factor of the stability
tracker goes back to the device of its own layer's LoRA weight (methods/ila/checkpoints.py). On the
CPU the "other GPU" is the meta device: a factor put on the input device instead lands on the wrong one."""

from __future__ import annotations

import torch
import torch.nn as nn

from layerscope.methods.ila.checkpoints import load_tracker, tracker_state
from layerscope.methods.ila.gates import StabilityTracker


class FakeLoraLayer(nn.Module):
    """The parts of a peft LoRA layer the tracker reads."""

    def __init__(self, device: str, r: int = 2, n: int = 4):
        super().__init__()
        self.lora_A = nn.ModuleDict({"default": nn.Linear(n, r, bias=False, device=device)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, n, bias=False, device=device)})
        self.scaling = {"default": 2.0}


def test_each_reference_factor_goes_to_its_own_layer_device():
    torch.manual_seed(0)
    saved = StabilityTracker([FakeLoraLayer("cpu"), FakeLoraLayer("cpu")])
    saved.check()
    header, tensors = tracker_state(saved)

    spread = StabilityTracker([FakeLoraLayer("cpu"), FakeLoraLayer("meta")])  # layer 1 "on another GPU"
    load_tracker(spread, header, tensors, "cpu")  # "cpu": the input device, which stages.py passes
    devices = [(a.device.type, b.device.type) for a, b, _ in spread.prev]
    assert devices == [("cpu", "cpu"), ("meta", "meta")]  # was [("cpu", "cpu"), ("cpu", "cpu")]
    assert [s for _, _, s in spread.prev] == [2.0, 2.0]


def test_a_resumed_tracker_measures_as_the_saved_one():
    torch.manual_seed(0)
    layers = [FakeLoraLayer("cpu"), FakeLoraLayer("cpu")]
    for m in layers:
        nn.init.normal_(m.lora_B["default"].weight)
    tracker = StabilityTracker(layers)
    tracker.check()
    header, tensors = tracker_state(tracker)
    resumed = StabilityTracker(layers)
    load_tracker(resumed, header, tensors)
    with torch.no_grad():
        for m in layers:
            m.lora_B["default"].weight.add_(0.1)
    assert resumed.check() == tracker.check()


def test_no_reference_yet():
    tracker = StabilityTracker([FakeLoraLayer("cpu")])
    load_tracker(tracker, {"scaling": None}, {})
    assert tracker.prev is None

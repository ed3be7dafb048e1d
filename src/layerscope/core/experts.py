"""Mixture-of-experts sub-layers: recognising them, and each expert as a player.

**Fused experts.** Transformers 5 stores a MoE layer's routed experts as one module holding 3-D
parameter tensors (``gate_up_proj`` / ``down_proj`` of shape ``[num_experts, ...]``: Mixtral,
OLMoE, Qwen2-MoE, DeepSeek-V3, GraniteMoE), not as ``nn.Linear`` modules, so the layer map cannot
find such an MLP by its linear modules; :func:`holds_fused_experts` recognises it instead. Such
an experts module is called ``experts(hidden_states, top_k_index, top_k_weights)`` by its MoE
block after the router chose ``top_k_index`` and weighed it with ``top_k_weights``.

**Expert players** (granularity ``expert``): per MoE sub-layer, each routed expert of an experts
module called that way (``layers.3.mlp.experts.5``), then each shared expert beside them, which
every token uses (Qwen2-MoE's ``shared_expert``, DeepSeek-V3's ``shared_experts``, GraniteMoE's
``shared_mlp`` beside its MoE: ``layers.3.mlp.shared_expert``). What removing one means is in
``engine/removal.py``: a routed expert's output is zeroed (its routing weight masked to 0), a
shared expert's module output is zeroed. MoE layers whose experts are called any other way
(JetMoE's ``JetMoeParallelExperts``, called with per-expert token counts) give no expert players.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerscope.core.linears import peft_base_layer

if TYPE_CHECKING:
    import torch.nn as nn

ROUTING_ARGUMENTS = ("top_k_index", "top_k_weights")  # how a fused experts module is told the router's choice
_SHARED = re.compile(r"shared", re.I)
_GATE = re.compile(r"gate$", re.I)  # Qwen2-MoE's shared_expert_gate scales the shared expert: not one itself


def is_fused_experts(module: nn.Module) -> bool:
    """A module holding all experts as 3-D tensors: an int ``num_experts`` and a parameter of its own
    whose first dimension is that number."""
    n = getattr(module, "num_experts", None)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return False
    return any(p.dim() == 3 and p.shape[0] == n for p in module.parameters(recurse=False))


def holds_fused_experts(module: nn.Module) -> bool:
    """``module`` or one of its sub-modules holds fused experts (a MoE MLP without linear experts)."""
    return any(is_fused_experts(m) for m in module.modules())


def routed_by_top_k(module: nn.Module) -> bool:
    """The experts module is called with the router's ``top_k_index`` and ``top_k_weights``."""
    try:
        params = inspect.signature(module.forward).parameters  # follows functools.wraps (experts kernels)
    except (TypeError, ValueError):
        return False
    return all(a in params for a in ROUTING_ARGUMENTS)


@dataclass(frozen=True)
class ExpertUnit:
    """One expert player before it becomes a :class:`~layerscope.core.layermap.Player`."""

    name: str  # stable name: "layers.3.mlp.experts.5" or "layers.3.mlp.shared_expert"
    path: str  # module path: the experts module (routed) or the shared expert's module
    expert: int | None  # index among the routed experts; None for a shared expert


def expert_units(modules: list[tuple[str, str, nn.Module]]) -> list[ExpertUnit]:
    """The experts of one MLP sub-layer, given its modules as (stable name, path, module): the MoE
    module first, then modules beside it (GraniteMoE's shared MLP). Routed experts first, then
    shared ones; empty when the sub-layer has no experts module routed by top-k."""
    if not modules:
        return []
    routed: list[ExpertUnit] = []
    shared: list[ExpertUnit] = []
    name, path, moe = modules[0]
    for rel, m in moe.named_modules():
        if is_fused_experts(m) and routed_by_top_k(m):
            # the routing hook goes on the experts module itself (path), which peft may have wrapped; the
            # name is the base model's, so a ranking of the peft model reads against the plain one
            sname, spath = (f"{name}.{_without_tuner_wrappers(moe, rel)}", f"{path}.{rel}") if rel else (name, path)
            routed += [ExpertUnit(f"{sname}.{e}", spath, e) for e in range(m.num_experts)]
    for cname, child in moe.named_children():
        if (
            _SHARED.search(cname)
            and not _GATE.search(cname)
            and any(True for _ in child.parameters())  # linear modules, or fused weights (Inkling's shared experts)
        ):
            shared.append(ExpertUnit(f"{name}.{cname}", f"{path}.{cname}", None))
    shared += [ExpertUnit(n, p, None) for n, p, _ in modules[1:]]  # beside the MoE, used by every token
    return routed + shared if routed else []


def _without_tuner_wrappers(root: nn.Module, rel: str) -> str:
    """``rel`` without the ``base_layer`` steps peft inserts when it wraps a module (LoRA on fused expert
    parameters: ``experts`` becomes a wrapper holding the original as ``experts.base_layer``)."""
    parts = rel.split(".")
    kept: list[str] = []
    module = root
    for part in parts:
        if part == "base_layer" and peft_base_layer(module) is not None:
            module = getattr(module, part)
            continue
        module = getattr(module, part)
        kept.append(part)
    return ".".join(kept)

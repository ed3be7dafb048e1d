"""Discover the layer structure of any decoder-only Hugging Face causal LM.

Three granularities of "player", all named relative to the decoder-block list's parent so
names are stable across wrappers (peft, DDP) and match what users see in configs:

- block:    ``layers.3``                       (a whole decoder block)
- sublayer: ``layers.3.self_attn``, ``layers.3.mlp``  (forward order: attn0, mlp0, attn1, ...)
- module:   ``layers.3.self_attn.q_proj``      (each linear module: what LoRA adapts)

Discovery is structural, not a table per architecture: the block list is the ModuleList
with ``num_hidden_layers`` entries; in each block the attention is the child named like
``*attn*``/``*attention*`` and the MLP the child named like ``*mlp*``/``*ffn*``/``*moe*``;
blocks without an MLP child (OPT keeps ``fc1``/``fc2`` on the block) get a virtual MLP made
of the remaining linear modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.nn as nn

from layerscope.core.errors import ConfigError, ModelError

GRANULARITIES = ("block", "sublayer", "module")
_ATTN = re.compile(r"(^|_)(self_)?(attn|attention)$|^attn|attention", re.I)
_MLP = re.compile(r"mlp|feed_forward|ffn|moe|^ff$", re.I)


def linear_types() -> tuple[type, ...]:
    """nn.Linear plus GPT-2's Conv1D (a transposed linear)."""
    types: list[type] = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover - very old transformers
        pass
    return tuple(types)


@dataclass(frozen=True)
class LinearModule:
    name: str  # stable name, e.g. "layers.3.self_attn.q_proj"
    path: str  # full module path inside the model, for get_submodule
    block: int
    sublayer: str  # "attn" or "mlp"
    type: str  # last name component, e.g. "q_proj" (the LoRA target name)


@dataclass(frozen=True)
class SubLayer:
    name: str  # "layers.3.self_attn" (virtual MLPs: "layers.3.mlp")
    kind: str  # "attn" or "mlp"
    block: int
    hook_path: str  # module whose output is zeroed to remove this sub-layer
    output_path: str  # the last linear (o_proj / down_proj / fc2 / c_proj): what the paper zeroes
    linears: tuple[str, ...]  # stable names of its linear modules


@dataclass
class LayerMap:
    """The decoder blocks, sub-layers and linear modules of one model, in forward order."""

    blocks_path: str  # "model.layers"
    prefix: str  # "layers" (blocks_path's last component)
    n_blocks: int
    sublayers: list[SubLayer]
    linears: list[LinearModule]
    model_type: str = "?"
    architecture: str = "?"
    final_norm_path: str | None = None
    extras: dict = field(default_factory=dict)

    # ---- players -------------------------------------------------------------------
    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def block_path(self, i: int) -> str:
        return f"{self.blocks_path}.{i}"

    def players(self, granularity: str) -> list[str]:
        if granularity == "block":
            return [self.block_name(i) for i in range(self.n_blocks)]
        if granularity == "sublayer":
            return [s.name for s in self.sublayers]
        if granularity == "module":
            return [m.name for m in self.linears]
        raise ConfigError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")

    def module_types(self) -> list[str]:
        """Linear module types in forward order of the first block (q_proj, k_proj, ...)."""
        seen: list[str] = []
        for m in self.linears:
            if m.type not in seen:
                seen.append(m.type)
        return seen

    def linear(self, name: str) -> LinearModule:
        for m in self.linears:
            if m.name == name:
                return m
        raise ConfigError(f"no linear module named {name!r}")

    def sublayer(self, name: str) -> SubLayer:
        for s in self.sublayers:
            if s.name == name:
                return s
        raise ConfigError(f"no sub-layer named {name!r}")

    def block_of(self, player: str) -> int:
        """Block index of any player name (block, sub-layer or module)."""
        parts = player.split(".")
        try:
            return int(parts[len(self.prefix.split("."))])
        except (IndexError, ValueError):
            raise ConfigError(f"{player!r} is not a player of this model (expected '{self.prefix}.<i>...')") from None

    def resolve_blocks(self, indices) -> list[int]:
        """Validate block indices (negative indices count from the end)."""
        out = []
        for i in indices:
            j = int(i) + self.n_blocks if int(i) < 0 else int(i)
            if not 0 <= j < self.n_blocks:
                raise ConfigError(
                    f"layer index {i} out of range: the model has {self.n_blocks} blocks (0..{self.n_blocks - 1})"
                )
            out.append(j)
        return out

    def summary(self) -> str:
        types = ", ".join(self.module_types())
        return (
            f"{self.architecture}: {self.n_blocks} blocks at '{self.blocks_path}', "
            f"{len(self.sublayers)} sub-layers, {len(self.linears)} linear modules ({types})"
        )


def _num_layers(config) -> int | None:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    n = _num_layers(model.config) if hasattr(model, "config") else None
    lin = linear_types()
    candidates = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if n is not None and len(mod) != n:
            continue
        if not all(type(b) is type(mod[0]) for b in mod):
            continue
        if not any(isinstance(x, lin) for x in mod[0].modules()):
            continue
        candidates.append((name.count("."), -len(mod), name, mod))
    if not candidates:
        raise ModelError(
            f"{type(model).__name__}: found no list of decoder blocks (expected a ModuleList of {n} blocks)"
        )
    candidates.sort(key=lambda c: (c[0], c[1]))
    _, _, name, mod = candidates[0]
    return name, mod


def _linears_in(module: nn.Module, base: str) -> list[tuple[str, nn.Module]]:
    lin = linear_types()
    return [(f"{base}.{n}" if n else base, m) for n, m in module.named_modules() if isinstance(m, lin)]


def _find_final_norm(model: nn.Module, blocks_path: str) -> str | None:
    parent_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    for attr in ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "final_norm"):
        if isinstance(getattr(parent, attr, None), nn.Module):
            return f"{parent_path}.{attr}" if parent_path else attr
    return None


def build_layer_map(model: nn.Module) -> LayerMap:
    """Discover blocks, sub-layers and linear modules of a decoder-only causal LM."""
    from layerscope.core.models import check_causal_lm_config

    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__}: not a Hugging Face model (no .config)")
    check_causal_lm_config(config, type(model).__name__)
    # peft wraps the model; discovery works on the wrapped tree but names stay relative
    blocks_path, blocks = _find_blocks(model)
    prefix = blocks_path.rsplit(".", 1)[-1]
    # keep a stable prefix like "layers" even under peft's "base_model.model.model.layers"
    sublayers: list[SubLayer] = []
    linears: list[LinearModule] = []
    for i, block in enumerate(blocks):
        bpath = f"{blocks_path}.{i}"
        bname = f"{prefix}.{i}"
        attn_child = mlp_child = None
        for cname, child in block.named_children():
            if attn_child is None and _ATTN.search(cname) and _linears_in(child, ""):
                attn_child = cname
            elif mlp_child is None and _MLP.search(cname) and _linears_in(child, ""):
                mlp_child = cname
        if attn_child is None:
            raise ModelError(
                f"{type(model).__name__}: block {i} has no attention sub-module (children: "
                f"{[c for c, _ in block.named_children()]})"
            )
        groups: list[tuple[str, str, str | None, list[tuple[str, nn.Module]]]] = []
        attn_lins = _linears_in(block.get_submodule(attn_child), f"{bpath}.{attn_child}")
        groups.append(("attn", f"{bname}.{attn_child}", f"{bpath}.{attn_child}", attn_lins))
        if mlp_child is not None:
            mlp_lins = _linears_in(block.get_submodule(mlp_child), f"{bpath}.{mlp_child}")
            groups.append(("mlp", f"{bname}.{mlp_child}", f"{bpath}.{mlp_child}", mlp_lins))
        else:  # e.g. OPT: fc1/fc2 live directly on the block
            in_attn = {p for p, _ in attn_lins}
            rest = [(p, m) for p, m in _linears_in(block, bpath) if p not in in_attn]
            if not rest:
                raise ModelError(f"{type(model).__name__}: block {i} has no MLP linear modules")
            groups.append(("mlp", f"{bname}.mlp", None, rest))
        for kind, sname, hook_path, lins in groups:
            names = []
            for p, _ in lins:
                stable = f"{bname}.{p[len(bpath) + 1 :]}"
                names.append(stable)
                linears.append(LinearModule(name=stable, path=p, block=i, sublayer=kind, type=p.rsplit(".", 1)[-1]))
            output_path = lins[-1][0]  # registration order == forward order for o_proj/down_proj/fc2/c_proj/dense
            sublayers.append(
                SubLayer(
                    name=sname,
                    kind=kind,
                    block=i,
                    hook_path=hook_path or output_path,
                    output_path=output_path,
                    linears=tuple(names),
                )
            )
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    return LayerMap(
        blocks_path=blocks_path,
        prefix=prefix,
        n_blocks=len(blocks),
        sublayers=sublayers,
        linears=linears,
        model_type=getattr(config, "model_type", "?"),
        architecture=arch,
        final_norm_path=_find_final_norm(model, blocks_path),
    )

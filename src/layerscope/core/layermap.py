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
from typing import TYPE_CHECKING

from layerscope.core.errors import ConfigError, ModelError

if TYPE_CHECKING:  # torch is imported where a model is inspected: reading a saved result needs no torch
    import torch.nn as nn

GRANULARITIES = ("block", "sublayer", "module")
# a block's child is the attention when its name matches _ATTN, the MLP when it matches _MLP; from names
# alone (a saved result) a sub-layer that is not attention is the MLP (virtual MLPs: OPT's fc1/fc2)
_ATTN = re.compile(r"(^|_)(self_)?(attn|attention)$|^attn|attention", re.I)
_MLP = re.compile(r"mlp|feed_forward|ffn|moe|^ff$", re.I)


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
    return granularity


def linear_types() -> tuple[type, ...]:
    """nn.Linear plus GPT-2's Conv1D (a transposed linear)."""
    import torch.nn as nn

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


@dataclass(frozen=True)
class Player:
    """One player at any granularity: what removes it and what fine-tuning it trains."""

    name: str  # stable name: "layers.3", "layers.3.self_attn", "layers.3.self_attn.q_proj"
    block: int
    kind: str  # "block", "attn" or "mlp"
    targets: tuple[str, ...]  # module paths whose outputs are zeroed to remove it
    linears: tuple[str, ...]  # stable names of its linear modules

    @property
    def module_type(self) -> str:
        """Last name component: a module player's type ("q_proj"), the LoRA target name."""
        return self.name.rsplit(".", 1)[-1]


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
        return [p.name for p in self.player_records(granularity)]

    def player_records(self, granularity: str) -> list[Player]:
        """Every player of ``granularity``, forward order (sub-layers: attn0, mlp0, attn1, ...)."""
        if check_granularity(granularity) == "module":
            return [Player(m.name, m.block, m.sublayer, (m.path,), (m.name,)) for m in self.linears]
        if granularity == "sublayer":
            return [Player(s.name, s.block, s.kind, (s.hook_path,), s.linears) for s in self.sublayers]
        subs = [[s for s in self.sublayers if s.block == i] for i in range(self.n_blocks)]
        return [
            Player(
                self.block_name(i),
                i,
                "block",
                tuple(s.hook_path for s in subs[i]),  # both sub-layers: the block becomes an identity map
                tuple(m for s in subs[i] for m in s.linears),
            )
            for i in range(self.n_blocks)
        ]

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

    def block_of(self, player: str) -> int:
        """Block index of any player name (block, sub-layer or module)."""
        parsed = _split_name(player)
        if parsed is None or parsed[0] != self.prefix:
            raise ConfigError(f"{player!r} is not a player of this model (expected '{self.prefix}.<i>...')")
        return parsed[1]

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
    import torch.nn as nn

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
    import torch.nn as nn

    parent_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    for attr in ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "final_norm"):
        if isinstance(getattr(parent, attr, None), nn.Module):
            return f"{parent_path}.{attr}" if parent_path else attr
    return None


def _block_groups(
    block: nn.Module, i: int, bpath: str, bname: str, model_name: str
) -> list[tuple[str, str, str | None, list[tuple[str, nn.Module]]]]:
    """(kind, stable name, hook path or None, linears) of block ``i``'s attention and MLP."""
    attn_child = mlp_child = None
    for cname, child in block.named_children():
        if attn_child is None and _ATTN.search(cname) and _linears_in(child, ""):
            attn_child = cname
        elif mlp_child is None and _MLP.search(cname) and _linears_in(child, ""):
            mlp_child = cname
    if attn_child is None:
        raise ModelError(
            f"{model_name}: block {i} has no attention sub-module (children: {[c for c, _ in block.named_children()]})"
        )
    attn_lins = _linears_in(block.get_submodule(attn_child), f"{bpath}.{attn_child}")
    groups = [("attn", f"{bname}.{attn_child}", f"{bpath}.{attn_child}", attn_lins)]
    if mlp_child is not None:
        mlp_lins = _linears_in(block.get_submodule(mlp_child), f"{bpath}.{mlp_child}")
        return [*groups, ("mlp", f"{bname}.{mlp_child}", f"{bpath}.{mlp_child}", mlp_lins)]
    # e.g. OPT: fc1/fc2 live directly on the block
    in_attn = {p for p, _ in attn_lins}
    rest = [(p, m) for p, m in _linears_in(block, bpath) if p not in in_attn]
    if not rest:
        raise ModelError(f"{model_name}: block {i} has no MLP linear modules")
    return [*groups, ("mlp", f"{bname}.mlp", None, rest)]


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
        for kind, sname, hook_path, lins in _block_groups(block, i, bpath, bname, type(model).__name__):
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


# ----------------------------------------------------------------------------- from player names alone
# The one place that reads a player's block and kind from its name: a saved result has names, no model.


def _split_name(name: str) -> tuple[str, int, str] | None:
    """ "layers.3.self_attn.q_proj" -> ("layers", 3, "self_attn.q_proj"): block-list name, block index
    (the first integer component), the rest; None without a "<prefix>.<i>"."""
    parts = name.split(".")
    i = next((i for i, part in enumerate(parts) if part.isdigit()), 0)
    return (".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1 :])) if i else None


def _kind_from_name(below_block: str) -> str:
    """The block's child decides: attention when named like it, else the MLP (OPT's fc1/fc2 included)."""
    return "attn" if _ATTN.search(below_block.split(".", 1)[0]) else "mlp"


def _split_names(names: list[str]) -> tuple[str, list[tuple[int, str]]]:
    """The shared block-list name and (block, rest) per name; one clear error for a foreign name."""
    parsed = [_split_name(n) for n in names]
    prefix = parsed[0][0] if parsed and parsed[0] else None
    for name, p in zip(names, parsed):
        if p is None or p[0] != prefix:
            raise ConfigError(f"cannot tell the block-list name from player {name!r} (expected '<prefix>.<i>...')")
    return str(prefix), [(p[1], p[2]) for p in parsed if p]


def _sublayers_of(linears: list[LinearModule]) -> list[SubLayer]:
    """Sub-layers of a virtual map: consecutive linears with one parent name form one sub-layer."""
    sublayers: list[SubLayer] = []
    for m in linears:
        sname = m.name.rsplit(".", 1)[0]
        if sublayers and sublayers[-1].name == sname:
            s = sublayers[-1]
            sublayers[-1] = SubLayer(s.name, s.kind, s.block, s.hook_path, m.name, s.linears + (m.name,))
        else:
            sublayers.append(SubLayer(sname, m.sublayer, m.block, sname, m.name, (m.name,)))
    return sublayers


def layer_map_from_names(
    names: list[str],
    granularity: str,
    *,
    linear_names: dict[str, tuple[str, ...]] | None = None,
    n_blocks: int | None = None,
    model_type: str = "?",
    architecture: str = "?",
) -> LayerMap:
    """The layer map a result's player names imply (no model at hand).

    Module names rebuild it exactly. Block and sub-layer names carry no linear modules: with
    ``linear_names`` (kind -> module types of a Llama-like family) every one of ``n_blocks`` blocks
    gets ``self_attn`` / ``mlp`` holding those modules; without, the map holds only the named
    sub-layers and blocks. Module paths are unknown here, so every path is the stable name and
    ``extras["virtual"]`` is True.
    """
    prefix, parsed = _split_names(list(names))
    linears: list[LinearModule] = []
    if check_granularity(granularity) == "module":
        for name, (block, rest) in zip(names, parsed):
            linears.append(LinearModule(name, name, block, _kind_from_name(rest), name.rsplit(".", 1)[-1]))
    elif linear_names is not None:
        for b in range(int(n_blocks or 1 + max(block for block, _ in parsed))):
            for kind, child in (("attn", "self_attn"), ("mlp", "mlp")):
                for t in linear_names[kind]:
                    name = f"{prefix}.{b}.{child}.{t}"
                    linears.append(LinearModule(name, name, b, kind, t))
    linears.sort(key=lambda m: m.block)  # stable: keeps forward order inside each block
    sublayers = _sublayers_of(linears)
    if granularity == "sublayer" and not linears:
        sublayers = [SubLayer(n, _kind_from_name(rest), b, n, n, ()) for n, (b, rest) in zip(names, parsed)]
        sublayers.sort(key=lambda s: s.block)
    blocks = [m.block for m in linears] or [b for b, _ in parsed]
    return LayerMap(
        blocks_path=prefix,
        prefix=prefix,
        n_blocks=1 + max(blocks),
        sublayers=sublayers,
        linears=linears,
        model_type=model_type,
        architecture=architecture,
        extras={"virtual": True},
    )


def records_from_names(names: list[str], granularity: str) -> list[Player]:
    """Player records of ``names`` (e.g. a saved result's players), in the order given."""
    if not names:
        return []
    by_name = {p.name: p for p in layer_map_from_names(names, granularity).player_records(granularity)}
    return [by_name[n] for n in names]

"""Discover the layer structure of any decoder-only Hugging Face causal LM.

Four granularities of "player", all named relative to the decoder-block list's parent so
names are stable across wrappers (peft, DDP) and match what users see in configs:

- block:    ``layers.3``                       (a whole decoder block)
- sublayer: ``layers.3.self_attn``, ``layers.3.mlp``  (forward order: attn0, mlp0, attn1, ...)
- module:   ``layers.3.self_attn.q_proj``      (each linear module: what LoRA adapts)
- expert:   ``layers.3.mlp.experts.5``, ``layers.3.mlp.shared_expert``  (each expert of each
  mixture-of-experts layer; models without one have no expert players: see ``experts.py``)

Discovery is structural, not a table per architecture: the block list is the ModuleList
with ``num_hidden_layers`` entries; in each block the attention is the child named like
``*attn*``/``*attention*`` and the MLP the child named like ``*mlp*``/``*ffn*``/``*moe*``;
blocks without an MLP child (OPT keeps ``fc1``/``fc2`` on the block) get a virtual MLP made
of the remaining linear modules. A MoE MLP whose experts are fused parameter tensors (no linear
expert modules) is recognised by those tensors (``experts.py``); a block with a MoE and a shared
MLP beside it (GraniteMoE-shared) gets one MLP sub-layer removing both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.experts import expert_units, holds_fused_experts
from layerscope.core.linears import is_linear, linear_modules, linear_types
from layerscope.core.player_names import ATTN as _ATTN
from layerscope.core.player_names import MLP as _MLP
from layerscope.core.player_names import layer_map_from_names, records_from_names, split_name

__all__ = [
    "GRANULARITIES",
    "LayerMap",
    "LinearModule",
    "Player",
    "SubLayer",
    "build_layer_map",
    "check_granularity",
    "layer_map_from_names",  # from player_names.py: a saved result's names, no model
    "is_linear",  # from linears.py: what counts as a linear module
    "linear_types",
    "records_from_names",
]

if TYPE_CHECKING:  # torch is imported where a model is inspected: reading a saved result needs no torch
    from collections.abc import Iterable

    import torch.nn as nn

GRANULARITIES = ("block", "sublayer", "module", "expert")


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
    return granularity


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
    output_path: str  # the last linear (o_proj / down_proj / fc2 / c_proj; fused MoE: hook_path): what the paper zeroes
    linears: tuple[str, ...]  # stable names of its linear modules
    extra_paths: tuple[str, ...] = ()  # modules removed with it (GraniteMoE-shared: the shared MLP beside the MoE)

    @property
    def hook_paths(self) -> tuple[str, ...]:
        """Every module whose output is zeroed to remove this sub-layer."""
        return (self.hook_path, *self.extra_paths)


@dataclass(frozen=True)
class Player:
    """One player at any granularity: what removes it and what fine-tuning it trains."""

    name: str  # stable name: "layers.3", "layers.3.self_attn", "layers.3.self_attn.q_proj"
    block: int
    kind: str  # "block", "attn", "mlp" or "expert"
    targets: tuple[str, ...]  # module paths whose outputs are zeroed to remove it (a routed expert: its experts module)
    linears: tuple[str, ...]  # stable names of its linear modules
    expert: int | None = None  # a routed expert: its index in the experts module (only that expert is masked)

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
    experts: list[Player] = field(default_factory=list)  # expert players (empty: no MoE layer with experts)
    # last names of the model's linear modules this map does not hold (lm_head, a vision tower's
    # q_proj): peft matches target names as suffixes and would adapt those too. None: not known
    # (a map rebuilt from names)
    other_module_names: tuple[str, ...] | None = None  # last names of modules outside its linears
    # per block child ("self_attn"), its parameters outside linear modules ("self_attn.q_norm.weight"):
    # a trainer that unfreezes a child by name trains those too. None: not known
    child_params: dict[str, list[str]] | None = None

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
            return [Player(s.name, s.block, s.kind, s.hook_paths, s.linears) for s in self.sublayers]
        if granularity == "expert":
            if not self.experts:
                raise ConfigError(
                    f"{self.architecture} has no mixture-of-experts layer whose experts can be removed one by one; "
                    "granularity 'expert' needs one (use block, sublayer or module)"
                )
            return list(self.experts)
        subs = [[s for s in self.sublayers if s.block == i] for i in range(self.n_blocks)]
        return [
            Player(
                self.block_name(i),
                i,
                "block",
                tuple(p for s in subs[i] for p in s.hook_paths),  # both sub-layers: the block becomes an identity map
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

    def clashing_types(self, types: Iterable[str] | None = None) -> list[str]:
        """Those of ``types`` (default: all the blocks' module types) that also name a module this map
        does not hold (a vision tower's q_proj, CTRL's block ``h.0`` for its MLP linear ``0``): peft
        matches target names as suffixes, so a target list that must not reach those modules has to
        use full paths."""
        wanted = set(self.module_types() if types is None else types)
        return sorted(set(self.other_module_names or ()) & wanted)

    def linear(self, name: str) -> LinearModule:
        for m in self.linears:
            if m.name == name:
                return m
        raise ConfigError(f"no linear module named {name!r}")

    def block_of(self, player: str) -> int:
        """Block index of any player name (block, sub-layer or module)."""
        parsed = split_name(player)
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
        experts = f", {len(self.experts)} experts" if self.experts else ""
        return (
            f"{self.architecture}: {self.n_blocks} blocks at '{self.blocks_path}', "
            f"{len(self.sublayers)} sub-layers, {len(self.linears)} linear modules ({types}){experts}"
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
    candidates, mixed, other_counts = [], [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if not any(is_linear(x) for b in mod for x in b.modules()):
            continue
        if n is not None and len(mod) != n:
            other_counts.append(f"{name} ({len(mod)})")
            continue
        if not all(type(b) is type(mod[0]) for b in mod):
            mixed.append(sorted({type(b).__name__ for b in mod}))
            continue
        candidates.append((name.count("."), -len(mod), name, mod))
    if not candidates:
        if mixed:  # Jamba, Zamba 2, OLMo-hybrid: state-space or linear-attention blocks between attention ones
            raise ModelError(
                f"{type(model).__name__}: its decoder blocks are of different kinds ({', '.join(mixed[0])}); "
                "hybrid models are not supported (removal is defined on blocks of one attention + MLP kind)"
            )
        found = f"; module lists with another count: {', '.join(other_counts[:3])}" if other_counts else ""
        raise ModelError(
            f"{type(model).__name__}: found no list of decoder blocks (expected a ModuleList of {n} blocks, "
            f"the config's layer count{found})"
        )
    candidates.sort(key=lambda c: (c[0], c[1]))
    _, _, name, mod = candidates[0]
    return name, mod


def _linears_in(module: nn.Module, base: str) -> list[tuple[str, nn.Module]]:
    return [(f"{base}.{n}" if n else base, m) for n, m in linear_modules(module)]


def _find_final_norm(model: nn.Module, blocks_path: str) -> str | None:
    import torch.nn as nn

    parent_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    for attr in ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "final_norm", "layernorm"):
        if isinstance(getattr(parent, attr, None), nn.Module):
            return f"{parent_path}.{attr}" if parent_path else attr
    return None


@dataclass
class _Group:
    """One sub-layer found in a block, before it becomes a :class:`SubLayer`."""

    kind: str  # "attn" or "mlp"
    name: str  # stable name
    paths: list[str]  # modules whose outputs are zeroed to remove it (empty: a virtual MLP, hooked at its last linear)
    linears: list[tuple[str, nn.Module]]  # (path, module) of its linear modules, forward order
    modules: list[tuple[str, str, nn.Module]] = field(default_factory=list)  # (stable name, path, module) per child


def _mlp_like(name: str, child: nn.Module) -> bool:
    """An MLP child: named like one, holding linear modules or fused experts (a MoE without linear experts)."""
    return bool(_MLP.search(name)) and (bool(_linears_in(child, "")) or holds_fused_experts(child))


def _block_groups(block: nn.Module, i: int, bpath: str, bname: str, model_name: str) -> list[_Group]:
    """Block ``i``'s attention and MLP sub-layers."""
    attn_child = None
    mlp_children: list[str] = []
    for cname, child in block.named_children():
        if attn_child is None and _ATTN.search(cname) and _linears_in(child, ""):
            attn_child = cname
        elif _mlp_like(cname, child):
            mlp_children.append(cname)
    if attn_child is None:
        raise ModelError(
            f"{model_name}: block {i} has no attention sub-module (children: {[c for c, _ in block.named_children()]})"
        )
    attn_lins = _linears_in(block.get_submodule(attn_child), f"{bpath}.{attn_child}")
    groups = [_Group("attn", f"{bname}.{attn_child}", [f"{bpath}.{attn_child}"], attn_lins)]
    if mlp_children:
        # the MoE first (its name names the sub-layer); a module beside it (GraniteMoE-shared's shared
        # MLP) adds to the same residual update, so removing the MLP removes both
        mlp_children.sort(key=lambda c: not holds_fused_experts(block.get_submodule(c)))
        modules = [(f"{bname}.{c}", f"{bpath}.{c}", block.get_submodule(c)) for c in mlp_children]
        lins = [lin for _, path, m in modules for lin in _linears_in(m, path)]
        return [*groups, _Group("mlp", modules[0][0], [p for _, p, _ in modules], lins, modules)]
    # e.g. OPT: fc1/fc2 live directly on the block
    in_attn = {p for p, _ in attn_lins}
    rest = [(p, m) for p, m in _linears_in(block, bpath) if p not in in_attn]
    if not rest:
        raise ModelError(f"{model_name}: block {i} has no MLP linear modules")
    return [*groups, _Group("mlp", f"{bname}.mlp", [], rest)]


def _expert_players(group: _Group, block: int, names: list[str]) -> list[Player]:
    """The expert players of one MLP sub-layer (none for a dense MLP); ``names``: its linears' stable names."""
    out = []
    for u in expert_units(group.modules):
        linears = () if u.expert is not None else tuple(n for n in names if n.startswith(u.name + "."))
        out.append(Player(u.name, block, "expert", (u.path,), linears, expert=u.expert))
    return out


def build_layer_map(model: nn.Module) -> LayerMap:
    """Discover blocks, sub-layers, linear modules and experts of a decoder-only causal LM."""
    from layerscope.core.models import check_causal_lm_config, check_torch_model

    check_torch_model(model)
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
    experts: list[Player] = []
    for i, block in enumerate(blocks):
        bpath = f"{blocks_path}.{i}"
        bname = f"{prefix}.{i}"
        for g in _block_groups(block, i, bpath, bname, type(model).__name__):
            names = []
            for p, _ in g.linears:
                stable = f"{bname}.{p[len(bpath) + 1 :]}"
                names.append(stable)
                linears.append(LinearModule(name=stable, path=p, block=i, sublayer=g.kind, type=p.rsplit(".", 1)[-1]))
            # registration order == forward order for o_proj/down_proj/fc2/c_proj/dense; a fused MoE has no linear
            output_path = g.linears[-1][0] if g.linears and len(g.paths) <= 1 else g.paths[0]
            paths = g.paths or [output_path]
            sublayers.append(SubLayer(g.name, g.kind, i, paths[0], output_path, tuple(names), tuple(paths[1:])))
            experts += _expert_players(g, i, names)
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
        child_params=_child_other_params(blocks),
        experts=experts,
        other_module_names=other_module_names(model, {m.path for m in linears}),
    )


def other_module_names(model: nn.Module, held: set[str]) -> tuple[str, ...]:
    """Last names of the model's modules other than the linears in ``held`` and what is inside them:
    lm_head, a vision tower's q_proj, but also containers (CTRL's MLP linears are named ``0`` and ``2``,
    like the blocks ``h.0`` and ``h.2``), which a peft target name would match as a suffix too."""
    inside = tuple(f"{p}." for p in held)
    return tuple(
        sorted(
            {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n and n not in held and not n.startswith(inside)}
        )
    )


def _child_other_params(blocks: nn.ModuleList) -> dict[str, list[str]]:
    """Per block child, its parameters outside linear modules ("self_attn" -> ["self_attn.q_norm.weight"]),
    union over blocks. A trainer that unfreezes a whole child by name (LLaMA-Factory's
    freeze_trainable_modules) trains these too, while layerscope trains linear modules only."""
    out: dict[str, set[str]] = {}
    for block in blocks:
        linear_paths = {n for n, _ in linear_modules(block)}
        for name, _ in block.named_parameters():
            child = name.split(".", 1)[0]
            out.setdefault(child, set())
            owners = name.split(".")[:-1]  # a linear's weight, or a peft adapter somewhere inside one
            if not any(".".join(owners[:k]) in linear_paths for k in range(1, len(owners) + 1)):
                out[child].add(name)
    return {child: sorted(names) for child, names in out.items()}

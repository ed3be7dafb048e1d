"""Player names: the one place that reads a player's block and kind from its name alone.

A saved result has player names and no model, so plots, comparisons and the fine-tuning choice
rebuild what they need from names: :func:`layer_map_from_names` gives the layer map the names
imply, :func:`records_from_names` the :class:`~layerscope.core.layermap.Player` records. The
naming conventions used by discovery (which block child is the attention, which the MLP) live
here too, so names and discovery never disagree. No torch is imported: reading a result needs none.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerscope.core.layermap import LayerMap, LinearModule, Player, SubLayer

# a block's child is the attention when its name matches ATTN, the MLP when it matches MLP; from names
# alone (a saved result) a sub-layer that is not attention is the MLP (virtual MLPs: OPT's fc1/fc2)
ATTN = re.compile(r"(^|_)(self_)?(attn|attention)$|^attn|attention", re.I)
MLP = re.compile(r"mlp|feed_forward|ffn|moe|^ff$", re.I)


def listed(names: list[str], shown: int = 6) -> str:
    """Names for a one-line message: the first ``shown``, then how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def split_name(name: str) -> tuple[str, int, str] | None:
    """ "layers.3.self_attn.q_proj" -> ("layers", 3, "self_attn.q_proj"): block-list name, block index
    (the first integer component), the rest; None without a "<prefix>.<i>"."""
    parts = name.split(".")
    i = next((i for i, part in enumerate(parts) if part.isdigit()), 0)
    return (".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1 :])) if i else None


def expert_index(name: str) -> int | None:
    """The routed expert an expert player's name ends in ("layers.3.mlp.experts.5" -> 5); None for a
    shared expert ("layers.3.mlp.shared_expert")."""
    parsed = split_name(name)
    last = name.rsplit(".", 1)[-1]
    return int(last) if parsed and parsed[2] and last.isdigit() else None


def _kind_from_name(below_block: str) -> str:
    """The block's child decides: attention when named like it, else the MLP (OPT's fc1/fc2 included)."""
    return "attn" if ATTN.search(below_block.split(".", 1)[0]) else "mlp"


def _split_names(names: list[str]) -> tuple[str, list[tuple[int, str]]]:
    """The shared block-list name and (block, rest) per name; one clear error for a foreign name."""
    from layerscope.core.errors import ConfigError

    parsed = [split_name(n) for n in names]
    prefix = parsed[0][0] if parsed and parsed[0] else None
    for name, p in zip(names, parsed):
        if p is None or p[0] != prefix:
            raise ConfigError(f"cannot tell the block-list name from player {name!r} (expected '<prefix>.<i>...')")
    return str(prefix), [(p[1], p[2]) for p in parsed if p]


def _sublayers_of(linears: list[LinearModule]) -> list[SubLayer]:
    """Sub-layers of a virtual map, named as discovery names them: a block's attention linears form
    its attention child (``layers.3.self_attn``); all its other linears form one MLP, named after the
    first MLP-named child among them (``layers.3.mlp``: a MoE's router, experts and shared expert
    included), or ``<block>.mlp`` when none is (OPT's fc1 / fc2 sit on the block itself)."""
    from layerscope.core.layermap import SubLayer

    groups: dict[tuple[int, str], list[LinearModule]] = {}
    for m in linears:
        groups.setdefault((m.block, m.sublayer), []).append(m)
    sublayers: list[SubLayer] = []
    for (block, kind), members in groups.items():
        # names were checked by _split_names: each is "<prefix>.<block>.<rest>"
        prefix = split_name(members[0].name)[0]  # type: ignore[index]
        children = [split_name(m.name)[2].split(".", 1)[0] for m in members]  # type: ignore[index]
        child = children[0] if kind == "attn" else next((c for c in children if MLP.search(c)), "mlp")
        sname = f"{prefix}.{block}.{child}"
        names = tuple(m.name for m in members)
        sublayers.append(SubLayer(sname, kind, block, sname, names[-1], names))
    return sublayers


def _expert_records(names: list[str], parsed: list[tuple[int, str]]) -> list[Player]:
    from layerscope.core.layermap import Player

    return [Player(n, b, "expert", (n,), (), expert=expert_index(n)) for n, (b, _) in zip(names, parsed)]


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
    sub-layers and blocks. Expert names give expert players (block from the name). Module paths
    are unknown here, so every path is the stable name and ``extras["virtual"]`` is True.
    """
    from layerscope.core.layermap import LayerMap, LinearModule, SubLayer, check_granularity

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
    experts = _expert_records(list(names), parsed) if granularity == "expert" else []
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
        experts=experts,
    )


def records_from_names(names: list[str], granularity: str) -> list[Player]:
    """Player records of ``names`` (e.g. a saved result's players), in the order given."""
    if not names:
        return []
    by_name = {p.name: p for p in layer_map_from_names(names, granularity).player_records(granularity)}
    return [by_name[n] for n in names]


def with_article(word: str) -> str:
    """``word`` after its indefinite article ("a module", "an expert"), for messages that name a level or a
    method by a variable; by its first letter, which is right for the level names and words like them."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"

"""A layer map rebuilt from a ranking's player names alone: what ``layerscope export`` selects from
when no model is loaded. Module rankings name every linear module and rebuild exactly; block and
sub-layer rankings need their family's linear-module names, known here for Llama-like families."""

from __future__ import annotations

from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import LayerMap, layer_map_from_names
from layerscope.core.player_names import with_article

# Linear-module names of common decoder families, used only to expand a block / sub-layer
# ranking when no model is loaded (``layerscope export`` without ``--model``).
_LLAMA_LIKE = {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
KNOWN_LINEARS: dict[str, dict[str, tuple[str, ...]]] = {
    t: _LLAMA_LIKE
    for t in (
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
        "cohere",
        "starcoder2_llama",
    )
}

# Parameters outside linear modules inside those families' block children (a trainer that
# unfreezes a child by name trains them too): q_norm / k_norm where the family normalises q and k.
_QK_NORM = {"self_attn": ["self_attn.k_norm.weight", "self_attn.q_norm.weight"], "mlp": []}
KNOWN_CHILD_PARAMS: dict[str, dict[str, list[str]]] = {
    t: (_QK_NORM if t in ("qwen3", "gemma3_text", "olmo2") else {"self_attn": [], "mlp": []})
    for t in KNOWN_LINEARS
    if t != "cohere"  # its q / k norms depend on use_qk_norm, which a ranking does not record
}


def layer_map_from_importance(importance: LayerImportance) -> LayerMap:
    """A layer map rebuilt from a ranking's player names alone (for exporting without a model).

    Module rankings carry every linear module's stable name, so they rebuild exactly. Block
    and sub-layer rankings need the family's linear-module names: known for Llama-like
    families (``KNOWN_LINEARS``), otherwise the caller must load the model. Module paths are
    unknown here, so ``path`` holds the stable name and ``extras["virtual"]`` is True.
    """
    gran = importance.granularity
    model_type = str(importance.model.get("model_type") or "").lower()
    table = KNOWN_LINEARS.get(model_type)
    if gran != "module" and table is None:
        raise ConfigError(
            f"{with_article(gran)} ranking of a {model_type or 'model of unknown type'!r} names no linear "
            f"modules; pass --model to resolve them"
        )
    layer_map = layer_map_from_names(
        importance.players,
        gran,
        linear_names=table if gran != "module" else None,
        n_blocks=importance.model.get("n_blocks"),
        model_type=str(importance.model.get("model_type", "?")),
        architecture=str(importance.model.get("architecture", "?")),
    )
    if model_type in KNOWN_CHILD_PARAMS:
        layer_map.child_params = KNOWN_CHILD_PARAMS[model_type]
    return layer_map

"""peft's ``LoraConfig`` and axolotl's config for a selection (axolotl hands its LoRA targets to
peft, so both use the same exact target forms; its full fine-tuning takes parameter regexes)."""

from __future__ import annotations

import json
from typing import Any

from layerscope.core.layermap import LayerMap
from layerscope.training.export.common import (
    Export,
    LoraParams,
    bare_types,
    clash_note,
    clashing_types_of,
    lora_target,
    renamed_note,
    unknown_others_note,
)
from layerscope.training.selection import Selection


def to_peft(selection: Selection, layer_map: LayerMap, lora: LoraParams) -> Export:
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "bias": "none",
        **lora_target(selection, layer_map),
    }
    notes = clash_note(selection, layer_map)
    if layer_map.extras.get("virtual") and "layers_to_transform" not in cfg:
        notes.append("target_modules are stable names (matched as name suffixes); pass --model for full module paths")
    unknown = unknown_others_note(layer_map)
    renamed = renamed_note(layer_map, cfg["target_modules"])
    notes += [n for n in (unknown, renamed) if n]
    exact = renamed is None and unknown is None
    return Export("peft", "lora", json.dumps(cfg, indent=2) + "\n", cfg, exact, notes)


def _axolotl_patterns(selection: Selection, layer_map: LayerMap) -> list[str]:
    """One ``unfrozen_parameters`` regex per selected block.

    axolotl replaces every ``.`` with ``\\.`` before compiling, so dots here are literal and
    no escaped dot (or ``.`` wildcard) may appear; ``re.match`` anchors at the start.
    """
    lin = {m.name: m for m in layer_map.linears}
    virtual = bool(layer_map.extras.get("virtual"))
    groups: dict[int, list[str]] = {}
    for name in selection.modules:
        m = lin[name]
        groups.setdefault(m.block, []).append(name[len(f"{layer_map.prefix}.{m.block}.") :])  # "self_attn.q_proj"
    patterns = []
    for block, tails in sorted(groups.items()):
        # without a model the path in front of the block list is unknown: allow any dotted prefix
        head = rf"^(\w+.)*{layer_map.prefix}.{block}." if virtual else f"^{layer_map.block_path(block)}."
        alt = tails[0] if len(tails) == 1 else "(" + "|".join(tails) + ")"
        patterns.append(f"{head}{alt}.(weight|bias)$")
    return patterns


def to_axolotl(selection: Selection, layer_map: LayerMap, method: str, lora: LoraParams) -> Export:
    notes: list[str] = []
    unknown = unknown_others_note(layer_map)
    if method == "full":
        cfg: dict[str, Any] = {"unfrozen_parameters": _axolotl_patterns(selection, layer_map)}
        notes.append("full fine-tuning of the selected linear modules only; embeddings, norms and lm_head stay frozen")
        notes += [unknown] if unknown else []
    else:
        t = lora_target(selection, layer_map)
        cfg = {
            "adapter": "lora",
            "lora_r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "lora_target_modules": t["target_modules"],
        }
        if "layers_to_transform" in t:
            cfg["peft_layers_to_transform"] = t["layers_to_transform"]
            cfg["peft_layers_pattern"] = [t["layers_pattern"]]
        else:
            cfg["lora_target_linear"] = False
        notes += clash_note(selection, layer_map)
        listed = "layers_to_transform" not in t and not bare_types(selection, layer_map)
        if listed and not clashing_types_of(selection, layer_map):
            notes.append(
                "the selected blocks differ in module types, so lora_target_modules lists every module "
                "(peft matches each as a name suffix: exact)"
            )
        renamed = renamed_note(layer_map, t["target_modules"])
        notes += [n for n in (unknown, renamed) if n]
        if renamed:
            return Export("axolotl", method, "", cfg, False, notes)
    return Export("axolotl", method, "", cfg, unknown is None, notes)

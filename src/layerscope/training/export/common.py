"""What every export format shares: the result type, the shapes a selection can take (the same
module types in every selected block, every module, ...), peft's target keys for it, and the notes
that say when a target is not exact (module names shared outside the blocks, peft renaming MoE
targets, a model whose other modules are unknown)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from layerscope.core.errors import ConfigError, error_line
from layerscope.core.layermap import LayerMap
from layerscope.training.selection import Selection

FORMAT_ALIASES = {"llamafactory": "llama-factory", "llama_factory": "llama-factory", "lf": "llama-factory"}
ADAPTER_WEIGHTS = "adapter_model"  # how peft names an adapter's weights: adapter_model.safetensors / .bin


@dataclass
class LoraParams:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0


@dataclass
class Export:
    format: str
    method: str  # lora | full
    text: str  # file contents
    config: dict[str, Any]  # the keys written (parsed form)
    exact: bool  # False when the tool cannot express the selection and we approximated
    notes: list[str] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return config_filename(self.format)


def config_filename(fmt: str) -> str:
    """The file a format's config gets in a folder: peft's own name, so PeftModel.from_pretrained reads it."""
    return "adapter_config.json" if fmt == "peft" else f"{fmt}.yaml"


# ----------------------------------------------------------------------------- shapes of a selection


def _by_block(selection: Selection, layer_map: LayerMap) -> dict[int, list[str]]:
    """Selected module types per block, in forward order."""
    lin = {m.name: m for m in layer_map.linears}
    out: dict[int, list[str]] = {}
    for name in selection.modules:
        m = lin.get(name)
        if m is None:
            raise ConfigError(f"selection names {name!r}, which the layer map does not have")
        out.setdefault(m.block, []).append(m.type)
    return out


def _uniform_types(selection: Selection, layer_map: LayerMap) -> list[str] | None:
    """The module types when every selected block selects exactly the same ones (and a type
    name means one module per block), else None."""
    blocks = _by_block(selection, layer_map)
    kinds = {tuple(v) for v in blocks.values()}
    if len(kinds) != 1:
        return None
    types = list(next(iter(kinds)))
    per_block = {}
    for m in layer_map.linears:
        per_block.setdefault((m.block, m.type), 0)
        per_block[(m.block, m.type)] += 1
    if any(n > 1 for n in per_block.values()):  # e.g. GPT-2 has c_proj in attn and mlp
        return None
    return types


def is_all(selection: Selection, layer_map: LayerMap) -> bool:
    return set(selection.modules) == {m.name for m in layer_map.linears}


def bare_types(selection: Selection, layer_map: LayerMap) -> bool:
    """Whether bare module types (``[q_proj, ...]``, no block numbers) name exactly the selection: it is
    every module, and the model's other modules are known (a loaded model) and share none of the names.
    Without the model they are not known (a vision tower's q_proj, CTRL's blocks ``h.0`` for its MLP
    linear ``0``), so stable names are written, as for any other selection."""
    return (
        is_all(selection, layer_map)
        and layer_map.other_module_names is not None
        and not clashing_types_of(selection, layer_map)
    )


# a model class whose name ends so is a decoder with its LM head, nothing else (no vision or audio tower)
_TEXT_ONLY_CLASSES = ("ForCausalLM", "LMHeadModel")


def unknown_others_note(layer_map: LayerMap) -> str | None:
    """Why an export made without the model cannot be called exact, or None when it can.

    Without the model (a layer map rebuilt from a ranking's names) its modules outside the decoder
    blocks are not known. A plain causal LM has none that a block's stable name or ``layers.<i>``
    pattern would reach; another class (``Gemma3ForConditionalGeneration``: an image-text model) may
    hold a tower with ``layers.0.self_attn.q_proj`` of its own, which the targets would reach too."""
    if layer_map.other_module_names is not None:
        return None
    arch = layer_map.architecture
    if arch.endswith(_TEXT_ONLY_CLASSES):
        return None
    what = f"a {arch} model" if arch and arch != "?" else f"a model of unrecorded class ({layer_map.model_type!r})"
    return (
        f"NOT CHECKED: without --model the modules outside the decoder blocks are not known, and {what} is not "
        "a plain causal LM: it may hold others of the same names (an image-text model's vision tower has its own "
        f"{layer_map.prefix}.0.self_attn.q_proj), which these targets would reach too; pass --model to check"
    )


def module_names(selection: Selection, layer_map: LayerMap) -> list[str]:
    """Module names for peft suffix matching: full paths when a model was loaded, else stable names."""
    if layer_map.extras.get("virtual"):
        return list(selection.modules)
    lin = {m.name: m.path for m in layer_map.linears}
    return [lin[n] for n in selection.modules]


def clashing_types_of(selection: Selection, layer_map: LayerMap) -> list[str]:
    """The selection's module types that also name other modules (a vision tower's q_proj, CTRL's
    blocks ``h.0`` for its MLP linear ``0``): its targets are then full paths (``lora_target``), and
    the file says why."""
    lin = {m.name: m.type for m in layer_map.linears}
    return layer_map.clashing_types({lin[n] for n in selection.modules})


def clash_note(selection: Selection, layer_map: LayerMap) -> list[str]:
    clash = clashing_types_of(selection, layer_map)
    if not clash:
        return []
    return [
        f"{', '.join(clash)} also name other modules of the model (e.g. a vision tower's linears, or the blocks "
        "themselves), so the targets are full module paths, which peft matches only there: exact"
    ]


def lora_target(selection: Selection, layer_map: LayerMap) -> dict[str, Any]:
    """peft's target keys for the selection: the per-layer form where exact, else an explicit list."""
    if clashing_types_of(selection, layer_map):
        return {"target_modules": module_names(selection, layer_map)}
    if bare_types(selection, layer_map):
        return {"target_modules": layer_map.module_types()}
    types = _uniform_types(selection, layer_map)
    if types is not None:
        return {
            "target_modules": types,
            "layers_to_transform": sorted(_by_block(selection, layer_map)),
            "layers_pattern": layer_map.prefix.rsplit(".", 1)[-1],
        }
    return {"target_modules": module_names(selection, layer_map)}


def peft_renamed_targets(layer_map: LayerMap, target_modules: list[str]) -> list[str]:
    """The targets the installed peft would not adapt as named. On transformers 5, peft reads a target
    whose last name is an expert projection of a transformers-4 MoE checkpoint (``down_proj`` on
    DeepSeek-V3, Qwen3-MoE, ...) as that old name and adapts the fused experts instead; a shared-expert
    or dense MLP projection of that name is then never adapted. Asks peft's own conversion."""
    try:
        from peft import LoraConfig
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:  # peft or transformers older than that conversion: targets are taken as written
        return []
    config = LoraConfig(target_modules=list(target_modules))
    stand_in = SimpleNamespace(config=SimpleNamespace(model_type=layer_map.model_type))
    convert_peft_config_for_transformers(config, model=stand_in, conversions=None)
    kept = set(config.target_modules or ())
    return [t for t in target_modules if t not in kept]


def renamed_note(layer_map: LayerMap, target_modules: list[str]) -> str | None:
    try:
        renamed = peft_renamed_targets(layer_map, target_modules)
    except ValueError as e:  # e.g. "Cannot convert PEFT target(s) gate_proj without also targeting up_proj"
        return (
            f"NOT EXACT with this peft: on transformers 5 it refuses these targets of a {layer_map.model_type} "
            f"model (it converts them to the fused experts of a transformers-4 checkpoint: {error_line(e)}); "
            "layerscope's own fine-tuning adapts the modules as named"
        )
    if not renamed:
        return None
    return (
        f"NOT EXACT with this peft: on transformers 5 it reads {len(renamed)} target(s) of a "
        f"{layer_map.model_type} model (e.g. {renamed[0]}) as the fused experts of a transformers-4 checkpoint "
        "and adapts those instead; layerscope's own fine-tuning adapts the modules as named"
    )


def ranges(xs: list[int]) -> str:
    out, start, prev = [], None, None
    for x in xs:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)

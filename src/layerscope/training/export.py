"""Write a module selection as a config for peft, axolotl or LLaMA-Factory.

What each tool can express (checked against their documented options):

- **peft** ``LoraConfig``: ``target_modules`` as a list matches a module whose name equals an
  entry or ends with ``"." + entry``, so stable names like ``layers.3.self_attn.q_proj``
  select exactly one module each. Where every selected block uses the same module types,
  the shorter ``target_modules=[types] + layers_to_transform=[blocks] + layers_pattern``
  form is written instead. Bare module types (``[q_proj, ...]``, every block) only for a
  selection of every module of a loaded model none of whose other modules shares those
  names. Exact, except where the model's other modules are not known (no ``--model``) and
  its class is not a plain causal-LM head: an image-text model's vision tower may hold
  modules of the same names, so the export says it is not checked.
- **axolotl**: LoRA via ``lora_target_modules`` (handed to peft as a list, so the same exact
  forms, with ``peft_layers_to_transform`` / ``peft_layers_pattern``); full fine-tuning via
  ``unfrozen_parameters``, regexes matched with ``re.match`` against parameter names, in
  which every ``.`` is taken literally (axolotl escapes it). Exact, as for peft.
- **LLaMA-Factory**: LoRA via ``lora_target`` (comma list handed to peft: exact, with stable
  names). ``all`` is LLaMA-Factory's own choice (the last names of modules whose class name
  holds ``Linear``: GPT-2's ``Conv1D`` are not), so it is written only when the loaded model
  shows it names exactly the layer map's linears. Freeze tuning only has
  ``freeze_trainable_layers`` (an int: the last n blocks, or the first n when negative) and
  ``freeze_trainable_modules`` (children of a block such as ``self_attn``, ``mlp``, or
  ``all``, which also unfreezes the block's norms), matched as the substring
  ``.{i}.{child}`` of a parameter name, so ``self_attn`` also takes OPT's
  ``self_attn_layer_norm``. A per-module or scattered-block selection cannot be written
  exactly: we write the expressible choice whose module set has the highest Jaccard overlap
  with the selection and say so in the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from layerscope.core import atomic
from layerscope.core.errors import ConfigError
from layerscope.core.layermap import LayerMap
from layerscope.training.choices import FORMATS
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


def _is_all(selection: Selection, layer_map: LayerMap) -> bool:
    return set(selection.modules) == {m.name for m in layer_map.linears}


def _bare_types(selection: Selection, layer_map: LayerMap) -> bool:
    """Whether bare module types (``[q_proj, ...]``, no block numbers) name exactly the selection: it is
    every module, and the model's other modules are known (a loaded model) and share none of the names.
    Without the model they are not known (a vision tower's q_proj, CTRL's blocks ``h.0`` for its MLP
    linear ``0``), so stable names are written, as for any other selection."""
    return (
        _is_all(selection, layer_map) and layer_map.other_module_names is not None and not _clash(selection, layer_map)
    )


# a model class whose name ends so is a decoder with its LM head, nothing else (no vision or audio tower)
_TEXT_ONLY_CLASSES = ("ForCausalLM", "LMHeadModel")


def _unknown_others_note(layer_map: LayerMap) -> str | None:
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


def _names(selection: Selection, layer_map: LayerMap) -> list[str]:
    """Module names for peft suffix matching: full paths when a model was loaded, else stable names."""
    if layer_map.extras.get("virtual"):
        return list(selection.modules)
    lin = {m.name: m.path for m in layer_map.linears}
    return [lin[n] for n in selection.modules]


def _clash(selection: Selection, layer_map: LayerMap) -> list[str]:
    """The selection's module types that also name other modules (a vision tower's q_proj, CTRL's
    blocks ``h.0`` for its MLP linear ``0``): its targets are then full paths (``lora_target``), and
    the file says why."""
    lin = {m.name: m.type for m in layer_map.linears}
    return layer_map.clashing_types({lin[n] for n in selection.modules})


def _clash_note(selection: Selection, layer_map: LayerMap) -> list[str]:
    clash = _clash(selection, layer_map)
    if not clash:
        return []
    return [
        f"{', '.join(clash)} also name other modules of the model (e.g. a vision tower's linears, or the blocks "
        "themselves), so the targets are full module paths, which peft matches only there: exact"
    ]


def lora_target(selection: Selection, layer_map: LayerMap) -> dict[str, Any]:
    """peft's target keys for the selection: the per-layer form where exact, else an explicit list."""
    if _clash(selection, layer_map):
        return {"target_modules": _names(selection, layer_map)}
    if _bare_types(selection, layer_map):
        return {"target_modules": layer_map.module_types()}
    types = _uniform_types(selection, layer_map)
    if types is not None:
        return {
            "target_modules": types,
            "layers_to_transform": sorted(_by_block(selection, layer_map)),
            "layers_pattern": layer_map.prefix.rsplit(".", 1)[-1],
        }
    return {"target_modules": _names(selection, layer_map)}


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


def _renamed_note(layer_map: LayerMap, target_modules: list[str]) -> str | None:
    try:
        renamed = peft_renamed_targets(layer_map, target_modules)
    except ValueError as e:  # e.g. "Cannot convert PEFT target(s) gate_proj without also targeting up_proj"
        return (
            f"NOT EXACT with this peft: on transformers 5 it refuses these targets of a {layer_map.model_type} "
            f"model (it converts them to the fused experts of a transformers-4 checkpoint: {str(e).splitlines()[0]}); "
            "layerscope's own fine-tuning adapts the modules as named"
        )
    if not renamed:
        return None
    return (
        f"NOT EXACT with this peft: on transformers 5 it reads {len(renamed)} target(s) of a "
        f"{layer_map.model_type} model (e.g. {renamed[0]}) as the fused experts of a transformers-4 checkpoint "
        "and adapts those instead; layerscope's own fine-tuning adapts the modules as named"
    )


# ----------------------------------------------------------------------------- formats


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
    notes = _clash_note(selection, layer_map)
    if layer_map.extras.get("virtual") and "layers_to_transform" not in cfg:
        notes.append("target_modules are stable names (matched as name suffixes); pass --model for full module paths")
    unknown = _unknown_others_note(layer_map)
    renamed = _renamed_note(layer_map, cfg["target_modules"])
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
    unknown = _unknown_others_note(layer_map)
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
        notes += _clash_note(selection, layer_map)
        listed = "layers_to_transform" not in t and not _bare_types(selection, layer_map)
        if listed and not _clash(selection, layer_map):
            notes.append(
                "the selected blocks differ in module types, so lora_target_modules lists every module "
                "(peft matches each as a name suffix: exact)"
            )
        renamed = _renamed_note(layer_map, t["target_modules"])
        notes += [n for n in (unknown, renamed) if n]
        if renamed:
            return Export("axolotl", method, "", cfg, False, notes)
    return Export("axolotl", method, "", cfg, unknown is None, notes)


def _lf_hidden_children(layer_map: LayerMap) -> dict[str, list[str]]:
    """Block children LLaMA-Factory can name in freeze_trainable_modules -> linear stable-name suffixes."""
    out: dict[str, list[str]] = {}
    for m in layer_map.linears:
        child = m.name[len(f"{layer_map.prefix}.{m.block}.") :].split(".", 1)[0]
        out.setdefault(child, [])
        suffix = m.name[len(f"{layer_map.prefix}.{m.block}.") :]
        if suffix not in out[child]:
            out[child].append(suffix)
    return out


def _lf_reached(names, child: str) -> list[str]:
    """The block children that freeze_trainable_modules: ``child`` unfreezes. LLaMA-Factory trains a
    parameter whose name holds ``.{i}.{child}``, a substring, so a sibling whose name starts with
    ``child`` goes too (OPT's ``self_attn_layer_norm`` with ``self_attn``)."""
    return [c for c in names if c.startswith(child)]


def _lf_freeze_choice(selection: Selection, layer_map: LayerMap) -> tuple[int, list[str], float, int]:
    """The (freeze_trainable_layers, freeze_trainable_modules) pair closest to the selection.

    Candidates: the last n or first n blocks (n = 1..N) crossed with "all" or one block child
    (self_attn, mlp, ...), which also takes the linears of the siblings its name is a prefix of.
    Closest = highest Jaccard overlap of linear-module sets; ties go to the smaller set.
    Returns (n, modules, jaccard, size).
    """
    want = set(selection.modules)
    children = _lf_hidden_children(layer_map)
    options: list[list[str]] = [["all"]] + [[c] for c in children]
    best: tuple[float, int, int, list[str]] | None = None
    N = layer_map.n_blocks
    for n in [*range(1, N + 1), *range(-1, -N - 1, -1)]:
        blocks = range(N - n, N) if n > 0 else range(-n)
        for opt in options:
            reached = list(children) if opt == ["all"] else _lf_reached(children, opt[0])
            suffixes = [s for c in reached for s in children[c]]
            got = {f"{layer_map.prefix}.{b}.{s}" for b in blocks for s in suffixes}
            j = len(want & got) / len(want | got)
            key = (j, -len(got))
            if best is None or key > (best[0], -best[1]):
                best = (j, len(got), n, opt)
    assert best is not None
    j, size, n, opt = best
    return n, opt, j, size


def llama_factory_all_targets(model) -> set[str]:
    """The targets LLaMA-Factory's ``lora_target: all`` hands peft for ``model`` (its
    ``find_all_linear_modules``): the last names of modules whose class name holds ``Linear`` (and not
    ``Embedding``), lm_head left out. It leaves out a few more for some model types (chatglm's
    output_layer, a composite model's projector or vision tower), so this may hold more than it does,
    never less."""
    names = set()
    for name, module in model.named_modules():
        if "lm_head" in name:
            continue
        cls = type(module).__name__
        if "Linear" in cls and "Embedding" not in cls:
            names.add(name.rsplit(".", 1)[-1])
    return names


def _lf_lora_target(selection: Selection, layer_map: LayerMap, model) -> tuple[str, list[str]]:
    """``lora_target`` for the selection and the notes on it: ``all`` only where the model shows that
    LLaMA-Factory's own ``all`` is exactly the layer map's linears; otherwise every module by name."""
    names = ",".join(_names(selection, layer_map))
    if not _is_all(selection, layer_map) or _clash(selection, layer_map):
        return names, _clash_note(selection, layer_map)
    types = set(layer_map.module_types())
    known = model is not None and layer_map.other_module_names is not None
    found = llama_factory_all_targets(model) if known else None
    if found == types and _bare_types(selection, layer_map):
        return "all", []
    if found is None:
        why = "without --model it is not known which modules that takes"
    else:
        parts = []
        missing = sorted(types - found)
        if missing:
            classes = {type(model.get_submodule(m.path)).__name__ for m in layer_map.linears if m.type in missing}
            parts.append(f"leaves out {', '.join(missing)} (class {', '.join(sorted(classes))})")
        if found - types:
            parts.append(f"also takes {', '.join(sorted(found - types))}")
        why = f"here it {' and '.join(parts)}"
    note = (
        "lora_target lists every module instead of `all`: LLaMA-Factory's `all` takes the last names of the "
        f"modules whose class name holds 'Linear' (lm_head left out), and {why}"
    )
    return names, [note]


def to_llama_factory(selection: Selection, layer_map: LayerMap, method: str, lora: LoraParams, model=None) -> Export:
    notes: list[str] = []
    unknown = _unknown_others_note(layer_map)
    if method == "lora":
        target, notes = _lf_lora_target(selection, layer_map, model)
        cfg: dict[str, Any] = {
            "finetuning_type": "lora",
            "lora_rank": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "lora_target": target,
        }
        renamed = _renamed_note(layer_map, layer_map.module_types() if target == "all" else target.split(","))
        notes += [n for n in (unknown, renamed) if n]
        return Export("llama-factory", method, "", cfg, renamed is None and unknown is None, notes)
    n, opt, j, size = _lf_freeze_choice(selection, layer_map)
    cfg = {"finetuning_type": "freeze", "freeze_trainable_layers": n, "freeze_trainable_modules": ",".join(opt)}
    # LLaMA-Factory unfreezes whole children by name: "all" trains the blocks' norms, a child its own norms
    # and those of any sibling its name is a prefix of
    also_trained = None if "all" in opt else _lf_other_params(layer_map, opt[0])
    exact = j == 1.0 and "all" not in opt and also_trained == [] and unknown is None
    if j < 1.0:
        notes.append(
            f"NOT EXACT: LLaMA-Factory freeze tuning trains only the last (or first) n blocks and whole block "
            f"children, so the {len(selection.modules)} selected modules (blocks {_ranges(selection.blocks)}) "
            f"cannot be written; this is the closest expressible choice: {size} modules, Jaccard overlap "
            f"{j:.2f} with the selection"
        )
        notes.append(
            "for an exact selection use --method lora (lora_target lists every module) or axolotl unfrozen_parameters"
        )
    if "all" in opt:
        notes.append(
            "NOT EXACT: freeze_trainable_modules: all also unfreezes the blocks' norm weights, which layerscope's "
            "full fine-tuning of the selection keeps frozen"
        )
    elif also_trained:
        siblings = [c for c in _lf_reached(layer_map.child_params or {}, opt[0]) if c != opt[0]]
        how = (
            f" (LLaMA-Factory matches '.<i>.{opt[0]}' as a substring of parameter names, which those of "
            f"{', '.join(siblings)} hold too)"
            if siblings
            else ""
        )
        notes.append(
            f"NOT EXACT: freeze_trainable_modules: {opt[0]} also unfreezes {', '.join(also_trained)} in each of "
            f"those blocks{how}, which layerscope's full fine-tuning of the selection keeps frozen"
        )
    elif also_trained is None:
        notes.append(
            f"NOT CHECKED: freeze_trainable_modules: {opt[0]} unfreezes every parameter under it (e.g. Qwen3's "
            f"q_norm / k_norm) and under any sibling whose name starts with it (OPT's self_attn_layer_norm), and "
            f"without the model ({layer_map.model_type!r}) it is not known whether there are any beside the "
            "selected linear modules; pass --model to check"
        )
    notes += [unknown] if unknown else []
    return Export("llama-factory", "full", "", cfg, exact, notes)


def _lf_other_params(layer_map: LayerMap, child: str) -> list[str] | None:
    """Parameters besides linear modules that freeze_trainable_modules: ``child`` unfreezes (its own, and
    those of the siblings its name is a prefix of); None: unknown."""
    known = layer_map.child_params
    if known is None or child not in known:
        return None
    return sorted(p for c in _lf_reached(known, child) for p in known[c])


def _ranges(xs: list[int]) -> str:
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


# ----------------------------------------------------------------------------- public API


def export_selection(
    selection: Selection,
    layer_map: LayerMap,
    fmt: str,
    method: str = "lora",
    lora: LoraParams | None = None,
    header: list[str] | None = None,
    model=None,
) -> Export:
    """Render ``selection`` for ``fmt`` (peft | axolotl | llama-factory); ``method`` lora | full.

    ``model``: the model ``layer_map`` was built from, when loaded; LLaMA-Factory's ``lora_target: all``
    is written only where it shows that LLaMA-Factory would pick exactly the layer map's linears."""
    fmt = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in FORMATS:
        raise ConfigError(f"--to {fmt!r} must be one of {', '.join(FORMATS)}")
    if method not in ("lora", "full"):
        raise ConfigError(f"--method {method!r} must be lora or full")
    lora = lora or LoraParams()
    if fmt == "peft":
        if method != "lora":
            raise ConfigError("--to peft writes a LoraConfig; use --method lora (or axolotl / llama-factory for full)")
        return to_peft(selection, layer_map, lora)
    ex = (
        to_axolotl(selection, layer_map, method, lora)
        if fmt == "axolotl"
        else to_llama_factory(selection, layer_map, method, lora, model=model)
    )
    lines = [f"# {line}" for line in (header or [])]
    lines += [f"# {note}" for note in ex.notes]
    body = yaml.safe_dump(ex.config, sort_keys=False, default_flow_style=False, width=10_000)
    ex.text = "\n".join(lines + [body.rstrip("\n")]) + "\n"
    return ex


def describe(selection: Selection, layer_map: LayerMap, source: str) -> list[str]:
    """Header lines saying where a selection came from."""
    s = selection
    src = s.source
    return [
        f"generated by layerscope from {source}",
        f"ranking: {src.get('method', '?')} ({src.get('granularity', s.granularity)}) of {src.get('model', '?')}"
        f" (fingerprint {src.get('fingerprint', '?')})",
        f"selection: mode {s.mode}, fraction {s.fraction:g}{f', seed {s.seed}' if s.seed is not None else ''}"
        f"{f', blocks >= {s.min_block} only' if s.min_block else ''}: "
        f"{len(s.modules)} of {s.n_modules_total} linear modules in blocks {_ranges(s.blocks)}",
    ]


def check_target(path: str | os.PathLike, overwrite: bool = False, where: str | None = None) -> None:
    """Refuse to write a config to ``path`` (a file name) when a file is there, unless ``overwrite``; and,
    whatever ``overwrite`` says, refuse an ``adapter_config.json`` beside trained adapter weights (a peft
    adapter's folder): peft would load those weights under the new config's targets and rank. ``where``
    opens the message (``--out NAME``; default: the path)."""
    path = Path(path)
    where = where or str(path)

    def named(p: Path) -> str:  # the path, unless the message opens with it
        return "" if where.endswith(f" {p}") or where == str(p) else f"{p} "

    if path.name == config_filename("peft"):
        weights = sorted(p.name for p in path.parent.glob(f"{ADAPTER_WEIGHTS}*") if p.is_file())
        if weights:
            raise ConfigError(
                f"{where}: {named(path.parent)}holds trained adapter weights ({weights[0]}); an "
                "adapter_config.json written there would replace the config they were saved with: give another folder"
            )
    if path.exists() and not overwrite:
        raise ConfigError(f"{where}: {named(path)}exists; --overwrite replaces it")


def write_export(ex: Export, out: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write to ``out``: a file path, or a folder (gets ``adapter_config.json`` / ``<format>.yaml``).
    An existing file is replaced only with ``overwrite``; an adapter_config.json never goes beside
    trained adapter weights (``check_target``)."""
    out = Path(out)
    is_file = out.suffix.lower() in (".json", ".yaml", ".yml")
    path = out if is_file else out / ex.filename
    check_target(path, overwrite)
    atomic.write_text(path, ex.text)
    return path

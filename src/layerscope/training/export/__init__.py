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
- **LLaMA-Factory**: LoRA via ``lora_target`` (comma-separated list handed to peft: exact, with stable
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

One module per format (``peft_axolotl``, ``llama_factory``) over what they share (``common``);
this package renders a selection (:func:`export_selection`) and writes it (:func:`write_export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from layerscope.core import atomic
from layerscope.core.errors import ConfigError
from layerscope.core.layermap import LayerMap
from layerscope.training.choices import FORMATS
from layerscope.training.export.common import (
    ADAPTER_WEIGHTS,
    FORMAT_ALIASES,
    Export,
    LoraParams,
    config_filename,
    lora_target,
    peft_renamed_targets,
    ranges,
)
from layerscope.training.export.llama_factory import llama_factory_all_targets, to_llama_factory
from layerscope.training.export.peft_axolotl import to_axolotl, to_peft
from layerscope.training.selection import Selection

__all__ = [
    "ADAPTER_WEIGHTS",
    "FORMATS",
    "FORMAT_ALIASES",
    "Export",
    "LoraParams",
    "check_target",
    "config_filename",
    "describe",
    "export_selection",
    "llama_factory_all_targets",
    "lora_target",
    "peft_renamed_targets",
    "to_axolotl",
    "to_llama_factory",
    "to_peft",
    "write_export",
]


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
        f"{len(s.modules)} of {s.n_modules_total} linear modules in blocks {ranges(s.blocks)}",
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

"""LLaMA-Factory's config for a selection: LoRA by ``lora_target`` (exact), freeze tuning by the
last / first n blocks and whole block children (the closest expressible choice, said when inexact)."""

from __future__ import annotations

from typing import Any

from layerscope.core.layermap import LayerMap
from layerscope.training.export.common import (
    Export,
    LoraParams,
    bare_types,
    clash_note,
    clashing_types_of,
    is_all,
    module_names,
    ranges,
    renamed_note,
    unknown_others_note,
)
from layerscope.training.selection import Selection


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

    Candidates: the last n or first n blocks (n = 1..N) crossed with every block child that holds
    linears (``self_attn,mlp``: a whole block without its norms), "all", or one block child, which
    also takes the linears of the siblings its name is a prefix of. Closest = highest Jaccard overlap
    of linear-module sets; ties go to the smaller set, then to the earlier candidate (the children
    before "all", which also trains the norms).
    Returns (n, modules, jaccard, size).
    """
    want = set(selection.modules)
    children = _lf_hidden_children(layer_map)
    every = [list(children)] if len(children) > 1 else []
    options: list[list[str]] = every + [["all"]] + [[c] for c in children]
    best: tuple[float, int, int, list[str]] | None = None
    N = layer_map.n_blocks
    for n in [*range(1, N + 1), *range(-1, -N - 1, -1)]:
        blocks = range(N - n, N) if n > 0 else range(-n)
        for opt in options:
            reached = list(children) if opt == ["all"] else [r for c in opt for r in _lf_reached(children, c)]
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
    names = ",".join(module_names(selection, layer_map))
    if not is_all(selection, layer_map) or clashing_types_of(selection, layer_map):
        return names, clash_note(selection, layer_map)
    types = set(layer_map.module_types())
    known = model is not None and layer_map.other_module_names is not None
    found = llama_factory_all_targets(model) if known else None
    if found == types and bare_types(selection, layer_map):
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
    unknown = unknown_others_note(layer_map)
    if method == "lora":
        target, notes = _lf_lora_target(selection, layer_map, model)
        cfg: dict[str, Any] = {
            "finetuning_type": "lora",
            "lora_rank": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "lora_target": target,
        }
        renamed = renamed_note(layer_map, layer_map.module_types() if target == "all" else target.split(","))
        notes += [n for n in (unknown, renamed) if n]
        return Export("llama-factory", method, "", cfg, renamed is None and unknown is None, notes)
    n, opt, j, size = _lf_freeze_choice(selection, layer_map)
    cfg = {"finetuning_type": "freeze", "freeze_trainable_layers": n, "freeze_trainable_modules": ",".join(opt)}
    # LLaMA-Factory unfreezes whole children by name: "all" trains the blocks' norms, a child its own norms
    # and those of any sibling its name is a prefix of
    also_trained = None if "all" in opt else _lf_other_params(layer_map, opt)
    exact = j == 1.0 and "all" not in opt and also_trained == [] and unknown is None
    if j < 1.0:
        notes.append(
            f"NOT EXACT: LLaMA-Factory freeze tuning trains only the last (or first) n blocks and whole block "
            f"children, so the {len(selection.modules)} selected modules (blocks {ranges(selection.blocks)}) "
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
        known = layer_map.child_params or {}
        siblings = [s for c in opt for s in _lf_reached(known, c) if s not in opt]
        how = (
            f" (LLaMA-Factory matches '.<i>.<name>' as a substring of parameter names, which those of "
            f"{', '.join(siblings)} hold too)"
            if siblings
            else ""
        )
        notes.append(
            f"NOT EXACT: freeze_trainable_modules: {','.join(opt)} also unfreezes {', '.join(also_trained)} in "
            f"each of those blocks{how}, which layerscope's full fine-tuning of the selection keeps frozen"
        )
    elif also_trained is None:
        notes.append(
            f"NOT CHECKED: freeze_trainable_modules: {','.join(opt)} unfreezes every parameter under it (e.g. Qwen3's "
            f"q_norm / k_norm) and under any sibling whose name starts with it (OPT's self_attn_layer_norm), and "
            f"without the model ({layer_map.model_type!r}) it is not known whether there are any beside the "
            "selected linear modules; pass --model to check"
        )
    notes += [unknown] if unknown else []
    return Export("llama-factory", "full", "", cfg, exact, notes)


def _lf_other_params(layer_map: LayerMap, children: list[str]) -> list[str] | None:
    """Parameters besides linear modules that freeze_trainable_modules: ``children`` unfreezes (their own,
    and those of the siblings their names are a prefix of); None: unknown."""
    known = layer_map.child_params
    if known is None or any(c not in known for c in children):
        return None
    return sorted({p for child in children for c in _lf_reached(known, child) for p in known[c]})

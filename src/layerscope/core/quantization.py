"""4-bit and 8-bit weights (bitsandbytes), for models that do not fit in a GPU's memory otherwise.

``--load-in 4bit`` loads every linear layer of the blocks as NF4 with double quantisation and computes
in the run's dtype (bfloat16 on a GPU that supports it), QLoRA's recipe; ``--load-in 8bit`` uses
LLM.int8(). Both go through transformers' documented ``BitsAndBytesConfig``; the quantised layers are
still ``nn.Linear`` subclasses, so the layer map, removal hooks and peft's LoRA (ILA stage 1 and
finetune train adapters on top of the frozen quantised weights) work on them unchanged.

bitsandbytes runs on a CUDA device, and (0.50 does) on the CPU: there it saves neither time nor memory
(docs/large-models.md), but checks a quantised run before it goes to a GPU. Where
the installed bitsandbytes cannot run on the device asked for, or is missing, the load is refused with
one line saying what is missing, before any weights are read. Results record the quantisation
(``model.quantization``), since scores of a quantised model differ from the original's.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from layerscope.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the CLI reads LOAD_IN for --help without loading torch.
LOAD_IN = ("4bit", "8bit")
INSTALL_HINT = "pip install 'layerscope[quantization]' (bitsandbytes)"


def check_load_in(load_in: str | None, device: str, *, gguf: bool = False, device_map=None, max_memory=None) -> None:
    """Refuse what cannot work, before loading: an unknown mode, GGUF files, no GPU, no bitsandbytes."""
    if load_in is None:
        return
    import torch

    if load_in not in LOAD_IN:
        raise ConfigError(f"--load-in {load_in!r} must be one of {', '.join(LOAD_IN)}")
    if gguf:
        raise ConfigError(
            f"--load-in {load_in}: a .gguf file is dequantised on load; quantise a safetensors model instead"
        )
    quiet_bitsandbytes()  # before the import, which logs one of the lines
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f"--load-in {load_in} needs bitsandbytes: {INSTALL_HINT}") from None
    if device_map is None:
        on_gpu = torch.device(device).type == "cuda"
    else:  # a map on a machine with a GPU may still keep every module on the CPU (--device cpu --max-memory cpu=...)
        from layerscope.core.devices import cpu_and_disk_only

        on_gpu = torch.cuda.is_available() and not cpu_and_disk_only(device_map, max_memory)
    if not on_gpu and torch.device(device).type not in ("cpu", "cuda"):
        raise ConfigError(f"--load-in {load_in} with --device {device}: quantised weights run on a CUDA GPU or the CPU")
    if not on_gpu and not runs_on_cpu(load_in):
        raise ConfigError(
            f"--load-in {load_in} on the CPU: bitsandbytes {getattr(bitsandbytes, '__version__', '?')} has no CPU "
            "kernels for it (0.50 has); upgrade it (pip install -U bitsandbytes) or run on a CUDA GPU"
        )


@functools.cache
def runs_on_cpu(load_in: str) -> bool:
    """Whether the installed bitsandbytes computes ``load_in`` layers on the CPU: a 64x64 layer of each kind,
    quantised and multiplied, since which releases have CPU kernels is not something bitsandbytes states."""
    import torch

    try:
        quiet_bitsandbytes()
        import bitsandbytes as bnb

        x, w = torch.ones(2, 64), torch.eye(64)
        with torch.no_grad():
            if load_in == "4bit":
                q, state = bnb.functional.quantize_4bit(
                    w.to(torch.bfloat16), quant_type="nf4", compress_statistics=True
                )
                y = bnb.matmul_4bit(x.to(torch.bfloat16), q.t(), quant_state=state)
            else:
                layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
                layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
                y = layer.to("cpu")(x.half())
        return bool(torch.isfinite(y).all()) and tuple(y.shape) == (2, 64)
    except Exception:  # any failure means: no usable CPU kernel in this release
        return False


# bitsandbytes log lines that say nothing to act on: LLM.int8()'s cast to float16, once per layer and forward
# (the tolerances here follow that float16, :func:`compute_dtype`), and on the CPU, that an optional kernel
# package from the hub is missing (a slower built-in kernel runs instead)
_UNACTIONABLE = {
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast from",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    # where the `kernels` package is installed, bitsandbytes' import asks the hub for those CPU kernels; offline
    # (as CI and air-gapped machines run) it logs this notice first, on every import
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/",
}


class _DropUnactionable(logging.Filter):
    """Drops one logger's unactionable line (:data:`_UNACTIONABLE`) and lets every other line through."""

    def __init__(self, starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_bitsandbytes() -> None:
    """Filter the unactionable bitsandbytes lines out (before bitsandbytes is imported: its import logs
    one); its loggers keep their levels, so its other warnings still show."""
    for name, starts in _UNACTIONABLE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUnactionable) for f in logger.filters):
            logger.addFilter(_DropUnactionable(starts))


def keep_weights_as_loaded(model: torch.nn.Module) -> None:
    """Stop bitsandbytes rewriting 4-bit weights in place on the CPU. On a CPU with AVX-512 bf16, its first
    inference forward repacks each layer's weights into another layout (and fails where a layer's output
    size is not a multiple of 32), which changes the weights fingerprint a result records between the
    load and the end of a run; the unpacked path computes the same products, somewhat slower."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def quantization_config(load_in: str, compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``load_in`` (checked by :func:`check_load_in`)."""
    import torch
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # float32 compute would undo most of the speed of 4-bit matmuls; bfloat16 is QLoRA's choice
    compute = torch.bfloat16 if compute_dtype == torch.float32 else compute_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _bnb_4bit_compute_dtype(model: torch.nn.Module) -> Any:
    """``bnb_4bit_compute_dtype`` of the model's quantisation config: a ``torch.dtype`` (as loaded), a
    name such as ``"bfloat16"`` (a saved config), or None."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    return qc.get("bnb_4bit_compute_dtype") if isinstance(qc, dict) else getattr(qc, "bnb_4bit_compute_dtype", None)


def quantization_record(model: torch.nn.Module) -> dict[str, Any] | None:
    """``{"method": "bitsandbytes", "bits": 4 | 8, ...}`` for a quantised model, else None."""
    if getattr(model, "is_loaded_in_4bit", False):
        record: dict[str, Any] = {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4"}
        # the matmuls run in this dtype, not in the (float32) dtype the embeddings say
        compute = _bnb_4bit_compute_dtype(model)
        if compute is not None:
            record["compute_dtype"] = str(compute).removeprefix("torch.")
        return record
    if getattr(model, "is_loaded_in_8bit", False):
        return {"method": "bitsandbytes", "bits": 8}
    return None


def refuse_quantized(model: torch.nn.Module, what: str) -> None:
    """Refuse an operation that needs plain weights (saving a pruned copy, merging adapters)."""
    record = quantization_record(model)
    if record is not None:
        raise ConfigError(
            f"{what} needs the model's plain weights; it was loaded in {record['bits']}-bit: load it without --load-in"
        )


def compute_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The least precise floating dtype ``model`` computes in (None: no floating parameter, no quantisation),
    the one its numeric tolerances follow.

    A plain model computes in its floating parameters' dtype. A quantised one's packed weights are not
    floating, and its matmuls round coarser than the float parameters left (embeddings, norms) say:
    4-bit layers compute in ``bnb_4bit_compute_dtype`` (bfloat16 when float32 was asked for,
    :func:`quantization_config`) and cast the result back; LLM.int8() casts its inputs to float16 on a
    CUDA device (bitsandbytes' ``MatMul8bitLt``) and the output back. The least precise of these wins.
    """
    import torch

    dtypes = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    if getattr(model, "is_loaded_in_4bit", False):
        compute = _bnb_4bit_compute_dtype(model)
        if isinstance(compute, str):
            compute = getattr(torch, compute.removeprefix("torch."), None)
        if isinstance(compute, torch.dtype) and compute.is_floating_point:
            dtypes.add(compute)
    elif getattr(model, "is_loaded_in_8bit", False):
        dtypes.add(torch.float16)
    return max(dtypes, key=lambda d: (torch.finfo(d).eps, str(d)), default=None)

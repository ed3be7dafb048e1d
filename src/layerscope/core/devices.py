"""Where a model's weights and tensors live.

Two concerns, both about placement:

- **Choosing** it: ``--device auto`` is CUDA when present, else the CPU; ``--dtype auto`` is
  bfloat16 on a GPU that supports it, else float32 (float16 is never chosen for you: it overflows
  on some models). ``--device-map`` (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``,
  or a JSON ``{module: device}``) and ``--max-memory`` (``"0=20GiB,cpu=60GiB"``) hand placement to
  accelerate's big-model dispatch: blocks spread over GPUs, and what does not fit is offloaded to
  CPU memory or disk (docs/large-models.md).
- **Following** it on a dispatched model: accelerate hangs a hook on each placed module that moves
  its inputs to its *execution device* and, for offloaded modules, loads its weights there for the
  call (their parameters are on the ``meta`` device in between). So "the device of the first
  parameter" is no longer where inputs go: :func:`input_device` and :func:`module_device` ask the
  hooks, and :func:`to_device` moves cached states and block arguments to a block's device.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.quantization import quantization_record

AUTO = "auto"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


# ---- choosing -------------------------------------------------------------------------------------
def resolve_device(spec: str | torch.device | None) -> str:
    """``auto`` (or None) -> ``cuda`` when CUDA is available, else ``cpu``; an explicit device is
    checked against this machine (one line why not, never a CUDA traceback later)."""
    if spec is None or str(spec).strip().lower() == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(spec).strip()
    # "device 'cuda'", not "--device cuda": load_model(device=...) and the CLI's --device both end here
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {text!r} is not a device name (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {text!r}: MPS is not available on this machine (use auto or cpu)")
    elif device.type == "meta":  # it would load, then every evaluation and training refuses the model
        raise ConfigError(f"device {text!r}: meta tensors hold no values to compute with (use auto, cpu or cuda)")
    return text


def resolve_dtype(spec: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` (or None) -> bfloat16 on a CUDA device that supports it, else float32; else the named dtype."""
    if isinstance(spec, torch.dtype):
        return spec
    if spec is None or str(spec).strip().lower() == AUTO:
        on_gpu = torch.device(device).type == "cuda" and torch.cuda.is_available()
        # native bfloat16 only (Ampere and later): on a T4 or V100 it is emulated, and slow
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    if spec not in DTYPES:
        raise ModelError(f"unknown dtype {spec!r}; use auto or one of {sorted(DTYPES)}")
    return DTYPES[spec]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_device_map(spec: str | dict | None) -> str | dict | None:
    """``--device-map``: a strategy name, a JSON object ``{module: device}``, or a .json file holding one."""
    if spec is None or isinstance(spec, dict):
        return _checked_map(spec, "device map") if isinstance(spec, dict) else None
    text = str(spec).strip()
    if text.lower() in DEVICE_MAP_STRATEGIES:
        return text.lower()
    source = text
    if text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"--device-map {text}: file not found")
        source = path.read_text()
    try:
        parsed = json.loads(source)
    except json.JSONDecodeError:
        raise ConfigError(
            f"--device-map {text!r}: use {', '.join(DEVICE_MAP_STRATEGIES)}, or a JSON object {{module: device}}"
        ) from None
    if not isinstance(parsed, dict) or not parsed:
        raise ConfigError(f"--device-map {text!r}: a JSON device map is a non-empty object {{module: device}}")
    return _checked_map(parsed, f"--device-map {text!r}")


def _checked_map(device_map: dict, what: str) -> dict:
    for module, device in device_map.items():
        ok = (isinstance(device, int) and not isinstance(device, bool) and device >= 0) or (
            isinstance(device, str) and (device in ("cpu", "disk", "mps") or _is_cuda_name(device))
        )
        if not ok:
            raise ConfigError(f"{what}: {module!r} -> {device!r} is not a device (GPU index, cuda:N, cpu or disk)")
    return dict(device_map)


def _is_cuda_name(text: str) -> bool:
    kind, _, index = text.partition(":")
    return kind == "cuda" and (index == "" or index.isdigit())


def parse_max_memory(spec: str | dict | None) -> dict | None:
    """``--max-memory "0=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", "cpu": "60GiB"}`` (GPU indices as ints)."""
    if spec is None or isinstance(spec, dict):
        return spec
    from accelerate.utils import convert_file_size_to_int

    out: dict[int | str, str] = {}
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        key, sep, size = (x.strip() for x in part.partition("="))
        if not sep or not key or not size:
            raise ConfigError(f"--max-memory {spec!r}: write DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=60GiB")
        if not (key.isdigit() or key in ("cpu", "mps", "disk")):
            raise ConfigError(f"--max-memory {spec!r}: {key!r} is not a GPU index, cpu, mps or disk")
        try:
            convert_file_size_to_int(size)
        except ValueError:
            raise ConfigError(f"--max-memory {spec!r}: {size!r} is not a size (e.g. 20GiB, 500MB)") from None
        out[int(key) if key.isdigit() else key] = size
    if not out:
        raise ConfigError("--max-memory is empty (e.g. 0=20GiB,cpu=60GiB)")
    return out


@dataclass(frozen=True)
class Placement:
    """Where a model is asked to go, resolved: one device, or accelerate's device map (with its memory
    limits and offload folder); ``auto`` names what ``auto`` chose (``"device"``, ``"dtype"``)."""

    device: str
    dtype: torch.dtype
    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    auto: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls,
        device: str | None = AUTO,
        dtype: str | torch.dtype | None = AUTO,
        device_map: str | dict | None = None,
        max_memory: str | dict | None = None,
        offload_folder: str | None = None,
    ) -> Placement:
        """Check and resolve the user's choices. ``max_memory`` alone implies ``device_map="auto"``.
        None: not given (the CPU, float32: the library's machine-independent default; with a device
        map, the device is the map's business)."""
        device_map, max_memory = parse_device_map(device_map), parse_max_memory(max_memory)
        map_flag = "--device-map" if device_map is not None else "--max-memory"  # the option the user gave
        if max_memory is not None and device_map is None:
            device_map = "auto"
        if device_map is not None:
            _refuse_gpus_this_machine_lacks(device_map, max_memory)
            named = device is not None and str(device).strip().lower() != AUTO
            if named and not (_is_cpu(device) and cpu_and_disk_only(device_map, max_memory)):
                raise ConfigError(f"--device {device} and {map_flag}: give one (the map places every module)")
            _refuse_map_under_launcher()
        auto = tuple(k for k, v in (("device", device), ("dtype", dtype)) if v is not None and str(v).lower() == AUTO)
        if device is None:
            device = AUTO if device_map is not None else "cpu"
        resolved = resolve_device(device)
        return cls(
            resolved,
            resolve_dtype("float32" if dtype is None else dtype, resolved),
            device_map,
            max_memory,
            offload_folder,
            auto,
        )

    def load_kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments for the placement (none for a plain device: ``.to`` after)."""
        if self.device_map is None:
            return {}
        folder = self.offload_folder or _temporary_offload_folder()
        # copies: transformers edits the dicts it is given (sizes become byte counts)
        device_map = dict(self.device_map) if isinstance(self.device_map, dict) else self.device_map
        max_memory = dict(self.max_memory) if self.max_memory is not None else None
        return dict(device_map=device_map, max_memory=max_memory, offload_folder=folder)

    def describe(self, model: nn.Module | None = None) -> str:
        """One line for the run notes, e.g. ``device: cpu (auto), dtype: float32 (auto)``."""
        mark = {k: " (auto)" if k in self.auto else "" for k in ("device", "dtype")}
        where = f"device: {self.device}{mark['device']}"
        if self.device_map is not None:
            name = self.device_map if isinstance(self.device_map, str) else "json"
            where = f"device map: {name}" + (f" ({_placement_summary(model)})" if model is not None else "")
        quantization = quantization_record(model) if model is not None else None
        bits = f", weights: {quantization['bits']}-bit (bitsandbytes)" if quantization else ""
        return f"{where}, dtype: {dtype_name(self.dtype)}{mark['dtype']}{bits}"


def _is_cpu(device: str) -> bool:
    return str(device).strip().lower() == "cpu"


def cpu_and_disk_only(device_map: str | dict, max_memory: dict | None) -> bool:
    """Whether a placement keeps every module on the CPU or offloads it from there (to CPU memory or
    disk): a JSON map naming only ``cpu`` and ``disk``, or a strategy held by ``--max-memory`` limits
    naming only those (accelerate uses no device the limits leave out). ``--device cpu`` says the same,
    so the two combine; a bare strategy may take a GPU."""
    if isinstance(device_map, dict):
        return all(v in ("cpu", "disk") for v in device_map.values())
    return max_memory is not None and all(k in ("cpu", "disk") for k in max_memory)


def _gpu_index(device: int | str) -> int | None:
    """The CUDA GPU a device-map entry or memory limit names (``0``, ``"cuda:1"``, ``"cuda"``), else None."""
    if isinstance(device, int):
        return device
    if isinstance(device, str) and _is_cuda_name(device):
        return int(device.partition(":")[2] or 0)
    return None


def _refuse_gpus_this_machine_lacks(device_map: str | dict, max_memory: dict | None) -> None:
    """One line before loading for a GPU the map or the limits name that this machine does not have
    (accelerate would warn "Device 0 is not available" and the load fail on an inaccessible accelerator)."""
    named = [("--device-map", v) for v in device_map.values()] if isinstance(device_map, dict) else []
    named += [("--max-memory", k) for k in max_memory or {}]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for flag, device in named:
        index = _gpu_index(device)
        if index is not None and index >= count:
            has = "no CUDA GPU" if count == 0 else f"{count} CUDA GPU{'s' if count > 1 else ''}"
            raise ConfigError(f"{flag} names GPU {index}, but this machine has {has}")


def _placement_summary(model: nn.Module) -> str:
    """Where a model loaded with a device map sits. With nothing to spread over (one CPU, no GPU)
    transformers records no map: the whole model is on the one device its weights are on."""
    device_map = getattr(model, "hf_device_map", None) or {}
    if device_map:
        return _map_summary(device_map)
    devices = sorted({str(p.device) for p in model.parameters()})
    return f"whole model on {', '.join(devices) or 'no device'}"


def _map_summary(device_map: dict) -> str:
    """``5 modules on 0, 3 on cpu, 2 on disk``: GPUs first, then CPU memory, then disk."""
    counts = Counter(str(v) for v in device_map.values())
    rank = {"cpu": 1, "mps": 1, "disk": 2}
    order = sorted(counts, key=lambda d: (rank.get(d, 0), d))
    parts = [
        f"{counts[d]} {'module' if counts[d] == 1 else 'modules'} on {d}" if i == 0 else f"{counts[d]} on {d}"
        for i, d in enumerate(order)
    ]
    return ", ".join(parts)


def _refuse_map_under_launcher() -> None:
    from layerscope.core.distributed import launched_multi_process

    if launched_multi_process():
        raise ConfigError(
            "--device-map spreads one model over this machine's devices: run it as one process, "
            "not under torchrun / accelerate launch (each process would place its own copy)"
        )


def _temporary_offload_folder() -> str:
    """A folder for weights accelerate offloads to disk, removed when the process exits."""
    folder = tempfile.mkdtemp(prefix="layerscope-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


# ---- following ------------------------------------------------------------------------------------
def _hooks(module: nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # accelerate's SequentialHook holds several


def module_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` computes: its accelerate hook's execution device, else its first parameter's or
    buffer's device that holds data (not ``meta``); None when nothing says."""
    device = _hook_device(module)
    if device is not None:
        return device
    for t in _tensors(module):
        if t.device.type != "meta":
            return t.device
    return None


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def _hook_device(module: nn.Module) -> torch.device | None:
    """The execution device ``module``'s own accelerate hook names, if it has one that names one."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return None


def compute_devices(model: nn.Module) -> set[torch.device]:
    """Every device some of ``model``'s weights compute on, dispatched or not: a weight accelerate
    offloaded (held on ``meta``, in CPU memory or on disk) computes on its hook's execution device, a
    weight in memory where it lies. The same for a model in memory and that model offloaded to run on
    the same device, which is what a coalition log must match (values follow where they were computed,
    not where the weights wait between calls)."""
    found: set[torch.device] = set()

    def walk(module: nn.Module, inherited: torch.device | None) -> None:
        hooked = _hook_device(module) or inherited  # an offloaded block's hook loads its children's weights too
        for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            device = hooked if hooked is not None and t.device.type == "meta" else t.device
            if device.type != "meta":
                found.add(device)
        for child in module.children():
            walk(child, hooked)

    walk(model, None)
    return found


def input_device(model: nn.Module) -> torch.device:
    """Where a model's input ids go: its input embedding's device (dispatched or not), else the first
    parameter holding data, else the CPU."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        device = module_device(embeddings)
        if device is not None:
            return device
    return module_device(model) or torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's floating-point weights (offloaded ``meta`` parameters keep theirs)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model (a device map with hooks, possibly offloading)."""
    return bool(getattr(model, "hf_device_map", None)) or any(_hooks(m) for m in model.modules())


def to_device(obj: Any, device: torch.device | None) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) on ``device``; other values as they are."""
    if device is None:
        return obj
    if torch.is_tensor(obj):
        return obj if obj.device == device else obj.to(device)
    if isinstance(obj, tuple):
        return (
            type(obj)(*(to_device(v, device) for v in obj))
            if hasattr(obj, "_fields")
            else tuple(to_device(v, device) for v in obj)
        )
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def state_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every state-dict entry with its values, sorted by name: an offloaded one (on ``meta``) is read,
    one at a time, from its accelerate hook's weights map (CPU memory or disk)."""
    for name, t in sorted(model.state_dict().items()):
        yield name, (_offloaded_value(model, name) if t.device.type == "meta" else t)


def _offloaded_value(model: nn.Module, name: str) -> torch.Tensor:
    path, _, local = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    for hook in _hooks(module):
        weights = getattr(hook, "weights_map", None)
        if weights is not None:
            try:
                return weights[local]
            except KeyError:
                continue
    raise ModelError(f"weight {name} is offloaded (on the meta device) and its values cannot be found")


def placement_record(model: nn.Module) -> dict[str, Any]:
    """Where a model ran, for result files: ``device`` (its inputs'), ``dtype``, and ``device_map``
    ({module: device}) when accelerate dispatched it."""
    dtype = model_dtype(model)
    record: dict[str, Any] = {
        "device": str(input_device(model)),
        "dtype": dtype_name(dtype) if dtype is not None else None,
    }
    placed = getattr(model, "hf_device_map", None)
    if placed:
        record["device_map"] = {str(k): str(v) for k, v in placed.items()}
    quantization = quantization_record(model)
    if quantization is not None:
        record["quantization"] = quantization
    return record


@contextlib.contextmanager
def adapters_beside_offloaded_weights(model: nn.Module) -> Iterator[None]:
    """Within the block, a weight accelerate offloaded (held on ``meta``, loaded for each call only) is
    a one-element stand-in of its shape and dtype on the device its module computes on.

    peft moves each new adapter to its base layer's weight's device; on ``meta`` the adapter's freshly
    initialised values would be lost. With the stand-ins the adapters go to the execution device (they
    are small and trained, so never offloaded) and their initial values are those of the same model in
    memory. The real (offloaded) parameters come back on exit, with the ``requires_grad`` peft set.
    """
    swapped: list[tuple[nn.Module, str, nn.Parameter, nn.Parameter]] = []
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            device = module_device(module) if param.device.type == "meta" else None
            if device is None or device.type == "meta":
                continue
            stand_in = torch.empty((), dtype=param.dtype, device=device).expand(param.shape)
            module._parameters[name] = nn.Parameter(stand_in, requires_grad=param.requires_grad)
            swapped.append((module, name, param, module._parameters[name]))
    try:
        yield
    finally:
        for module, name, param, stand_in in swapped:
            param.requires_grad_(stand_in.requires_grad)
            module._parameters[name] = param


def offloaded_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters accelerate offloaded (held on ``meta``, loaded for each call only)."""
    return [name for name, p in model.named_parameters() if p.device.type == "meta"]

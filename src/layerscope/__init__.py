"""layerscope: find which transformer layers of a causal LM matter, and use it.

The package is laid out in rooms (docs/architecture.md): ``core`` (models, layer map, data,
tasks, the ``LayerImportance`` result), ``scoring`` (the value function), ``engine`` (removing
players and the coalition engine), ``methods`` (ablation, Shapley, ILA, similarity),
``training`` (selection, selective fine-tuning, exports), ``viz`` and ``cli``.

The names below are imported on first use, so ``import layerscope`` (and ``layerscope --help``)
does not load torch.
"""

from __future__ import annotations

from layerscope import _compat
from layerscope._lazy import lazy_attributes
from layerscope.core.quantization import quiet_bitsandbytes

_compat.install()  # the pre-0.2 flat module names (layerscope.evaluate, ...) keep working
# peft imports bitsandbytes where it is installed, whose import logs an unactionable line on a CPU machine:
# filtered for Python callers as the CLI does (a logging filter on its logger; levels are left alone)
quiet_bitsandbytes()

_PUBLIC: dict[str, str] = {
    "LayerImportance": "layerscope.core.importance",
    "LayerMap": "layerscope.core.layermap",
    "build_layer_map": "layerscope.core.layermap",
    "load_model": "layerscope.core.models",
    "LayerscopeError": "layerscope.core.errors",
    "DataError": "layerscope.core.errors",
    "ModelError": "layerscope.core.errors",
    "ConfigError": "layerscope.core.errors",
    "TrainingError": "layerscope.core.errors",
}

__all__ = sorted(_PUBLIC)
__version__ = "0.2.0"


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

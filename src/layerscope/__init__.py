"""layerscope: find which transformer layers of a causal LM matter, and use it.

The Python API mirrors the CLI; heavy modules are imported on first use.
"""

from .errors import ConfigError, DataError, LayerscopeError, ModelError, TrainingError
from .importance import LayerImportance
from .layermap import LayerMap, build_layer_map
from .models import load_model

__all__ = ["LayerImportance", "LayerMap", "build_layer_map", "load_model", "LayerscopeError", "DataError",
           "ModelError", "ConfigError", "TrainingError"]
__version__ = "0.1.0"

"""Package attributes imported on first use.

A package lists its public names and the module each lives in; ``import layerscope.training`` (and
``layerscope --help``) then loads nothing heavy, and ``layerscope.training.finetune`` imports torch
only when it is first read.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, public: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``public`` maps a name to its module, given relative to the
    package (``"config"``) or absolute (``"layerscope.core.models"``)."""

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where = public[name]
        module = importlib.import_module(where if where.startswith("layerscope.") else f"{package}.{where}")
        value = getattr(module, name)
        vars(sys.modules[package])[name] = value  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        # a public name read once is also in the module's namespace (cached by __getattr__): list it once
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__

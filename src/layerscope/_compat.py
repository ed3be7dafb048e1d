"""Old flat module names (``layerscope.evaluate``, ``layerscope.coalitions``, ...) for one release.

Before 0.2 every module sat directly under ``layerscope/``; they now live in rooms (``core``,
``scoring``, ``engine``, ``methods``, ``training``, ``viz``, ``cli``; see docs/architecture.md).
``import layerscope.evaluate`` still works: a meta-path finder hands back the module that took
its place, with a ``DeprecationWarning`` naming the new one. The old name is the same module
object, so ``monkeypatch``-ing through either name patches both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old name (under layerscope.) -> new name (under layerscope.)
MOVED: dict[str, str] = {
    "errors": "core.errors",
    "atomic": "core.atomic",
    "models": "core.models",
    "layermap": "core.layermap",
    "data": "core.data",
    "tasks": "core.tasks",
    "importance": "core.importance",
    "distributed": "core.distributed",
    "checkpoint": "core.checkpoint",
    "evaluate": "scoring",
    "removal": "engine.removal",
    "coalitions": "engine.coalitions",
    "coalition_log": "engine.coalition_log",
    "ablation": "methods.ablation",
    "similarity": "methods.similarity",
    "shapley": "methods.shapley",
    "ila": "methods.ila",
    "ila_gates": "methods.ila.gates",
    "selection": "training.selection",
    "finetune": "training",
    "export": "training.export",
    "plots": "viz.plots",
    "heatmap": "viz.heatmap",
    "compare": "viz.compare",
    "commands": "cli",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system overwrites __spec__ with the alias's
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec  # already executed; only give it its own spec back


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head != "layerscope" or not rest:
            return None
        first, _, tail = rest.partition(".")
        if first not in MOVED:
            return None
        new = f"layerscope.{MOVED[first]}" + (f".{tail}" if tail else "")
        if importlib.util.find_spec(new) is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new}; the old name goes away in layerscope 0.3", DeprecationWarning, stacklevel=3
        )
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

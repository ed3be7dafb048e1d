"""An ILA run written to a folder OUT: importance.json, heatmap.png, loss.png and the stage-1 adapter/.

While the run goes, OUT/checkpoint/ holds its latest checkpoint (a killed run resumes from it) and
the stage-1 adapter is saved as OUT/.adapter.partial. Only once importance.json and the plots are
written does the adapter take its real name (adapter/) and the checkpoint go; a run that fails
deletes the partial adapter, so it never leaves a complete-looking adapter/ behind. A run that
starts afresh first removes an earlier run's result from OUT (``remove_earlier_result``), so a kill
before it writes its own leaves no complete-looking folder holding the old result either.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch.nn as nn

from layerscope.core import atomic, checkpoint, distributed
from layerscope.core.importance import LayerImportance
from layerscope.methods.ila.checkpoints import CHECKPOINT_EVERY
from layerscope.methods.ila.config import ILAConfig
from layerscope.methods.ila.run import run_ila

CHECKPOINT_FOLDER = "checkpoint"
STAGED_ADAPTER = ".adapter.partial"  # renamed to ADAPTER_FOLDER once the results are written
ADAPTER_FOLDER = "adapter"
RESULT_FILE = "importance.json"
# every chart a result folder gets (cli/plot.py's HEATMAP, LOSS, BAR): they show the importance.json beside them
RESULT_CHARTS = ("heatmap.png", "loss.png", "bar.png")
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ILAOutputs:
    """What ``run_ila_to_folder`` wrote."""

    result: LayerImportance
    importance: Path
    heatmap: Path
    loss: Path
    adapter: Path | None  # None when the run reused a saved adapter (``config.adapter``)


def run_ila_to_folder(
    model: nn.Module,
    tokenizer,
    data,
    config: ILAConfig,
    out: str | os.PathLike,
    *,
    model_name: str | None = None,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    note: Callable[[str], None] | None = None,
) -> ILAOutputs | None:
    """``run_ila`` with its checkpoints in OUT/checkpoint/, then its outputs written to ``out``
    (module docstring). ``config.save_adapter`` is replaced: the stage-1 adapter goes to OUT/adapter/
    unless ``config.adapter`` reuses a saved one. ``resume``: continue from OUT/checkpoint/.

    A run that starts afresh (no ``resume``, or no checkpoint to resume from) removes an earlier
    run's result from ``out`` first (``remove_earlier_result``) and says so through ``note`` (a line
    for people; the CLI prints it on stderr).

    Under several processes every process calls this; the main one alone writes and gets the
    ``ILAOutputs``, the others get None."""
    out = Path(out)
    staged = out / STAGED_ADAPTER
    main = distributed.is_main_process()
    if main and not (resume and checkpoint.exists(checkpoint_folder(out))):
        # a reused --adapter may be OUT/adapter itself: it stays
        removed = remove_earlier_result(out, adapter=not config.adapter)
        if removed and note is not None:
            note(removed_note(out, removed))
    config = replace(config, save_adapter=None if config.adapter else str(staged))
    try:
        result = run_ila(
            model,
            tokenizer,
            data,
            config,
            model_name=model_name,
            checkpoint_dir=checkpoint_folder(out),
            resume=resume,
            checkpoint_every=checkpoint_every,
            note=note if main else None,
        )
        if not main:
            return None  # every process holds the same result; the main one writes it
        written = _write(result, out, staged if not config.adapter else None)
    except BaseException:
        if main:
            shutil.rmtree(staged, ignore_errors=True)  # a resumed run saves the adapter again after stage 1
        raise
    checkpoint.remove(checkpoint_folder(out))  # only now: a kill before this point can still resume
    return written


def stage1_stop_report(
    extras: dict, cap_flag: str = "--max-steps", eps_flag: str | None = "--eps", command: str = "ila"
) -> tuple[str, str | None]:
    """How stage 1 ended, for people: (a line saying it stopped "stable" or at the step cap, and a
    warning line for stderr when at the cap, else None). The flags name the options that set the cap
    and eps where it is printed (``eps_flag`` None: there is none); ``command`` names the layerscope
    command, as its other warnings do (``layerscope CMD: warning: ...``, cli/common.py)."""
    reason, step = extras.get("stop_reason"), extras.get("stop_step")
    if reason == "loaded":
        return "stage 1: skipped (a saved adapter was reused)", None
    if reason == "stable":
        return f"stage 1: stopped at step {step}, stable (the LoRA update changed less than eps)", None
    line = f"stage 1: stopped at step {step}, the step cap ({cap_flag}), before becoming stable"
    fix = cap_flag if eps_flag is None else f"{cap_flag} or {eps_flag}"
    warning = f"ILA stage 1 hit the step cap: ranking may not be stable: raise {fix}"
    return line, f"layerscope {command}: warning: {warning}"


def remove_earlier_result(out: str | os.PathLike, *, adapter: bool = False) -> list[Path]:
    """Before a run that starts afresh writes its result to ``out`` (ablate, shapley, ila): remove an
    earlier run's result there, so a run killed before it writes its own never leaves a folder that
    looks complete but holds the old result. Returns what was removed (nothing when there is none).

    Only a layerscope result is touched: OUT/importance.json must read as one (else nothing is
    removed; the run replaces that file when it finishes, as before); then its charts
    (``RESULT_CHARTS``, PNG files only) and, with ``adapter`` (an ILA run that saves its own), an
    ILA adapter/ beside it (a folder holding adapter_config.json) go too. importance.json goes first."""
    from layerscope.core.errors import LayerscopeError

    out = Path(out)
    result = out / RESULT_FILE
    if not result.is_file():
        return []
    try:
        LayerImportance.load(result)
    except (LayerscopeError, OSError):  # not a layerscope result (or not readable): not ours to delete
        return []
    beside = [out / name for name in RESULT_CHARTS if _is_png(out / name)]
    if adapter and not (out / ADAPTER_FOLDER).is_symlink() and (out / ADAPTER_FOLDER / "adapter_config.json").is_file():
        beside.append(out / ADAPTER_FOLDER)
    return atomic.remove_result(result, beside)


def removed_note(out: Path, removed: list[Path]) -> str:
    """The line saying what ``remove_earlier_result`` removed (without the "note: " the CLI adds)."""
    names = ", ".join(p.name + ("/" if p.name == ADAPTER_FOLDER else "") for p in removed)
    return f"removed the earlier result in {out} ({names}); this run writes its own when it finishes"


def _is_png(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(_PNG)) == _PNG
    except OSError:
        return False


def checkpoint_folder(out: str | os.PathLike) -> Path:
    """Where ``run_ila_to_folder`` keeps the checkpoint of a run writing to ``out``."""
    return Path(out) / CHECKPOINT_FOLDER


def _write(result: LayerImportance, out: Path, staged: Path | None) -> ILAOutputs:
    """importance.json and the plots, then the staged adapter renamed to adapter/ (``staged`` None: none)."""
    from layerscope.viz.heatmap import plot_loss_curves, plot_module_heatmap

    adapter = None if staged is None else out / ADAPTER_FOLDER
    if adapter is not None:
        result.method_config["save_adapter"] = str(adapter)  # where it ends up, not the staging name
    importance = result.save(out / "importance.json")
    plot_module_heatmap(result, out / "heatmap.png")
    plot_loss_curves(result, out / "loss.png")
    if adapter is not None:
        shutil.rmtree(adapter, ignore_errors=True)
        atomic.user_mode(staged)  # the user's normal permissions, whatever made the folder
        os.replace(staged, adapter)
    return ILAOutputs(result, importance, out / "heatmap.png", out / "loss.png", adapter)

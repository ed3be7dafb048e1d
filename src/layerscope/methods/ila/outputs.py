"""An ILA run written to a folder OUT: importance.json, heatmap.png, loss.png and the stage-1 adapter/.

While the run goes, OUT/checkpoint/ holds its latest checkpoint (a killed run resumes from it) and
the stage-1 adapter is saved as OUT/.adapter.partial. Only once importance.json and the plots are
written does the adapter take its real name (adapter/) and the checkpoint go; a run that fails
deletes the partial adapter, so it never leaves a complete-looking adapter/ behind. An earlier run's
result in OUT stays untouched until this run writes its own: each file is then replaced (temp file,
then rename), and the earlier result's files this run does not write go only then
(``earlier_result``, ``drop_earlier_result``), with a note. A run that fails or is killed leaves the
earlier result as it was.
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

    An earlier run's result in ``out`` is left as it is until this run's is written; then it is
    replaced, and what of it this run does not write is removed (``drop_earlier_result``), said
    through ``note`` (a line for people; the CLI prints it on stderr). A run that fails leaves it.

    Under several processes every process calls this; the main one alone writes and gets the
    ``ILAOutputs``, the others get None."""
    out = Path(out)
    staged = out / STAGED_ADAPTER
    main = distributed.is_main_process()
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
        # a reused --adapter may be OUT/adapter itself: it is not part of the earlier result, and stays
        earlier = earlier_result(out, adapter=not config.adapter)  # read before this run's files land
        written = _write(result, out, staged if not config.adapter else None)
        files = [written.importance, written.heatmap, written.loss] + ([written.adapter] if written.adapter else [])
        line = drop_earlier_result(out, earlier, files)
        if line and note is not None:
            note(line)
    except BaseException:
        if main:
            shutil.rmtree(staged, ignore_errors=True)  # a resumed run saves the adapter again after stage 1
        raise
    checkpoint.remove(checkpoint_folder(out))  # only now: a kill before this point can still resume
    return written


def stage1_stop_report(
    extras: dict,
    cap_flag: str = "--max-steps",
    eps_flag: str | None = "--eps",
    command: str = "ila",
    cap: int | None = None,
    lr_schedule: str | None = "linear",
) -> tuple[str, str | None]:
    """How stage 1 ended, for people: (a line saying it stopped "stable" or at the step cap, and a
    warning line for stderr when at the cap, else None). The flags name the options that set the cap
    and eps where it is printed (``eps_flag`` None: there is none); ``command`` names the layerscope
    command, as its other warnings do (``layerscope CMD: warning: ...``, cli/common.py). ``cap``: the
    step cap, to say when "stable" came at the cap itself while the learning rate fell to zero there
    (``lr_schedule`` "linear"; a constant rate does not)."""
    reason, step = extras.get("stop_reason"), extras.get("stop_step")
    if reason == "loaded":
        return "stage 1: skipped (a saved adapter was reused)", None
    if reason == "stable" and step is not None and step == cap and lr_schedule == "linear":
        # the learning rate decays to zero at the cap, so the update settles there whatever it was doing
        # before (docs/ila.md): stable, but at a point the cap chose, not the criterion
        return (
            f"stage 1: stopped at step {step}, stable at the step cap ({cap_flag}) itself, where the learning "
            "rate reaches zero (docs/ila.md)",
            None,
        )
    if reason == "stable":
        return f"stage 1: stopped at step {step}, stable (the LoRA update changed less than eps)", None
    line = f"stage 1: stopped at step {step}, the step cap ({cap_flag}), before becoming stable"
    fix = cap_flag if eps_flag is None else f"{cap_flag} or {eps_flag}"
    warning = f"ILA stage 1 hit the step cap: ranking may not be stable: raise {fix}"
    return line, f"layerscope {command}: warning: {warning}"


def earlier_result(out: str | os.PathLike, *, adapter: bool = False) -> list[Path]:
    """The files of an earlier run's result in ``out`` (ablate, shapley, ila), read before a new run
    writes its own there; nothing is removed here (``drop_earlier_result`` does it once the new
    result is written). Empty when there is none.

    Only a layerscope result counts: OUT/importance.json must read as one (else nothing beside it
    is taken for its own); then its charts (``RESULT_CHARTS``, PNG files only) and, with ``adapter``
    (an ILA run that saves its own), an ILA adapter/ beside it (a folder holding adapter_config.json)."""
    from layerscope.core.errors import LayerscopeError

    out = Path(out)
    result = out / RESULT_FILE
    if result.is_symlink() or not result.is_file():
        return []
    try:
        LayerImportance.load(result)
    except (LayerscopeError, OSError):  # not a layerscope result (or not readable): not ours to delete
        return []
    beside = [out / name for name in RESULT_CHARTS if _is_png(out / name)]
    if adapter and not (out / ADAPTER_FOLDER).is_symlink() and (out / ADAPTER_FOLDER / "adapter_config.json").is_file():
        beside.append(out / ADAPTER_FOLDER)
    return [result, *beside]


def drop_earlier_result(out: str | os.PathLike, earlier: list[Path], written: list[Path]) -> str | None:
    """Once this run's result is written to ``out`` (``written``, its files and folders there): remove
    the files of the ``earlier`` one (``earlier_result``, read before) that this run did not write
    over, a chart of another kind say. Returns the line saying what was replaced (without the "note: "
    the CLI adds), or None when there was no earlier result."""
    import shutil

    if not earlier:
        return None
    out, names = Path(out), {Path(p).name for p in written}
    dropped = []
    for path in earlier:
        if path.name in names:
            continue  # replaced by this run's file of the same name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue  # left as it is: the new importance.json says what the result is
        dropped.append(path)
    return replaced_note(out, earlier, [Path(p) for p in written] if dropped else None)


def replaced_note(out: Path, earlier: list[Path], written: list[Path] | None = None) -> str:
    """The line saying an earlier result in ``out`` was replaced by this run's (without the "note: "
    the CLI adds); ``written``: this run's files, named when they are not the earlier ones'."""
    line = f"replaced the earlier result in {out} ({_names(earlier)}) with this run's"
    return line if written is None else f"{line} ({_names(written)})"


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name + ("/" if p.name == ADAPTER_FOLDER else "") for p in paths)


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

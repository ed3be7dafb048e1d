"""``layerscope plot``: draw importance results (module heatmap, or a bar chart for blocks / sub-layers)."""

from __future__ import annotations

from pathlib import Path

from layerscope.cli.common import add_hidden_alias, finite_float, nonempty
from layerscope.core.errors import ConfigError

TOP = 0.3  # --top's default: the fraction a module heatmap marks


def add_arguments(p) -> None:
    p.add_argument(
        "result",
        type=nonempty,
        metavar="FILE",
        help="importance.json, a run folder, or a folder holding several results (every importance.json up to 2 "
        "folders below, as report reads them, e.g. the output of similarity or demo: every one is plotted)",
    )
    p.add_argument(
        "--out",
        type=nonempty,
        default=None,
        help="figure file (.png, .pdf, .svg, ...), or a folder (an existing one, or a path without a suffix) "
        "that gets <result>.png for each result (its folder name, or file stem; with the parent folder's name "
        "where two would clash, as compare labels them). Default: the chart the result's command wrote, next to it, "
        "which is replaced: heatmap.png for a module-granularity result, bar.png for any other. ILA results "
        "also get their training loss, beside the chart: loss.png by default, else <name>_loss<suffix> "
        "(--out x.pdf: x.pdf and x_loss.pdf)",
    )
    p.add_argument(  # None: not given (refused where no result is drawn as a heatmap)
        "--top",
        type=finite_float,
        default=None,
        help=f"mark the top fraction on module heatmaps (default {TOP:g}; 0: none); refused where every result "
        "is drawn as a bar chart",
    )
    add_hidden_alias(p, "--fraction", "top", type=finite_float)  # compare / export / finetune's name for it


def run(args) -> int:
    from layerscope.cli.common import check_output
    from layerscope.core.importance import load_found
    from layerscope.viz.compare import result_labels

    if args.top is not None and not 0 <= args.top <= 1:
        raise ConfigError(f"--top {args.top} must be in [0, 1]")
    check_output(args.out, kind="either")
    found = load_found([args.result])  # all read before any figure is drawn; a damaged one below is skipped
    files = found.files
    into_folder = bool(args.out) and (Path(args.out).is_dir() or not Path(args.out).suffix)
    if into_folder and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a file is in the way, not a directory")
    if args.out and not into_folder:
        if len(files) > 1:
            raise ConfigError(
                f"--out {args.out} names one figure but {args.result} holds {len(files)} results: give a folder"
            )
        _check_figure_suffix(Path(args.out))
    results = list(zip(files, found.results))
    if args.top is not None and not any(imp.granularity == "module" for _, imp in results):
        kinds = sorted({imp.granularity for _, imp in results})
        held = f"{'/'.join(kinds)}-granularity results, drawn as bar charts"
        if len(results) == 1:
            held = f"a {kinds[0]}-granularity result, drawn as a bar chart"
        raise ConfigError(f"--top marks modules on a module heatmap; {args.result} holds {held}: drop it")
    top = TOP if args.top is None else args.top
    # one figure name per result, made unique as compare and report label them (x/abl and y/abl: x_abl, y_abl)
    names = [label.replace("/", "_") for label in result_labels(files)]
    written = []
    for (file, imp), name in zip(results, names):
        folder = file if file.is_dir() else file.parent
        out = None
        if args.out:
            out = Path(args.out) / f"{name}.png" if into_folder else Path(args.out)
        written += write_figures(imp, folder, out, top)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _check_figure_suffix(path: Path) -> None:
    """A figure file's suffix must name a format matplotlib writes (else it would fail after loading)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ConfigError(
            f"--out {path}: matplotlib cannot write {path.suffix!r} figures (use one of "
            f"{', '.join('.' + f for f in sorted(formats))}, or a folder)"
        )


HEATMAP, LOSS, BAR = "heatmap.png", "loss.png", "bar.png"  # the charts' names in a result's folder


def write_figures(imp, folder: str | Path, out: str | Path | None = None, top: float = TOP) -> list[Path]:
    """The figures of one result, written by every command that makes one and by ``layerscope plot``,
    so re-plotting replaces them: a module heatmap (``HEATMAP``; with ILA's training loss, ``LOSS``)
    or a bar chart (``BAR``) in ``folder``. ``out``: one figure file instead (its format from its
    suffix); the loss curves then go beside it as <stem>_loss<suffix>. ``top``: the fraction the
    heatmap marks (0: none)."""
    folder, out = Path(folder), None if out is None else Path(out)
    if imp.granularity == "module":
        from layerscope.viz.heatmap import plot_loss_curves, plot_module_heatmap

        written = [plot_module_heatmap(imp, out or folder / HEATMAP, mark_top=top or None)]
        if imp.extras.get("stage1_loss") or imp.extras.get("stage2_loss"):
            loss = out.with_name(f"{out.stem}_loss{out.suffix}") if out else folder / LOSS
            written.append(plot_loss_curves(imp, loss))
        return written
    try:
        from layerscope.viz.plots import bar_chart
    except ImportError:
        raise ConfigError(
            f"plotting {imp.granularity}-granularity results needs layerscope.viz.plots.bar_chart, "
            "which this installation lacks"
        ) from None
    return [bar_chart(imp, out or folder / BAR)]

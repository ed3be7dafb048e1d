"""``layerscope plot``: draw an importance result (module heatmap, or a bar chart for blocks / sub-layers)."""

from __future__ import annotations

from pathlib import Path

from layerscope.core.errors import ConfigError


def add_arguments(p) -> None:
    p.add_argument("result", metavar="FILE", help="importance.json or a run folder")
    p.add_argument("--out", default=None, help="figure path (default: heatmap.png / bar.png next to the result)")
    p.add_argument("--top", type=float, default=0.3, help="mark the top fraction on heatmaps (default 0.3; 0: none)")


def run(args) -> int:
    from layerscope.core.importance import LayerImportance

    src = Path(args.result)
    imp = LayerImportance.load(src)
    folder = src if src.is_dir() else src.parent
    written = []
    if imp.granularity == "module":
        from layerscope.viz.heatmap import plot_loss_curves, plot_module_heatmap

        if not 0 <= args.top <= 1:
            raise ConfigError(f"--top {args.top} must be in [0, 1]")
        written.append(plot_module_heatmap(imp, args.out or folder / "heatmap.png", mark_top=args.top or None))
        if imp.extras.get("stage1_loss") or imp.extras.get("stage2_loss"):
            out = Path(args.out).with_name(Path(args.out).stem + "_loss.png") if args.out else folder / "loss.png"
            written.append(plot_loss_curves(imp, out))
    else:
        try:
            from layerscope.viz.plots import bar_chart
        except ImportError:
            raise ConfigError(
                f"plotting {imp.granularity}-granularity results needs layerscope.plots.bar_chart, "
                "which this installation lacks"
            ) from None
        written.append(bar_chart(imp, args.out or folder / "bar.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0

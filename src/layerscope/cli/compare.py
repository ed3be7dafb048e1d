"""``layerscope compare``: Jaccard of top-K sets and Spearman between importance results of one model."""

from __future__ import annotations

from layerscope.core.errors import ConfigError


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--sweep: expected comma-separated fractions like 0.1,0.3,0.5, got {text!r}") from None


def add_arguments(p) -> None:
    p.add_argument("results", nargs="+", metavar="DIR_OR_FILE", help="importance.json files or run folders")
    p.add_argument("--fraction", type=float, default=0.3, help="K as a fraction of the players (default 0.3)")
    p.add_argument("--sweep", default="0.1,0.2,0.3,0.4,0.5", help="fractions for the sweep (default 0.1,...,0.5)")
    p.add_argument("--out", default=None, help="folder for comparison.json, jaccard.png, sweep.png")


def run(args) -> int:
    from layerscope.viz.compare import compare, load_results, write_comparison

    labels, results = load_results(args.results)
    comp = compare(
        results, labels, fraction=args.fraction, sweep=_fractions(args.sweep), sources=[str(p) for p in args.results]
    )
    print(comp.format_text())
    if args.out:
        paths = write_comparison(comp, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0

"""Benchmark: how long ``layerscope --help`` and each ``layerscope CMD --help`` take, start to exit.

Every run is a fresh process (the installed ``layerscope`` script next to this Python, else
``python -m layerscope``), so the time includes the interpreter's start and every import the
parser needs. For scale the table also times a bare interpreter and ``import torch``: what --help
would cost if parsing loaded torch. Prints a Markdown table of the median (and min) of ``--repeats``
runs; results go in docs/performance.md, "CLI start-up".

    python bench/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from layerscope.cli.app import COMMANDS


def layerscope_command() -> list[str]:
    """The console script beside this interpreter: not a version-manager shim, whose own start-up would count."""
    script = Path(sys.executable).parent / "layerscope"
    if script.exists():
        return [str(script)]
    found = shutil.which("layerscope")
    return [found] if found else [sys.executable, "-m", "layerscope"]


def time_runs(argv: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per command (default 5)")
    args = ap.parse_args()

    exe = layerscope_command()
    rows: list[tuple[str, list[float]]] = [
        ("python -c pass (interpreter alone)", time_runs([sys.executable, "-c", "pass"], args.repeats)),
        ("python -c 'import torch' (for scale)", time_runs([sys.executable, "-c", "import torch"], args.repeats)),
        ("layerscope --help", time_runs([*exe, "--help"], args.repeats)),
    ]
    for name in COMMANDS:
        rows.append((f"layerscope {name} --help", time_runs([*exe, name, "--help"], args.repeats)))

    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, {args.repeats} runs each")
    print()
    print("| command | median (s) | min (s) |")
    print("|---|---:|---:|")
    for label, times in rows:
        print(f"| `{label}` | {statistics.median(times):.3f} | {min(times):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the report words counts, sets of blocks and what a result was measured on, the same on the page
and in the Markdown text: "1 player" / "2 players", "blocks 0-12, 15", "task: arc_easy" / "loss: lima.json"."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerscope.viz.report.load import PruningCurve

# Suffixes of the data files a run reads: a task or source ending in one is a file, shown by its name;
# anything else is a name (a hub dataset "org/name" or "mmlu/abstract_algebra" keeps its slash).
DATA_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".parquet", ".tsv")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1: "1 player", "3 players", "2 blocks"."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def number_ranges(xs: list[int]) -> str:
    """Whole numbers as runs, "0-12, 15": a 200-block selection read as 199 numbers said nothing."""
    runs: list[list[int]] = []  # [first, last] of each run
    for x in sorted(set(xs)):
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def blocks_text(blocks: list[int]) -> str:
    """ "block 3" or "blocks 0-4, 7"."""
    return f"{'block' if len(set(blocks)) == 1 else 'blocks'} {number_ranges(blocks)}"


def _shown(name: str) -> str:
    """A file by its name (the folder is in the result's provenance), any other name whole."""
    return Path(name).name if Path(name).suffix.lower() in DATA_SUFFIXES else name


def data_kind(data: dict[str, Any]) -> tuple[str, str]:
    """(kind, name) of what a result or curve was measured on: ("task", "arc_easy"), ("loss",
    "lima.json") for a held-out loss, ("SFT data", "lima.json") for ILA's and the similarity methods'
    training text, ("text", ...) for plain text; ("", "") when the result does not say. A file name alone
    would read ILA's SFT data and an ablation's held-out loss on the same file as one thing."""
    task, source = data.get("task"), data.get("source") or data.get("path")
    if task == "loss":
        return "loss", _shown(str(source or "held-out data"))
    if task:
        return "task", _shown(str(task))
    if source:
        return ("text" if data.get("kind") == "text" else "SFT data"), _shown(str(source))
    return "", str(data.get("id") or "")


def data_text(data: dict[str, Any]) -> str:
    """ "task: arc_easy", "loss: lima.json", "SFT data: lima.json"; "-" when the result does not say."""
    kind, name = data_kind(data)
    return f"{kind}: {name}" if kind else name or "-"


def measure_label(curve: PruningCurve) -> str:
    """What a curve's values are, for its axis and caption: "acc_norm on arc_easy", "-loss on lima.json";
    "value" when its file does not say."""
    _, name = data_kind(curve.data)
    metric = curve.metric or "value"
    return f"{metric} on {name}" if name else metric

"""docs/python-api.md runs as written: its Python blocks, in order, as one script."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_the_python_api_page_runs_end_to_end(stories_path, tmp_path, monkeypatch):
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))
    assert code.count('M = "../shared/models/stories260K"') == 1
    code = code.replace('M = "../shared/models/stories260K"', f"M = {str(stories_path)!r}")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    runs = tmp_path / "runs" / "api"
    written_files = ("ila/importance.json", "ablation/importance.json", "ablation.png", "ila_heatmap.png")
    for written in (*written_files, "report.html"):
        assert (runs / written).is_file(), written
    assert (runs / "axolotl").exists()
    assert (ns["drops"].method, ns["phi"].method, ns["influence"].method) == (
        "ablation",
        "shapley-permutation",
        "block-influence",
    )
    assert ns["smaller"] is not ns["model"] and ns["lm"].n_blocks - 1 == len(ns["smaller"].model.layers)
    assert {c["label"] for c in ns["curves"]["curves"]} >= {"ablation", "ila"}
    assert ns["report"].trainable_params > 0 and type(ns["tuned"]).__name__.startswith("PeftModel")

"""The README's Python API block runs as written (on stories260K instead of the default model)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_api_block_runs(stories_path, tmp_path, monkeypatch):
    code = _api_block()
    assert 'load_model("default")' in code
    code = code.replace('load_model("default")', f"load_model({str(stories_path)!r})")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "api" / "ila" / "importance.json").is_file()
    assert namespace["drops"].method == "ablation" and namespace["phi"].method == "shapley-proximity"
    assert len(namespace["ila"].players) == len(namespace["lm"].linears)

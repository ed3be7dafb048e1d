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


def _quickstart_commands() -> tuple[dict[str, str], list[list[str]]]:
    """(shell variables, layerscope argv per command) of the README's quickstart block."""
    import shlex

    text = README.read_text()
    section = text[text.index("## Quickstart, per command") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    variables, commands = {}, []
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if re.fullmatch(r"\w+=\S+", line):
            name, value = line.split("=", 1)
            variables[name] = value
        elif line.startswith("layerscope "):
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            commands.append(shlex.split(line)[1:])
    return variables, commands


def test_readme_quickstart_lines_parse_and_name_existing_files():
    from layerscope.cli.app import COMMANDS, build_parser

    root = README.parent
    _, commands = _quickstart_commands()
    assert len(commands) >= 15
    written: set[str] = set()
    for argv in commands:
        assert argv[0] in COMMANDS, argv
        args = build_parser(only=argv[0]).parse_args(argv)  # unknown flags or bad values exit here
        out = getattr(args, "out", None)
        for key, value in vars(args).items():  # every input path is shipped, or written by an earlier line
            if key != "out" and isinstance(value, str) and value.startswith(("../", "runs/")):
                assert (root / value).exists() or any(value.startswith(w) for w in written), (argv, value)
        for value in getattr(args, "results", None) or getattr(args, "paths", None) or []:
            value = str(value).rstrip("/")
            made = any(value.startswith(w) or w.startswith(value + "/") for w in written)
            assert made or (root / value).exists(), (argv, value)
        if out:
            written.add(str(out))
        assert "--model" in argv or argv[0] in ("compare", "plot", "export", "report"), argv

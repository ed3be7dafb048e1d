import subprocess
import sys

import pytest

from layerscope.cli.app import COMMANDS, main


def test_help_lists_all_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: layerscope {name}" in capsys.readouterr().out


@pytest.mark.slow
def test_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "layerscope.cli", "models", "show", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0], r.stderr


# A typical command line per subcommand (its required arguments): parsing it, like --help, must
# not load the heavy libraries. A new command needs an entry here.
PARSE_EXAMPLES: dict[str, list[str]] = {
    "demo": [],
    "models": ["show", "--model", "some/model"],
    "eval": ["--task", "arc_easy"],
    "ila": ["--out", "runs/ila"],
    "compare": ["a.json", "b.json"],
    "ablate": ["--task", "arc_easy"],
    "shapley": ["--estimator", "permutation", "--budget", "10"],
    "similarity": [],
    "plot": ["importance.json"],
    "finetune": ["--data", "train.jsonl", "--importance", "importance.json", "--selection-seed", "3"],
    "export": ["importance.json", "--to", "peft"],
    "report": ["runs/"],
    "prune": ["--method", "last", "--remove", "2", "--out", "pruned"],
    "prune-curve": [
        "--k-max",
        "4",
        "--importance",
        "ila=runs/ila",
        "--no-greedy",
        "--cache-mb",
        "512",
        "--out",
        "curves",
    ],
}
HEAVY = ("torch", "transformers", "peft", "matplotlib")

_PARSE_AND_HELP = """
import contextlib, io, sys
from layerscope.cli import app
cmd, argv = sys.argv[1], sys.argv[2:]
args = app.build_parser(only=cmd).parse_args([cmd, *argv])
assert args.command == cmd, args
for help_argv in ([cmd, "--help"], ["--help"]):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        app.main(help_argv)
    assert "usage: " in out.getvalue(), out.getvalue()
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_every_command_has_a_parse_example():
    assert set(PARSE_EXAMPLES) == set(COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_parsing_and_help_load_no_heavy_library(name):
    """--help and argument parsing stay fast: no torch / transformers / peft / matplotlib import."""
    code = _PARSE_AND_HELP.format(heavy=HEAVY)
    r = subprocess.run(
        [sys.executable, "-c", code, name, *PARSE_EXAMPLES.get(name, [])], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"layerscope {name}: parsing or --help imported {r.stdout.strip()}"

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


def test_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "layerscope.cli", "models", "show", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0], r.stderr

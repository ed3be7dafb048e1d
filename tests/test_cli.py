import subprocess
import sys

from layerscope.cli import COMMANDS, main


def test_help_lists_all_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_each_subcommand_has_help():
    for name in COMMANDS:
        r = subprocess.run([sys.executable, "-m", "layerscope.cli", name, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr[-500:])
        assert "usage" in r.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "layerscope.cli", "models", "show", "--model", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "not found" in lines[0], r.stderr

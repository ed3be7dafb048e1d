"""One run per output folder (``cli/output_lock.py``): a second command given a held ``--out`` is refused
in one line before any work, however the path is spelt; the lock goes with its holder, killed or not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from layerscope.cli.app import main
from layerscope.cli.output_lock import _lock_path, output_held

pytest.importorskip("fcntl")


@pytest.fixture(autouse=True)
def own_locks(tmp_path, monkeypatch):
    from layerscope.cli import output_lock

    monkeypatch.setattr(output_lock, "lock_folder", lambda: tmp_path / "locks")


def test_a_held_output_folder_is_refused_before_any_work(tmp_path, stories_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    argv = ["ablate", "--model", str(stories_path), "--task", "arc_easy", "--limit", "4", "--no-progress"]
    with output_held("shapley", str(out)):
        for spelt in (str(out), "run", "./run/", f"{tmp_path}/x/../run"):
            assert main([*argv, "--out", spelt]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(
                f"layerscope ablate: error: {spelt}: another layerscope run (shapley, pid {os.getpid()}"
            )
            assert err.endswith("is writing there; wait for it to end, or give another --out")
        assert not out.exists()  # refused before the run made its folder
        assert main([*argv, "--out", str(tmp_path / "other")]) == 0  # another folder is free
        capsys.readouterr()
        assert main(["compare", str(tmp_path / "other"), str(tmp_path / "other"), "--out", str(out)]) == 0
    assert not _lock_path(out.resolve()).exists()  # released and removed
    assert main([*argv, "--out", str(out)]) == 0


def test_a_killed_holder_leaves_no_lock(tmp_path, capsys):
    out = tmp_path / "run"
    hold = "from pathlib import Path\nfrom layerscope.cli import output_lock\n"
    hold += f"output_lock.lock_folder = lambda: Path({str(tmp_path / 'locks')!r})\n"
    hold += f"with output_lock.output_held('ila', {str(out)!r}):\n"
    hold += "    print('held', flush=True)\n    import time; time.sleep(120)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["finetune", "--data", "demo", "--out", str(out)]) == 2
        assert f"another layerscope run (ila, pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _lock_path(out.resolve()).exists()  # left behind by the kill, but no longer held
    with output_held("ila", str(out)):
        pass


def test_an_unwritable_lock_folder_leaves_runs_unguarded(tmp_path, monkeypatch):
    from layerscope.cli import output_lock

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(output_lock, "lock_folder", lambda: tmp_path / "file" / "locks")  # under a file
    with output_held("ablate", str(tmp_path / "run")), output_held("ablate", str(tmp_path / "run")):
        pass


def test_every_locked_command_writes_to_an_out_option():
    from layerscope.cli.app import COMMANDS, build_parser
    from layerscope.cli.output_lock import LOCKED

    for command in LOCKED:
        assert command in COMMANDS
        sub = build_parser(only=command)._subparsers._group_actions[0].choices[command]
        assert any("--out" in a.option_strings for a in sub._actions), command


def test_one_lock_folder_whatever_the_working_folder_or_cache(tmp_path, monkeypatch):
    """Two shells with other working folders or other $LAYERSCOPE_CACHE settings meet at one lock."""
    from layerscope.cli import output_lock
    from layerscope.core.errors import ConfigError

    monkeypatch.undo()  # the real lock folder
    out = str(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAYERSCOPE_CACHE", "cache")
    with output_held("ablate", out):
        (tmp_path / "b").mkdir()
        monkeypatch.chdir(tmp_path / "b")
        monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "other"))
        with pytest.raises(ConfigError, match="another layerscope run"), output_held("shapley", out):
            pass
    assert output_lock.lock_folder().parent == Path(tempfile.gettempdir())

"""One run per output folder: while a command writes to ``--out``, a second layerscope command given the
same ``--out`` on this machine is refused in one line.

Two runs started into one folder (a second terminal, a script run twice) used to both finish "well":
their coalition logs interleaved, and a later ``--resume`` read the other run's values as its own; ILA
and finetune replaced each other's results. The lock is an ``flock`` on a file in the system's temporary
folder (``lock_folder``), named after the resolved ``--out``: taking it needs nothing of the output folder
(which may not exist yet, and must not be made for a run that is refused), and the kernel drops it with
the process, so a killed run leaves no lock behind. Under a launcher only the main process
takes it (the others write where it says). Where that folder cannot be written, or on a system without
``fcntl``, runs go unguarded, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from layerscope.core.errors import ConfigError

# the commands that write a run into --out over minutes or hours (compare, plot, report and export
# write one file through a temporary name in a second: a second writer only replaces it whole)
LOCKED = frozenset({"ablate", "shapley", "similarity", "prune", "prune-curve", "ila", "finetune", "demo"})


@contextlib.contextmanager
def output_held(command: str, out: str | None) -> Iterator[None]:
    """Hold ``out`` for ``command`` while the block runs; refuse if another run holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded
        fcntl = None
    if fcntl is None or command not in LOCKED or not out or out == "-":
        yield
        return
    target = Path(out).expanduser().resolve()
    path = _lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, fcntl)
    except OSError:  # a lock folder that cannot be written: the run goes on unguarded
        yield
        return
    if fd is None:
        raise ConfigError(f"{out}: {_holder(path)} is writing there; wait for it to end, or give another --out")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command} {time.strftime('%H:%M:%S')}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: a run waiting on this file looks again (see _lock)
        os.close(fd)


def lock_folder() -> Path:
    """Where the locks live: one folder per user in the system's temporary folder, the same for every
    shell and working directory (a cache folder can be set per shell, or relative)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"layerscope-locks-{uid}"


def _lock_path(target: Path) -> Path:
    return lock_folder() / (hashlib.sha256(str(target).encode()).hexdigest()[:24] + ".lock")


def _lock(path: Path, fcntl) -> int | None:
    """A descriptor holding ``path``'s lock, or None when another process holds it. A file unlinked by
    its last holder between our open and our lock is not the lock any more: open the path again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _holder(path: Path) -> str:
    """ "another layerscope run (ablate, pid 123, since 10:04:05)", from what the holder wrote."""
    with contextlib.suppress(OSError, ValueError):
        pid, command, since = path.read_text().split()[:3]
        return f"another layerscope run ({command}, pid {pid}, since {since})"
    return "another layerscope run"

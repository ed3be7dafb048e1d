"""Write outputs so that a killed run never leaves a complete-looking file behind.

Everything is written to a temporary file in the destination folder and renamed into
place only once complete (``os.replace`` is atomic on POSIX within one filesystem).

``tempfile`` makes its files ``-rw-------`` and its folders ``drwx------``; a result renamed
into place would keep that, unlike every other file the user writes. :func:`user_mode` gives
them the mode a plain ``open`` / ``mkdir`` would have (0o666 / 0o777 less the umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from layerscope.core.errors import LayerscopeError


class WriteError(LayerscopeError):
    """An output could not be written (disk full, read-only folder, a file where a folder should be)."""


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path: str | os.PathLike) -> None:
    """Give a file (or a folder and everything in it) the user's normal permissions, as ``umask`` says."""
    path = Path(path)
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            user_mode(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        # a full disk or a vanished folder: name the file we meant to write (a failed write() names none)
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; once the block succeeds, its files are flushed to
    disk, it gets the user's permissions and is renamed to ``path``, so a killed or failed write
    leaves no folder that looks complete. An empty folder at ``path`` is simply taken over. A
    non-empty one is replaced when ``replace`` (moved aside first, removed once the new one is in
    place, put back if that fails), else left alone and the write refused (it appeared meanwhile).
    A file at ``path`` is refused."""
    import shutil

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
    aside = tmp.with_name(f"{tmp.name}.replaced")
    try:
        yield tmp
        fsync_tree(tmp)
        user_mode(tmp)  # mkdtemp made it drwx------
        if path.exists() and not path.is_dir():
            raise WriteError(f"{path}: a file is in the way, not a folder")
        if path.is_dir() and any(path.iterdir()):
            if not replace:
                raise WriteError(f"{path}: appeared while it was being written; left it alone")
            os.replace(path, aside)
        try:
            os.replace(tmp, path)  # onto an empty folder too
        except OSError:
            if aside.exists() and not path.exists():
                os.replace(aside, path)  # the old one back: never no folder at all
            raise
        shutil.rmtree(aside, ignore_errors=True)  # only once the new one is in place
    except OSError as e:
        kept = f"; the earlier folder is kept at {aside}" if aside.exists() else ""
        raise WriteError(f"{path}: cannot write ({e.strerror or e}){kept}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file under ``folder`` to disk (before a rename makes the folder look complete)."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

"""Ctrl-C and SIGTERM end a run in one line, after it unwound (exit 130 / 143).

``StopOnSignals`` wraps a command's run (cli/app.py): ``finally`` blocks run, partial files are
removed and logs closed, so ``--resume`` continues where the stop left the run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: a run stops the same way
    (``finally`` blocks run, partial files are removed, logs are closed) and says so in one line."""


EXIT_CODES = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}  # 130, 143


class StopOnSignals:
    """While ``main`` runs, SIGINT and SIGTERM stop a run in one line (exit 130 / 143).

    The first signal raises KeyboardInterrupt (:class:`Terminated` for SIGTERM) in the main thread,
    which unwinds the run; later ones are ignored, so cleanup is not cut short by a second Ctrl-C or
    by a launcher passing the same signal on. Python runs a handler only between bytecodes: a
    process blocked in C (a collective waiting for a process that is gone) would never stop, so a
    watchdog thread, woken through the signal wakeup fd, says the line and exits ``GRACE`` seconds
    after the first signal if the main thread has not finished by then. A signal the process was
    started ignoring (a background job's SIGINT) stays ignored. Off the main thread, nothing is
    installed."""

    GRACE = 5.0

    def __init__(self, speaks: Callable[[], bool] = lambda: True) -> None:
        self.speaks = speaks  # whether this process says the line (under a launcher: the main one)
        self.prog = "layerscope"
        self.resumable = False
        self.unsaved: str | None = None  # with resumable: why a rerun has nothing to resume (said instead)
        self.first: int | None = None
        self._lock = threading.Lock()
        self._said = False
        self._done = threading.Event()
        self._saved: dict[int, object] = {}
        self._wakeup: tuple[int, int] | None = None
        self._old_fd = -1

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in EXIT_CODES:
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:
                self._saved[sig] = old
                signal.signal(sig, self._handler)
        if self._saved:
            r, w = os.pipe()
            os.set_blocking(w, False)
            self._wakeup = (r, w)
            self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(r,), name="layerscope-stop", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if not self._saved:
            return
        signal.set_wakeup_fd(self._old_fd)
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        if self._wakeup is not None:
            os.close(self._wakeup[1])  # the watchdog reads end-of-file and closes its end

    def _handler(self, signum: int, frame) -> None:
        if self.first is not None or self._done.is_set():
            return  # stopping already (or over): let the cleanup finish
        self.first = signum
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def _watch(self, r: int) -> None:
        try:
            while data := os.read(r, 64):
                signum = next((b for b in data if b in EXIT_CODES), None)
                if signum is None or self._done.is_set():
                    continue
                if not self._done.wait(self.GRACE):
                    self._say(signum)
                    os._exit(EXIT_CODES[signum])
        except OSError:
            pass
        finally:
            os.close(r)

    def said(self, e: KeyboardInterrupt) -> int:
        """Say that the run stopped (once) and return its exit code."""
        return self.said_signal(signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)

    def said_signal(self, signum: int) -> int:
        """Say that ``signum`` stopped the run (once) and return its exit code."""
        self._say(signum)
        return EXIT_CODES[signum]

    def _say(self, signum: int) -> None:
        with self._lock:
            if self._said:
                return
            self._said = True
        if not self.speaks():
            return  # a launcher stops every process: the main one says it
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        hint = ""
        if self.resumable:
            hint = f"; {self.unsaved}" if self.unsaved else "; rerun with --resume to continue"
        print(f"{self.prog}: {what}{hint}", file=sys.stderr, flush=True)

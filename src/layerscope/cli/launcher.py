"""What a command does and says under ``torchrun`` / ``accelerate launch``, told from the launcher's
environment alone (torch-free: cli/app.py decides this before a command imports torch).

Commands that share their work (cli/app.py ``SHARE_WORK``) run in every process; the others run on the
main process alone (:func:`main_process_runs_alone`). Either way ``note:`` lines come from the main
process only (:func:`notes_from_main_process_only`): every process meets the same facts.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def launched_processes() -> int:
    """How many processes torchrun / accelerate launch started (their WORLD_SIZE); 1 alone. Torch-free."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def launcher_main_process() -> bool:
    """False in a process other than rank 0 of a torchrun / accelerate launch (its RANK, which the
    launcher sets before any process group exists); True alone. Torch-free."""
    if launched_processes() == 1:
        return True
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


# what torchrun / accelerate launch tell each process about the launch (torch.distributed.run's list)
LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
)


def main_process_runs_alone(command: str) -> bool:
    """Under torchrun / accelerate launch, a command that does not share its work (prune, export, ...)
    runs on the main process as if launched alone: False in the other processes (they end at once),
    True in the main one and alone. The main process says so once, then forgets the launch (its
    RANK, WORLD_SIZE, ...): nothing it calls may wait for the processes that ended (the HF Trainer
    healing a pruned model would join a process group of two and wait there for ever)."""
    n = launched_processes()
    if n == 1:
        return True
    if not launcher_main_process():
        return False
    print(
        f"{NOTE}{command} runs in one process; the launcher's other {n - 1} process(es) have no share of it and ended",
        file=sys.stderr,
    )
    for name in LAUNCH_VARIABLES:
        os.environ.pop(name, None)
    return True


NOTE = "note: "


class _WithoutNotes:
    """A text stream that passes everything on except whole lines starting with ``note: ``."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._held = ""  # the start of a line that may yet turn out to be a note

    def write(self, text: str) -> int:
        held, out = self._held + text, []
        while held:
            if not (held.startswith(NOTE) or NOTE.startswith(held[: len(NOTE)])):
                end = held.find("\n")  # not a note: pass on to the end of this line (or all of it)
                cut = len(held) if end < 0 else end + 1
                out.append(held[:cut])
                held = held[cut:]
                continue
            end = held.find("\n")
            if end < 0:
                break  # a note, or the start of one: wait for the rest of the line
            held = held[end + 1 :]  # a whole note line: dropped
        self._held = held
        if out:
            self._stream.write("".join(out))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def notes_from_main_process_only() -> Iterator[None]:
    """Under torchrun / accelerate launch every process reads the same data and meets the same facts:
    the ``note:`` lines (printed from many modules) are said by the main process only, the other
    processes' are dropped from their stderr. Errors and everything else pass."""
    if launcher_main_process():
        yield
        return
    stream = sys.stderr
    sys.stderr = _WithoutNotes(stream)
    try:
        yield
    finally:
        if sys.stderr is not stream:
            sys.stderr = stream

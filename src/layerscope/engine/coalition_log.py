"""An append-only log of finished coalition values: what lets ``ablate`` and ``shapley`` resume.

One JSON object per line. The first line is a header naming the run (model weights, players,
evaluator and its batching, CPU threads; :func:`describe_run`): values from another run must never be mixed in,
so a header that differs is refused (all but the model's name, where both headers fingerprint the tokenizer:
the same model in another folder). Every later line is one coalition, keyed by its REMOVED-player
bitmask (bit ``p`` set: player ``p`` removed; the full model is ``0``), and the
evaluator's full result. Lines are flushed and fsync'ed as they are written, so a run killed at
any point leaves a log whose every complete line is a finished value; a torn last line (killed
mid-write) is cut off when the log is reopened. Any other line that is not a record (not JSON, or
bytes that are not UTF-8 text) makes the log corrupt: refused in one line (``DataError``).

Floats round-trip exactly through JSON (Python writes ``repr``), so a resumed run reads back
bit-identical values and the estimators, which are deterministic given their seed, retrace the
same path and finish with bit-identical scores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerscope.core.atomic import WriteError
from layerscope.core.checkpoint import threads_phrase
from layerscope.core.errors import ConfigError, DataError
from layerscope.scoring import EvalResult

if TYPE_CHECKING:
    import torch.nn as nn

FORMAT = "layerscope-coalition-log"
VERSION = 1
LOG_NAME = "coalitions.jsonl"  # the log's file name in a command's output folder
THREADS = "threads"  # the header field of torch's CPU thread count (runs computing on the CPU)
TOKENIZER = "tokenizer"  # the header field of the tokenizer's fingerprint
MODEL = "model"  # the header field of the model's name


def _encode(removed_mask: int, r: EvalResult) -> str:
    return json.dumps(
        {
            "removed": format(removed_mask, "x"),
            "value": r.value,
            "metrics": r.metrics,
            "predictions": r.predictions,
            "n_items": r.n_items,
            "loglikelihoods": r.loglikelihoods,
        },
        separators=(",", ":"),
    )


def _decode(obj: dict[str, Any]) -> tuple[int, EvalResult]:
    return int(obj["removed"], 16), EvalResult(
        value=obj["value"],
        metrics=obj["metrics"],
        predictions=obj["predictions"],
        n_items=obj["n_items"],
        loglikelihoods=obj["loglikelihoods"],
    )


class CoalitionLog:
    """``path``: the log file; ``run``: a JSON-able description of the run (the header).

    ``resume=True`` reads the values an earlier run with the same header finished (refusing a
    different header); ``resume=False`` starts a new log, replacing any old one. ``read_only``
    (the non-main processes of a multi-process run) reads the log and never writes it.
    ``results`` holds the finished values by removed-player mask.
    """

    def __init__(self, path: str | Path, run: dict[str, Any], resume: bool = False, read_only: bool = False):
        self.path = Path(path)
        self.run = json.loads(json.dumps(run))  # normalise (tuples -> lists) so headers compare equal
        self.results: dict[int, EvalResult] = {}  # by removed-player mask
        self.renamed_from: str | None = None  # the model's name in a resumed log, where it differs
        self.read_from: list[Path] = []  # the logs the resumed values came from (several: one per process)
        self.read_only = read_only
        self._file = None
        if read_only:
            if resume and self.path.exists():
                self._read(truncate=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and self._read():
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            self._file = open(self.path, "w", encoding="utf-8")
            self._write_line(json.dumps({"format": FORMAT, "version": VERSION, "run": self.run}))

    @property
    def n_resumed(self) -> int:
        return len(self.results)

    def _read(self, truncate: bool = True) -> bool:
        """Load the finished values; False when not even the header was written (start afresh)."""
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good_end = 0  # byte offset just past the last complete, parseable line
        offset = 0
        for k, line in enumerate(lines):
            end = offset + len(line) + 1
            complete = end <= len(raw)  # the last piece has no newline after it: torn or empty
            if line.strip():
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):  # not JSON, or not even UTF-8 text
                    if complete:
                        raise DataError(
                            f"{self.path}: line {k + 1} is not JSON; the coalition log is corrupt "
                            f"(delete it to start over)"
                        ) from None
                    break
                if not complete:
                    break  # parseable but unterminated: the write may not have finished, recompute it
                if k == 0:
                    self._check_header(obj)
                else:
                    try:
                        removed_mask, result = _decode(obj)
                    except (KeyError, TypeError, ValueError, AttributeError):
                        raise DataError(
                            f"{self.path}: line {k + 1} is not a coalition record; the log is corrupt "
                            f"(delete it to start over)"
                        ) from None
                    self.results[removed_mask] = result
            if complete:
                good_end = end
            offset = end
        if good_end == 0:
            return False
        if self.results:
            self.read_from.append(self.path)
        if truncate and good_end < len(raw):
            with open(self.path, "r+b") as f:  # drop the torn tail so appends start on a fresh line
                f.truncate(good_end)
        return True

    def _check_header(self, obj: Any) -> None:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
            raise DataError(f"{self.path}: not a version-{VERSION} layerscope coalition log")
        old = obj.get("run")
        run = self.run
        if isinstance(old, dict) and THREADS not in old:  # written before threads were recorded: not held to them
            run = {k: v for k, v in run.items() if k != THREADS}
        if isinstance(old, dict) and TOKENIZER not in old:  # written before the tokenizer was fingerprinted
            run = {k: v for k, v in run.items() if k != TOKENIZER}
        elif isinstance(old, dict) and TOKENIZER in run and old.get(MODEL) != run.get(MODEL):
            # weights and tokenizer fingerprinted in both: the name (a folder) may change, the model may not
            self.renamed_from = old.get(MODEL)
            run = {**run, MODEL: old.get(MODEL)}
        if old != run:
            keys = sorted(k for k in set(old or {}) | set(run) if (old or {}).get(k) != run.get(k))
            hint = ""
            if keys == [THREADS]:  # the values alone would differ (float sums in another order): same count again
                then, now = threads_phrase(old[THREADS]), threads_phrase(run.get(THREADS))
                hint = f"it was computed with {then}, this run has {now}: resume with --threads {old[THREADS]}, or "
            raise ConfigError(
                f"{self.path} belongs to a different run (differs in: {', '.join(keys)}); "
                f"{hint}use another --out or drop --resume"
            )

    def _write_line(self, text: str) -> None:
        try:
            self._file.write(text + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:  # disk full: a torn line is dropped on --resume, so the log stays usable
            raise WriteError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def append(self, removed_mask: int, result: EvalResult) -> None:
        """Log one finished coalition, keyed by its removed-player mask."""
        self.results[removed_mask] = result
        if not self.read_only:
            self._write_line(_encode(removed_mask, result))

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    def __enter__(self) -> CoalitionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def coalition_log_path(out_dir: str | Path) -> Path:
    """Where a command writing to ``out_dir`` keeps its coalition log."""
    return Path(out_dir) / LOG_NAME


def describe_run(
    model: nn.Module,
    model_name: str,
    players: list[str],
    *,
    granularity: str,
    data: dict[str, Any],
    batch_size: int,
    max_length: int,
    uncached: bool,
    coalition_batch: int = 1,
    tokenizer=None,
) -> dict[str, Any]:
    """The log header of a run: everything a coalition's value depends on.

    ``data``: the evaluator's description (task or SFT file, fingerprint, ...). ``coalition_batch``
    > 1 is recorded (stacked coalitions agree with one at a time only within the self-check's
    tolerance, so a resumed run must stack as the logged one did); 1 is left out, as in logs
    written before stacking existed.

    ``device`` is where the model computes (its input embedding's execution device,
    ``core/devices.input_device``), not where its first weight lies: accelerate holds an offloaded
    weight on ``meta`` between calls and computes with it on the execution device, with values
    identical to the model in memory, so a log resumes across in-memory and offloaded placements on
    the same device (and a log of a CPU run written before this, which said "cpu", still matches).

    A model that computes on the CPU (all or some of its weights, in memory or offloaded) also records
    torch's CPU thread count (``--threads``): the order of float sums in a matrix product depends on it, so
    values computed with another count differ in their last digits (~1e-9) and a resumed run would
    mix them. A log written before the count was recorded is not held to it.

    ``tokenizer``: recorded as its fingerprint; with it the model's name no longer has to match
    (the same weights and tokenizer moved to another folder resume), see :meth:`CoalitionLog._check_header`.
    """
    import torch

    from layerscope.core.devices import compute_devices, input_device
    from layerscope.core.models import exact_weights_fingerprint, tokenizer_fingerprint

    p = next(iter(model.parameters()))
    on_cpu = any(d.type == "cpu" for d in compute_devices(model))
    return {
        "model": model_name,
        "weights": exact_weights_fingerprint(model),  # the logged values hold to the last bit
        **({TOKENIZER: tokenizer_fingerprint(tokenizer)} if tokenizer is not None else {}),
        "dtype": str(p.dtype),
        "device": input_device(model).type,
        "granularity": granularity,
        "players": players,
        "data": data,
        "batch_size": batch_size,
        "max_length": max_length,
        "engine": "uncached" if uncached else "cached",
        **({"coalition_batch": coalition_batch} if coalition_batch > 1 else {}),
        **({THREADS: torch.get_num_threads()} if on_cpu else {}),
    }


def rank_log_path(out_dir: str | Path, rank: int) -> Path:
    """The coalition log process ``rank`` (> 0) writes when coalitions are shared among processes."""
    return Path(out_dir) / f"{Path(LOG_NAME).stem}.rank{rank}.jsonl"


def _rank_logs(out_dir: str | Path) -> list[Path]:
    return sorted(Path(out_dir).glob(f"{Path(LOG_NAME).stem}.rank*.jsonl"))


def open_coalition_log(
    out_dir: str | Path, run: dict[str, Any], resume: bool, per_process: bool = False
) -> CoalitionLog:
    """The coalition log under ``out_dir`` for this process.

    The main process writes ``coalitions.jsonl``. In a multi-process run the others only read it,
    unless ``per_process`` (coalitions shared among processes: ``engine/sharding.py``): then
    process ``r`` logs the coalitions it computes alone to ``coalitions.rank<r>.jsonl``. With
    ``resume`` every process reads every one of these files (whatever number of processes wrote
    them), so all start from the same values; a fresh start removes the old per-process files."""
    from layerscope.core.distributed import is_main_process, rank, together

    path = coalition_log_path(out_dir)
    # the main process reads (and trims) the log first; the others read it before anyone appends,
    # so every process starts from the same memo and they all evaluate the same coalitions together.
    # Each step may fail on one process alone (a log of another run, a corrupt file, an unwritable
    # folder); ``together`` ends it with one collective, so no process is left waiting for one that is gone.
    log: CoalitionLog | None = None
    try:
        with together("opening the coalition log"):
            if is_main_process():
                log = CoalitionLog(path, run, resume=resume)
                if not resume:
                    for old in _rank_logs(out_dir):
                        old.unlink()
        with together("opening the coalition log"):
            if log is None:
                if per_process:
                    log = CoalitionLog(rank_log_path(out_dir, rank()), run, resume=resume)
                else:
                    log = CoalitionLog(path, run, resume=resume, read_only=True)
        with together("reading the coalition logs"):  # nobody appends before every process has read
            if resume:  # the values the other files hold (each file's owner trimmed its own torn tail above)
                for other in [path, *_rank_logs(out_dir)]:
                    if other != log.path and other.exists():
                        values = CoalitionLog(other, run, resume=True, read_only=True).results
                        for m, r in values.items():
                            log.results.setdefault(m, r)
                        if values:
                            log.read_from.append(other)
    except BaseException:
        if log is not None:
            log.close()
        raise
    return log

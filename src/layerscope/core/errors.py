"""One error type for problems a user can fix (bad paths, bad data, bad options).

The CLI turns a ``LayerscopeError`` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

import numbers


class LayerscopeError(Exception):
    """A user-facing problem: the message must name the thing that is wrong."""

    exit_code = 2


class DataError(LayerscopeError):
    """Missing, unreadable or malformed dataset / evaluation file."""


class ModelError(LayerscopeError):
    """A model that cannot be loaded, or is not a decoder-only causal LM."""


class ConfigError(LayerscopeError):
    """An option out of range, or results that cannot be combined."""


class TrainingError(LayerscopeError):
    """Training diverged (NaN/inf loss) or ran out of memory."""


def first_line(text: str, limit: int = 300) -> str:
    """The first line of a message, at most ``limit`` characters: what a one-line error quotes."""
    lines = str(text).strip().splitlines()
    return lines[0][:limit] if lines else ""


def error_line(e: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """An exception's first line for a one-line error; its type's name alone when it has no message
    (``str(e).splitlines()[0]`` would raise on those)."""
    line = first_line(str(e), limit)
    if not line:
        return type(e).__name__
    return f"{type(e).__name__}: {line}" if with_type else line


def option_label(field: str, flags: dict[str, str], owner: str) -> str:
    """How an error names a config field, for a CLI user and a Python caller alike: ``--rank (r)`` where a
    command-line option sets it, ``ILA option warmup_ratio`` where none does (``owner`` names the config)."""
    return f"{flags[field]} ({field})" if field in flags else f"{owner} option {field}"


def percent_hint(value: object, below_one: bool = False) -> str:
    """``; did you mean 0.3?`` for a fraction given as a percentage (``30``, a number in [5, 100]) where a
    fraction in (0, 1] is asked for; ``below_one``: one in (0, 1), which 100 does not become. Empty for any
    other value: 1.5 or 2 is as likely a slip as 1.5% or 2%."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 5 <= value <= 100:
        return ""
    if below_one and value >= 100:
        return ""
    return f"; did you mean {value / 100:g}?"


def check_count(x: object, name: str, minimum: int) -> None:
    """Refuse ``x`` unless it is an integer (Python's or NumPy's, both ``numbers.Integral``; no bool, float
    or string) of at least ``minimum``: a batch size, a length, a number of items."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} (got {x!r})")

"""One error type for problems a user can fix (bad paths, bad data, bad options).

The CLI turns a ``LayerscopeError`` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


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

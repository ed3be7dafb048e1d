"""The engine's defaults, in a module that imports nothing heavy, so the CLI can show them in ``--help``."""

DEFAULT_CACHE_MB = 2048.0  # memory for cached hidden states (MiB); the block arguments come on top

"""The ``layerscope`` command line: one module per subcommand, each ``add_arguments(parser)`` and
``run(args) -> int``, parsing options and calling the library."""

from layerscope.cli.app import main

__all__ = ["main"]

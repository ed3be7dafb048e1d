"""The named choices of the training room: selection modes and their default fractions, export formats.

They live apart from the code that uses them (``selection``, ``export``), with no torch, numpy or
yaml import, so that the command line can offer them in ``--help`` and argument parsing without
loading those libraries (docs/performance.md, "CLI start-up").
"""

from __future__ import annotations

MODES = ("all", "freeze-bottom", "top", "random", "random-matched")
DEFAULT_FRACTION = {"all": 1.0, "freeze-bottom": 0.25, "top": 0.3, "random": 0.3, "random-matched": 0.3}
FORMATS = ("peft", "axolotl", "llama-factory")

"""Scoring a model with players (layers) removed: the removal definition, the hooks it is built
from, and the coalition engine that evaluates many removals fast."""

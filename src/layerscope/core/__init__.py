"""What every room stands on: loading a model, its layer map (the players), SFT data and evaluation
tasks, the one result type (``LayerImportance``), errors, atomic writes, checkpoints and the
multi-process helpers."""

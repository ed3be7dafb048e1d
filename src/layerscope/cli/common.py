"""Arguments shared by several subcommands, so they are spelled the same everywhere.

Nothing here imports torch, transformers or numpy at module level: every command's ``--help`` and
argument parsing go through this module, and must stay fast (docs/performance.md, "CLI start-up").
"""

from __future__ import annotations

import argparse
import random


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="default", help="hub id, local HF folder, .gguf file, or 'default' (SmolLM2-135M-Instruct)"
    )
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model's own Python code from the hub (off unless asked)",
    )


def add_seed_arg(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def load_from_args(args):
    from layerscope.core.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def add_selection_args(p: argparse.ArgumentParser) -> None:
    """How a ranking becomes a module selection: the same options for ``finetune`` and ``export``."""
    from layerscope.training.choices import DEFAULT_FRACTION, MODES
    from layerscope.training.config import METHODS, FinetuneConfig

    d = FinetuneConfig()
    p.add_argument(
        "--mode",
        choices=MODES,
        default="top",
        help="all: every linear module; freeze-bottom: all but the least important F; top: only the most "
        "important F; random: F at random under --seed (the control); random-matched: as random, with "
        "as many modules of each type as top picks (the same parameter count). Default top",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=None,
        help=f"F in (0, 1], of the ranking's players (default {DEFAULT_FRACTION['freeze-bottom']:g} for "
        f"freeze-bottom, {DEFAULT_FRACTION['top']:g} otherwise)",
    )
    p.add_argument(
        "--min-block",
        type=int,
        default=None,
        metavar="B",
        help="train nothing below block B: the backward pass then stops at B, which is where "
        "selective tuning saves time (F still counts the whole ranking; default no cut)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=d.method,
        help=f"LoRA adapters on the selected modules, or full fine-tuning of their weights (default {d.method})",
    )
    p.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# tiny models: one thread is faster than two (thread start-up dominates) and steadier on a shared CPU
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def stories_path() -> Path:
    if not (STORIES / "config.json").exists():
        pytest.skip("../shared/models/stories260K not present")
    return STORIES


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared not present")
    return SHARED


@pytest.fixture(scope="module")
def tok(stories_path):
    """stories260K's tokenizer (512 tokens), for tiny random models and evaluators."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stories_path)


@pytest.fixture(scope="module")
def stories(stories_path):
    """stories260K model (eval mode) and tokenizer, loaded once per test module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stories_path)
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture
def free_port() -> int:
    """A port free now, for a launcher that would otherwise take its fixed default (accelerate: 29500),
    which two test workers launching at once would both ask for."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

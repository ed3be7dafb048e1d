"""Whether the Hugging Face hub can be reached, asked once before anything downloads.

Offline, the hub clients retry each request with backoff (about half a minute) before failing; a
quick TCP check first lets a missing model or dataset be refused at once, and lets what is already
in the local caches load without touching the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False when HF_HUB_OFFLINE is set)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_datasets() -> Iterator[None]:
    """``datasets`` in offline mode for the block: it reads its cache and fails at once on a miss."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved

"""SFT / alignment data: read common instruction formats, tokenize with response-only labels.

Flow, one module per step: a local JSON / JSON Lines file or a hub dataset id (``sources``) -> raw
records, each normalised to chat turns ``[{"role", "content"}]`` (``formats``: alpaca, messages,
sharegpt, prompt_completion, text) -> rendered with the tokenizer's chat template or the plain
template (``templates``) -> ``input_ids`` + ``labels`` where only the assistant replies (and their
end token) are supervised (``labels``) -> :class:`SFTData` (``loading.load_sft``), then split and
padded into batches (``examples``).
"""

from __future__ import annotations

from layerscope.core.data.examples import IGNORE_INDEX, SFTData, SFTExample, collate, split_heldout
from layerscope.core.data.formats import EXPECTED, FORMAT_ALIASES, FORMATS, ROLE_MAP, detect_format, load_records
from layerscope.core.data.loading import load_sft
from layerscope.core.data.sources import DEMO_DATA
from layerscope.core.data.templates import PLAIN_RESPONSE, PLAIN_USER

__all__ = [
    "DEMO_DATA",
    "EXPECTED",
    "FORMATS",
    "FORMAT_ALIASES",
    "IGNORE_INDEX",
    "PLAIN_RESPONSE",
    "PLAIN_USER",
    "ROLE_MAP",
    "SFTData",
    "SFTExample",
    "collate",
    "detect_format",
    "load_records",
    "load_sft",
    "split_heldout",
]

"""SFT / alignment data: read common instruction formats, tokenize with response-only labels.

Flow, one module per step: a local JSON / JSON Lines file or a hub dataset id (``sources``) -> raw
records (``.gz`` read transparently, other binary named: ``decoding``), each normalised to chat
turns ``[{"role", "content"}]`` (``formats``: alpaca, messages, sharegpt, prompt_completion,
preference (the chosen side: ``preference``), text) -> rendered with the tokenizer's chat template or the plain
template (``templates``) -> ``input_ids`` + ``labels`` where only the assistant replies (and their
end token) are supervised (``labels``; a record's own spelling of a special token, ``<s>`` or ``<|im_end|>``,
is read as text: ``special_text``) -> :class:`SFTData` (``loading.load_sft``), then split and
padded into batches (``examples``).
"""

from __future__ import annotations

from layerscope.core.data.examples import IGNORE_INDEX, SFTData, SFTExample, collate, split_heldout
from layerscope.core.data.formats import EXPECTED, FORMAT_ALIASES, FORMATS, ROLE_MAP, detect_format, load_records
from layerscope.core.data.loading import DEFAULT_MAX_LENGTH, load_sft
from layerscope.core.data.sources import DEMO_DATA, SFTRecordError
from layerscope.core.data.templates import PLAIN_RESPONSE, PLAIN_USER

# The --append-eos / --no-append-eos help, one text for every command that loads SFT data.
APPEND_EOS_HELP = (
    "end each text record (format text) with the tokenizer's eos token and score that token too, so where a text "
    "ends counts (default on; --no-append-eos: the texts alone). Records with a prompt and a reply always end "
    "the reply with their template's end token"
)

__all__ = [
    "APPEND_EOS_HELP",
    "DEFAULT_MAX_LENGTH",
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
    "SFTRecordError",
    "collate",
    "detect_format",
    "load_records",
    "load_sft",
    "split_heldout",
]

"""``load_sft``: read a source, normalise its records, tokenize them with response-only labels."""

from __future__ import annotations

import random

from layerscope.core.data.examples import IGNORE_INDEX, SFTData, SFTExample
from layerscope.core.data.formats import check_limit, records_to_conversations
from layerscope.core.data.labels import ResponseTokenizer
from layerscope.core.data.sources import read_source, sha256_hex
from layerscope.core.errors import ConfigError, DataError

TEMPLATES = ("auto", "chat", "plain")


def resolve_template(tokenizer, template: str) -> str:
    """The template to use: "auto" becomes "chat" when the tokenizer has one, else "plain"."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}; use auto, chat or plain")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ConfigError("template='chat' but the tokenizer has no chat template")
    return "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"


def _read_conversations(
    source: str, format: str, limit: int | None, shuffle_seed: int | None
) -> tuple[list[list[dict]], str, str, str]:
    """(conversations, format, sha256 of the source, resolved source name), shuffled and cut to ``limit``."""
    # a shuffled subset must be drawn from every record, so the hub reader gets no limit then
    records, sha, where = read_source(source, None if shuffle_seed is not None else limit)
    if shuffle_seed is not None:
        records = list(records)
        random.Random(shuffle_seed).shuffle(records)
    if limit is not None:
        records = records[:limit]
    convs, fmt = records_to_conversations(records, format, where)
    return convs, fmt, sha, where


def _tokenize_all(
    convs: list[list[dict]], state: ResponseTokenizer, raw_text: bool, max_length: int, where: str
) -> tuple[list[SFTExample], dict[str, int]]:
    """Examples cut to ``max_length``; those left without a supervised token are dropped and counted."""
    examples: list[SFTExample] = []
    counts = {"truncated": 0, "dropped_no_response": 0, "tokens": 0, "response_tokens": 0}
    for i, conv in enumerate(convs):
        ids, labels = state.example(conv, raw_text, where, i)
        if len(ids) > max_length:
            counts["truncated"] += 1
            ids, labels = ids[:max_length], labels[:max_length]
        n_sup = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_sup == 0:
            counts["dropped_no_response"] += 1
            continue
        examples.append(SFTExample(input_ids=ids, labels=labels))
        counts["tokens"] += len(ids)
        counts["response_tokens"] += n_sup
    return examples, counts


def load_sft(
    source: str,
    tokenizer,
    max_length: int = 512,
    format: str = "auto",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    *,
    template: str = "auto",
) -> SFTData:
    """Load ``source`` and tokenize it for SFT with labels on the assistant replies only.

    ``shuffle_seed`` shuffles the records before ``limit`` takes the first N, so a subset is
    reproducible. ``template``: "auto" (the tokenizer's chat template if it has one, else
    the plain template), "chat" or "plain". Sequences longer than ``max_length`` keep their
    start; examples left with no supervised token are dropped and counted in ``stats``.
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")
    check_limit(limit)
    template = resolve_template(tokenizer, template)
    convs, fmt, sha, where = _read_conversations(source, format, limit, shuffle_seed)
    state = ResponseTokenizer(tokenizer, template)
    examples, counts = _tokenize_all(convs, state, fmt == "text", max_length, where)
    stats = {
        "records": len(convs),
        "kept": len(examples),
        **counts,
        "max_length": max_length,
        "template": "raw" if fmt == "text" else template,
        "limit": limit,
        "shuffle_seed": shuffle_seed,
        "file_sha256": sha[:16],
        "retokenized_boundaries": state.retokenized,
        "located_turns": state.located,
    }
    if not examples:
        raise DataError(
            f"{where}: no examples left with response tokens ({len(convs)} records, {counts['truncated']} truncated "
            f"at max_length={max_length}, {counts['dropped_no_response']} without response tokens); raise max_length?"
        )
    fingerprint = sha[:16]
    if limit is not None or shuffle_seed is not None:
        fingerprint = sha256_hex(f"{sha}|limit={limit}|shuffle={shuffle_seed}".encode())[:16]
    return SFTData(examples=examples, stats=stats, source=where, format=fmt, fingerprint=fingerprint)

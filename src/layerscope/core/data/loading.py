"""``load_sft``: read a source, normalise its records, tokenize them with response-only labels.

What happened to the records that a user would not otherwise see (examples dropped for having
no response token within ``max_length``, the side of preference pairs used) is said on stderr
as ``note:`` lines and kept in ``stats["notes"]``.
"""

from __future__ import annotations

import random
import sys

from layerscope.core.data.examples import IGNORE_INDEX, SFTData, SFTExample
from layerscope.core.data.formats import check_limit, records_to_conversations
from layerscope.core.data.labels import ResponseTokenizer
from layerscope.core.data.preference import SIDE
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
    """Examples cut to ``max_length``; those left without a supervised token are dropped and counted.

    ``dropped_no_response`` counts both reasons: ``dropped_past_max_length`` (the reply starts
    after ``max_length`` tokens) and ``dropped_empty_reply`` (the record has no reply text).
    """
    examples: list[SFTExample] = []
    counts = {
        "truncated": 0,
        "dropped_no_response": 0,
        "dropped_past_max_length": 0,
        "dropped_empty_reply": 0,
        "tokens": 0,
        "response_tokens": 0,
    }
    for i, conv in enumerate(convs):
        ids, labels = state.example(conv, raw_text, where, i)
        had_reply = any(x != IGNORE_INDEX for x in labels)
        if len(ids) > max_length:
            counts["truncated"] += 1
            ids, labels = ids[:max_length], labels[:max_length]
        n_sup = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_sup == 0:
            counts["dropped_no_response"] += 1
            counts["dropped_past_max_length" if had_reply else "dropped_empty_reply"] += 1
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
    append_eos: bool = True,
    quiet: bool = False,
    length_flag: str = "--max-length",
) -> SFTData:
    """Load ``source`` and tokenize it for SFT with labels on the assistant replies only.

    ``shuffle_seed`` shuffles the records before ``limit`` takes the first N, so a subset is
    reproducible. ``template``: "auto" (the tokenizer's chat template if it has one, else
    the plain template), "chat" or "plain". Sequences longer than ``max_length`` keep their
    start; examples left with no supervised token are dropped, counted in ``stats`` and (unless
    ``quiet``) said in a ``note:`` line on stderr. ``append_eos`` (``text`` records only) appends
    the eos token to each text and scores it; chat and plain templates always end a reply with
    their end token. Preference pairs load their chosen side (``stats["side"]``). ``length_flag``: the
    option that sets ``max_length`` where the messages are read (``--seq-len`` in ila, finetune, demo).
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")
    check_limit(limit)
    template = resolve_template(tokenizer, template)
    convs, fmt, sha, where = _read_conversations(source, format, limit, shuffle_seed)
    state = ResponseTokenizer(tokenizer, template, append_eos=append_eos)
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
        **_format_stats(fmt, state),
    }
    if not examples:
        raise DataError(
            f"{where}: no examples left with response tokens ({len(convs)} records, {counts['truncated']} truncated "
            f"at max_length={max_length}, {counts['dropped_no_response']} without response tokens); "
            f"raise {length_flag}?"
        )
    stats["notes"] = _notes(stats, fmt, where, length_flag)
    if not quiet:
        for note in stats["notes"]:
            print(f"note: {note}", file=sys.stderr)
    fingerprint = sha[:16]
    if limit is not None or shuffle_seed is not None or (fmt == "text" and not append_eos):
        eos = "" if fmt != "text" or append_eos else "|no-eos"
        fingerprint = sha256_hex(f"{sha}|limit={limit}|shuffle={shuffle_seed}{eos}".encode())[:16]
    return SFTData(examples=examples, stats=stats, source=where, format=fmt, fingerprint=fingerprint)


def _format_stats(fmt: str, state: ResponseTokenizer) -> dict:
    """How labels were found, and what the format adds: eos on raw text, the side of preference pairs."""
    stats = {"retokenized_boundaries": state.retokenized, "located_turns": state.located}
    if fmt == "text":
        stats["append_eos"] = state.append_eos and bool(state.eos_text)
    if fmt == "preference":
        stats["side"] = SIDE
    return stats


def _notes(stats: dict, fmt: str, where: str, length_flag: str = "--max-length") -> list[str]:
    """What the loaded data leaves out, in words (empty when nothing is left out)."""
    notes = []
    if fmt == "preference":
        notes.append(f"{where}: preference pairs: using the {SIDE!r} replies (the 'rejected' ones are not used)")
    n, past, empty = stats["records"], stats["dropped_past_max_length"], stats["dropped_empty_reply"]
    if past:
        notes.append(
            f"{where}: {past} of {n} examples dropped: no response token within max_length "
            f"{stats['max_length']} (the prompt fills it); a longer {length_flag} keeps them"
        )
    if empty:
        notes.append(f"{where}: {empty} of {n} examples dropped: empty reply")
    return notes

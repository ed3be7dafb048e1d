"""``load_sft``: read a source, normalise its records, tokenize them with response-only labels.

What happened to the records that a user would not otherwise see (examples dropped for having
no response token within ``max_length``, replies cut at it, the side of preference pairs used) is
said on stderr as ``note:`` lines, naming the first record concerned, and kept in ``stats["notes"]``.
"""

from __future__ import annotations

import random
import re
import sys

from layerscope.core.data.examples import IGNORE_INDEX, SFTData, SFTExample
from layerscope.core.data.formats import check_limit, detect_format, file_format, records_to_conversations
from layerscope.core.data.labels import ResponseTokenizer
from layerscope.core.data.preference import SIDE
from layerscope.core.data.sources import SFTRecordError, read_source, sha256_hex
from layerscope.core.errors import ConfigError, DataError

# Tokens kept per example or sequence: every command's --max-length default (the demo's short examples
# aside) and the library's.
DEFAULT_MAX_LENGTH = 512

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
    source: str | list, format: str, limit: int | None, shuffle_seed: int | None
) -> tuple[list[list[dict]], list[str], str, str, str, int | None, bool]:
    """(conversations, each one's place in the file, format, sha256 of the source, resolved source name,
    the number of records a shuffled subset was drawn from: None without ``shuffle_seed``, whether ``format``
    forced a format other than the one auto detects), shuffled and cut to ``limit``."""
    # a shuffled subset must be drawn from every record, so the hub reader gets no limit then
    records, sha, where, places = read_source(source, None if shuffle_seed is not None else limit)
    forced = format != "auto"
    format = file_format(records, format, where, places)
    # a forced format is another reading of the file only where auto would read it otherwise (detection looks
    # at the first record, in memory already): forcing the detected one gives the same examples
    forced = forced and format != _detected_format(records, where)
    drawn_from = len(records) if shuffle_seed is not None else None
    # each record keeps its place in the file, so an error names it as the user sees it there
    placed = list(zip(records, places))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(placed)
    placed = placed[:limit]
    records, places = [r for r, _ in placed], [p for _, p in placed]
    convs, fmt = records_to_conversations(records, format, where, places)
    return convs, places, fmt, sha, where, drawn_from, forced


def _detected_format(records: list, where: str) -> str | None:
    """The format auto reads ``records`` in (their first record's, as :func:`file_format` detects it); None where
    it detects none (records of no known format, read only in a forced one)."""
    try:
        return detect_format(records[0], where) if records else None
    except DataError:
        return None


def _tokenize_all(
    convs: list[list[dict]], places: list[str], state: ResponseTokenizer, raw_text: bool, max_length: int, where: str
) -> tuple[list[SFTExample], dict[str, int], dict[str, str]]:
    """Examples cut to ``max_length``; those left without a supervised token are dropped and counted.

    ``dropped_no_response`` counts every reason: ``dropped_past_max_length`` (the reply starts
    after ``max_length`` tokens), ``dropped_empty_reply`` (the reply has no text),
    ``dropped_untrained_reply`` (every reply with text is marked not to learn) and
    ``dropped_no_assistant_turn``. ``reply_truncated`` counts kept examples whose reply lost its
    end to the cut. The third value maps each of those counts to the first record it counted.
    """
    examples: list[SFTExample] = []
    counts = dict.fromkeys(
        (
            "truncated",
            "reply_truncated",
            "dropped_no_response",
            "dropped_past_max_length",
            "dropped_empty_reply",
            "dropped_untrained_reply",
            "dropped_no_assistant_turn",
            "tokens",
            "response_tokens",
        ),
        0,
    )
    first: dict[str, str] = {}
    for conv, place in zip(convs, places):
        if not raw_text and not any(m["role"] == "assistant" for m in conv):
            # dropped before rendering: a chat template may refuse an empty conversation outright, and
            # the file's fate must not depend on whether the model has one (the plain template drops it)
            counts["dropped_no_assistant_turn"] += 1
            counts["dropped_no_response"] += 1
            first["dropped_no_assistant_turn"] = _earlier(first.get("dropped_no_assistant_turn"), place)
            continue
        unread = state.special_text_unread
        ids, labels = state.example(conv, raw_text, f"{where}: {place}")
        if state.special_text_unread > unread:
            first["special_text_unread"] = _earlier(first.get("special_text_unread"), place)
        had_reply = any(x != IGNORE_INDEX for x in labels)
        reply_cut = any(x != IGNORE_INDEX for x in labels[max_length:])
        if len(ids) > max_length:
            counts["truncated"] += 1
            ids, labels = ids[:max_length], labels[:max_length]
        n_sup = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_sup == 0 or reply_cut:
            reason = "reply_truncated" if n_sup else "dropped_past_max_length" if had_reply else _no_reply(conv)
            counts[reason] += 1
            first[reason] = _earlier(first.get(reason), place)
        if n_sup == 0:
            counts["dropped_no_response"] += 1
            continue
        examples.append(SFTExample(input_ids=ids, labels=labels))
        counts["tokens"] += len(ids)
        counts["response_tokens"] += n_sup
    return examples, counts, first


def _earlier(seen: str | None, place: str) -> str:
    """Of two places in a file ("record 12", "line 7"), the one nearer its start: a --limit draw takes the
    records in shuffled order, and a note's "first:" names the first in the file, where a user looks."""
    if seen is None:
        return place
    a, b = re.search(r"(\d+)$", seen), re.search(r"(\d+)$", place)
    return place if a and b and int(b.group(1)) < int(a.group(1)) else seen


def _no_reply(conv: list[dict]) -> str:
    """Why a conversation has nothing to supervise: its replies with text are all marked not to learn
    (``"weight": 0``), its assistant turns are blank, or it has none."""
    replies = [m for m in conv if m["role"] == "assistant"]
    if any(m["content"].strip() for m in replies):
        return "dropped_untrained_reply"
    return "dropped_empty_reply" if replies else "dropped_no_assistant_turn"


def load_sft(
    source: str | list,
    tokenizer,
    max_length: int = DEFAULT_MAX_LENGTH,
    format: str = "auto",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    *,
    template: str = "auto",
    append_eos: bool = True,
    quiet: bool = False,
    length_flag: str = "--max-length",
    context_length: int | None = None,
) -> SFTData:
    """Load ``source`` and tokenize it for SFT with labels on the assistant replies only.

    ``source``: a file, ``"demo"``, a hub dataset id, or the records themselves (a list of dicts in any
    format a file may hold, or a ``datasets.Dataset``), checked as a file's and named ``record N`` in errors.

    ``shuffle_seed`` shuffles the records before ``limit`` takes the first N, so a subset is
    reproducible. ``template``: "auto" (the tokenizer's chat template if it has one, else
    the plain template), "chat" or "plain". Sequences longer than ``max_length`` keep their
    start; examples left with no supervised token are dropped, counted in ``stats`` and (unless
    ``quiet``) said in a ``note:`` line on stderr. ``append_eos`` (``text`` records only) appends
    the eos token to each text and scores it; chat and plain templates always end a reply with
    their end token. Preference pairs load their chosen side (``stats["side"]``). ``length_flag``: the
    option that sets ``max_length`` where the messages are read (``--max-length`` in every command).
    ``context_length``: the model's (``core.models.context_length``); a ``max_length`` past it is cut to
    it, with a note: positions the model never learned would be read silently or fail deep in its forward.
    """
    if isinstance(source, str) and not source.strip():  # Path("") is the current folder
        raise DataError("no SFT data given (an empty name); give a file, a folder or a hub dataset id")
    from layerscope.core.models import check_tokenizer  # here: core.data is read by --help, which imports no torch

    check_tokenizer(tokenizer)  # before the source is read: every record is tokenized by calling it
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")
    asked = max_length
    if context_length is not None and max_length > context_length:
        max_length = context_length
    check_limit(limit)
    template = resolve_template(tokenizer, template)
    convs, places, fmt, sha, where, drawn_from, forced = _read_conversations(source, format, limit, shuffle_seed)
    state = ResponseTokenizer(tokenizer, template, append_eos=append_eos)
    examples, counts, first = _tokenize_all(convs, places, state, fmt == "text", max_length, where)
    stats = {
        "records": len(convs),
        "kept": len(examples),
        **counts,
        "max_length": max_length,
        "template": "raw" if fmt == "text" else template,
        "limit": limit,
        "shuffle_seed": shuffle_seed,
        "drawn_from": drawn_from,  # the records a shuffled --limit subset was drawn from (None: not shuffled)
        "file_sha256": sha[:16],
        **_format_stats(fmt, state),
    }
    if not examples:
        raise SFTRecordError(
            f"{where}: no examples left with response tokens ({len(convs)} records, {counts['truncated']} truncated "
            f"at max_length={max_length}, {counts['dropped_no_response']} without response tokens); "
            f"raise {length_flag}?"
        )
    capped = [f"{where}: {length_flag} {asked} is past the model's context: examples cut at {max_length} tokens"]
    stats["notes"] = (capped if asked > max_length else []) + _notes(
        stats, first, fmt, where, length_flag, at_context=max_length == context_length
    )
    if not quiet:
        for note in stats["notes"]:
            print(f"note: {note}", file=sys.stderr)
    fingerprint = sha[:16]
    # forced: the file read in a format other than auto's gives other examples, so another fingerprint
    if limit is not None or shuffle_seed is not None or (fmt == "text" and not append_eos) or forced:
        eos = "" if fmt != "text" or append_eos else "|no-eos"
        how = f"|format={fmt}" if forced else ""
        fingerprint = sha256_hex(f"{sha}|limit={limit}|shuffle={shuffle_seed}{eos}{how}".encode())[:16]
    return SFTData(examples=examples, stats=stats, source=where, format=fmt, fingerprint=fingerprint)


def _format_stats(fmt: str, state: ResponseTokenizer) -> dict:
    """How labels were found, and what the format adds: eos on raw text, the side of preference pairs."""
    stats = {
        "retokenized_boundaries": state.retokenized,
        "located_turns": state.located,
        # records whose text spells a special token ("<s>", "<|im_end|>"): read as text, or (where the
        # tokenizer or template cannot tell it from its own) as the special token, said in a note
        "special_text_as_text": state.special_text_read,
        "special_text_as_token": state.special_text_unread,
    }
    if fmt == "text":
        stats["append_eos"] = state.append_eos and bool(state.eos_text)
    if fmt == "preference":
        stats["side"] = SIDE
    return stats


def _notes(
    stats: dict,
    first: dict[str, str],
    fmt: str,
    where: str,
    length_flag: str = "--max-length",
    at_context: bool = False,
) -> list[str]:
    """What the loaded data leaves out, in words (empty when nothing is left out); ``first`` names the
    first record behind each count, so the user can look at one. At the model's context (``at_context``)
    no longer length exists to suggest."""
    notes = []
    if fmt == "preference":
        notes.append(f"{where}: preference pairs: using the {SIDE!r} replies (the 'rejected' ones are not used)")
    n, m = stats["records"], stats["max_length"]
    if stats["dropped_past_max_length"]:
        notes.append(
            f"{where}: {stats['dropped_past_max_length']} of {n} examples dropped: no response token within "
            f"max_length {m} (the prompt fills it; first: {first['dropped_past_max_length']}); "
            + (f"{m} is the model's context" if at_context else f"a longer {length_flag} keeps them")
        )
    for key, why in (
        ("dropped_empty_reply", "empty reply"),
        ("dropped_untrained_reply", 'no trained reply (every reply is marked "weight": 0 or "train": false)'),
        ("dropped_no_assistant_turn", "no assistant turn"),
    ):
        if stats[key]:
            notes.append(f"{where}: {stats[key]} of {n} examples dropped: {why} (first: {first[key]})")
    if stats["special_text_as_token"]:
        notes.append(
            f"{where}: {stats['special_text_as_token']} of {n} records spell a special token in their text (first: "
            f"{first['special_text_unread']}), which this tokenizer or template reads as that token, not as text"
        )
    if stats["reply_truncated"]:
        notes.append(
            f"{where}: {stats['reply_truncated']} of {n} examples kept with their reply cut at max_length {m} "
            f"(first: {first['reply_truncated']}); "
            + (f"{m} is the model's context" if at_context else f"a longer {length_flag} keeps them whole")
        )
    return notes

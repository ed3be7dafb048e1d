"""SFT / alignment data: read common instruction formats, tokenize with response-only labels.

Flow: a local JSON / JSON Lines file (or a hub dataset id) -> raw records -> every record
normalised to a list of chat turns ``[{"role", "content"}]`` -> rendered with the tokenizer's
chat template (or the plain template below) -> ``input_ids`` + ``labels`` where only the
assistant replies (and their end token) are supervised; everything else is -100.

Formats (detected from the first record's keys, or forced with ``format=``):

=================  ==========================================================================
``alpaca``         ``instruction``, ``output``, optional ``input`` (appended to the
                   instruction after a blank line), ``system``, and ``history``: a list of
                   earlier ``[instruction, output]`` turns (as in LIMA), oldest first.
``messages``       ``messages``: ``[{"role": "system"|"user"|"assistant", "content": str}]``.
``sharegpt``       ``conversations``: ``[{"from": "system"|"human"|"gpt", "value": str}]``.
``prompt_completion``  ``prompt`` (user turn) and ``completion`` (assistant turn).
``text``           ``text``: plain text, loss on every token, no template.
=================  ==========================================================================

Plain template, used when the tokenizer has no chat template (or ``template="plain"``);
blocks are joined by a blank line and every reply ends with the tokenizer's eos token::

    {system}

    ### Instruction:
    {user}

    ### Response:
    {assistant}</s>

Label boundaries are found by rendering *prefixes* of the conversation (up to each
assistant turn, with the generation prompt; and up to the end of that turn) and tokenizing
those prefixes, so they are exact for any template: a boundary is taken from the tokens of
the prefix itself, never guessed from the text.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from layerscope.core.errors import ConfigError, DataError

DEMO_DATA: str = str(Path(__file__).resolve().parents[1] / "resources" / "demo_instructions.json")

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")
FORMAT_ALIASES = {
    "chat": "messages",
    "prompt-completion": "prompt_completion",
    "completion": "prompt_completion",
    "conversations": "sharegpt",
}
EXPECTED = (
    "alpaca (instruction, output[, input, history, system]), messages (messages: role/content), "
    "sharegpt (conversations: from/value), prompt_completion (prompt, completion), text (text)"
)
IGNORE_INDEX = -100

# Role names seen in the wild, mapped onto the three roles chat templates understand.
ROLE_MAP = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}

PLAIN_USER = "### Instruction:\n"
PLAIN_RESPONSE = "### Response:\n"


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; -100 where no loss is taken


@dataclass
class SFTData:
    examples: list[SFTExample]
    stats: dict
    source: str
    format: str
    fingerprint: str  # sha256[:16] of the file bytes (or hub records), mixed with any subset selection

    def __len__(self) -> int:
        return len(self.examples)


# ----------------------------------------------------------------------------- reading


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _looks_like_path(source: str) -> bool:
    """A missing local file must say 'not found', not fall through to the hub."""
    lower = source.lower()
    return (
        lower.endswith((".json", ".jsonl", ".ndjson"))
        or source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _read_file(path: Path) -> tuple[list, str]:
    """Parse a JSON list (or one object holding a list under ``data``/``train``) or JSON Lines."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (bad byte at offset {e.start})") from e
    if not text.strip():
        raise DataError(f"{path}: empty file, no records")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    records: Any = None
    if not jsonl:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            # Several objects, one per line, in a .json file: read it as JSON Lines.
            if not (text.lstrip().startswith("{") and e.msg == "Extra data"):
                raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from e
            jsonl = True
    if jsonl:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON on line {n} column {e.colno} ({e.msg})") from e
    if isinstance(records, dict):
        nested = [records[k] for k in ("data", "train", "examples", "records") if isinstance(records.get(k), list)]
        records = nested[0] if len(nested) == 1 else [records]
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records or JSON Lines, found a JSON {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: empty list, no records")
    return records, _sha(raw)


def _read_hub(source: str, limit: int | None) -> tuple[list, str]:
    """``owner/name`` or ``owner/name:split`` (default split ``train``) via ``datasets``."""
    try:
        import datasets  # optional: pip install layerscope[hub]
    except ImportError as e:
        raise DataError(f"{source}: no such file, and loading hub datasets needs `pip install layerscope[hub]`") from e
    name, _, split = source.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        records = [dict(r) for r in ds]
    except Exception as e:  # datasets raises many unrelated types (network, missing config, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DataError(f"{source}: cannot load hub dataset ({first})") from e
    if not records:
        raise DataError(f"{source}: empty dataset, no records")
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode()
    return records, _sha(blob)


def _read_source(source: str, limit: int | None) -> tuple[list, str, str]:
    """Return (raw records, sha256 hex, resolved source name)."""
    source = str(source)
    if source == "demo":
        source = DEMO_DATA
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        raise DataError(f"{source}: is a directory, expected a .json or .jsonl file")
    if path.exists():
        records, sha = _read_file(path)
        return records, sha, source
    if _looks_like_path(source):
        raise DataError(f"{source}: data file not found")
    records, sha = _read_hub(source, limit)
    return records, sha, source


# ----------------------------------------------------------------------------- normalising


def detect_format(record: Any, where: str) -> str:
    """Pick the format from one record's keys."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record 0 is a JSON {type(record).__name__}, expected an object")
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise DataError(f"{where}: unrecognised record fields {sorted(keys)}; expected one of: {EXPECTED}")


def _resolve_format(fmt: str) -> str:
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    return fmt


class _Record:
    """Field access that fails with the file, record index and format in the message."""

    def __init__(self, rec: Any, i: int, fmt: str, where: str):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: record {i} is a JSON {type(rec).__name__}, expected an object")
        self.rec, self.i, self.fmt, self.where = rec, i, fmt, where

    def fail(self, problem: str) -> DataError:
        return DataError(f"{self.where}: record {self.i}: {problem} ({self.fmt} format)")

    def text(self, key: str, required: bool = True) -> str:
        if key not in self.rec or self.rec[key] is None:
            if required:
                raise self.fail(f"missing field {key!r}")
            return ""
        value = self.rec[key]
        if not isinstance(value, str):
            raise self.fail(f"field {key!r} is a {type(value).__name__}, expected a string")
        return value

    def turns(self, key: str, role_key: str, content_key: str) -> list[dict]:
        if key not in self.rec:
            raise self.fail(f"missing field {key!r}")
        items = self.rec[key]
        if not isinstance(items, list):
            raise self.fail(f"field {key!r} is a {type(items).__name__}, expected a list of turns")
        out = []
        for j, t in enumerate(items):
            if not isinstance(t, dict):
                raise self.fail(f"turn {j} of {key!r} is a {type(t).__name__}, expected an object")
            # ShareGPT files sometimes use role/content inside "conversations", and vice versa.
            rk, ck = next(
                ((r, c) for r, c in ((role_key, content_key), ("role", "content"), ("from", "value")) if r in t),
                (role_key, content_key),
            )
            if rk not in t or ck not in t:
                raise self.fail(f"turn {j} of {key!r} lacks {role_key!r}/{content_key!r} (has {sorted(t)})")
            role = ROLE_MAP.get(str(t[rk]).lower())
            if role is None:
                raise self.fail(f"turn {j} has unsupported role {t[rk]!r}; expected one of {sorted(ROLE_MAP)}")
            if not isinstance(t[ck], str):
                raise self.fail(f"turn {j} content is a {type(t[ck]).__name__}, expected a string")
            out.append({"role": role, "content": t[ck]})
        return out


def _alpaca(r: _Record) -> list[dict]:
    instruction, output = r.text("instruction"), r.text("output")
    extra, system = r.text("input", required=False), r.text("system", required=False)
    conv = [{"role": "system", "content": system}] if system else []
    history = r.rec.get("history") or []
    if not isinstance(history, list):
        raise r.fail(f"field 'history' is a {type(history).__name__}, expected a list of [instruction, output] pairs")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise r.fail(f"history item {j} is not an [instruction, output] pair of strings")
        conv += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if instruction and extra else (instruction or extra)
    return conv + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _normalise(r: _Record) -> list[dict]:
    if r.fmt == "alpaca":
        return _alpaca(r)
    if r.fmt == "messages":
        return r.turns("messages", "role", "content")
    if r.fmt == "sharegpt":
        return r.turns("conversations", "from", "value")
    if r.fmt == "prompt_completion":
        return [{"role": "user", "content": r.text("prompt")}, {"role": "assistant", "content": r.text("completion")}]
    return [{"role": "assistant", "content": r.text("text")}]  # "text": one supervised turn, rendered raw


def _records_to_conversations(records: list, fmt: str, where: str) -> tuple[list[list[dict]], str]:
    fmt = _resolve_format(fmt)
    if fmt == "auto":
        fmt = detect_format(records[0], where)
    return [_normalise(_Record(rec, i, fmt, where)) for i, rec in enumerate(records)], fmt


def load_records(source: str, format: str = "auto", limit: int | None = None) -> tuple[list[list[dict]], str]:
    """Read ``source`` and return (conversations as ``[{"role", "content"}]`` lists, format name).

    ``limit`` keeps the first N records (in file order). A ``text`` record becomes a single
    assistant turn (it is rendered raw by :func:`load_sft`, not through a chat template).
    """
    _check_limit(limit)
    records, _, where = _read_source(source, limit)
    return _records_to_conversations(records[:limit] if limit is not None else records, format, where)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of records, got {limit}")


# ----------------------------------------------------------------------------- rendering


def _plain_render(eos: str) -> Callable[[list[dict], bool], str]:
    """The documented fallback template (see the module docstring)."""

    def render(conv: list[dict], add_generation_prompt: bool) -> str:
        blocks = []
        for m in conv:
            if m["role"] == "system":
                blocks.append(m["content"])
            elif m["role"] == "user":
                blocks.append(PLAIN_USER + m["content"])
            else:
                blocks.append(PLAIN_RESPONSE + m["content"] + eos)
        if add_generation_prompt:
            blocks.append(PLAIN_RESPONSE)
        return "\n\n".join(blocks)

    return render


def _chat_render(tokenizer) -> Callable[[list[dict], bool], str]:
    def render(conv: list[dict], add_generation_prompt: bool) -> str:
        out = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(out, str):
            raise TypeError(f"chat template returned {type(out).__name__}, expected text")
        return out

    return render


def _special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before the text by itself (usually just bos), for the plain template."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_sp) - len(without) + 1):
        if with_sp[k : k + len(without)] == without:
            return list(with_sp[:k])
    return []


def _end_token_text(tokenizer) -> str:
    """The eos token as text, but only if it tokenizes back to exactly the eos id."""
    eos, eos_id = getattr(tokenizer, "eos_token", None), getattr(tokenizer, "eos_token_id", None)
    if not eos or eos_id is None:
        return ""
    return eos if tokenizer(eos, add_special_tokens=False)["input_ids"] == [eos_id] else ""


class _Tokenizing:
    """Per-run tokenization state: the renderer, the tokenizer's special tokens, counters."""

    def __init__(self, tokenizer, template: str):
        self.tok = tokenizer
        self.eos_text = _end_token_text(tokenizer)
        self.plain_lead = _special_prefix(tokenizer)  # what tokenizer(text) puts first by itself (bos)
        if template == "chat":
            self.render, self.lead = _chat_render(tokenizer), []  # the template writes bos itself
        else:
            self.render, self.lead = _plain_render(self.eos_text), self.plain_lead
        specials = [s for s in getattr(tokenizer, "all_special_tokens", []) if s]
        self.specials = sorted(set(specials), key=len, reverse=True)
        self.retokenized = 0  # prefix tokens that did not line up: segment tokenized on its own
        self.located = 0  # assistant turns whose bounds came from a text search (template rewrote history)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []

    def encode_alone(self, text: str) -> list[int]:
        """Tokens of ``text`` as if it continued earlier text, not as the start of a string.

        Sentencepiece-style tokenizers put a "▁" (space) before the start of every string, so
        tokenizing a piece on its own would add a space the template never wrote. Tokenizing
        it after a newline and removing the newline's tokens avoids that; where the newline
        merges with the piece (it starts with whitespace) the piece is tokenized plainly.
        """
        sentinel = self.encode("\n")
        joined = self.encode("\n" + text)
        if sentinel and joined[: len(sentinel)] == sentinel:
            return joined[len(sentinel) :]
        return self.encode(text)

    # --- character spans of the supervised text

    def spans(self, conv: list[dict], full: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        last = 0
        for i, m in enumerate(conv):
            if m["role"] != "assistant" or not m["content"].strip():
                continue
            span = self._span_by_prefix(conv, i, full)
            if span is None or span[0] < last:
                span = self._span_by_search(m["content"], full, last)
            if span is not None and span[1] > span[0]:
                spans.append(span)
                last = span[1]
        return spans

    def _span_by_prefix(self, conv: list[dict], i: int, full: str) -> tuple[int, int] | None:
        try:
            before = self.render(conv[:i], True)
            through = self.render(conv[: i + 1], False)
        except Exception:  # some templates refuse a prefix (e.g. one that must start with a user turn)
            return None
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            return None
        # The reply and its end token; the whitespace a template puts after it is not the model's output.
        return len(before), len(before) + len(through[len(before) :].rstrip())

    def _span_by_search(self, content: str, full: str, start: int) -> tuple[int, int] | None:
        for needle in (content, content.strip()):
            at = full.find(needle, start)
            if needle and at >= 0:
                end = at + len(needle)
                end += next((len(s) for s in self.specials if full.startswith(s, end)), 0)
                self.located += 1
                return at, end
        return None

    # --- tokens

    def tokenize(self, full: str, spans: list[tuple[int, int]], lead: list[int]) -> tuple[list[int], list[int]]:
        """Tokenize ``full`` so that every span edge is a token edge; label the span tokens.

        Each piece's tokens come from tokenizing the prefix that ends at its right edge and
        keeping what extends the previous prefix's tokens. If the previous tokens are not a
        prefix of the longer one (a token merges across the edge), that piece is tokenized
        on its own from the edge onward, which keeps the label boundary exact.
        """
        cuts = sorted({0, len(full), *[c for s in spans for c in s]})
        supervised = {s[0] for s in spans}
        ids, labels = list(lead), [IGNORE_INDEX] * len(lead)
        anchor, anchored = 0, []  # tokens of full[anchor:previous cut]
        for left, right in zip(cuts, cuts[1:]):
            cand = self.encode(full[anchor:right])
            if cand[: len(anchored)] == anchored:
                piece, anchored = cand[len(anchored) :], cand
            else:
                self.retokenized += 1
                anchor = left
                piece = anchored = self.encode_alone(full[left:right])
            ids += piece
            labels += piece if left in supervised else [IGNORE_INDEX] * len(piece)
        return ids, labels

    def example(self, conv: list[dict], raw_text: bool, where: str, i: int) -> tuple[list[int], list[int]]:
        if raw_text:  # plain text: no template, loss on every token after the leading bos
            text = conv[0]["content"]
            full = text + self.eos_text
            return self.tokenize(full, [(0, len(full))] if text.strip() else [], self.plain_lead)
        try:
            full = self.render(conv, False)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(f"{where}: record {i}: the tokenizer's chat template rejected it ({first})") from e
        return self.tokenize(full, self.spans(conv, full), self.lead)


# ----------------------------------------------------------------------------- public API


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
    _check_limit(limit)
    if template not in ("auto", "chat", "plain"):
        raise ConfigError(f"unknown template {template!r}; use auto, chat or plain")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ConfigError("template='chat' but the tokenizer has no chat template")
    template = "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"

    records, sha, where = _read_source(source, None if shuffle_seed is not None else limit)
    if shuffle_seed is not None:
        records = list(records)
        random.Random(shuffle_seed).shuffle(records)
    if limit is not None:
        records = records[:limit]
    convs, fmt = _records_to_conversations(records, format, where)

    state = _Tokenizing(tokenizer, template)
    examples: list[SFTExample] = []
    truncated = dropped = tokens = supervised = 0
    for i, conv in enumerate(convs):
        ids, labels = state.example(conv, fmt == "text", where, i)
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        n_sup = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_sup == 0:
            dropped += 1
            continue
        examples.append(SFTExample(input_ids=ids, labels=labels))
        tokens += len(ids)
        supervised += n_sup

    stats = {
        "records": len(convs),
        "kept": len(examples),
        "truncated": truncated,
        "dropped_no_response": dropped,
        "tokens": tokens,
        "response_tokens": supervised,
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
            f"{where}: no examples left with response tokens ({len(convs)} records, {truncated} truncated "
            f"at max_length={max_length}, {dropped} without response tokens); raise max_length?"
        )
    fingerprint = sha[:16]
    if limit is not None or shuffle_seed is not None:
        fingerprint = _sha(f"{sha}|limit={limit}|shuffle={shuffle_seed}".encode())[:16]
    return SFTData(examples=examples, stats=stats, source=where, format=fmt, fingerprint=fingerprint)


def split_heldout(data: SFTData, fraction: float = 0.1, seed: int = 0) -> tuple[SFTData, SFTData]:
    """Seeded split into (train, heldout); heldout gets ``round(fraction * n)`` examples (at least 1)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"heldout fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(data.examples)
    if n < 2:
        raise DataError(f"{data.source}: {n} example(s) cannot be split into train and heldout")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = min(n - 1, max(1, round(n * fraction)))
    held_idx, train_idx = sorted(order[:n_held]), sorted(order[n_held:])

    def part(name: str, idx: list[int]) -> SFTData:
        stats = dict(data.stats, split=name, split_fraction=fraction, split_seed=seed, examples=len(idx))
        fp = _sha(f"{data.fingerprint}|{name}|{fraction}|{seed}".encode())[:16]
        return replace(data, examples=[data.examples[i] for i in idx], stats=stats, fingerprint=fp)

    return part("train", train_idx), part("heldout", held_idx)


def collate(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` (pad_id), ``attention_mask`` (0 on pad), ``labels`` (-100 on pad)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

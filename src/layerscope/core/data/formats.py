"""SFT record formats: detect a file's format and normalise every record to chat turns ``[{"role", "content"}]``.

Formats (detected from the first record's keys, or forced with ``format=``):

=================  ==========================================================================
``alpaca``         ``instruction``, ``output``, optional ``input`` (appended to the
                   instruction after a blank line), ``system``, and ``history``: a list of
                   earlier ``[instruction, output]`` turns (as in LIMA), oldest first.
``messages``       ``messages``: ``[{"role": "system"|"user"|"assistant", "content": str}]``
                   (``developer`` is a system turn).
``sharegpt``       ``conversations``: ``[{"from": "system"|"human"|"gpt", "value": str}]``.
                   In both, a turn marked ``"weight": 0`` or ``"train": false`` (axolotl's
                   fields) stays in the text but is not learnt or scored.
``prompt_completion``  ``prompt`` (user turn) and ``completion`` (assistant turn).
``reasoning``      a problem (``question``, ``problem`` or ``context``) and its worked solution
                   (``chain_of_thought``, ``solution``, ``rationale`` or ``reasoning``), plus an
                   optional final ``answer``, under these names (rename others, e.g. GSM8K's
                   own ``{question, answer}`` or MetaMathQA's ``{query, response}``). The reply is
                   the solution followed by ``#### <answer>`` (GSM8K's own convention) unless the
                   solution already ends with the answer.
``preference``     ``chosen`` (+ ``rejected``, optional ``prompt``): TRL preference pairs or
                   HH-RLHF transcripts; the *chosen* side is used (see ``preference``).
``text``           ``text``: plain text, no template, loss on every token. The tokenizer's eos
                   token is appended and scored too (``append_eos``), so a model learns where a
                   text ends; without it the loss equals a plain language-modelling loss.
=================  ==========================================================================

Every record must carry a reply: a file of prompts alone (questions without answers) is
refused, since there would be nothing to train on or score.
"""

from __future__ import annotations

import re
from typing import Any

from layerscope.core.data.decoding import json_kind, json_text
from layerscope.core.data.preference import SIDE, preference_turns
from layerscope.core.data.sources import SFTRecordError, read_source
from layerscope.core.errors import ConfigError, DataError, check_count

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "reasoning", "preference", "text")
FORMAT_ALIASES = {
    "chat": "messages",
    "dpo": "preference",
    "hh_rlhf": "preference",
    "hh-rlhf": "preference",
    "prompt-completion": "prompt_completion",
    "completion": "prompt_completion",
    "conversations": "sharegpt",
    "cot": "reasoning",
}
EXPECTED = (
    "alpaca (instruction, output[, input, history, system]), messages (messages: role/content), "
    "sharegpt (conversations: from/value), prompt_completion (prompt, completion), "
    "reasoning (question|problem|context, chain_of_thought|solution|rationale|reasoning[, answer]), "
    "preference (chosen[, rejected, prompt]), text (text)"
)
# Fields that hold only the question side of an example, and fields of multiple-choice items.
_PROMPT_FIELDS = {"prompt", "instruction", "question", "query", "input", "context", "problem"}
# The two sides of a reasoning record, each under the names seen in public sets, in order of preference.
_PROBLEM_FIELDS = ("question", "problem", "context")
_SOLUTION_FIELDS = ("chain_of_thought", "solution", "rationale", "reasoning")
_MC_FIELDS = ({"query", "choices"}, {"question", "choices"}, {"ctx", "endings"}, {"question", "options"})
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
    "developer": "system",  # OpenAI's name for the system turn of newer models
}


class MultipleChoiceItemsError(DataError):
    """SFT data that is a file of multiple-choice items: a task. A caller that tries the task reader next
    (similarity's SFT-or-task data) shows that reader's error alone, which names the item at fault."""


def detect_format(record: Any, where: str) -> str:
    """Pick the format from one record's keys."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: the first record is {json_kind(record)}, expected an object")
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        if isinstance(record.get("label"), bool):  # TRL / KTO: label false marks a completion not to learn
            raise DataError(
                f"{where}: unpaired preference records (prompt, completion, label true/false): training on "
                "them would learn the undesirable completions too; keep the label-true records, without the label"
            )
        return "prompt_completion"
    if any(mc <= keys for mc in _MC_FIELDS):  # before reasoning: AQuA-style items carry a rationale too
        raise MultipleChoiceItemsError(
            f"{where}: multiple-choice items (fields {sorted(keys)}), not SFT records; a multiple-choice file "
            "is an evaluation task (--task of eval, ablate, shapley, prune and prune-curve; --eval-tasks of finetune)"
        )
    if any(f in keys for f in _PROBLEM_FIELDS) and any(f in keys for f in _SOLUTION_FIELDS):
        return "reasoning"
    if SIDE in keys:
        return "preference"
    if "text" in keys:
        return "text"
    if keys and keys <= _PROMPT_FIELDS:
        raise DataError(
            f"{where}: prompts only (fields {sorted(keys)}), no responses to train on or score; "
            f"SFT / loss data needs a reply in each record, in one of: {EXPECTED}"
        )
    raise DataError(f"{where}: unrecognised record fields {sorted(keys)}; expected one of: {EXPECTED}")


def resolve_format(fmt: str) -> str:
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    return fmt


class _Record:
    """Field access that fails with the file, the record's place in it (``line N`` / ``record N``) and
    the format in the message."""

    def __init__(self, rec: Any, place: str, fmt: str, where: str):
        if not isinstance(rec, dict):
            raise SFTRecordError(f"{where}: {place} is {json_kind(rec)}, expected an object")
        self.rec, self.place, self.fmt, self.where = rec, place, fmt, where

    def fail(self, problem: str) -> DataError:
        return SFTRecordError(f"{self.where}: {self.place}: {problem} ({self.fmt} format)")

    def text(self, key: str, required: bool = True) -> str:
        if key not in self.rec or self.rec[key] is None:
            if required:
                raise self.fail(f"missing field {key!r}")
            return ""
        value = self.rec[key]
        if not isinstance(value, str):
            raise self.fail(f"field {key!r} is {json_kind(value)}, expected a string")
        return value

    def turns(self, key: str, role_key: str, content_key: str) -> list[dict]:
        if key not in self.rec:
            raise self.fail(f"missing field {key!r}")
        items = self.rec[key]
        if not isinstance(items, list):
            raise self.fail(f"field {key!r} is {json_kind(items)}, expected a list of turns")
        out = []
        for j, t in enumerate(items):
            if not isinstance(t, dict):
                raise self.fail(f"turn {j} of {key!r} is {json_kind(t)}, expected an object")
            # ShareGPT files sometimes use role/content inside "conversations", and vice versa.
            rk, ck = next(
                ((r, c) for r, c in ((role_key, content_key), ("role", "content"), ("from", "value")) if r in t),
                (role_key, content_key),
            )
            if rk not in t or ck not in t:
                raise self.fail(f"turn {j} of {key!r} lacks {role_key!r}/{content_key!r} (has {sorted(t)})")
            role = ROLE_MAP.get(str(t[rk]).lower())
            if role is None:
                raise self.fail(f"turn {j} has unsupported role {json_text(t[rk])}; expected one of {sorted(ROLE_MAP)}")
            if not isinstance(t[ck], str):
                raise self.fail(f"turn {j} content is {json_kind(t[ck])}, expected a string")
            out.append({"role": role, "content": t[ck]} if self._trained(t, j) else untrained(role, t[ck]))
        return out

    def _trained(self, turn: dict, j: int) -> bool:
        """False for a turn marked not to learn, as axolotl marks them: ``"weight": 0`` or ``"train": false``.
        A null is no mark: datasets and pandas write one into every turn that lacks the field some turns have."""
        weight = 1 if turn.get("weight") is None else turn["weight"]
        train = True if turn.get("train") is None else turn["train"]
        if isinstance(weight, bool) or weight not in (0, 1):
            raise self.fail(f"turn {j} has weight {json_text(weight)}; expected 0 (not learnt) or 1")
        if not isinstance(train, bool):
            raise self.fail(f"turn {j} has train {json_text(train)}; expected true or false")
        return weight == 1 and train


def _alpaca(r: _Record) -> list[dict]:
    instruction, output = r.text("instruction"), r.text("output")
    extra, system = r.text("input", required=False), r.text("system", required=False)
    conv = [{"role": "system", "content": system}] if system else []
    history = r.rec.get("history") or []
    if not isinstance(history, list):
        raise r.fail(f"field 'history' is {json_kind(history)}, expected a list of [instruction, output] pairs")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise r.fail(f"history item {j} is not an [instruction, output] pair of strings")
        conv += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if instruction and extra else (instruction or extra)
    return conv + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _reasoning(r: _Record) -> list[dict]:
    problem_key = next((k for k in _PROBLEM_FIELDS if k in r.rec), _PROBLEM_FIELDS[0])
    solution_key = next((k for k in _SOLUTION_FIELDS if k in r.rec), _SOLUTION_FIELDS[0])
    problem, solution = r.text(problem_key), r.text(solution_key)
    context = r.text("context", required=False) if problem_key != "context" else ""  # not text: refused
    if context.strip():  # a passage and a question about it: both are the prompt
        problem = f"{context}\n\n{problem}"
    answer = r.rec.get("answer")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)  # 18.0 states 18: as text "18.0", "... so 18" would not end with it
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and not isinstance(answer, str):
        raise r.fail(f"field 'answer' is {json_kind(answer)}, expected a string or number")
    # The final answer is what a reasoning model must learn to state; keep it unless the solution
    # already ends with it (GSM8K's own files end in "#### 18", others in "The answer is 18.").
    if answer and answer.strip() and not _ends_with_answer(solution, answer.strip()):
        solution = f"{solution.rstrip()}\n#### {answer.strip()}"
    return [{"role": "user", "content": problem}, {"role": "assistant", "content": solution}]


# What may not come right before a stated answer: a word or a number it would be the tail of ("$0.10" does
# not state 10), or a sign or operator that makes it another number or an expression ("-5", "1/5", "10^5" and
# "2+5" do not state 5). A negative answer brings its own sign ("x = -5" states -5).
_NOT_BEFORE_ANSWER = r"\w.,\-\u2212+*/^\u00d7\u00f7"


def _ends_with_answer(solution: str, answer: str) -> bool:
    """The solution's last words state the answer as a whole ("... is 10.", "#### 10", "\\boxed{10}"), not as
    the tail of another number or expression ("... = $0.10", "-10" or "1/10" do not state 10)."""
    pattern = rf"(?<![{_NOT_BEFORE_ANSWER}]){re.escape(answer)}\W*$"
    return re.search(pattern, solution.rstrip()) is not None


def _normalise(r: _Record) -> list[dict]:
    if r.fmt == "alpaca":
        return _alpaca(r)
    if r.fmt == "messages":
        return r.turns("messages", "role", "content")
    if r.fmt == "sharegpt":
        return r.turns("conversations", "from", "value")
    if r.fmt == "prompt_completion":
        return [{"role": "user", "content": r.text("prompt")}, {"role": "assistant", "content": r.text("completion")}]
    if r.fmt == "reasoning":
        return _reasoning(r)
    if r.fmt == "preference":
        return preference_turns(r.rec.get, lambda key: r.turns(key, "role", "content"), r.fail)
    return [{"role": "assistant", "content": r.text("text")}]  # "text": one supervised turn, rendered raw


def records_to_conversations(
    records: list, fmt: str, where: str, places: list[str] | None = None
) -> tuple[list[list[dict]], str]:
    """Each record as turns, and the format. ``places``: where each record is in its file (``line N`` /
    ``record N``, what errors name); by default ``record N``, N counted from 1."""
    places = places or [f"record {i}" for i in range(1, len(records) + 1)]
    fmt = file_format(records, fmt, where, places)
    convs = [_normalise(_Record(rec, place, fmt, where)) for rec, place in zip(records, places)]
    if not any(has_reply(c) for c in convs):
        counted = f"({len(convs)} records, {fmt} format)"
        if any(m["role"] == "assistant" and m["content"].strip() for c in convs for m in c):
            # replies there are, all marked not to learn: not a file of prompts alone
            raise SFTRecordError(
                f'{where}: no record has a trained reply {counted}: every reply is marked "weight": 0 or '
                '"train": false, so nothing is trained on or scored'
            )
        raise SFTRecordError(
            f"{where}: no record has a non-empty reply {counted}: prompts alone give nothing to train on or score"
        )
    return convs, fmt


def file_format(records: list, fmt: str, where: str, places: list[str]) -> str:
    """The format given, or else the first record's: detect it before a shuffle, so the file's format
    does not depend on which record a shuffle puts first."""
    fmt = resolve_format(fmt)
    if fmt != "auto":
        return fmt
    if not isinstance(records[0], dict):  # a plain DataError: no format is recognisable in it
        raise DataError(f"{where}: {places[0]} is {json_kind(records[0])}, expected an object")
    return detect_format(records[0], where)


def untrained(role: str, content: str) -> dict:
    """A turn kept in the text but given no labels (axolotl's per-turn ``weight: 0`` / ``train: false``)."""
    return {"role": role, "content": content, "train": False}


def supervised(turn: dict) -> bool:
    """Whether a turn's tokens are learnt and scored: an assistant reply with text, not marked untrained."""
    return turn["role"] == "assistant" and bool(turn["content"].strip()) and turn.get("train", True)


def has_reply(conv: list[dict]) -> bool:
    """Whether a conversation has a turn that response-only labels supervise."""
    return any(supervised(m) for m in conv)


def load_records(source: str, format: str = "auto", limit: int | None = None) -> tuple[list[list[dict]], str]:
    """Read ``source`` and return (conversations as ``[{"role", "content"}]`` lists, format name).

    ``limit`` keeps the first N records (in file order). A ``text`` record becomes a single
    assistant turn (it is rendered raw by :func:`load_sft`, not through a chat template).
    """
    check_limit(limit)
    records, _, where, places = read_source(source, limit)
    return records_to_conversations(records[:limit], format, where, places[:limit])


def check_limit(limit: int | None) -> None:
    if limit is not None:
        check_count(limit, "limit (a number of records)", 1)

"""Preference pairs as SFT data: the *chosen* side of each pair, the *rejected* side unused.

Two shapes are read (TRL's preference format and Anthropic's HH-RLHF):

- ``prompt`` + ``chosen`` (+ ``rejected``): each a string or a list of ``{"role", "content"}``
  turns. A string prompt is one user turn, a string reply one assistant turn. A ``chosen`` list that
  repeats the prompt's turns first (UltraFeedback) has them once; a prompt that is an HH-RLHF
  transcript ending in ``Assistant:`` (Dahoas' splits) is read as its turns. ``question`` stands for
  ``prompt`` where there is none, and a ``system`` string opens the conversation (Intel/orca_dpo_pairs).
- ``chosen`` (+ ``rejected``) with no ``prompt``: either a list of turns (TRL's "implicit
  prompt"), or an HH-RLHF transcript, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, split into turns
  at each ``Human:`` / ``Assistant:`` marker that starts a paragraph.

Only the assistant turns are supervised, as for every other format.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from layerscope.core.data.decoding import json_kind

SIDE = "chosen"
# HH-RLHF's speaker markers open a paragraph ("\n\nHuman: "); the first may open the string.
_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_SPEAKER_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str) -> list[dict] | None:
    """HH-RLHF transcript to turns; None when ``text`` holds no ``Human:`` / ``Assistant:`` marker."""
    marks = list(_MARKER.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        return None
    turns = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        content = text[m.end() : nxt.start() if nxt else len(text)]
        turns.append({"role": _SPEAKER_ROLE[m.group(1)], "content": content.strip()})
    return turns


def preference_turns(
    value_of: Callable[[str], object],
    turns_of: Callable[[str], list[dict]],
    fail: Callable[[str], Exception],
) -> list[dict]:
    """The chosen side of one record as turns.

    ``value_of(key)`` is the raw field (None when absent); ``turns_of(key)`` reads a list of
    turns with the usual checks; ``fail(problem)`` builds the one-line error for this record.
    """
    # Intel/orca_dpo_pairs names the prompt "question" and carries a system prompt beside it
    prompt_key = "prompt" if value_of("prompt") is not None or value_of("question") is None else "question"
    prompt, chosen, system = value_of(prompt_key), value_of(SIDE), value_of("system")
    if chosen is None:
        raise fail(f"missing field {SIDE!r}")
    if system is not None and not isinstance(system, str):
        raise fail(f"field 'system' is {json_kind(system)}, expected a string")
    lead = [{"role": "system", "content": system}] if system and system.strip() else []
    return lead + _turns(prompt, prompt_key, chosen, turns_of, fail)


def _turns(prompt, prompt_key: str, chosen, turns_of, fail) -> list[dict]:
    if prompt is None:
        if isinstance(chosen, list):
            return turns_of(SIDE)
        if not isinstance(chosen, str):
            raise fail(f"field {SIDE!r} is {json_kind(chosen)}, expected a string or a list of turns")
        turns = parse_transcript(chosen)
        if turns is None:
            raise fail(
                f"{SIDE!r} is text with no 'prompt' field and no 'Human:' / 'Assistant:' turns "
                "(HH-RLHF transcripts start with '\\n\\nHuman: ')"
            )
        return turns
    if isinstance(prompt, str) and (asked := _transcript_prompt(prompt)) is not None:
        # HH-RLHF split into prompt and reply (Dahoas' sets): the prompt is the transcript up to "Assistant:"
        conv, chosen = asked, chosen.strip() if isinstance(chosen, str) else chosen
    else:
        conv = _side(prompt, prompt_key, "user", turns_of, fail)
    reply = _side(chosen, SIDE, "assistant", turns_of, fail)
    return conv + _without_prompt(reply, conv)


def _transcript_prompt(prompt: str) -> list[dict] | None:
    """The turns of a prompt that is an HH-RLHF transcript ending in an open ``Assistant:`` turn."""
    turns = parse_transcript(prompt)
    if not turns or turns[-1] != {"role": "assistant", "content": ""}:
        return None
    return turns[:-1]


def _without_prompt(reply: list[dict], prompt: list[dict]) -> list[dict]:
    """``reply`` less a copy of the prompt's turns at its start: UltraFeedback-style pairs hold the whole
    conversation in ``chosen``, user turn included, beside the same ``prompt`` (TRL drops it alike)."""
    n = len(prompt)
    same = len(reply) > n and all(_same_turn(a, b) for a, b in zip(reply[:n], prompt))
    return reply[n:] if same else reply


def _same_turn(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def _side(value, key: str, role: str, turns_of, fail) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return turns_of(key)
    raise fail(f"field {key!r} is {json_kind(value)}, expected a string or a list of turns")

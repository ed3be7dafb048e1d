"""Special-token text in user data (``<s>``, ``</s>``, ``<|im_end|>`` written in a record) read as text.

A tokenizer parses every special token's text wherever it occurs: an alpaca reply "Wrap it in the s tag:
<s>old price</s>" would be trained on as a bos and an eos, and a reply quoting ``<|im_end|>`` as the end of
its turn. The template's own special tokens must still parse as special. So the places in the rendered
text where the user's text spells a special token are found (:func:`literal_spans`: the conversation is
rendered again with those spellings masked, and only what the mask changed is the user's), and those
places alone are tokenized with ``split_special_tokens=True`` (:func:`text_ids`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MASK = "\ue002"  # a private-use character: no template or record writes it


def special_pattern(specials: list[str]) -> re.Pattern | None:
    """A pattern matching any special token's text, longest first (``</s>`` before ``<s>``'s shorter kin)."""
    texts = sorted({s for s in specials if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


def text_ids(tokenizer, text: str, as_text: bool = False) -> list[int]:
    """The ids of ``text`` without the tokenizer's bos / eos; ``as_text``: special-token spellings in it are
    read as ordinary text (only asked where :func:`splits_special_tokens` holds)."""
    if not text:
        return []
    extra = {"split_special_tokens": True} if as_text else {}
    return list(tokenizer(text, add_special_tokens=False, verbose=False, **extra)["input_ids"])


def splits_special_tokens(tokenizer, specials: list[str]) -> bool:
    """Whether the tokenizer reads a special token's text as text when asked: transformers' tokenizers do;
    one that ignores the request (or refuses it) gives the special token back."""
    probe = next((s for s in specials if len(text_ids(tokenizer, s)) == 1), None)
    if probe is None:
        return False
    try:
        return text_ids(tokenizer, probe, as_text=True) != text_ids(tokenizer, probe)
    except TypeError:  # a tokenizer whose __call__ takes no split_special_tokens
        return False


def spells_special(conv: list[dict], pattern: re.Pattern | None) -> bool:
    """Whether any turn's text spells a special token."""
    return pattern is not None and any(pattern.search(m["content"]) for m in conv)


def literal_spans(
    conv: list[dict], full: str, render: Callable[[list[dict], bool], str], pattern: re.Pattern
) -> list[tuple[int, int]] | None:
    """The character spans of ``full`` (``conv`` rendered) where the conversation's own text spells a special
    token; None where they cannot be told from the template's (a template that rewrites the text it is
    given: the masked rendering then differs in length)."""
    masked = [dict(m, content=pattern.sub(lambda t: _MASK * len(t.group()), m["content"])) for m in conv]
    try:
        shown = render(masked, False)
    except Exception:  # a template that refuses the masked text: the spans are unknown
        return None
    if len(shown) != len(full):
        return None
    return [t.span() for t in pattern.finditer(full) if shown[t.start() : t.end()] == _MASK * (t.end() - t.start())]

"""Tokenizing a rendered conversation with labels on the assistant replies only (everything else is -100).

Label boundaries are found by rendering *prefixes* of the conversation (up to each
assistant turn, with the generation prompt; and up to the end of that turn) and tokenizing
those prefixes, so they are exact for any template: a boundary is taken from the tokens of
the prefix itself, never guessed from the text.
"""

from __future__ import annotations

from layerscope.core.data.examples import IGNORE_INDEX
from layerscope.core.data.formats import supervised
from layerscope.core.data.sources import SFTRecordError
from layerscope.core.data.special_text import (
    literal_spans,
    special_pattern,
    spells_special,
    splits_special_tokens,
    text_ids,
)
from layerscope.core.data.templates import chat_render, end_token_text, plain_render, special_prefix
from layerscope.core.errors import error_line

_STAND_IN = "\ue000reply\ue001"  # private-use characters: no template or reply writes them


class ResponseTokenizer:
    """Per-run tokenization state: the renderer, the tokenizer's special tokens, counters."""

    def __init__(self, tokenizer, template: str, append_eos: bool = True):
        self.tok = tokenizer
        self.append_eos = append_eos  # raw text only: templates end their replies with their own end token
        self.eos_text = end_token_text(tokenizer)
        self.plain_lead = special_prefix(tokenizer)  # what tokenizer(text) puts first by itself (bos)
        if template == "chat":
            self.render, self.lead = chat_render(tokenizer), []  # the template writes bos itself
        else:
            self.render, self.lead = plain_render(self.eos_text), self.plain_lead
        specials = [s for s in getattr(tokenizer, "all_special_tokens", []) if s]
        self.specials = sorted(set(specials), key=len, reverse=True)
        self.special_text = special_pattern(self.specials)  # a record's own "<s>", "<|im_end|>": read as text
        self.reads_special_text = self.special_text is not None and splits_special_tokens(tokenizer, self.specials)
        self.special_text_read = 0  # records whose text spells a special token, tokenized as the text it is
        self.special_text_unread = 0  # ... tokenized as the special token (the tokenizer or template cannot tell)
        self.retokenized = 0  # prefix tokens that did not line up: segment tokenized on its own
        self.located = 0  # assistant turns whose bounds came from a text search (template rewrote history)
        self._prompt_ignored: bool | None = None  # the template writes nothing for add_generation_prompt

    def encode(self, text: str, as_text: bool = False) -> list[int]:
        return text_ids(self.tok, text, as_text)

    def encode_alone(self, text: str, as_text: bool = False) -> list[int]:
        """Tokens of ``text`` as if it continued earlier text, not as the start of a string (``as_text``:
        special-token spellings in it read as text).

        Sentencepiece-style tokenizers put a "▁" (space) before the start of every string, so
        tokenizing a piece on its own would add a space the template never wrote. Tokenizing
        it after a newline and removing the newline's tokens avoids that; where the newline
        merges with the piece (it starts with whitespace) the piece is tokenized plainly.
        """
        sentinel = self.encode("\n")
        joined = self.encode("\n" + text, as_text)
        if sentinel and joined[: len(sentinel)] == sentinel:
            return joined[len(sentinel) :]
        return self.encode(text, as_text)

    # --- character spans of the supervised text

    def spans(self, conv: list[dict], full: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        last = 0
        for i, m in enumerate(conv):
            if not supervised(m):
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
            before = self.render(conv[:i], True) if i else self._before_leading_reply(full)
            through = self.render(conv[: i + 1], False)
        except Exception:  # some templates refuse a prefix (e.g. one that must start with a user turn)
            return None
        if before is None or not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            return None
        start = len(before)
        if i and self._ignores_generation_prompt():
            # then `before` ends at the previous turn and the assistant header ("<|im_start|>assistant\n",
            # "[/INST]") would be supervised as if the model wrote it: start at the reply itself
            start = self._reply_start(conv, i, full, start)
        # The reply and its end token; the whitespace a template puts after it is not the model's output.
        return start, len(before) + len(through[len(before) :].rstrip())

    def _before_leading_reply(self, full: str) -> str | None:
        """What the template writes before a reply that opens the conversation (bos, the assistant header).
        The prefix before it would be an empty conversation, which transformers refuses to render, and the
        reply would be searched for instead, without its end marker where that is no special token
        (ChatML's "<|im_end|>" on a tokenizer that lacks it). So a stand-in reply is rendered alone and the
        text before it taken; None where that text is not how ``full`` begins."""
        probe = self.render([{"role": "assistant", "content": _STAND_IN}], False)
        at = probe.find(_STAND_IN)
        if at < 0 or probe[:at] != full[:at]:
            return None
        while at > 0 and probe[at - 1] == " ":  # as in _reply_start: the space joins the reply's first word
            at -= 1
        return full[:at]

    def _ignores_generation_prompt(self) -> bool:
        """Whether the template writes nothing for add_generation_prompt (a property of the template:
        probed once, on a conversation of its own)."""
        if self._prompt_ignored is None:
            probe = [{"role": "user", "content": "x"}]
            try:
                self._prompt_ignored = self.render(probe, True) == self.render(probe, False)
            except Exception:  # a template that refuses the probe: assume it honours the prompt
                self._prompt_ignored = False
        return self._prompt_ignored

    def _reply_start(self, conv: list[dict], i: int, full: str, start: int) -> int:
        """Where turn ``i``'s reply begins: the template renders a stand-in reply, whose place in that
        text (which must match the real conversation's up to there) is where the header ends. A space
        right before it stays with the reply, since tokenizers join it to the first word ("ĠParis")."""
        try:
            probe = self.render([*conv[:i], {"role": "assistant", "content": _STAND_IN}], False)
        except Exception:
            return start
        at = probe.find(_STAND_IN, start)
        if at <= start or probe[:at] != full[:at]:
            return start
        while at > start and probe[at - 1] == " ":
            at -= 1
        return at

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

    def tokenize(
        self,
        full: str,
        spans: list[tuple[int, int]],
        lead: list[int],
        literal: list[tuple[int, int]] = (),
    ) -> tuple[list[int], list[int]]:
        """Tokenize ``full`` so that every span edge is a token edge; label the span tokens.

        Each piece's tokens come from tokenizing the prefix that ends at its right edge and
        keeping what extends the previous prefix's tokens. If the previous tokens are not a
        prefix of the longer one (a token merges across the edge), that piece is tokenized
        on its own from the edge onward, which keeps the label boundary exact. A ``literal`` span
        (the record's own spelling of a special token) is a piece tokenized as text, on its own, and
        the text after it starts afresh, so no prefix holding it is ever tokenized with specials parsed.
        """
        cuts = sorted({0, len(full), *[c for s in (*spans, *literal) for c in s]})
        literal_starts = {s[0] for s in literal}
        ids, labels = list(lead), [IGNORE_INDEX] * len(lead)
        anchor, anchored = 0, []  # tokens of full[anchor:previous cut]
        fresh = False  # the previous piece was literal text: this one starts anew
        for left, right in zip(cuts, cuts[1:]):
            if left in literal_starts:  # at the very start, as a string's start (sentencepiece's "▁" before it)
                text, fresh = full[left:right], True
                piece = self.encode(text, as_text=True) if left == 0 else self.encode_alone(text, as_text=True)
            elif fresh:
                anchor, fresh = left, False
                piece = anchored = self.encode_alone(full[left:right])
            else:
                cand = self.encode(full[anchor:right])
                if cand[: len(anchored)] == anchored:
                    piece, anchored = cand[len(anchored) :], cand
                else:
                    self.retokenized += 1
                    anchor = left
                    piece = anchored = self.encode_alone(full[left:right])
            ids += piece
            supervised = any(a <= left < b for a, b in spans)
            labels += piece if supervised else [IGNORE_INDEX] * len(piece)
        return ids, labels

    def _literal(self, conv: list[dict], full: str, raw_text: bool) -> list[tuple[int, int]]:
        """The spans of ``full`` where the record's own text spells a special token, to be read as text; none
        where it spells none, or where they cannot be read as text (counted: ``load_sft`` says so in a note)."""
        if not spells_special(conv, self.special_text):
            return []
        if raw_text:  # no template: every spelling in the text is the record's (the eos appended after is not)
            found = [t.span() for t in self.special_text.finditer(conv[0]["content"])]
        else:
            found = literal_spans(conv, full, self.render, self.special_text) if self.reads_special_text else None
        if found is None or not self.reads_special_text:
            self.special_text_unread += 1
            return []
        self.special_text_read += 1
        return found

    def example(self, conv: list[dict], raw_text: bool, where: str) -> tuple[list[int], list[int]]:
        """Tokens and labels of one conversation; ``where`` names the record (``FILE: line N``)."""
        if raw_text:  # plain text: no template, loss on every token after the leading bos (and eos, if appended)
            text = conv[0]["content"]
            full = text + (self.eos_text if self.append_eos else "")
            spans = [(0, len(full))] if text.strip() else []
            return self.tokenize(full, spans, self.plain_lead, self._literal(conv, full, raw_text))
        try:
            full = self.render(conv, False)
        except Exception as e:
            raise SFTRecordError(f"{where}: the tokenizer's chat template rejected it ({error_line(e, 200)})") from e
        return self.tokenize(full, self.spans(conv, full), self.lead, self._literal(conv, full, raw_text))

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
        self.retokenized = 0  # prefix tokens that did not line up: segment tokenized on its own
        self.located = 0  # assistant turns whose bounds came from a text search (template rewrote history)
        self._prompt_ignored: bool | None = None  # the template writes nothing for add_generation_prompt

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
            before = self.render(conv[:i], True)
            through = self.render(conv[: i + 1], False)
        except Exception:  # some templates refuse a prefix (e.g. one that must start with a user turn)
            return None
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            return None
        start = len(before)
        if self._ignores_generation_prompt():
            # then `before` ends at the previous turn and the assistant header ("<|im_start|>assistant\n",
            # "[/INST]") would be supervised as if the model wrote it: start at the reply itself
            start = self._reply_start(conv, i, full, start)
        # The reply and its end token; the whitespace a template puts after it is not the model's output.
        return start, len(before) + len(through[len(before) :].rstrip())

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

    def example(self, conv: list[dict], raw_text: bool, where: str) -> tuple[list[int], list[int]]:
        """Tokens and labels of one conversation; ``where`` names the record (``FILE: line N``)."""
        if raw_text:  # plain text: no template, loss on every token after the leading bos (and eos, if appended)
            text = conv[0]["content"]
            full = text + (self.eos_text if self.append_eos else "")
            return self.tokenize(full, [(0, len(full))] if text.strip() else [], self.plain_lead)
        try:
            full = self.render(conv, False)
        except Exception as e:
            raise SFTRecordError(f"{where}: the tokenizer's chat template rejected it ({error_line(e, 200)})") from e
        return self.tokenize(full, self.spans(conv, full), self.lead)

"""Rendering a conversation to text: the tokenizer's chat template, or the plain template.

Plain template, used when the tokenizer has no chat template (or ``template="plain"``);
blocks are joined by a blank line and every reply ends with the tokenizer's eos token::

    {system}

    ### Instruction:
    {user}

    ### Response:
    {assistant}</s>
"""

from __future__ import annotations

from collections.abc import Callable

PLAIN_USER = "### Instruction:\n"
PLAIN_RESPONSE = "### Response:\n"


def plain_render(eos: str) -> Callable[[list[dict], bool], str]:
    """The fallback template (see the module docstring)."""

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


def chat_render(tokenizer) -> Callable[[list[dict], bool], str]:
    def render(conv: list[dict], add_generation_prompt: bool) -> str:
        out = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(out, str):
            raise TypeError(f"chat template returned {type(out).__name__}, expected text")
        return out

    return render


def special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before the text by itself (usually just bos), for the plain template."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_sp) - len(without) + 1):
        if with_sp[k : k + len(without)] == without:
            return list(with_sp[:k])
    return []


def end_token_text(tokenizer) -> str:
    """The eos token as text, but only if it tokenizes back to exactly the eos id."""
    eos, eos_id = getattr(tokenizer, "eos_token", None), getattr(tokenizer, "eos_token_id", None)
    if not eos or eos_id is None:
        return ""
    return eos if tokenizer(eos, add_special_tokens=False)["input_ids"] == [eos_id] else ""

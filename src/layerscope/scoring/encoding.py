"""Context / continuation token ids exactly as lm-evaluation-harness makes them (HF backend).

The context is encoded alone, ``context + continuation`` is encoded whole and split at the
context's token length, so a choice's tokens are those the model would see after the context
in running text, not the continuation tokenized on its own.

Texts longer than the tokenizer's ``model_max_length`` are encoded whole and quietly
(``verbose=False``): the evaluator truncates them from the left as lm-eval does, so the
tokenizer's "indexing errors" warning would describe something that never happens.
"""

from __future__ import annotations

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode_like_lm_eval(tokenizer, text: str) -> list[int]:
    """lm-eval's ``tok_encode``: the tokenizer's default special tokens, unless ``text`` already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        return list(tokenizer.encode(text, add_special_tokens=False, verbose=False))
    return list(tokenizer.encode(text, verbose=False))


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Batch version of :func:`encode_like_lm_eval` (one fast-tokenizer call per group)."""
    bos = getattr(tokenizer, "bos_token", None)
    out: list[list[int] | None] = [None] * len(texts)
    plain = [i for i, t in enumerate(texts) if not (bos and t.startswith(bos))]
    raw = [i for i, t in enumerate(texts) if bos and t.startswith(bos)]
    for idx, special in ((plain, True), (raw, False)):
        if idx:
            enc = tokenizer([texts[i] for i in idx], add_special_tokens=special, verbose=False)["input_ids"]
            for i, e in zip(idx, enc):
                out[i] = list(e)
    return out  # type: ignore[return-value]


def encode_requests(tokenizer, contexts: list[str], continuations: list[list[str]]) -> list[list[Request]]:
    """(context ids, continuation ids) of every request, per item: one context, several continuations each."""
    return encode_pairs(tokenizer, [[(c, cont) for cont in conts] for c, conts in zip(contexts, continuations)])


def encode_pairs(tokenizer, items: list[list[tuple[str, str]]]) -> list[list[Request]]:
    """(context ids, continuation ids) of every (context, continuation) pair, per item, as lm-eval's ``_encode_pair``.

    Trailing whitespace of a context moves to its continuation; the whole string is encoded
    and split at the context's token length (each distinct context is encoded once, so
    partial-scoring items, whose contexts differ, cost one encoding per context). An empty
    context becomes the BOS (else EOS) token.
    """
    pairs: list[tuple[str, str]] = []
    for item in items:
        for c, cont in item:
            n = len(c) - len(c.rstrip())
            pairs.append((c[:-n], c[-n:] + cont) if n else (c, cont))
    uniq = list(dict.fromkeys(a for a, _ in pairs if a))
    ctx_enc = dict(zip(uniq, _encode_many(tokenizer, uniq)))
    whole_enc = iter(_encode_many(tokenizer, [a + b for a, b in pairs if a]))
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    out: list[list[Request]] = []
    k = 0
    for item in items:
        encoded = []
        for _ in item:
            c_text, cont_text = pairs[k]
            k += 1
            if c_text:
                c = ctx_enc[c_text]
                encoded.append((c, next(whole_enc)[len(c) :]))
            else:
                cont = list(tokenizer.encode(cont_text, add_special_tokens=False, verbose=False))
                encoded.append((cont[:1], cont[1:]) if cont and cont[0] == prefix_id else ([prefix_id], cont))
        out.append(encoded)
    return out

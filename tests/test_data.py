"""SFT data loading: formats, exact response-only labels, truncation, splits, collation, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerscope.core.data import DEMO_DATA, SFTData, SFTExample, collate, load_records, load_sft, split_heldout
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.models import default_model_dir

IGNORE = -100

# A small chat template for a tokenizer that has none (stories260K), so the chat path is
# always tested even where the SmolLM2 tokenizer is not cached.
TINY_TEMPLATE = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CONV = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def write(tmp_path: Path, name: str, obj) -> str:
    p = tmp_path / name
    if isinstance(obj, bytes):
        p.write_bytes(obj)
    elif name.endswith(".jsonl"):
        p.write_text("\n".join(json.dumps(r) for r in obj) + "\n", encoding="utf-8")
    else:
        p.write_text(json.dumps(obj), encoding="utf-8")
    return str(p)


def label_runs(ex: SFTExample) -> list[list[int]]:
    """Contiguous runs of supervised tokens."""
    runs, cur = [], []
    for x in ex.labels:
        if x != IGNORE:
            cur.append(x)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def decoded_runs(tok, ex: SFTExample) -> list[str]:
    return [tok.decode(r) for r in label_runs(ex)]


@pytest.fixture(scope="module")
def stories_tok(stories_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(stories_path))


@pytest.fixture(scope="module")
def tiny_chat_tok(stories_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(stories_path))
    tok.chat_template = TINY_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def smol_tok():
    path = default_model_dir()
    if not (path / "tokenizer.json").exists():
        pytest.skip("default SmolLM2 tokenizer not cached")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if not tok.chat_template:
        pytest.skip("cached SmolLM2 tokenizer has no chat template")
    return tok


# ----------------------------------------------------------------------------- formats

FORMAT_CASES = {
    "alpaca": (
        [
            {
                "instruction": "Add the numbers.",
                "input": "2, 3",
                "output": "5",
                "system": "Be exact.",
                "history": [["Hi", "Hello!"]],
            }
        ],
        [
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Add the numbers.\n\n2, 3"},
            {"role": "assistant", "content": "5"},
        ],
    ),
    "messages": ([{"messages": CONV}], CONV),
    "sharegpt": (
        [
            {
                "conversations": [
                    {"from": "system", "value": "Answer briefly."},
                    {"from": "human", "value": "Q?"},
                    {"from": "gpt", "value": "A."},
                ]
            }
        ],
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A."},
        ],
    ),
    "prompt_completion": (
        [{"prompt": "2+2=", "completion": "4"}],
        [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
    ),
    "reasoning": (
        [
            {
                "context": "Tom has 2 apples and buys 3. How many?",
                "chain_of_thought": "2 + 3 = 5 apples.",
                "answer": "5",
            }
        ],
        [
            {"role": "user", "content": "Tom has 2 apples and buys 3. How many?"},
            {"role": "assistant", "content": "2 + 3 = 5 apples.\n#### 5"},
        ],
    ),
    "text": ([{"text": "Once upon a time."}], [{"role": "assistant", "content": "Once upon a time."}]),
}


@pytest.mark.parametrize("fmt", list(FORMAT_CASES))
@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_formats_detected_and_normalised(tmp_path, fmt, ext):
    records, expected = FORMAT_CASES[fmt]
    convs, detected = load_records(write(tmp_path, f"d.{ext}", records))
    assert detected == fmt
    assert convs == [expected]


def test_format_option_and_aliases(tmp_path):
    path = write(tmp_path, "d.json", [{"messages": CONV, "text": "ignored"}])
    assert load_records(path)[1] == "messages"  # messages wins over text
    assert load_records(path, format="text")[1] == "text"
    assert load_records(path, format="chat")[1] == "messages"
    with pytest.raises(ConfigError, match="unknown data format"):
        load_records(path, format="xml")


def test_reasoning_answer_kept_once_and_numbers_accepted(tmp_path):
    records = [
        {"question": "1+1?", "solution": "One and one make 2. The answer is 2.", "answer": "2"},
        {"problem": "3*3?", "rationale": "3 times 3", "answer": 9},
        {"question": "?", "reasoning": "no answer field"},
        {"question": "How much?", "solution": "20% of $0.50 = $0.10", "answer": "10"},  # 10 is not stated there
    ]
    convs, fmt = load_records(write(tmp_path, "r.jsonl", records))
    assert fmt == "reasoning"
    assert [c[1]["content"] for c in convs] == [
        "One and one make 2. The answer is 2.",
        "3 times 3\n#### 9",
        "no answer field",
        "20% of $0.50 = $0.10\n#### 10",
    ]
    with pytest.raises(DataError, match="line 1: field 'answer' is a list"):
        load_records(write(tmp_path, "bad.jsonl", [{"question": "q", "solution": "s", "answer": [1]}]))
    # a passage and a question about it: the prompt holds both
    passage = [
        {"context": "Bob met Ann.", "question": "Who met Ann?", "rationale": "The text says so.", "answer": "Bob"}
    ]
    convs, _ = load_records(write(tmp_path, "p.jsonl", passage))
    assert convs[0][0]["content"] == "Bob met Ann.\n\nWho met Ann?"
    for empty in (None, ""):  # no passage to join: the question alone, as before
        convs, _ = load_records(write(tmp_path, "p.jsonl", [dict(passage[0], context=empty)]))
        assert convs[0][0]["content"] == "Who met Ann?"
    with pytest.raises(DataError, match="field 'context' is a list"):  # not text: refused, not dropped
        load_records(write(tmp_path, "p.jsonl", [dict(passage[0], context=["a", "list"])]))


def test_unpaired_preference_records_are_refused(tmp_path):
    """TRL / KTO records mark undesirable completions with label false: read as SFT, they would be learned."""
    kto = [
        {"prompt": "Hi", "completion": "Hello!", "label": True},
        {"prompt": "Hi", "completion": "Go away", "label": False},
    ]
    with pytest.raises(DataError, match="unpaired preference records"):
        load_records(write(tmp_path, "kto.jsonl", kto))


def test_shared_gsm8k_cot_loads_as_reasoning():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "reasoning" / "gsm8k_cot.jsonl"
    convs, fmt = load_records(str(path), limit=3)
    assert fmt == "reasoning" and len(convs) == 3
    assert convs[0][1]["content"].endswith("#### 18")


def test_objects_one_per_line_in_a_json_file(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    convs, fmt = load_records(str(p))
    assert fmt == "prompt_completion" and len(convs) == 2


def test_line_and_paragraph_separators_inside_strings_are_text(tmp_path):
    """json.dumps(ensure_ascii=False) writes U+2028 / U+2029 / U+0085 raw: one record, not a broken line."""
    from layerscope.core.tasks import load_task

    text = "one\u2028two\u2029three\u0085four"
    sft = tmp_path / "d.jsonl"
    sft.write_text(json.dumps({"prompt": text, "completion": "b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    convs, _ = load_records(str(sft))
    assert convs[0][0]["content"] == text
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"query": text, "choices": ["a", "b"], "gold": 0}, ensure_ascii=False) + "\r\n")
    assert load_task(str(mc)).items[0].context == text
    old_mac = tmp_path / "cr.jsonl"  # lines ended by \r alone
    old_mac.write_bytes(b'{"prompt": "a", "completion": "b"}\r{"prompt": "c", "completion": "d"}\r')
    assert len(load_records(str(old_mac))[0]) == 2


def test_limit_takes_first_records(tmp_path):
    path = write(tmp_path, "d.json", [{"prompt": str(i), "completion": "x"} for i in range(10)])
    convs, _ = load_records(path, limit=3)
    assert [c[0]["content"] for c in convs] == ["0", "1", "2"]


# ----------------------------------------------------------------------------- labels


def test_plain_template_labels_exact(tmp_path, stories_tok):
    path = write(tmp_path, "d.json", [{"instruction": "What is 2+2?", "input": "", "output": "2+2 is 4."}])
    data = load_sft(path, stories_tok, max_length=256)
    assert data.format == "alpaca" and data.stats["template"] == "plain"
    ex = data.examples[0]
    assert len(ex.input_ids) == len(ex.labels)
    assert ex.input_ids[0] == stories_tok.bos_token_id and ex.labels[0] == IGNORE
    assert decoded_runs(stories_tok, ex) == ["2+2 is 4.</s>"]
    assert ex.input_ids[-1] == stories_tok.eos_token_id
    # The whole sequence is the documented plain template, tokenized in one go.
    text = "### Instruction:\nWhat is 2+2?\n\n### Response:\n2+2 is 4.</s>"
    assert ex.input_ids == stories_tok(text)["input_ids"]


def test_plain_template_multiturn_all_replies_supervised(tmp_path, stories_tok):
    rec = {
        "instruction": "And of Italy?",
        "input": "",
        "output": "Rome.",
        "history": [["What is the capital of France?", "Paris."], ["Thanks. Spain?", "Madrid."]],
    }
    data = load_sft(write(tmp_path, "d.json", [rec]), stories_tok)
    assert decoded_runs(stories_tok, data.examples[0]) == ["Paris.</s>", "Madrid.</s>", "Rome.</s>"]


def test_tiny_chat_template_labels_exact(tmp_path, tiny_chat_tok):
    data = load_sft(write(tmp_path, "d.json", [{"messages": CONV}]), tiny_chat_tok)
    assert data.stats["template"] == "chat"
    ex = data.examples[0]
    assert decoded_runs(tiny_chat_tok, ex) == ["Paris is the capital of France.</s>", "Rome.</s>"]
    full = tiny_chat_tok.apply_chat_template(CONV, tokenize=False)
    assert ex.input_ids == tiny_chat_tok(full, add_special_tokens=False)["input_ids"]


def test_template_without_a_generation_prompt_does_not_supervise_the_assistant_header(tmp_path, stories_path):
    """A template that writes nothing for add_generation_prompt: the prefix before a reply then ends at
    the previous turn, and the "assistant:" header would be labelled as if the model wrote it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(stories_path))
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>: {{ m['content'] }}</s>\n{% endfor %}"
    data = load_sft(write(tmp_path, "d.json", [{"messages": CONV}]), tok)
    assert decoded_runs(tok, data.examples[0]) == ["Paris is the capital of France.</s>", "Rome.</s>"]
    # a reply whose text also occurs in the header ("a" in "assistant") starts after the header all the same
    short = [{"role": "user", "content": "Pick one."}, {"role": "assistant", "content": "a"}]
    data = load_sft(write(tmp_path, "s.json", [{"messages": short}]), tok)
    assert decoded_runs(tok, data.examples[0]) == ["a</s>"]
    # Llama-2 style: "[/INST] reply": the space before the reply stays with it (one "▁Paris" token), and
    # the whole text is tokenized as a whole
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    data = load_sft(write(tmp_path, "l.json", [{"messages": CONV}]), tok)
    ex = data.examples[0]
    assert decoded_runs(tok, ex) == ["Paris is the capital of France.</s>", "Rome.</s>"]
    assert ex.input_ids == tok(tok.apply_chat_template(CONV, tokenize=False), add_special_tokens=False)["input_ids"]


def test_token_merging_across_boundary_keeps_labels_exact(tmp_path, stories_path):
    # This template's generation prompt ends with a space, which the tokenizer merges with
    # the reply's first word ("▁the"): the reply is then tokenized on its own (after the
    # prompt's own tokens, without an extra leading space) and the labels stay exact.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(stories_path))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "the answer is here."}]
    data = load_sft(write(tmp_path, "d.json", [{"messages": conv}]), tok)
    ex = data.examples[0]
    assert data.stats["retokenized_boundaries"] == 1
    assert decoded_runs(tok, ex) == ["the answer is here.</s>"]
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    first = next(i for i, x in enumerate(ex.labels) if x != IGNORE)
    assert ex.input_ids[:first] == tok(prompt, add_special_tokens=False)["input_ids"]  # as at generation time
    natural = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
    assert tok.decode(ex.input_ids) == tok.decode(natural)  # same text, no space added


def test_template_that_rewrites_earlier_turns_falls_back_to_locating_replies(tmp_path, stories_path):
    # Here the last message is marked differently from earlier ones, so a rendered prefix is not
    # a prefix of the whole conversation: the replies are then found in the text instead.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(stories_path))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% if loop.last %}[last]{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    data = load_sft(write(tmp_path, "d.json", [{"messages": CONV}]), tok)
    assert data.stats["located_turns"] >= 1
    assert decoded_runs(tok, data.examples[0]) == ["Paris is the capital of France.</s>", "Rome.</s>"]


SPELLS_SPECIALS = "Wrap it in the s tag: <s>old price</s>"  # an alpaca reply about HTML: text, not bos / eos


def test_special_token_text_in_a_record_is_read_as_text_under_the_plain_template(tmp_path, stories_tok, capsys):
    """A record's own "<s>" / "</s>" was tokenized as bos / eos, and the reply trained to end mid-sentence; the
    template's own eos after the reply stays the one eos."""
    tok = stories_tok
    path = write(tmp_path, "a.jsonl", [{"instruction": "Tag the price.", "output": SPELLS_SPECIALS}])
    data = load_sft(path, tok)
    ex = data.examples[0]
    assert ex.input_ids.count(tok.bos_token_id) == 1 and ex.input_ids.count(tok.eos_token_id) == 1
    assert ex.input_ids[-1] == tok.eos_token_id and ex.labels[-1] == tok.eos_token_id
    assert decoded_runs(tok, ex) == [SPELLS_SPECIALS + "</s>"]
    assert data.stats["special_text_as_text"] == 1 and data.stats["special_text_as_token"] == 0
    text = load_sft(write(tmp_path, "t.jsonl", [{"text": "<s>Once</s> upon a time"}]), tok).examples[0]
    assert text.input_ids.count(tok.bos_token_id) == 1 and text.input_ids.count(tok.eos_token_id) == 1
    assert tok.decode(text.input_ids[1:-1]).strip() == "<s>Once</s> upon a time"
    plain = load_sft(write(tmp_path, "p.jsonl", [{"instruction": "Tag it.", "output": "Done."}]), tok)
    assert plain.stats["special_text_as_text"] == 0 and "special token" not in capsys.readouterr().err


def test_special_token_text_in_a_record_is_read_as_text_under_a_chat_template(tmp_path, tiny_chat_tok):
    """The chat template writes bos and eos itself: those parse as special, the record's own spellings do not."""
    tok = tiny_chat_tok
    conv = [{"role": "user", "content": "Show </s>."}, {"role": "assistant", "content": SPELLS_SPECIALS}]
    ex = load_sft(write(tmp_path, "m.jsonl", [{"messages": conv}]), tok).examples[0]
    assert ex.input_ids.count(tok.bos_token_id) == 1 and ex.input_ids.count(tok.eos_token_id) == 1
    assert decoded_runs(tok, ex) == [SPELLS_SPECIALS + "</s>"]
    assert "Show </s>." in tok.decode(ex.input_ids)  # the user's spelling is text too


def test_special_token_text_read_as_the_token_is_said_in_a_note(tmp_path, stories_tok, monkeypatch, capsys):
    """A tokenizer that cannot read a special token's text as text: the records are read as before, in a note."""
    import layerscope.core.data.labels as labels

    monkeypatch.setattr(labels, "splits_special_tokens", lambda tok, specials: False)
    path = write(
        tmp_path,
        "a.jsonl",
        [{"instruction": "Hi", "output": "Hello."}, {"instruction": "Tag.", "output": SPELLS_SPECIALS}],
    )
    data = load_sft(path, stories_tok)
    assert data.stats["special_text_as_token"] == 1
    assert (
        "a.jsonl: 1 of 2 records spell a special token in their text (first: line 2), which this tokenizer or "
        "template reads as that token, not as text" in capsys.readouterr().err
    )


def test_special_token_text_in_a_record_is_read_as_text_by_smollm2(tmp_path, smol_tok):
    """ChatML's "<|im_end|>" quoted in a reply ended the reply's turn in the tokens."""
    conv = [
        {"role": "user", "content": "Show the ChatML end tag"},
        {"role": "assistant", "content": "It is <|im_end|> and then <|im_start|>user"},
    ]
    ex = load_sft(write(tmp_path, "m.jsonl", [{"messages": conv}]), smol_tok).examples[0]
    natural = smol_tok.apply_chat_template(conv, tokenize=False)
    end, start = smol_tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert ex.input_ids.count(end) == natural.count("<|im_end|>") - 1  # the template's three, not the reply's
    assert ex.input_ids.count(start) == natural.count("<|im_start|>") - 1
    assert decoded_runs(smol_tok, ex) == ["It is <|im_end|> and then <|im_start|>user<|im_end|>"]
    assert smol_tok.decode(ex.input_ids) == natural


def test_smollm2_chat_template_labels_exact(tmp_path, smol_tok):
    recs = [{"messages": CONV}, {"instruction": "Name a primary colour.", "input": "", "output": "Red."}]
    data = load_sft(write(tmp_path, "d.jsonl", recs[:1]), smol_tok)
    ex = data.examples[0]
    assert decoded_runs(smol_tok, ex) == ["Paris is the capital of France.<|im_end|>", "Rome.<|im_end|>"]
    assert ex.input_ids == smol_tok.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"]
    # Whitespace at the start of a reply merges with the template's newline ("ĊĊ"): still exact.
    odd = [{"role": "user", "content": "List."}, {"role": "assistant", "content": "\n\n\n* One"}]
    odd_data = load_sft(write(tmp_path, "o.json", [{"messages": odd}]), smol_tok)
    assert odd_data.stats["retokenized_boundaries"] == 1
    assert decoded_runs(smol_tok, odd_data.examples[0]) == ["\n\n\n* One<|im_end|>"]
    # Alpaca through the template: the default system prompt and the user turn are masked.
    alp = load_sft(write(tmp_path, "a.json", recs[1:]), smol_tok).examples[0]
    assert decoded_runs(smol_tok, alp) == ["Red.<|im_end|>"]
    prompt = smol_tok.decode([t for t, lab in zip(alp.input_ids, alp.labels) if lab == IGNORE])
    assert "Name a primary colour." in prompt and prompt.endswith("<|im_start|>assistant\n\n")


def test_text_format_supervises_every_token(tmp_path, stories_tok, tiny_chat_tok):
    for tok in (stories_tok, tiny_chat_tok):  # raw text: no template even when the tokenizer has one
        data = load_sft(write(tmp_path, "d.json", [{"text": "The cat sat on the mat."}]), tok)
        ex = data.examples[0]
        assert data.stats["template"] == "raw"
        assert ex.labels[0] == IGNORE and ex.labels[1:] == ex.input_ids[1:]
        assert tok.decode(ex.input_ids) == "<s> The cat sat on the mat.</s>"


# ----------------------------------------------------------------------------- counts, subsets, splits


def test_truncation_and_drop_counts(tmp_path, stories_tok):
    long_prompt = "word " * 200
    recs = [
        {"instruction": "Say hi.", "input": "", "output": "Hi."},  # fits
        {"instruction": "Count.", "input": "", "output": "one two three " * 50},  # reply truncated, kept
        {"instruction": long_prompt, "input": "", "output": "Lost."},  # nothing of the reply survives
        {"instruction": "Say nothing.", "input": "", "output": "  "},  # empty reply
    ]
    data = load_sft(write(tmp_path, "d.json", recs), stories_tok, max_length=64)
    s = data.stats
    assert (s["records"], s["kept"], s["truncated"], s["dropped_no_response"]) == (4, 2, 2, 2)
    assert all(len(e.input_ids) <= 64 for e in data.examples)
    assert len(data.examples[1].input_ids) == 64
    assert s["response_tokens"] == sum(sum(x != IGNORE for x in e.labels) for e in data.examples)


def test_everything_truncated_away_is_a_data_error(tmp_path, stories_tok):
    path = write(tmp_path, "d.json", [{"instruction": "word " * 100, "input": "", "output": "x"}])
    with pytest.raises(DataError, match=r"d\.json: no examples left with response tokens.*1 truncated"):
        load_sft(path, stories_tok, max_length=16)


@pytest.mark.parametrize(
    "tokenizer, said",
    [(None, r" \(e\.g\. .*\), got None$"), ("stories260K", r", got the name 'stories260K': load it first")],
)
def test_a_missing_tokenizer_is_one_line(tokenizer, said):
    """``load_sft("demo", None)`` was a TypeError ("'NoneType' object is not callable") from the first record;
    a model's name given for its tokenizer is named as such."""
    with pytest.raises(ConfigError, match=rf"^tokenizer must be a Hugging Face tokenizer{said}"):
        load_sft("demo", tokenizer)


def test_shuffle_limit_reproducible(tmp_path, stories_tok):
    path = write(tmp_path, "d.json", [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(30)])
    a = load_sft(path, stories_tok, limit=5, shuffle_seed=3)
    b = load_sft(path, stories_tok, limit=5, shuffle_seed=3)
    c = load_sft(path, stories_tok, limit=5)
    full = load_sft(path, stories_tok)
    assert [e.input_ids for e in a.examples] == [e.input_ids for e in b.examples]
    assert [e.input_ids for e in a.examples] != [e.input_ids for e in c.examples]
    assert c.examples == full.examples[:5]
    assert a.fingerprint == b.fingerprint and len({a.fingerprint, c.fingerprint, full.fingerprint}) == 3
    assert len(full.fingerprint) == 16 and full.stats["records"] == 30


def test_a_forced_format_is_part_of_the_data_fingerprint(tmp_path, stories_tok):
    """The same file read in another format gives other examples, so another fingerprint; left to auto, the
    fingerprint stays the file's (as before --format was offered beyond ila)."""
    import hashlib

    path = write(
        tmp_path, "d.json", [{"text": f"story {i}", "prompt": f"Q{i}", "completion": f"A{i}"} for i in range(4)]
    )
    auto = load_sft(path, stories_tok)
    text = load_sft(path, stories_tok, format="text")
    assert auto.format == "prompt_completion" and text.format == "text" and auto.examples != text.examples
    assert auto.fingerprint == hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] != text.fingerprint


def test_forcing_the_detected_format_keeps_the_data_fingerprint(tmp_path, stories_tok):
    """Forced to the format auto detects (an alias of it too), a file gives the same examples: the same
    fingerprint, with a subset drawn or not, so the two runs' results are seen to read the same data."""
    path = write(tmp_path, "d.json", [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(4)])
    for kw in ({}, {"limit": 2, "shuffle_seed": 1}):
        auto = load_sft(path, stories_tok, **kw)
        forced = load_sft(path, stories_tok, format="alpaca", **kw)
        assert forced.format == auto.format == "alpaca" and forced.examples == auto.examples
        assert forced.fingerprint == auto.fingerprint
    chat = write(
        tmp_path, "c.json", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    )
    assert load_sft(chat, stories_tok, format="chat").fingerprint == load_sft(chat, stories_tok).fingerprint


def test_split_heldout(tmp_path, stories_tok):
    path = write(tmp_path, "d.json", [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(20)])
    data = load_sft(path, stories_tok)
    train, held = split_heldout(data, fraction=0.25, seed=1)
    assert (len(train.examples), len(held.examples)) == (15, 5)
    ids = lambda d: {tuple(e.input_ids) for e in d.examples}  # noqa: E731
    assert ids(train) | ids(held) == ids(data) and not ids(train) & ids(held)
    again = split_heldout(data, fraction=0.25, seed=1)
    assert again[1].examples == held.examples and again[1].fingerprint == held.fingerprint
    assert split_heldout(data, fraction=0.25, seed=2)[1].examples != held.examples
    assert held.stats["split"] == "heldout" and train.fingerprint != held.fingerprint
    with pytest.raises(ConfigError):
        split_heldout(data, fraction=1.0)
    # a shorter max_length drops long examples, so the same seed holds out others: another fingerprint
    records = [{"prompt": ("long " * 40 if i % 5 == 0 else "") + f"Q{i}", "completion": f"A{i}"} for i in range(40)]
    mixed = write(tmp_path, "mixed.json", records)
    short, long_ = (split_heldout(load_sft(mixed, stories_tok, max_length=n), 0.25, seed=0)[1] for n in (32, 512))
    assert ids(short) != ids(long_) and short.fingerprint != long_.fingerprint


def test_split_heldout_keeps_identical_examples_on_one_side(tmp_path, stories_tok, capsys):
    """A record the file holds twice (alpaca_gpt4_1k.json holds 14) was split by position, so its copies could
    land on both sides: held-out loss measured on a training example. Copies now stay together, said in a note."""
    records = [{"prompt": f"Q{i % 12}", "completion": f"A{i % 12}"} for i in range(40)]  # 12 texts, 28 repeats
    data = load_sft(write(tmp_path, "dups.json", records), stories_tok)
    ids = lambda d: [tuple(e.input_ids) for e in d.examples]  # noqa: E731
    for seed in range(6):
        train, held = split_heldout(data, fraction=0.25, seed=seed)
        assert held.examples and not set(ids(train)) & set(ids(held))
        assert sorted(ids(train) + ids(held)) == sorted(ids(data))
        assert len(held.examples) <= 10
    assert "28 of 40 examples repeat an earlier one; each is kept on the side of the split" in capsys.readouterr().err
    distinct = load_sft(write(tmp_path, "d.json", records[:12]), stories_tok)
    split_heldout(distinct, fraction=0.25, seed=0)
    assert "repeat" not in capsys.readouterr().err  # nothing to say without duplicates
    same = load_sft(write(tmp_path, "same.json", [records[0]] * 4), stories_tok)
    with pytest.raises(DataError, match=r"same\.json: all 4 examples are the same: none can be held out"):
        split_heldout(same)


def test_split_heldout_of_shared_alpaca_holds_out_no_training_example(shared_dir, stories_tok, capsys):
    data = load_sft(str(shared_dir / "data/alignment/alpaca_gpt4_1k.json"), stories_tok, max_length=64, quiet=True)
    train, held = split_heldout(data, fraction=0.1, seed=0)
    assert not {tuple(e.input_ids) for e in train.examples} & {tuple(e.input_ids) for e in held.examples}
    assert "examples repeat an earlier one" in capsys.readouterr().err


def test_collate_pads_right():
    batch = collate([SFTExample([5, 6, 7], [-100, 6, 7]), SFTExample([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


# ----------------------------------------------------------------------------- shipped and real data


def test_demo_data_ships_and_loads(stories_tok):
    assert Path(DEMO_DATA).is_file()
    convs, fmt = load_records(DEMO_DATA)
    assert fmt == "alpaca" and 50 <= len(convs) <= 80
    data = load_sft("demo", stories_tok, max_length=256)
    assert isinstance(data, SFTData) and data.stats["kept"] == len(convs)


@pytest.mark.parametrize("name", ["alpaca_5000.json", "alpaca_gpt4_1k.json", "lima.json"])
def test_real_alignment_files_load(shared_dir, stories_tok, name):
    path = shared_dir / "data" / "alignment" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    data = load_sft(str(path), stories_tok, max_length=512, limit=50)
    assert data.format == "alpaca" and data.stats["records"] == 50
    assert data.stats["kept"] + data.stats["dropped_no_response"] == 50 and data.stats["kept"] >= 40
    for ex in data.examples:
        assert len(ex.input_ids) == len(ex.labels) <= 512
        assert any(x != IGNORE for x in ex.labels)


def test_lima_history_becomes_multiturn(shared_dir):
    path = shared_dir / "data" / "alignment" / "lima.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    raw = json.loads(path.read_text())
    convs, _ = load_records(str(path))
    i = next(k for k, r in enumerate(raw) if r["history"])
    turns = convs[i]
    assert len(turns) == 2 * len(raw[i]["history"]) + 2
    assert turns[0] == {"role": "user", "content": raw[i]["history"][0][0]}
    assert turns[-1] == {"role": "assistant", "content": raw[i]["output"]}


# ----------------------------------------------------------------------------- bad data

BAD = [
    ("invalid.json", b'[{"prompt": "a", "completion": }]', "invalid JSON at line 1"),
    ("badline.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "invalid JSON on line 2"),
    ("latin1.json", '[{"text": "caf\u00e9"}]'.encode("latin-1"), "not valid UTF-8"),
    ("empty.json", b"[]", "empty list"),
    ("blank.jsonl", b"\n\n", "empty file"),
    ("scalar.json", b'"hello"', "expected a JSON list"),
    (
        "unknown.json",
        b'[{"question": "q", "answer": "a"}]',
        r"unrecognised record fields \['answer', 'question'\]; expected one of: alpaca",
    ),
    (
        "missing.json",
        b'[{"instruction": "a", "output": "b"}, {"instruction": "c", "outptu": "d"}]',
        r"record 2: missing field 'output' \(alpaca format\)",
    ),
    ("notobj.json", b'[{"text": "a"}, 3]', "record 2 is a number, expected an object"),
    (
        "role.json",
        b'[{"messages": [{"role": "robot", "content": "x"}]}]',
        'record 1: turn 0 has unsupported role "robot"',  # as the file spells it (JSON), not Python's repr
    ),
    ("type.json", b'[{"prompt": "a", "completion": 4}]', "record 1: field 'completion' is a number, expected a string"),
    ("nullrec.json", b'[{"text": "a"}, null]', "record 2 is null, expected an object"),
    (
        "intfield.json",
        b'[{"instruction": 5, "output": "b"}]',
        "record 1: field 'instruction' is a number, expected a string",
    ),
    ("turns.json", b'[{"messages": {"role": "user"}}]', "record 1: field 'messages' is an object, expected a list"),
    ("turn.json", b'[{"messages": [true]}]', "record 1: turn 0 of 'messages' is a boolean, expected an object"),
    ("chosen.json", b'[{"chosen": 3}]', "record 1: field 'chosen' is a number, expected a string or a list"),
    (
        "history.json",
        b'[{"instruction": "a", "output": "b", "history": [["only one"]]}]',
        "record 1: history item 0 is not an",
    ),
]


def test_json_kind_names_json_types():
    """Messages about a data file name its values as JSON does, not as Python types."""
    from layerscope.core.data.decoding import json_kind

    kinds = [json_kind(json.loads(t)) for t in ("null", "true", "3", "2.5", '"s"', "[1]", "{}")]
    assert kinds == ["null", "a boolean", "a number", "a number", "a string", "a list", "an object"]


@pytest.mark.parametrize("name,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_data_one_line_errors(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=message) as err:
        load_records(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(path)


def test_missing_file(tmp_path, stories_tok):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        load_sft(missing, stories_tok)
    with pytest.raises(DataError, match="is a directory"):
        load_records(str(tmp_path))


def test_bad_options(tmp_path, stories_tok):
    path = write(tmp_path, "d.json", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(ConfigError):
        load_sft(path, stories_tok, max_length=1)
    with pytest.raises(ConfigError):
        load_sft(path, stories_tok, limit=0)
    with pytest.raises(ConfigError, match="no chat template"):
        load_sft(path, stories_tok, template="chat")


# ----------------------------------------------------------------------------- the data people bring

HH = {
    "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
    "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: Five.\n\nHuman: And 3+3?\n\nAssistant: Seven.",
}
HH_TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6."},
]


@pytest.mark.parametrize(
    "record, expected",
    [
        (HH, HH_TURNS),  # HH-RLHF transcript
        (  # TRL, explicit prompt, plain strings
            {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "Five."},
            HH_TURNS[:2],
        ),
        (  # TRL, conversational with an explicit prompt
            {
                "prompt": HH_TURNS[:3],
                "chosen": [HH_TURNS[3]],
                "rejected": [{"role": "assistant", "content": "Seven."}],
            },
            HH_TURNS,
        ),
        (  # TRL, conversational with the prompt implicit in both sides
            {"chosen": HH_TURNS, "rejected": HH_TURNS[:3] + [{"role": "assistant", "content": "Seven."}]},
            HH_TURNS,
        ),
    ],
    ids=["hh-rlhf", "trl-strings", "trl-conversational", "trl-implicit-prompt"],
)
def test_preference_pairs_read_the_chosen_side(tmp_path, record, expected):
    convs, fmt = load_records(write(tmp_path, "pairs.jsonl", [record]))
    assert fmt == "preference" and convs == [expected]


def test_preference_pairs_label_only_chosen_replies_and_say_so(tmp_path, stories_tok, capsys):
    data = load_sft(write(tmp_path, "hh.jsonl", [HH, HH]), stories_tok)
    assert data.format == "preference" and data.stats["side"] == "chosen"
    assert decoded_runs(stories_tok, data.examples[0]) == ["It is 4.</s>", "6.</s>"]
    err = capsys.readouterr().err
    assert "using the 'chosen' replies" in err and "'rejected' ones are not used" in err
    assert data.stats["notes"] and "chosen" in data.stats["notes"][0]


@pytest.mark.parametrize(
    "record",
    [
        # UltraFeedback: the whole conversation in chosen, user turn included, beside the same prompt
        {"prompt": "What is 2+2?", "chosen": HH_TURNS[:2], "rejected": [HH_TURNS[0], HH_TURNS[1]]},
        {"prompt": HH_TURNS[:1], "chosen": HH_TURNS[:2], "rejected": HH_TURNS[:1]},
        # Dahoas' HH splits: the prompt is the transcript up to an open "Assistant:" turn
        {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " It is 4.", "rejected": " Five."},
    ],
    ids=["ultrafeedback", "ultrafeedback-prompt-turns", "hh-prompt-transcript"],
)
def test_preference_prompts_are_read_once(tmp_path, record):
    convs, _ = load_records(write(tmp_path, "pairs.jsonl", [record]))
    assert convs == [HH_TURNS[:2]]


def test_orca_dpo_pairs_read_question_as_the_prompt_and_system_first(tmp_path):
    """Intel/orca_dpo_pairs: {system, question, chosen, rejected}, the chosen reply after both."""
    record = {"system": "Be brief.", "question": "What is 2+2?", "chosen": "It is 4.", "rejected": "Five."}
    convs, fmt = load_records(write(tmp_path, "orca.jsonl", [record, {**record, "system": ""}]))
    assert fmt == "preference" and convs[0] == [{"role": "system", "content": "Be brief."}, *HH_TURNS[:2]]
    assert convs[1] == HH_TURNS[:2]  # an empty system prompt adds no turn
    with pytest.raises(DataError, match="field 'system' is a number, expected a string"):
        load_records(write(tmp_path, "bad.jsonl", [{**record, "system": 3}]))


def test_a_prompt_that_only_opens_with_a_speaker_is_one_user_turn(tmp_path):
    convs, _ = load_records(write(tmp_path, "p.jsonl", [{"prompt": "Human: hi", "chosen": "Hello."}]))
    assert convs == [[{"role": "user", "content": "Human: hi"}, {"role": "assistant", "content": "Hello."}]]


def test_turns_marked_not_to_learn_are_kept_in_the_text_unlabelled(tmp_path, stories_tok, tiny_chat_tok):
    """axolotl's per-turn ``weight: 0`` / ``train: false``: the turn is context, not a reply to learn."""
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad answer.", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Good answer.", "weight": 1},
    ]
    marked = [{**conv[1], "train": False, "weight": 1}]
    for tok, end in ((stories_tok, "</s>"), (tiny_chat_tok, "</s>")):
        data = load_sft(write(tmp_path, "w.jsonl", [{"messages": conv}]), tok)
        assert decoded_runs(tok, data.examples[0]) == [f"Good answer.{end}"]
        assert "Bad answer." in tok.decode(data.examples[0].input_ids)
    convs, _ = load_records(write(tmp_path, "t.jsonl", [{"messages": [conv[0], *marked, *conv[2:]]}]))
    assert convs[0][1] == {"role": "assistant", "content": "Bad answer.", "train": False}
    for bad, message in (({"weight": 0.5}, "turn 1 has weight 0.5; expected 0"), ({"train": "no"}, 'train "no"')):
        path = write(tmp_path, "b.jsonl", [{"messages": [conv[0], {**conv[1], "weight": 1, **bad}]}])
        with pytest.raises(DataError, match=message):
            load_records(path)
    with pytest.raises(DataError, match=r"turn 1 has weight true; expected 0"):  # JSON's spelling, not Python's
        load_records(write(tmp_path, "b.jsonl", [{"messages": [conv[0], {**conv[1], "weight": True}]}]))


def test_a_null_weight_or_train_is_no_mark(tmp_path):
    """datasets / pandas write ``null`` into every turn that lacks a field some turns have: not a mark (it was
    refused as "turn 0 has weight None"); ShareGPT turns alike."""
    messages = [
        {"role": "user", "content": "Hi", "weight": None, "train": None},
        {"role": "assistant", "content": "Bad.", "weight": 0, "train": None},
        {"role": "user", "content": "Again", "weight": None},
        {"role": "assistant", "content": "Good.", "weight": None, "train": None},
    ]
    convs, _ = load_records(write(tmp_path, "m.jsonl", [{"messages": messages}]))
    assert convs[0][1] == {"role": "assistant", "content": "Bad.", "train": False}
    assert convs[0][3] == {"role": "assistant", "content": "Good."}
    turns = [{"from": "human", "value": "Hi", "train": None}, {"from": "gpt", "value": "Yes.", "weight": None}]
    convs, _ = load_records(write(tmp_path, "s.jsonl", [{"conversations": turns}]))
    assert convs[0][1] == {"role": "assistant", "content": "Yes."}


def test_developer_turns_are_system_turns(tmp_path):
    conv = [{"role": "developer", "content": "Be brief."}, *HH_TURNS[:2]]
    convs, _ = load_records(write(tmp_path, "d.jsonl", [{"messages": conv}]))
    assert convs[0][0] == {"role": "system", "content": "Be brief."}


def test_a_conversation_without_assistant_turn_is_dropped_under_a_chat_template_too(tmp_path, stories_tok, capsys):
    """A chat template may refuse an empty conversation outright: it is dropped before rendering, as the
    plain template drops it, so a file's fate does not depend on the model's template."""
    from transformers import AutoTokenizer

    strict = AutoTokenizer.from_pretrained(stories_tok.name_or_path)
    strict.chat_template = "{% if not messages %}{{ raise_exception('empty conversation') }}{% endif %}" + TINY_TEMPLATE
    path = write(tmp_path, "e.jsonl", [{"messages": []}, {"messages": CONV}])
    for tok in (stories_tok, strict):
        data = load_sft(path, tok)
        assert data.stats["kept"] == 1 and data.stats["dropped_no_assistant_turn"] == 1
        assert "1 of 2 examples dropped: no assistant turn (first: line 1)" in capsys.readouterr().err


def test_pretty_printed_records_one_after_another_are_read(tmp_path):
    """``jq '.[]'`` writes records pretty-printed one after another: valid JSON, read record by record."""
    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(3)]
    for name in ("s.jsonl", "s.json"):
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r, indent=2) for r in rows) + "\n")
        convs, fmt = load_records(str(path))
        assert fmt == "alpaca" and [c[1]["content"] for c in convs] == ["A0", "A1", "A2"]
    path.write_text(json.dumps(rows[0], indent=2) + "\n{\n  oops\n}\n")  # not a stream: the line at fault
    with pytest.raises(DataError, match="invalid JSON on line 6 column 3"):
        load_records(str(path))


def test_a_broken_pretty_printed_record_is_named_by_its_own_line(tmp_path):
    """One broken record in ``jq '.[]'`` output was "invalid JSON on line 1 column 2" (line 1, "{", is no JSON
    value alone): the line and column of the fault itself are named, first record broken or a later one."""
    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(3)]
    pretty = [json.dumps(r, indent=2) for r in rows]  # 4 lines each
    for name in ("s.jsonl", "s.json"):
        path = tmp_path / name
        path.write_text("\n".join([*pretty[:2], pretty[2].replace('"A2"', '"A2",')]) + "\n")  # a trailing comma
        with pytest.raises(DataError, match=r"invalid JSON on line 12 column 1 \(Expecting property name"):
            load_records(str(path))
        path.write_text("\n".join([pretty[0].replace('"Q0"', "Q0"), *pretty[1:]]) + "\n")
        with pytest.raises(DataError, match=r"invalid JSON (on|at) line 2 column 18 \(Expecting value\)"):
            load_records(str(path))
    # JSON Lines with a record cut short is still named by its own line, not where the next record starts
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(rows[0]) + '\n{"instruction": "x", "output": \n' + json.dumps(rows[1]) + "\n")
    with pytest.raises(DataError, match=r"invalid JSON on line 2 column 32 \(Expecting value\)"):
        load_records(str(path))


def test_encoding_errors_name_the_line_and_no_python_hint(tmp_path):
    """A latin-1 byte said only its offset; two files with a BOM joined by cat said Python's "(decode using
    utf-8-sig)", advice about Python's API rather than the file."""
    rows = [json.dumps({"instruction": "Q", "output": "A"})] * 2
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        "\n".join([*rows, json.dumps({"instruction": "Café?", "output": "Oui"}, ensure_ascii=False)]).encode("latin-1")
    )
    with pytest.raises(DataError, match=r"latin\.jsonl: not valid UTF-8 \(bad byte 0xe9 on line 3, at offset \d+\)"):
        load_records(str(path))
    joined = tmp_path / "joined.jsonl"
    joined.write_bytes(b"\xef\xbb\xbf" + rows[0].encode() + b"\n" + b"\xef\xbb\xbf" + rows[1].encode() + b"\n")
    with pytest.raises(DataError, match=r"line 2 column 1 \(a UTF-8 byte-order mark inside the text") as e:
        load_records(str(joined))
    assert "utf-8-sig" not in str(e.value)


def test_data_piped_in_is_read_once_for_every_reader(tmp_path, stories_tok):
    """``--data /dev/stdin`` or ``<(zcat f)``: a pipe reads once, and a command reads its data twice (the check
    before the model loads, then the load), so valid data was refused as an empty file."""
    import os

    from layerscope.cli.common import check_data_file

    records = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "bye")]
    read, write_end = os.pipe()  # what a shell's <(cat d.jsonl) hands over: /dev/fd/N
    os.write(write_end, ("\n".join(map(json.dumps, records)) + "\n").encode())
    os.close(write_end)
    try:
        check_data_file(f"/dev/fd/{read}")
        data = load_sft(f"/dev/fd/{read}", stories_tok)
    finally:
        os.close(read)
    plain = load_sft(write(tmp_path, "d.jsonl", records), stories_tok)
    assert data.examples == plain.examples and data.fingerprint == plain.fingerprint


def test_json_nested_past_the_recursion_limit_is_one_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    for name in ("deep.json", "deep.jsonl"):
        (tmp_path / name).write_text(deep)
        with pytest.raises(DataError, match="JSON nested too deeply"):
            load_records(str(tmp_path / name))


def test_preference_text_without_speakers_is_refused(tmp_path):
    path = write(tmp_path, "p.json", [{"chosen": "just text", "rejected": "other text"}])
    with pytest.raises(DataError, match=r"record 1: 'chosen' is text with no 'prompt' field and no 'Human:'"):
        load_records(path)


def test_gzip_files_load_like_plain_ones(tmp_path, stories_tok):
    import gzip

    records = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "bye", "yes")]
    plain = write(tmp_path, "d.jsonl", records)
    text = Path(plain).read_bytes()
    zipped = tmp_path / "d.jsonl.gz"
    zipped.write_bytes(gzip.compress(text))
    a, b = load_sft(plain, stories_tok), load_sft(str(zipped), stories_tok)
    assert [e.input_ids for e in a.examples] == [e.input_ids for e in b.examples]
    assert a.fingerprint == b.fingerprint  # the same records, whatever the compression
    one_json = tmp_path / "l.json.gz"
    one_json.write_bytes(gzip.compress(json.dumps(records).encode()))
    assert load_records(str(one_json))[0] == load_records(plain)[0]


BINARY = [
    ("cut.jsonl.gz", None, "gzip file is truncated or corrupt"),
    ("archive.json", b"PK\x03\x04\x14\x00\x00\x00rest", "a zip archive, not JSON / JSON Lines text; unzip it"),
    ("train.parquet.json", b"PAR1\x15\x04rest", "a Parquet file"),
    ("excel.json", '[{"text": "hi"}]'.encode("utf-16"), "UTF-16 text; save it as UTF-8"),
    ("le.jsonl", '{"text": "héllo"}\n'.encode("utf-16-le"), r"UTF-16 text \(no byte-order mark\); save it as UTF-8"),
    ("be.json", '[{"text": "hi"}]'.encode("utf-16-be"), r"UTF-16 text \(no byte-order mark\); save it as UTF-8"),
    ("blob.jsonl", b"\x00\x01\x02\xff\xfe\x00" * 20, "a binary file"),
    ("bz.jsonl", b"BZh91AY&SY" + bytes(20), "bzip2-compressed"),
]


@pytest.mark.parametrize("name,content,message", BINARY, ids=[b[0] for b in BINARY])
def test_binary_files_named_in_one_line(tmp_path, name, content, message):
    import gzip

    if content is None:
        content = gzip.compress(b'{"text": "a"}\n' * 50)[:30]
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=message) as err:
        load_records(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(path)


def test_csv_is_refused_with_the_formats_that_are_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nSay hi.,Hi.\n")
    with pytest.raises(DataError, match=r"d\.csv: CSV is not a supported SFT data format.*alpaca.*preference"):
        load_records(str(path))
    with pytest.raises(DataError, match="data file not found"):  # a missing one is not sent to the hub
        load_records(str(tmp_path / "other.csv"))


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"prompt": "What is 2+2?"}, {"prompt": "Name a colour."}], r"prompts only \(fields \['prompt'\]\)"),
        ([{"instruction": "Tell a joke.", "input": ""}], r"prompts only \(fields \['input', 'instruction'\]\)"),
        ([{"messages": [{"role": "user", "content": "Hi?"}]}], "no record has a non-empty reply"),
        ([{"instruction": "Q1", "output": ""}, {"instruction": "Q2", "output": " "}], "no record has a non-empty"),
        (
            [{"query": "Q: x?\nA:", "choices": [" a", " b"], "gold": 0}],
            r"multiple-choice items.*is an evaluation task \(--task of eval, .*--eval-tasks of finetune\)",
        ),
        (  # AQuA-RAT: a rationale beside the options is no reasoning record (the options would be lost)
            [
                {
                    "question": "When do they meet?",
                    "options": ["A)1h", "B)2h"],
                    "rationale": "Speed 50: 2h.",
                    "correct": "B",
                }
            ],
            r"multiple-choice items \(fields \['correct', 'options', 'question', 'rationale'\]\)",
        ),
        (
            [{"question": "Sky?", "choices": ["red", "blue"], "answer": 1, "reasoning": "Scattering."}],
            "multiple-choice items",
        ),
    ],
    ids=["prompt", "alpaca-without-output", "user-turns-only", "empty-outputs", "mc-items", "aqua", "mc-reasoning"],
)
def test_prompt_only_and_mc_files_are_refused(tmp_path, records, message):
    with pytest.raises(DataError, match=message):
        load_records(write(tmp_path, "q.json", records))


def test_text_eos_is_a_choice(tmp_path, stories_tok):
    path = write(tmp_path, "t.json", [{"text": "The cat sat on the mat."}])
    with_eos, without = load_sft(path, stories_tok), load_sft(path, stories_tok, append_eos=False)
    assert with_eos.stats["append_eos"] is True and without.stats["append_eos"] is False
    assert with_eos.examples[0].input_ids[:-1] == without.examples[0].input_ids
    assert with_eos.examples[0].input_ids[-1] == stories_tok.eos_token_id
    assert without.examples[0].labels[1:] == without.examples[0].input_ids[1:]  # still every token after bos
    assert with_eos.fingerprint != without.fingerprint  # different scored tokens, different data
    chat = write(tmp_path, "c.json", [{"prompt": "a", "completion": "b"}])  # templates are unaffected
    assert load_sft(chat, stories_tok).examples == load_sft(chat, stories_tok, append_eos=False).examples


def test_drops_are_said_where_they_happen(tmp_path, stories_tok, capsys):
    recs = [
        {"instruction": "Say hi.", "output": "Hi."},
        {"instruction": "word " * 200, "output": "Lost."},  # the reply starts past max_length
        {"instruction": "word " * 300, "output": "Lost too."},
        {"instruction": "Say nothing.", "output": ""},  # no reply at all
    ]
    data = load_sft(write(tmp_path, "d.json", recs), stories_tok, max_length=64)
    s = data.stats
    assert (s["dropped_past_max_length"], s["dropped_empty_reply"], s["dropped_no_response"]) == (2, 1, 3)
    err = capsys.readouterr().err.splitlines()
    assert any("2 of 4 examples dropped: no response token within max_length 64" in line for line in err)
    assert any("1 of 4 examples dropped: empty reply" in line for line in err)
    load_sft(write(tmp_path, "d.json", recs), stories_tok, max_length=64, quiet=True)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- reading what users bring


def test_errors_name_the_record_where_it_is_in_the_file(tmp_path, stories_tok):
    """``line N`` (the physical line) in JSON Lines, ``record N`` (from 1) in a JSON list, whatever
    blank lines, a shuffle or a limit do to the order."""
    good = {"instruction": "Say hi.", "output": "Hi."}
    lines = [json.dumps(good)] * 4 + ["", json.dumps({"instruction": "x"})] + [json.dumps(good)] * 14
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for kwargs in ({}, {"limit": 16, "shuffle_seed": 0}, {"limit": 16, "shuffle_seed": 5}):
        with pytest.raises(DataError, match=r"d\.jsonl: line 6: missing field 'output'"):
            load_sft(str(path), stories_tok, **kwargs)
    with pytest.raises(DataError, match=r"d\.json: record 5: missing field 'output'"):
        load_records(write(tmp_path, "d.json", [good] * 4 + [{"instruction": "x"}]))
    half_emoji = json.dumps(good) + "\n\n" + '{"instruction": "Hi \\ud83d", "output": "Hello."}\n'
    with pytest.raises(DataError, match=r"e\.jsonl: line 3: a string holds half"):
        load_records(write(tmp_path, "e.jsonl", half_emoji.encode()))


def test_a_file_of_several_splits_is_refused_by_name(tmp_path):
    """Reading its train split where held-out data was meant would score the wrong records without a word."""
    rec = {"instruction": "Say hi.", "output": "Hi."}
    for splits, named in ((("train", "validation"), "train, validation"), (("validation", "test"), "validation, test")):
        path = write(tmp_path, "s.json", {s: [rec, rec] for s in splits})
        with pytest.raises(DataError, match=rf"s\.json: a JSON object holding several splits \({named}\); save the"):
            load_records(path)
    convs, _ = load_records(write(tmp_path, "one.json", {"train": [rec] * 3, "meta": {"version": 1}}))
    assert len(convs) == 3  # one list of records and its metadata: no choice to make


def test_a_json_array_saved_as_jsonl_is_read(tmp_path):
    """A common slip (the task reader takes it too): read as the JSON list it is, records named as in a list."""
    recs = [{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Count.", "output": "One."}]
    expected = load_records(write(tmp_path, "d.json", recs))
    for name, text in (("pretty.jsonl", json.dumps(recs, indent=1)), ("one_line.jsonl", json.dumps(recs))):
        assert load_records(write(tmp_path, name, text.encode())) == expected
    with pytest.raises(DataError, match=r"bad\.jsonl: record 2: missing field 'output'"):
        load_records(write(tmp_path, "bad.jsonl", json.dumps([recs[0], {"instruction": "x"}]).encode()))


def test_a_shuffled_draw_names_the_first_cut_record_of_the_file(tmp_path, stories_tok, capsys):
    """--limit draws records in shuffled order: "first:" still names the earliest in the file, where a
    user would start looking (QA saw "first: record 5" with every record cut)."""
    recs = [{"instruction": f"Tell story {i}.", "output": "story " * 200} for i in range(8)]
    data = load_sft(write(tmp_path, "long.json", recs), stories_tok, max_length=64, limit=8, shuffle_seed=0)
    assert data.stats["reply_truncated"] == 8
    err = capsys.readouterr().err
    assert "8 of 8 examples kept with their reply cut at max_length 64 (first: record 1)" in err, err


def test_cut_replies_and_missing_assistant_turns_are_said(tmp_path, stories_tok, capsys):
    recs = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        {"messages": [{"role": "user", "content": "Hi"}]},  # no assistant turn
        {"messages": [{"role": "user", "content": "Go"}, {"role": "assistant", "content": "story " * 200}]},
    ]
    data = load_sft(write(tmp_path, "m.jsonl", recs), stories_tok, max_length=64)
    s = data.stats
    assert (s["kept"], s["reply_truncated"], s["dropped_no_assistant_turn"], s["dropped_empty_reply"]) == (2, 1, 1, 0)
    err = capsys.readouterr().err.splitlines()
    assert any("1 of 3 examples dropped: no assistant turn (first: line 2)" in line for line in err)
    assert any(
        "1 of 3 examples kept with their reply cut at max_length 64 (first: line 3); a longer --max-length" in line
        for line in err
    )
    load_sft(write(tmp_path, "ok.jsonl", recs[:1]), stories_tok, max_length=64)
    assert capsys.readouterr().err == ""  # nothing cut, nothing said


def test_a_length_past_the_models_context_is_cut_to_it_and_said(tmp_path, stories_tok, capsys):
    """Positions a model never learned are read silently (rotary) or fail deep in its forward (learned
    positions): --max-length past the context is cut to it, and the notes stop suggesting a longer one."""
    recs = [{"instruction": "Go", "output": "story " * 200}]
    path = write(tmp_path, "d.json", recs)
    capped = load_sft(path, stories_tok, max_length=1024, context_length=64, length_flag="--seq-len")
    assert capped.stats["max_length"] == 64 and len(capped.examples[0].input_ids) == 64
    assert capped.examples == load_sft(path, stories_tok, max_length=64).examples
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: " + str(path) + ": --seq-len 1024 is past the model's context: examples cut at 64 tokens"
    assert err[1].endswith("with their reply cut at max_length 64 (first: record 1); 64 is the model's context")
    load_sft(path, stories_tok, max_length=32, context_length=64)
    assert capsys.readouterr().err.endswith("a longer --max-length keeps them whole\n")


@pytest.mark.parametrize("command", ["ila", "finetune", "eval"])
def test_commands_cut_the_length_at_the_models_context(command, stories_path, tmp_path, monkeypatch, capsys):
    import layerscope.methods.ila as ila_api
    import layerscope.training as training_api
    from layerscope.cli.app import main

    def stop(*args, **kwargs):
        raise ConfigError("stopped once the data is loaded")

    monkeypatch.setattr(ila_api, "run_ila_to_folder", stop)
    monkeypatch.setattr(training_api, "finetune", stop)
    data = write(tmp_path, "sft.json", [{"instruction": "Say hi.", "output": "Hi there, friend."}] * 12)
    flag = "--max-length"  # every command's name (ila / finetune showed --seq-len, still accepted)
    argv = [command, "--model", str(stories_path), "--data", str(data), flag, "4096", "--threads", "1"]
    argv += {"finetune": ["--mode", "all", "--out", str(tmp_path / "o")], "ila": ["--out", str(tmp_path / "o")]}.get(
        command, ["--limit", "2"]
    )
    main([*argv, "--no-progress"])
    assert f"{flag} 4096 is past the model's context: examples cut at 512 tokens" in capsys.readouterr().err


def test_an_integral_float_answer_reads_as_the_integer(tmp_path):
    recs = [{"question": "x?", "solution": "so 18", "answer": a} for a in (18, 18.0)]
    recs += [{"question": "y?", "solution": "so", "answer": a} for a in (18, 18.0, 0.5)]
    convs, _ = load_records(write(tmp_path, "r.jsonl", recs))
    assert [c[1]["content"] for c in convs] == ["so 18", "so 18", "so\n#### 18", "so\n#### 18", "so\n#### 0.5"]


def test_a_held_out_file_that_is_the_training_file_is_refused(tmp_path, stories_tok, capsys):
    """Its "held-out" loss would be a training loss; a file sharing some examples is noted."""
    from layerscope.training.inputs import load_train_heldout

    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(6)]
    train = write(tmp_path, "train.jsonl", rows)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(Path(train).read_bytes())
    for held in (train, str(copy)):
        with pytest.raises(ConfigError, match=r"^--heldout .* holds the same file as --data .*train\.jsonl"):
            load_train_heldout(train, stories_tok, 64, heldout=held)
    some = write(tmp_path, "held.jsonl", rows[4:] + [{"instruction": "Q9", "output": "A9"}])
    _, held = load_train_heldout(train, stories_tok, 64, heldout=some)
    assert len(held.examples) == 3
    assert "note: 2 of 3 held-out examples" in capsys.readouterr().err


def test_a_held_out_file_of_training_examples_only_is_refused(tmp_path, stories_tok):
    """The same records in another file (reordered, a subset, another format) passed with a note "6 of 6
    held-out examples ... are also training examples": every held-out number would be a training loss."""
    from layerscope.training.inputs import load_train_heldout

    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(6)]
    train = write(tmp_path, "train.jsonl", rows)
    for name, held_rows in (("reordered.jsonl", rows[::-1]), ("subset.json", rows[:2])):
        with pytest.raises(DataError, match=rf"^--heldout .*{name}: all \d of its examples are also training"):
            load_train_heldout(train, stories_tok, 64, heldout=write(tmp_path, name, held_rows))
    messages = [
        {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        for r in rows
    ]
    with pytest.raises(DataError, match="its loss would be a training loss"):
        load_train_heldout(train, stories_tok, 64, heldout=write(tmp_path, "messages.jsonl", messages))


def test_a_datasets_save_to_disk_folder_is_read(tmp_path, stories_tok):
    """``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folders: read with ``datasets``, a split
    picked as ``FOLDER:split`` (default train)."""
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(4)]
    one = tmp_path / "one"
    datasets.Dataset.from_list(rows).save_to_disk(str(one))
    convs, fmt = load_records(str(one))
    assert fmt == "alpaca" and [c[1]["content"] for c in convs] == ["A0", "A1", "A2", "A3"]
    both = tmp_path / "both"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    ).save_to_disk(str(both))
    assert len(load_records(str(both))[0]) == 4 and len(load_records(f"{both}:test")[0]) == 1
    assert load_sft(f"{both}:test", stories_tok).stats["kept"] == 1
    with pytest.raises(DataError, match=r"no split 'dev'; it has train, test \(pick one as .*:SPLIT\)"):
        load_records(f"{both}:dev")
    with pytest.raises(DataError, match="a single dataset, no splits"):
        load_records(f"{one}:train")


def test_records_in_memory_load_as_the_same_records_in_a_file_do(tmp_path, stories_tok):
    """A list of dicts (or a datasets.Dataset) is data, not a file name: it was turned into one with str()
    and looked up as a path ("File name too long" for a long list) or a hub id ("hub cannot be reached")."""
    rows = [{"instruction": f"Question number {i}?", "output": f"Answer {i}."} for i in range(60)]
    from_file = load_sft(write(tmp_path, "d.json", rows), stories_tok, max_length=64)
    for given in (rows, tuple(rows[:1])):  # a long list, a short one
        data = load_sft(given, stories_tok, max_length=64)
        assert data.format == "alpaca" and data.source == "in-memory records"
        assert [e.input_ids for e in data.examples] == [e.input_ids for e in from_file.examples][: len(given)]
        assert [e.labels for e in data.examples] == [e.labels for e in from_file.examples][: len(given)]
    assert load_sft(rows, stories_tok, limit=5, shuffle_seed=1).stats["records"] == 5
    assert load_sft(rows, stories_tok).fingerprint == load_sft(list(rows), stories_tok).fingerprint
    datasets = pytest.importorskip("datasets")
    assert load_sft(datasets.Dataset.from_list(rows), stories_tok).stats["kept"] == 60


@pytest.mark.parametrize(
    "given, error",
    [
        ([{"instruction": "Hi", "output": "Hello."}, {"instruction": "Hi"}], r"^in-memory records: record 2: "),
        ([{"instruction": "Hi", "output": "Hello."}, "Hi"], r"^in-memory records: record 2 .*expected .*object"),
        ([], r"^in-memory records: empty list, no records$"),
        ({"instruction": "Hi", "output": "Hello."}, r"^SFT data is a file name, .* or a datasets.Dataset, not dict$"),
        (3, r"^SFT data is a file name, .*, not int$"),
    ],
)
def test_bad_records_in_memory_are_named_by_their_index(given, error, stories_tok):
    with pytest.raises(DataError, match=error):
        load_sft(given, stories_tok)


@pytest.mark.parametrize(
    "solution, answer, line_added",
    [
        ("The answer is -5", 5, True),  # -5 is another number
        ("so 1/5", 5, True),
        ("x=10^5", 5, True),
        ("2 + 3 = 2+5", 5, True),
        ("\\boxed{-5}", 5, True),
        ("x = 1,000", "1000", True),  # the number is written otherwise: the line says it plainly
        ("There are 15 apples.", 5, True),
        ("The answer is 5.", 5, False),
        ("\\boxed{5}", 5, False),  # states 5 as a whole (MATH's convention)
        ("x = -5", -5, False),  # a negative answer brings its own sign
        ("x=-5.", "-5", False),
    ],
)
def test_the_answer_line_is_added_unless_the_solution_ends_with_that_very_number(
    tmp_path, solution, answer, line_added
):
    """A solution ending in -5, 1/5 or 10^5 does not state the answer 5: its "#### 5" line was left out."""
    convs, _ = load_records(write(tmp_path, "r.jsonl", [{"question": "Q?", "solution": solution, "answer": answer}]))
    assert convs[0][1]["content"] == (f"{solution}\n#### {answer}" if line_added else solution)


def test_a_reply_that_opens_the_conversation_learns_its_end_marker(tmp_path, stories_path):
    """The prefix before a leading assistant turn is an empty conversation, which transformers refuses to
    render; the reply was then searched for in the text, and ChatML's "<|im_end|>" (no special token of this
    tokenizer) was left out of its labels, while every later reply's was learnt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(stories_path))
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    conv = [
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Good day."},
    ]
    data = load_sft(write(tmp_path, "d.json", [{"messages": conv}]), tok)
    assert decoded_runs(tok, data.examples[0]) == ["Hello there.<|im_end|>", "Good day.<|im_end|>"]
    assert data.stats["located_turns"] == 0
    # a template that writes bos before the first turn: the leading reply starts after its header all the same
    tiny = AutoTokenizer.from_pretrained(str(stories_path))
    tiny.chat_template = TINY_TEMPLATE
    data = load_sft(write(tmp_path, "t.json", [{"messages": conv}]), tiny)
    assert decoded_runs(tiny, data.examples[0]) == ["Hello there.</s>", "Good day.</s>"]


def test_a_record_whose_replies_are_all_marked_not_to_learn_is_said_so(tmp_path, stories_tok, capsys):
    """A messages record whose only reply is marked "weight": 0 was dropped as "empty reply", though its
    reply has text; a file of only such records was "prompts alone"."""
    marked = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey.", "weight": 0}]}
    data = load_sft(write(tmp_path, "d.jsonl", [{"messages": CONV}, marked]), stories_tok)
    assert (data.stats["dropped_untrained_reply"], data.stats["dropped_empty_reply"]) == (1, 0)
    err = capsys.readouterr().err
    assert '1 of 2 examples dropped: no trained reply (every reply is marked "weight": 0 or "train": false) ' in err
    assert "empty reply" not in err
    with pytest.raises(DataError, match=r"no record has a trained reply \(1 records, messages format\): every reply"):
        load_sft(write(tmp_path, "m.jsonl", [marked]), stories_tok)

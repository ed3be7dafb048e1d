import json
import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from layerscope.cli.app import main
from layerscope.core.errors import ConfigError, DataError, ModelError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import build_layer_map
from layerscope.core.models import LoadedModel
from layerscope.engine.coalitions import removed
from layerscope.methods.similarity import _cosine, load_sequences, similarity


def test_stories_values_finite_and_in_range(stories, shared_dir):
    model, tok = stories
    lm = build_layer_map(model)
    seqs, data = load_sequences("arc_easy", tok, max_length=64, limit=10)
    assert len(seqs) == 10 and data["kind"] == "task contexts"
    with pytest.warns(UserWarning, match=r"window 2: the last 1 block\(s\) \(layers\.4\) have no full window"):
        res = similarity(model, lm, seqs, window=2, batch_size=4, model_name="stories260K", data=data, tokenizer=tok)
    bi, ang = res["block_influence"], res["angular_distance"]
    assert bi.players == ang.players == lm.players("block") and bi.granularity == "block"
    assert all(math.isfinite(s) and 0 <= s <= 2 for s in bi.scores)
    assert all(math.isfinite(s) and 0 <= s <= 1 for s in ang.scores)
    table = ang.extras["table"]
    assert sorted(table, key=int) == [str(n) for n in range(1, 6)] and [len(table[str(n)]) for n in range(1, 6)] == [
        5,
        4,
        3,
        2,
        1,
    ]
    assert ang.scores[:4] == table["2"] and ang.scores[4] == table["1"][4]  # window cut at the last block
    assert ang.extras["prune_window"]["start"] == int(np.argmin(table["2"]))
    assert bi.data["n_tokens"] == sum(len(s) for s in seqs)
    # batching does not change the result
    with pytest.warns(UserWarning, match="no full window"):
        again = similarity(model, lm, seqs, window=2, batch_size=3, tokenizer=tok)["block_influence"]
    assert np.allclose(again.scores, bi.scores, atol=1e-6)
    LayerImportance.from_dict(json.loads(json.dumps(bi.to_dict())))


def test_angular_tail_blocks_without_a_full_window_are_warned_and_recorded_and_still_prune():
    """With window n > 1 the last n - 1 blocks are scored d(l, L), over fewer blocks, so smaller for that
    alone: kept (pruning refuses missing scores) but warned about and recorded in extras; window 1 has no
    tail; pruning and its curves still take Gromov's window from the table."""
    import warnings

    from layerscope.core.levels import to_level
    from layerscope.pruning.choose import from_ranking
    from layerscope.pruning.curve import ranking_schedule
    from layerscope.pruning.rankings import least_important_blocks

    model = tiny_model("llama", n_layers=4)
    lm = build_layer_map(model)
    seqs = [list(range(5, 5 + n)) for n in (9, 6, 12)]
    with pytest.warns(UserWarning) as caught:
        ang = similarity(model, lm, seqs, window=3)["angular_distance"]
    assert len(caught) == 1 and str(caught[0].message) == (
        "angular distance, window 3: the last 2 block(s) (layers.2 to layers.3) have no full window, so their "
        "scores d(l, L) span fewer blocks and come out smaller: do not rank them against the others (window 1 "
        "scores every block alike; pruning's window rule reads extras['table'] and is unaffected)"
    )
    assert caught[0].filename == __file__  # points at the caller's line
    table = ang.extras["table"]
    assert ang.scores[:2] == table["3"] and ang.scores[2:] == [table["2"][2], table["1"][3]]  # the short spans
    assert ang.extras["short_windows"]["blocks"] == ["layers.2", "layers.3"]
    assert "not comparable" in ang.extras["short_windows"]["note"]
    # every consumer still reads it: finite scores, the pruning window from the table, aggregation, JSON
    assert all(math.isfinite(s) for s in ang.scores) and to_level(ang, "block") is ang
    best = int(np.argmin(table["3"]))
    assert from_ranking(ang, lm, "block", 3).players == list(range(best, best + 3))
    assert ranking_schedule("angular", ang, 3).removed[2] == list(range(best, best + 3))
    with pytest.raises(ConfigError, match="over shorter spans.*angular_window"):  # not read score by score
        least_important_blocks(ang, 2)
    assert LayerImportance.from_dict(json.loads(json.dumps(ang.to_dict()))).extras["short_windows"]["blocks"] == [
        "layers.2",
        "layers.3",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # window 1: every block has its full window, nothing to say
        one = similarity(model, lm, seqs, window=1)["angular_distance"]
    assert one.extras["short_windows"]["blocks"] == [] and one.scores == table["1"]
    # where it is read score by score anyway, the reader is told: compare's notes, a selection's warning
    from layerscope.training.selection import select_modules
    from layerscope.viz.compare import compare

    comp = compare([ang, one], labels=["w3", "w1"])
    assert [n for n in comp.notes if "shorter spans" in n] == [
        "w3: the angular distance with window 3 scores layers.2 to layers.3 over shorter spans, so they rank "
        "least important for that alone; rank blocks on a window-1 result (pruning's window rule reads "
        "extras['table'] and is unaffected)"
    ]
    with pytest.warns(UserWarning, match="window 3 scores layers.2 to layers.3 over shorter spans"):
        select_modules(lm, ang, mode="top", fraction=0.5)


def test_identity_block_has_zero_influence():
    model = tiny_model("llama", n_layers=3)
    lm = build_layer_map(model)
    seqs = [list(range(5, 5 + n)) for n in (9, 6, 12)]
    with removed(model, lm, [1], "block"):
        res = similarity(model, lm, seqs)
    assert res["block_influence"].scores[1] == pytest.approx(0.0, abs=1e-9)
    assert res["angular_distance"].scores[1] == pytest.approx(0.0, abs=1e-4)  # arccos is steep near 1
    assert res["block_influence"].scores[0] > 1e-3


def test_nan_cosine_counts_as_half():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    assert _cosine(a, b).tolist() == [0.5, 1.0]


def test_data_sources(stories, shared_dir, tmp_path):
    _, tok = stories
    txt = tmp_path / "book.txt"
    txt.write_text("Once upon a time there was a little girl. " * 40, encoding="utf-8")
    seqs, data = load_sequences(str(txt), tok, max_length=32, limit=3)
    assert len(seqs) == 3 and all(len(s) == 32 for s in seqs) and data["kind"] == "text chunks"
    sft = shared_dir / "data" / "alignment" / "lima.json"
    seqs, data = load_sequences(str(sft), tok, max_length=48, limit=4)
    assert len(seqs) == 4 and max(map(len, seqs)) <= 48 and data["kind"] == "sft"
    seqs, data = load_sequences(f"task:{shared_dir / 'data' / 'eval' / 'piqa.jsonl'}", tok, max_length=48, limit=2)
    assert len(seqs) == 2 and data["kind"] == "task contexts"
    with pytest.raises(DataError, match="not found"):
        load_sequences(str(tmp_path / "missing.txt"), tok)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no token sequences"):
        load_sequences(str(tmp_path / "empty.txt"), tok)
    with pytest.raises(ConfigError):
        load_sequences(str(txt), tok, max_length=1)


def test_sequences_in_memory(stories):
    """Texts, SFT records and task items handed over as lists were str()-ed and looked up as a file name."""
    _, tok = stories
    texts = ["Once upon a time there was a little girl. " * 20, "The cat sat on the mat."]
    seqs, data = load_sequences(texts, tok, max_length=32)
    assert [len(s) for s in seqs] == [32, len(tok("The cat sat on the mat.").input_ids) + 1]  # + eos, as text records
    assert data["source"] == "in-memory records" and data["kind"] == "sft"
    items = [{"query": f"Question {i}?", "choices": ["yes", "no"], "gold": 0} for i in range(40)]
    seqs, data = load_sequences(items, tok, max_length=32, limit=3)
    assert len(seqs) == 3 and data["kind"] == "task contexts"
    seqs, data = load_sequences([{"instruction": "Hi", "output": "Hello."}], tok, max_length=32)
    assert len(seqs) == 1 and data["kind"] == "sft"
    with pytest.raises(DataError, match=r"^sequences come from a file name, .*, not float$"):
        load_sequences(1.5, tok)
    neither = r"^in-memory records: neither SFT records \(.*\) nor a task \(.*record 1: missing field 'query'"
    with pytest.raises(DataError, match=neither):
        load_sequences([{"a": 1}], tok)


def test_bad_options():
    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    with pytest.raises(ConfigError, match="window"):
        similarity(model, lm, [[1, 2, 3]], window=3)
    with pytest.raises(DataError):
        similarity(model, lm, [])
    with pytest.raises(ConfigError, match="batch_size"):
        similarity(model, lm, [[1, 2, 3]], batch_size=0)


def test_bad_sequences_are_refused_before_the_forward():
    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    for seqs, message in (
        (
            [[1, 2, 3], [1, 2, vocab]],
            f"^sequence 1: token 2 is {vocab}, not a token id of the model \\(0..{vocab - 1}\\)$",
        ),
        ([[1, 2], []], "^sequence 1: empty"),
        (["hello"], "^sequence 0: a str, not a list of token ids"),
        ([[1, 2.5]], "^sequence 0: token 1 is 2.5, not a token id"),  # torch would truncate it to 2
        ([[-1, 2]], "^sequence 0: token 0 is -1, not a token id"),
    ):
        with pytest.raises(DataError, match=message):
            similarity(model, lm, seqs)


def test_a_2d_tensor_is_taken_as_rows_and_other_shapes_are_refused():
    """``block_influence(model, lm, torch.tensor([[1, 2, 3, 4]]))`` measures the rows (a tensor's truth
    value used to fail with torch's "ambiguous" error); a 1-D tensor or text is refused in one line."""
    from layerscope.methods.similarity import block_influence

    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    rows = [[1, 2, 3, 4], [5, 6, 7, 8]]
    want = block_influence(model, lm, rows)
    for given in (torch.tensor(rows), np.array(rows)):
        got = block_influence(model, lm, given)
        assert got.scores == want.scores and got.data["n_tokens"] == 8
    with pytest.raises(DataError, match="^sequences: a 1-D Tensor; pass a 2-D one"):
        block_influence(model, lm, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(DataError, match="^sequences: a str, not a list of token-id lists"):
        similarity(model, lm, "some text")


def test_load_sequences_defaults_to_the_command_max_length(stories, tmp_path):
    """The API's default max_length is the CLI's (512, ``layerscope similarity --max-length``), not 256."""
    import argparse
    import inspect

    from layerscope.cli import similarity as command
    from layerscope.core.data import DEFAULT_MAX_LENGTH

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args([]).max_length == DEFAULT_MAX_LENGTH == 512
    assert inspect.signature(load_sequences).parameters["max_length"].default == DEFAULT_MAX_LENGTH
    _, tok = stories
    txt = tmp_path / "long.txt"
    txt.write_text("Once upon a time there was a little dog who liked to run in the park. " * 80)
    seqs, data = load_sequences(str(txt), tok, limit=2)
    assert data["max_length"] == 512 and max(len(s) for s in seqs) == 512


def test_refuses_what_the_coalition_engine_refuses():
    model = tiny_model("llama", n_layers=2)
    lm = build_layer_map(model)
    with pytest.raises(ModelError, match="^got the LoadedModel .*pass its \\.model"):
        similarity(LoadedModel(model=model, tokenizer=None, name="tiny"), lm, [[1, 2, 3]])
    model.train()
    with pytest.raises(ConfigError, match="training mode .*call model.eval"):
        similarity(model, lm, [[1, 2, 3]])


def test_cli_similarity(stories_path, shared_dir, tmp_path, capsys):
    rc = main(
        [
            "similarity",
            "--model",
            str(stories_path),
            "--data",
            "arc_easy",
            "--limit",
            "6",
            "--max-length",
            "64",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "least important blocks" in capsys.readouterr().out
    for name in ("block_influence", "angular_distance"):  # one folder per method, as every command writes
        imp = LayerImportance.load(tmp_path / name)
        assert len(imp.scores) == 5
        assert imp.model["name"] == "stories260K" and len(imp.model["fingerprint"]) == 16  # a name, not a path
        assert (tmp_path / name / "bar.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.json"))  # no flat result files beside the folders
    # plot and compare read the output folder whole, or one method's folder
    assert main(["plot", str(tmp_path / "block_influence"), "--out", str(tmp_path / "figs" / "bi.png")]) == 0
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "angular_distance.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 results, 5 players" in out and "angular_distance" in out and "block_influence" in out
    assert (
        main(["similarity", "--model", str(stories_path), "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path)])
        == 2
    )


def test_text_records_take_append_eos(stories, stories_path, tmp_path, capsys):
    """``text`` records end with the eos token unless --no-append-eos, as in eval / ila / finetune."""
    _, tok = stories
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("Once upon a time.", "The cat sat.")))
    with_eos, a = load_sequences(str(texts), tok, max_length=64)
    without, b = load_sequences(str(texts), tok, max_length=64, append_eos=False)
    assert [s[-1] for s in with_eos] == [tok.eos_token_id] * 2 and [s[:-1] for s in with_eos] == without
    assert a["fingerprint"] != b["fingerprint"]
    for flag, data in (("--append-eos", a), ("--no-append-eos", b)):
        out = tmp_path / flag
        assert main(["similarity", "--model", str(stories_path), "--data", str(texts), flag, "--out", str(out)]) == 0
        assert LayerImportance.load(out / "block_influence").data["fingerprint"] == data["fingerprint"], flag
    capsys.readouterr()


def test_append_eos_is_refused_for_text_and_task_contexts(stories_path, tmp_path, monkeypatch, capsys):
    """It shapes SFT records only: refused before the model loads where --data's name says text or task,
    and once the file is read where only its records say it holds multiple-choice items."""
    import layerscope.core.models as models

    story = tmp_path / "story.txt"
    story.write_text("Once upon a time there was a cat. " * 20)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"query": "Q?", "choices": ["a", "b"], "gold": 0}) + "\n")
    common = ["similarity", "--model", str(stories_path), "--limit", "2", "--no-progress"]
    with monkeypatch.context() as m:
        m.setattr(models, "load_model", lambda *a, **kw: pytest.fail("the model loaded first"))
        for data, what in (("arc_easy", "a task's contexts"), (str(story), "plain text"), ("text:x", "plain text")):
            assert main([*common, "--data", data, "--no-append-eos", "--out", str(tmp_path / "o")]) == 2
            err = capsys.readouterr().err
            assert f"--no-append-eos applies to SFT data; --data {data} is read as {what}: drop it" in err
    assert main([*common, "--data", str(mc), "--append-eos", "--out", str(tmp_path / "o")]) == 2
    assert "is read as a task's contexts: drop it" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([*common, "--data", str(story), "--out", str(tmp_path / "o")]) == 0  # left out: fine


def test_blocks_with_several_residual_streams_are_refused(monkeypatch):
    """Block states that are not one vector per token (hyper-connections: [B, T, streams, H]) have no
    cosine to take: one line, not a broadcasting error."""
    import layerscope.methods.similarity as sim
    from layerscope.core.errors import ModelError
    from layerscope.engine.hooks import BlockCall

    real = sim.on_block_inputs

    def four_streams(blocks, fn):
        def widened(d, call):
            fn(d, BlockCall(call.hidden.unsqueeze(2).expand(-1, -1, 4, -1), call.rest, call.kwargs, call.as_keyword))

        return real(blocks, widened)

    monkeypatch.setattr(sim, "on_block_inputs", four_streams)
    model = tiny_model("llama", n_layers=2)
    with pytest.raises(ModelError, match=r"hidden states of shape \(1, 9, 4, 32\), not \(batch, tokens, hidden\)"):
        similarity(model, build_layer_map(model), [list(range(5, 14))])


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"instruction": "Hi", "output": "Hello."}', '{"instruction": "Bye"}'], "line 2: missing field 'output'"),
        (['{"instruction": "Hi", "output": "Hello."}', '{"instruction": "x", "output": '], "invalid JSON on line 2"),
        (['{"messages": [{"role": "system", "content": "Be nice."}]}'], "no record has a non-empty reply"),
    ],
    ids=["missing-field", "broken-line", "no-reply"],
)
def test_bad_sft_records_get_the_sft_error_alone(stories, tmp_path, lines, message):
    """Recognisably SFT records: a multiple-choice reader's error beside the SFT one would contradict it."""
    _, tok = stories
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        load_sequences(str(path), tok)
    assert "neither" not in str(err.value) and "not multiple-choice" not in str(err.value)
    (tmp_path / "numbers.json").write_text("[1, 2, 3]")  # no format recognisable: both readers' errors
    with pytest.raises(DataError, match="neither an SFT file"):
        load_sequences(str(tmp_path / "numbers.json"), tok)


def test_text_files_drop_the_byte_order_mark_and_may_be_gzipped(stories, tmp_path):
    import gzip

    _, tok = stories
    text = "Once upon a time there was a little girl. " * 10
    plain, bom, zipped = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt.gz"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    zipped.write_bytes(gzip.compress(bom.read_bytes()))
    expected, data = load_sequences(str(plain), tok, max_length=32)
    for path in (bom, zipped):
        seqs, other = load_sequences(str(path), tok, max_length=32)
        assert seqs == expected and other["kind"] == "text chunks", path
        assert other["fingerprint"] == data["fingerprint"], path


def test_text_files_with_crlf_or_cr_line_ends_read_as_lf(stories, tmp_path):
    """docs/data.md says CRLF line ends are fine: a .txt saved on Windows kept its \r as tokens of their own,
    so similarity / prune on it measured other sequences than on the same text with LF ends."""
    _, tok = stories
    text = "Once upon a time there was a girl.\nShe liked to play.\n\nThe end.\n" * 6
    paths = {end: tmp_path / f"{name}.txt" for end, name in (("\n", "lf"), ("\r\n", "crlf"), ("\r", "cr"))}
    for end, path in paths.items():
        path.write_bytes(text.replace("\n", end).encode())
    expected, data = load_sequences(str(paths["\n"]), tok, max_length=32)
    for end in ("\r\n", "\r"):
        seqs, other = load_sequences(str(paths[end]), tok, max_length=32)
        assert seqs == expected and other["fingerprint"] == data["fingerprint"], repr(end)


def test_text_spelling_a_special_token_is_read_as_text(stories, tmp_path):
    """ "</s>" in a plain text (a book about HTML) is text like any other, not an end-of-sequence token."""
    _, tok = stories
    path = tmp_path / "html.txt"
    path.write_text("Close it with </s> and open with <s> again. " * 4, encoding="utf-8")
    seqs, _ = load_sequences(str(path), tok, max_length=512)
    assert tok.bos_token_id not in seqs[0] and tok.eos_token_id not in seqs[0]
    assert tok.decode(seqs[0]).count("</s>") == 4


def test_a_multiple_choice_file_with_a_bad_item_gets_the_task_error_alone(stories, tmp_path):
    """An MC file with one bad item said "neither an SFT file (...multiple-choice items...) nor a task (...gold 9
    out of range...)": the file is clearly a task, so its reader's error is the message."""
    _, tok = stories
    items = [{"query": "Q?", "choices": ["a", "b"], "gold": 0}, {"query": "R?", "choices": ["a", "b"], "gold": 9}]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(map(json.dumps, items)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mc\.jsonl: line 2: gold 9 out of range for 2 choices$") as err:
        load_sequences(str(path), tok)
    assert "neither" not in str(err.value) and "SFT" not in str(err.value)
    with pytest.raises(DataError, match="multiple-choice items"):  # asked for as SFT data: that error
        load_sequences(f"sft:{path}", tok)


def test_text_piped_in_is_read(stories, tmp_path):
    """``--data text:<(zcat book.txt.gz)``: a pipe is no regular file, and was refused as "text file not found"."""
    import os

    _, tok = stories
    text = "Once upon a time there was a little girl. " * 10
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    expected, _ = load_sequences(str(tmp_path / "a.txt"), tok, max_length=32)
    read, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    try:
        seqs, _ = load_sequences(f"text:/dev/fd/{read}", tok, max_length=32)
    finally:
        os.close(read)
    assert seqs == expected

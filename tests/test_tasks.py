import json
import zipfile

import pytest

from layerscope.core.errors import ConfigError, DataError
from layerscope.core.tasks import KNOWN, hellaswag_preprocess, known_tasks, load_task, mmlu_prompt


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("LAYERSCOPE_DATA", raising=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- the shared files


@pytest.mark.parametrize(
    "name, n_choices, metric, chance",
    [
        ("arc_easy", 4, "acc_norm", 0.25),
        ("arc_challenge", 4, "acc_norm", 0.25),
        ("boolq", 2, "acc", 0.5),
        ("piqa", 2, "acc_norm", 0.5),
        ("openbook_qa", 4, "acc_norm", 0.25),
        ("hellaswag", 4, "acc_norm", 0.25),
        ("mmlu", 4, "acc", 0.25),
    ],
)
def test_known_tasks_parse(shared_dir, name, n_choices, metric, chance):
    t = load_task(name, limit=20)
    assert t.name == name and len(t) == 20 and t.metric == metric
    assert t.chance == pytest.approx(chance)
    assert all(len(it.choices) == n_choices and 0 <= it.gold < n_choices for it in t.items)
    assert len(t.fingerprint) == 16 and t.target_delimiter == " "
    assert not any(it.context.endswith(" ") for it in t.items)


def test_lm_eval_prompts(shared_dir):
    arc = load_task("arc_easy", limit=3).items[0]
    assert arc.context.startswith("Question: ") and arc.context.endswith("?\nAnswer:")
    piqa = load_task("piqa", limit=3).items[0]
    assert piqa.context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    boolq = load_task("boolq", limit=3).items[0]
    assert not boolq.context.startswith("Passage:") and "\nQuestion: " in boolq.context
    assert boolq.context.endswith("?\nAnswer:") and boolq.choices == ["no", "yes"]
    obqa = load_task("openbookqa", limit=3).items[1]  # alias; query verbatim (question_stem)
    assert obqa.context == "There is most likely going to be fog around:"
    hs = load_task("hellaswag", limit=1).items[0]
    assert hs.context == (
        "Pole vault: Pole vault is a sport where you run with a pole and stop and swing your body. A few women"
    )
    assert hs.gold == 3


def test_hellaswag_preprocess():
    assert hellaswag_preprocess(" Clean it [title] Rinse  it [step] well. ") == "Clean it. Rinse it well."


def test_mmlu_subjects_and_prompt(shared_dir):
    t = load_task("mmlu", subject="anatomy", limit=2)
    assert t.name == "mmlu:anatomy"
    first = t.items[0]
    assert first.context.startswith(
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "A lesion causing compression of the facial nerve"
    )
    assert first.context.endswith(
        "\nD. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:"
    )
    assert first.choices == ["A", "B", "C", "D"] and first.gold == 0
    assert load_task("mmlu:anatomy", limit=2).fingerprint == t.fingerprint
    assert load_task("mmlu_anatomy", limit=2).fingerprint == t.fingerprint
    hs = load_task("mmlu", subject="high school biology", limit=1)
    assert "about high school biology.\n\n" in hs.items[0].context
    stem = load_task("mmlu", subject="STEM", limit=200)
    subjects = {it.context.split(" about ")[1].split(".\n")[0] for it in stem.items}
    assert subjects == {"abstract algebra", "astronomy"}  # anatomy is in "Other"
    with pytest.raises(DataError, match="unknown MMLU subject 'astrology'"):
        load_task("mmlu", subject="astrology")


def test_mmlu_folder_and_csv(tmp_path):
    rows = '"What is 1+1?",1,2,3,4,B\nSecond?,a,b,c,d,D\n'
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "data" / "test" / "toy_math_test.csv").write_text(rows)
    t = load_task(str(tmp_path))
    assert [it.gold for it in t.items] == [1, 3]
    assert t.items[0].context == mmlu_prompt("toy_math", "What is 1+1?", ["1", "2", "3", "4"])
    assert "about toy math.\n\n" in t.items[0].context
    csv_t = load_task(str(tmp_path / "data" / "test" / "toy_math_test.csv"))
    assert csv_t.fingerprint == t.fingerprint
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("data/test/toy_math_test.csv", rows)
        zf.writestr("data/dev/toy_math_dev.csv", "x,1,2,3,4,A\n")
    assert load_task(str(z)).fingerprint == t.fingerprint
    (tmp_path / "bad_test.csv").write_text("q,1,2,3,4,E\n")
    with pytest.raises(DataError, match="not one of A, B, C, D"):
        load_task(str(tmp_path / "bad_test.csv"))
    # a header row and a blank last line, as exports often have; a split in the name is not the subject's
    (tmp_path / "anatomy_val.csv").write_text("question,A,B,C,D,answer\n" + rows + "\n\n")
    named = load_task(str(tmp_path / "anatomy_val.csv"))
    assert [it.gold for it in named.items] == [1, 3] and "about anatomy.\n\n" in named.items[0].context
    # a first row whose answer is no letter is an error, not a header
    (tmp_path / "odd_test.csv").write_text('"Q?",1,2,3,4,(B)\n')
    with pytest.raises(DataError, match=r"answer '\(B\)' is not one of A, B, C, D"):
        load_task(str(tmp_path / "odd_test.csv"))
    # a task file named like an MMLU subject is read as the file it is
    mc = tmp_path / "mmlu_val.jsonl"
    mc.write_text('{"query": "Q", "choices": ["a", "b"], "gold": 1}\n')
    assert [it.gold for it in load_task(str(mc)).items] == [1]
    # saved in cp1252, not UTF-8: one line naming the file (in a zip: the zip and the member)
    (tmp_path / "latin_test.csv").write_bytes("Qu\xe9stion,1,2,3,4,A\n".encode("cp1252"))
    with pytest.raises(DataError, match="latin_test.csv: not valid UTF-8"):
        load_task(str(tmp_path / "latin_test.csv"))
    with zipfile.ZipFile(tmp_path / "latin.zip", "w") as zf:
        zf.writestr("data/test/latin_test.csv", "Qu\xe9stion,1,2,3,4,A\n".encode("cp1252"))
    with pytest.raises(DataError, match="latin.zip:data/test/latin_test.csv: not valid UTF-8"):
        load_task(str(tmp_path / "latin.zip"))


def test_mmlu_csv_gz_loads_like_the_csv(tmp_path, stories_path, capsys):
    import gzip

    from layerscope.cli.app import main

    rows = '"What is 1+1?",1,2,3,4,B\nSecond?,a,b,c,d,D\n'
    plain = tmp_path / "toy_math_test.csv"
    plain.write_text(rows)
    zipped = tmp_path / "gz" / "toy_math_test.csv.gz"
    zipped.parent.mkdir()
    zipped.write_bytes(gzip.compress(rows.encode()))
    a, b = load_task(str(plain)), load_task(str(zipped))
    assert a.items == b.items and a.fingerprint == b.fingerprint and a.name == b.name == "toy_math_test"
    assert "about toy math.\n\n" in b.items[0].context  # the subject comes from the name, .gz left out
    for task in (plain, zipped):
        assert main(["eval", "--model", str(stories_path), "--task", str(task), "--no-progress"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("\nacc ")[1:3]
    assert out.count("toy_math_test: 2 items") == 2 and first.split()[0] == second.split()[0]  # the same accuracy
    zipped.write_bytes(gzip.compress(rows.encode())[:20])
    with pytest.raises(DataError, match="gzip file is truncated or corrupt"):
        load_task(str(zipped))


def test_data_env_var(shared_dir, tmp_path, monkeypatch):
    lines = (shared_dir / "data" / "eval" / "arc_easy.jsonl").read_text().splitlines()[:5]
    (tmp_path / "arc_easy.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("LAYERSCOPE_DATA", str(tmp_path))
    t = load_task("arc_easy")
    assert len(t) == 5 and t.source == str(tmp_path / "arc_easy.jsonl")
    assert t.fingerprint == load_task("arc_easy", limit=5).fingerprint


def test_generic_files(tmp_path):
    p = write_jsonl(
        tmp_path / "mc.jsonl",
        [{"query": "Q1", "choices": ["a", "b", "c"], "gold": 2}, {"query": "Q2", "choices": ["x", "y"], "gold": "1"}],
    )
    t = load_task(str(p))
    assert t.name == "mc" and t.metric == "acc" and [it.gold for it in t.items] == [2, 1]
    assert t.items[0].context == "Q1" and t.chance == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert load_task(str(p), limit=1).fingerprint != t.fingerprint
    q = write_jsonl(
        tmp_path / "other.jsonl",
        [
            {"question": "Q", "opts": {"text": ["no", "yes"]}, "answer": "B"},
            {"question": "R", "opts": {"text": ["red", "blue"]}, "answer": "red"},
        ],
    )
    t2 = load_task(str(q), fields={"query": "question", "choices": "opts.text", "gold": "answer"})
    assert [it.gold for it in t2.items] == [1, 0] and t2.items[1].choices == ["red", "blue"]
    # HF ARC: the answer key is one of the choices' labels, "1".."4" as well as "A".."D" (as lm-eval reads it)
    arc = write_jsonl(
        tmp_path / "arc_hf.jsonl",
        [
            {
                "question": "Q",
                "choices": {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]},
                "answerKey": "1",
            },
            {
                "question": "R",
                "choices": {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]},
                "answerKey": "4",
            },
            {"question": "S", "choices": {"text": ["w", "x", "y"], "label": ["A", "B", "C"]}, "answerKey": "C"},
            {"question": "T", "choices": {"text": ["w", "x", "y"], "label": ["A", "B", "C"]}, "answerKey": "b"},
            {"question": "U", "choices": {"text": ["w", "x"], "label": ["A", "B"]}, "answerKey": 1},  # a number: index
        ],
    )
    arc_task = load_task(str(arc), fields={"query": "question", "choices": "choices", "gold": "answerKey"})
    assert [it.gold for it in arc_task.items] == [0, 3, 2, 1, 1]
    numeric = write_jsonl(  # labels "1", "2" and a numeric key 1: the first choice or index 1? refused
        tmp_path / "arc_numeric.jsonl",
        [{"question": "Q", "choices": {"text": ["w", "x"], "label": ["1", "2"]}, "answerKey": 1}],
    )
    with pytest.raises(DataError, match="both the label of choice 0 and the index 1"):
        load_task(str(numeric), fields={"query": "question", "choices": "choices", "gold": "answerKey"})
    bad_key = write_jsonl(
        tmp_path / "arc_bad.jsonl",
        [{"question": "Q", "choices": {"text": ["w", "x"], "label": ["A", "B"]}, "answerKey": "E"}],
    )
    with pytest.raises(DataError, match=r'gold "E" is not one of the choices\' labels \["A", "B"\]'):
        load_task(str(bad_key), fields={"query": "question", "choices": "choices", "gold": "answerKey"})
    j = tmp_path / "list.json"
    j.write_text(json.dumps([{"query": "Q", "choices": ["a", "b"], "gold": 0}]))
    assert len(load_task(str(j))) == 1
    hs = write_jsonl(
        tmp_path / "hs.jsonl",
        [
            {
                "activity_label": "Cooking",
                "ctx_a": "A man cuts onions.",
                "ctx_b": "he",
                "endings": ["cries [title] a lot.", "sings."],
                "label": "1",
            }
        ],
    )
    h = load_task(str(hs))
    assert h.metric == "acc_norm" and h.items[0].context == "Cooking: A man cuts onions. He"
    assert h.items[0].choices == ["cries. a lot.", "sings."] and h.items[0].gold == 1


# ----------------------------------------------------------------------------- bad input


def test_unknown_task_lists_known():
    with pytest.raises(DataError) as e:
        load_task("arc_medium")
    msg = str(e.value)
    assert "unknown task 'arc_medium'" in msg and all(n in msg for n in known_tasks())
    assert "\n" not in msg
    assert set(known_tasks()) == set(KNOWN)


def test_fields_are_refused_for_a_known_task(tmp_path, monkeypatch):
    """A known task's file is read by its own field names: a mapping meant for a custom file would only
    break it (with a "missing field" error naming fields the user never wrote). A file of that name is a file."""
    from layerscope.core.errors import ConfigError
    from layerscope.core.tasks.registry import names_known_task

    monkeypatch.chdir(tmp_path)
    for spec in ("arc_easy", "ARC_E", "mmlu:anatomy", "mmlu_anatomy", "obqa"):
        assert names_known_task(spec)
        with pytest.raises(ConfigError, match=rf"^fields rename a custom file's fields; {spec} is a known task"):
            load_task(spec, fields={"query": "question"})
    assert not names_known_task("mmlu_mine.jsonl") and not names_known_task("loss:demo")
    write_jsonl(tmp_path / "piqa", [{"question": "Q", "choices": ["a", "b"], "gold": 0}])
    assert names_known_task("piqa")  # the known name wins over a file of that name in the current folder
    assert not names_known_task("./piqa")  # which a path names
    assert load_task("./piqa", fields={"query": "question"}).items[0].context == "Q"


def test_a_known_name_wins_over_a_file_or_folder_of_that_name_here(shared_dir, tmp_path, monkeypatch, capsys):
    """An output folder named after its task (``piqa/``) replaced the task: ``--task piqa`` then read the
    folder. The known task is read, with a note naming the way to the file; a path still reads the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "importance.json").write_text("{}")
    write_jsonl(tmp_path / "arc_easy", [{"query": "Mine?", "choices": ["a", "b"], "gold": 1}])
    piqa = load_task("piqa", limit=3)
    assert piqa.name == "piqa" and piqa.source == str(shared_dir / "data" / "eval" / "piqa.jsonl")
    err = capsys.readouterr().err
    assert "note: piqa is a known task, read from the shared eval files, not the folder ./piqa here" in err
    arc = load_task("arc_easy", limit=3)
    assert arc.name == "arc_easy" and arc.source != "arc_easy" and len(arc) == 3
    assert "(give ./arc_easy to read the file)" in capsys.readouterr().err
    load_task("arc_easy", limit=3)
    assert "note: arc_easy" not in capsys.readouterr().err  # said once: a command loads its task twice
    for path in ("./arc_easy", str(tmp_path / "arc_easy")):
        mine = load_task(path)
        assert [it.context for it in mine.items] == ["Mine?"], path
    (tmp_path / "x").mkdir()
    write_jsonl(tmp_path / "x" / "arc_easy.jsonl", [{"query": "X?", "choices": ["a", "b"], "gold": 0}])
    assert [it.context for it in load_task("x/arc_easy.jsonl").items] == ["X?"]


def test_a_hub_style_split_after_a_known_task_is_refused_as_such(shared_dir):
    """``arc_easy:validation`` said "--subject only applies to MMLU" though no --subject was given."""
    for spec, name in (("arc_easy:validation", "arc_easy"), ("ARC_E:test", "arc_easy"), ("piqa:train", "piqa")):
        with pytest.raises(ConfigError, match=rf"^{spec}: a known task takes no :SPLIT \({name} is one shared"):
            load_task(spec)
    with pytest.raises(ConfigError, match="only mmlu:SUBJECT picks a part of a task"):
        load_task("hellaswag:validation")
    assert load_task("mmlu:anatomy", limit=2).name == "mmlu:anatomy"


def test_fields_are_refused_for_mmlu_csvs(tmp_path):
    """MMLU CSVs are read by column position: a --fields mapping was dropped without a word."""
    (tmp_path / "data" / "test").mkdir(parents=True)
    csv = tmp_path / "data" / "test" / "toy_test.csv"
    csv.write_text("Q?,1,2,3,4,B\n")
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        zf.writestr("data/test/toy_test.csv", "Q?,1,2,3,4,B\n")
    for path, what in ((csv, "an MMLU CSV"), (tmp_path / "data", "MMLU CSVs"), (tmp_path / "m.zip", "MMLU CSVs")):
        with pytest.raises(ConfigError, match=rf"fields rename a JSON task file's fields; .* is {what} \("):
            load_task(str(path), fields={"query": "question"})
        assert len(load_task(str(path))) == 1


def test_comma_lists_of_tasks_keep_mmlu_subjects_together():
    """``finetune --eval-tasks mmlu:anatomy,virology`` split at every comma: "unknown task 'virology'"."""
    from layerscope.core.tasks.registry import split_task_list

    assert split_task_list(["mmlu:anatomy", "virology", "piqa"]) == ["mmlu:anatomy,virology", "piqa"]
    assert split_task_list(["mmlu_anatomy", "STEM", "arc_easy"]) == ["mmlu_anatomy,STEM", "arc_easy"]
    assert split_task_list(["piqa", "mmlu:anatomy", "loss:d.json", "x/t.jsonl"]) == [
        "piqa",
        "mmlu:anatomy",
        "loss:d.json",
        "x/t.jsonl",
    ]
    assert split_task_list(["mmlu", "virology"]) == ["mmlu", "virology"]  # all of MMLU takes no more subjects
    assert split_task_list(["arc_easy", "virology"]) == ["arc_easy", "virology"]  # refused by load_task, as before


def test_task_items_piped_in_are_read(tmp_path):
    """``--task /dev/stdin`` / ``<(cat f)``: a pipe reads once, and a task is read more than once (its kind,
    then its items; a check before the model loads, then the load): valid items were "no items"."""
    import os

    rows = [{"query": "Q?", "choices": ["a", "b"], "gold": 1}, {"query": "R?", "choices": ["a", "b"], "gold": 0}]
    read, write_end = os.pipe()
    os.write(write_end, "".join(json.dumps(r) + "\n" for r in rows).encode())
    os.close(write_end)
    try:
        first, again = load_task(f"/dev/fd/{read}"), load_task(f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert [it.gold for it in first.items] == [it.gold for it in again.items] == [1, 0]


def test_a_broken_pretty_printed_item_is_named_by_its_own_line(tmp_path):
    rows = [{"query": f"Q{i}?", "choices": ["a", "b"], "gold": 0} for i in range(3)]
    pretty = [json.dumps(r, indent=2) for r in rows]  # 8 lines each
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([*pretty[:2], pretty[2].replace('"gold": 0', '"gold": 0,')]) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl: invalid JSON on line 24 column 1 \(Expecting property name"):
        load_task(str(path))


def test_a_missing_file_named_like_an_mmlu_subject_is_a_missing_file(tmp_path, monkeypatch):
    """``mmlu_<subject>`` names MMLU subjects, but no subject has a suffix or a folder: such a name is a file,
    and a missing one is said to be missing, not an unknown subject."""
    monkeypatch.chdir(tmp_path)
    for spec in ("mmlu_mydata.jsonl", "mmlu_mine.txt", "mmlu_anatomy/", "arc_easy.json"):
        with pytest.raises(DataError) as e:
            load_task(spec)
        assert str(e.value) == f"{spec}: evaluation file not found"


def test_items_carry_their_place_for_messages(tmp_path):
    """Each item knows where it was read (``FILE: line N`` / ``record N`` / ``row N``), as the readers'
    errors name it, so a later error (an over-long choice) can too; it is no part of the item's identity."""
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"query": "Q", "choices": ["a", "b"], "gold": 0}] * 2)
    assert [it.place for it in load_task(str(mc)).items] == [f"{mc}: line 1", f"{mc}: line 2"]
    listed = tmp_path / "mc.json"
    listed.write_text(json.dumps([{"query": "Q", "choices": ["a", "b"], "gold": 0}]))
    assert load_task(str(listed)).items[0].place == f"{listed}: record 1"
    assert load_task(str(listed)).items == load_task(str(mc)).items[:1]
    part = write_jsonl(tmp_path / "p.jsonl", [{"contexts": ["a", "b"], "continuation": "c", "gold": 0}])
    wg = write_jsonl(tmp_path / "wg.jsonl", [{"sentence": "_ ran.", "option1": "A", "option2": "B", "answer": "1"}])
    hs = {"activity_label": "A", "ctx_a": "x", "ctx_b": "y", "endings": ["a", "b"], "label": 0}
    hs_path = write_jsonl(tmp_path / "hs.jsonl", [hs])
    for path in (part, wg, hs_path):
        assert load_task(str(path)).items[0].place == f"{path}: line 1"
    csv = tmp_path / "toy_test.csv"
    csv.write_text("q,1,2,3,4,A\n")
    assert load_task(str(csv)).items[0].place == f"{csv}: row 1"


def test_mmlu_errors_name_the_csv_once(tmp_path):
    """A CSV's error names it once (``FILE: row N``), whether given alone, in a folder, or in a zip (``ZIP:member``)."""
    rows = "q,1,2,3,4,A\nr,1,2,3,4,E\n"
    alone = tmp_path / "bad_test.csv"
    alone.write_text(rows)
    nested = tmp_path / "folder" / "data" / "test" / "bad_test.csv"
    nested.parent.mkdir(parents=True)
    nested.write_text(rows)
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("data/test/bad_test.csv", rows)
    for given, named in ((alone, alone), (tmp_path / "folder", nested), (z, f"{z}:data/test/bad_test.csv")):
        with pytest.raises(DataError) as e:
            load_task(str(given))
        assert str(e.value) == f"{named}: row 2: answer 'E' is not one of A, B, C, D"


@pytest.mark.parametrize(
    "rows, pattern",
    [
        (
            ['{"query": "Q", "choices": ["a", "b"], "gold": 0}', '{"query": "Q", "choices": ['],
            r"invalid JSON on line 2",
        ),
        (['{"query": "Q", "choices": ["a", "b"]}'], r"line 1: missing field 'gold'"),
        (['{"query": "Q", "choices": ["a", "b"], "gold": 2}'], r"line 1: gold 2 out of range for 2 choices"),
        (['{"query": "Q", "choices": ["a", "b"], "gold": -1}'], r"gold -1 out of range"),
        (['{"query": "Q", "choices": "ab", "gold": 0}'], r"choices must be a list"),
        (['{"query": 3, "choices": ["a", "b"], "gold": 0}'], r"must be a string"),
        (["[1, 2]"], r"record 1: expected a JSON object, got a number"),
        (['{"query": "Q", "choices": ["a", "b"], "gold": "maybe"}'], r'gold "maybe" is not an index'),
        # the gold as JSON spells it, not as Python does (None, True, 'B')
        (['{"query": "Q", "choices": ["a", "b"], "gold": null}'], r"gold null is not an index, a letter, or one of"),
        (['{"query": "Q", "choices": ["a", "b"], "gold": true}'], r"gold must be an index, got true"),
        (['{"query": "Q", "choices": ["a", "b"], "gold": [0]}'], r"gold \[0\] is not an index"),
        (['{"query": ["Q"], "choices": ["a", "b"], "gold": 0}'], r"field 'query' must be a string, got a list"),
        # a digit string that is also a choice's text names two different choices: refused, not guessed
        (
            ['{"query": "Q", "choices": ["1", "2", "3"], "gold": "2"}'],
            r'gold "2" is both the text of choice 1 and the index 2',
        ),
        (['{"query": "Q", "choices": ["a", "b"], "gold": "\u00b2"}'], r"not an index"),  # '²' is a digit to isdigit
        (['{"query": "Q", "choices": ["a", " "], "gold": 0}'], r"line 1: choice 1 is empty"),
        # the gold among identical choices: whether the item counts as right would be numeric noise
        (['{"query": "Q", "choices": ["blue", "blue", "red"], "gold": 1}'], r"line 1: the gold choice 1 is the same"),
        (['{"query": "Q", "choices": ["blue", "blue", "red"], "gold": "blue"}'], r"gold choice 0 is the same"),
        (
            ['{"activity_label": "A", "ctx_a": "x", "ctx_b": "y", "endings": ["b  c", "b c", "d"], "label": 1}'],
            r"line 1: the gold ending 1 is the same text as ending 0",  # alike once cleaned as lm-eval does
        ),
        (['{"query": "Q \\ud83d", "choices": ["a", "b"], "gold": 0}'], r"line 1: .*surrogate"),
        (['[{"query": "Q", "choices": ["a", "b\\udc00"], "gold": 0}]'], r"record 1: .*surrogate"),
        (['{"activity_label": "A", "ctx_a": "x", "ctx_b": null, "endings": ["a", "b"], "label": 0}'], r"'ctx_b' must"),
        # an ending lm-eval's cleaning empties would be scored as a bare space
        (
            ['{"activity_label": "A", "ctx_a": "x", "ctx_b": "y", "endings": ["[step] ", "b"], "label": 1}'],
            r"line 1: ending 0 is empty after cleaning$",
        ),
        # a one-letter gold that is a choice's text and, as a letter, another choice: refused as digits are
        (
            ['{"query": "Q", "choices": ["B", "A"], "gold": "A"}'],
            r'line 1: gold "A" is both the text of choice 1 and the letter A \(choice 0\); give the index',
        ),
        (['{"query": "Q", "choices": ["x", "a", "b"], "gold": "a"}'], r"choice 1 and the letter A \(choice 0\)"),
        # what the user wrote, not only the index it reads as
        (['{"query": "Q", "choices": ["a", "b"], "gold": "E"}'], r'line 1: gold "E" \(index 4\) out of range for 2'),
        (['{"query": "Q", "choices": ["a", "b"], "gold": "\u00e9"}'], r'gold "\u00e9" is not a letter A-Z'),
        (['{"query": "Q", "choices": ["a", "b"], "gold": "\uff22"}'], r'gold "\uff22" is not a letter A-Z'),
        (['{"query": "Q", "choices": ["a", "b"], "gold": 1.0}'], r"gold 1.0 is no integer: write the index as 1 "),
        (['{"query": "Q", "choices": ["a", "b"], "gold": 1.5}'], r"gold 1.5 is not an index"),
        (['{"query": "Q", "choices": ["a", null], "gold": 0}'], r"line 1: choice 1 is null, not a string$"),
        (['{"query": "Q", "choices": [1, 2, 3], "gold": 0}'], r"line 1: choice 0 is a number, not a string$"),
        (['{"contexts": ["a", null], "continuation": "c", "gold": 0}'], r"line 1: context 1 is null, not a string$"),
    ],
)
def test_bad_rows(tmp_path, rows, pattern):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=pattern) as e:
        load_task(str(p))
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_text_and_answers_that_are_fine(tmp_path):
    """An emoji as a surrogate pair is text; a digit gold that is no choice's text is an index; "2" among
    choices "1".."4" is fine as the JSON number 1. A one-letter gold that is a choice's text is that choice
    where the letter names the same one ("b" among "a", "b") or none ("F" among "T", "F": no sixth choice)."""
    rows = [
        {"query": "Q \ud83d\ude00", "choices": ["a", "b"], "gold": "1"},
        {"query": "Q", "choices": ["1", "2", "3"], "gold": 1},
        {"query": "Q", "choices": ["yes", "no"], "gold": "no"},
        {"query": "Q", "choices": ["a", "b"], "gold": "b"},
        {"query": "Q", "choices": ["T", "F"], "gold": "F"},
    ]
    p = tmp_path / "ok.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # json.dumps escapes the emoji as a pair
    assert "\\ud83d" in p.read_text()
    task = load_task(str(p))
    assert [it.gold for it in task.items] == [1, 1, 1, 1, 1] and task.items[0].context.startswith("Q \U0001f600")


def test_hub_exports_are_refused_with_the_fields_that_read_them(tmp_path):
    """ARC, MMLU, OpenBookQA and CommonsenseQA as the hub exports them miss 'query': the message gives the
    --fields mapping, and that mapping reads them (label-based answer keys included). Other shapes get no hint."""
    labelled = {"text": ["red", "blue"], "label": ["A", "B"]}
    arc = {"question": "Sky?", "choices": labelled, "answerKey": "B"}
    mmlu = {"question": "2+2?", "choices": ["3", "4"], "answer": 1, "subject": "math"}
    obqa = {"id": "7", "question_stem": "Sky?", "choices": labelled, "answerKey": "B"}
    for rec, mapping in (
        (arc, {"query": "question", "gold": "answerKey"}),
        (mmlu, {"query": "question", "gold": "answer"}),
        (obqa, {"query": "question_stem", "gold": "answerKey"}),
    ):
        path = write_jsonl(tmp_path / "hub.jsonl", [rec])
        hint = ",".join(f"{k}={v}" for k, v in mapping.items())
        with pytest.raises(
            DataError, match=rf"line 1: missing field 'query' \(has: .*\); read it with --fields {hint} "
        ):
            load_task(str(path))
        assert [it.gold for it in load_task(str(path), fields=mapping).items] == [1]
    # half mapped: the hint keeps the user's own name and adds the missing one
    with pytest.raises(DataError, match=r"missing field 'gold' .*--fields query=question_stem,gold=answerKey "):
        load_task(str(path), fields={"query": "question_stem"})
    boolq = write_jsonl(tmp_path / "boolq.jsonl", [{"question": "Q", "passage": "P", "answer": True}])
    with pytest.raises(DataError, match=r"missing field 'query' \(has: answer, passage, question\)$"):
        load_task(str(boolq))


def test_repeated_wrong_choice_is_scored_with_one_warning(tmp_path):
    """A choice listed twice that is not the gold ties only with itself: the item is kept, the file named once."""
    rows = [
        {"query": "Q", "choices": ["blue", "blue", "red"], "gold": 2},
        {"query": "R", "choices": ["a", "b"], "gold": 0},
    ]
    p = write_jsonl(tmp_path / "dup.jsonl", rows * 2)
    with pytest.warns(
        UserWarning, match=r"dup.jsonl: 2 item\(s\) list a wrong choice twice \(first at line 1\)"
    ) as seen:
        task = load_task(str(p))
    assert len(seen) == 1 and [it.gold for it in task.items] == [2, 0, 2, 0]


def test_shipped_arc_repeats_only_wrong_choices(shared_dir, tmp_path, recwarn):
    """ARC's test splits list a wrong choice twice in a few items, never the answer: the known tasks load
    them as lm-eval scores them, without a warning (nothing a user can fix); a copy given as a file is named."""
    for name, count, first in (("arc_easy", 7, 94), ("arc_challenge", 4, 122)):
        task = load_task(name)
        assert sum(len(set(it.choices)) < len(it.choices) for it in task.items) == count
        copy = tmp_path / f"{name}.jsonl"
        copy.write_bytes((shared_dir / "data" / "eval" / f"{name}.jsonl").read_bytes())
        with pytest.warns(UserWarning, match=rf"{name}.jsonl: {count} item\(s\) .* \(first at line {first}\)"):
            load_task(str(copy))
    assert not [w for w in recwarn if "twice" in str(w.message)]


def test_dotted_choices_read_the_gold_against_labels_beside_them(tmp_path):
    """``choices.text`` of HF ARC: the answer key is a label of ``choices.label``, as for undotted ``choices``
    ("1" is the first choice, not index 1); a key that could be a label or an index is refused."""
    labels = {"text": ["dog", "trout", "eagle", "frog"], "label": ["1", "2", "3", "4"]}
    rows = [
        {"question": "Which is a mammal?", "choices": labels, "answerKey": "1"},
        {"question": "Which is a bird?", "choices": labels, "answerKey": "3"},
    ]
    p = write_jsonl(tmp_path / "arc.jsonl", rows)
    dotted = {"query": "question", "choices": "choices.text", "gold": "answerKey"}
    task = load_task(str(p), fields=dotted)
    assert [it.gold for it in task.items] == [0, 2] and task.items[0].choices == labels["text"]
    assert task.fingerprint == load_task(str(p), fields=dict(dotted, choices="choices")).fingerprint
    number = write_jsonl(tmp_path / "n.jsonl", [dict(rows[0], answerKey=1)])
    with pytest.raises(DataError, match="line 1: gold 1 is both the label of choice 0 and the index 1"):
        load_task(str(number), fields=dotted)
    short = write_jsonl(tmp_path / "s.jsonl", [dict(rows[0], choices=dict(labels, label=["1", "2"]))])
    with pytest.raises(DataError, match="line 1: choices' label must be a list with one label per choice"):
        load_task(str(short), fields=dotted)


def test_json_object_wrapping_the_items(tmp_path):
    """``{"data": [...]}`` (or a split: ``{"test": [...]}``), pretty-printed or not, as the SFT reader takes it."""
    plain = write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    for key in ("data", "train", "examples", "records", "validation", "valid", "dev", "test"):
        for indent in (2, None):
            wrapped = tmp_path / f"{key}{indent}.json"
            wrapped.write_text(json.dumps({key: MC_ROWS}, indent=indent))
            assert load_task(str(wrapped)).items == load_task(str(plain)).items
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"version": 1, "items": MC_ROWS}, indent=2))
    with pytest.raises(DataError, match="other.json: a JSON object; expected JSON lines or a list of items"):
        load_task(str(other))
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": MC_ROWS, "test": MC_ROWS}, indent=2))
    with pytest.raises(DataError, match=r"a JSON object holding several splits \(train, test\)"):
        load_task(str(both))
    record = write_jsonl(tmp_path / "record.jsonl", [dict(MC_ROWS[0], data=[{"a": 1}], test=[{"b": 2}])])
    assert load_task(str(record)).items == load_task(str(plain)).items[:1]  # one line: a record, not a wrapper
    pretty = tmp_path / "pretty.jsonl"  # a wrapper pretty-printed under a .jsonl name loads as under .json
    pretty.write_text(json.dumps({"test": MC_ROWS}, indent=2))
    assert load_task(str(pretty)).items == load_task(str(plain)).items
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"data": MC_ROWS}, indent=2)[:-3])
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line \d+"):
        load_task(str(broken))


def test_task_files_read_as_the_sft_reader_reads_them(tmp_path):
    """One rule for both readers: the suffix decides (.jsonl is JSON Lines unless it opens a list), a wrapper
    is unwrapped whatever its layout (``json.dump`` writes one line), and each item keeps the SFT reader's place."""
    import gzip

    from layerscope.core.data.sources import read_file
    from layerscope.core.tasks.reading import read_json_records

    plain = load_task(str(write_jsonl(tmp_path / "mc.jsonl", MC_ROWS))).items
    layouts = {
        "one_line.json": json.dumps({"test": MC_ROWS, "version": 1}),  # the default json.dump
        "pretty.json": json.dumps({"version": 1, "test": MC_ROWS}, indent=2),
        "one_line.json.gz": json.dumps({"data": MC_ROWS, "name": "x"}),
        "lines.json": "".join(json.dumps(r) + "\n" for r in MC_ROWS),  # JSON Lines in a .json
        "list.jsonl": json.dumps(MC_ROWS, indent=2),  # a list in a .jsonl
    }
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        assert load_task(str(path)).items == plain, name
        records, places, _ = read_file(path)
        assert [(p, r) for p, r in read_json_records(path)] == list(zip(places, records)), name
    one = tmp_path / "one.json"  # a single item on one line: a JSON Lines file of one
    one.write_text(json.dumps(MC_ROWS[0]))
    assert load_task(str(one)).items == plain[:1]


def test_errors_name_the_record_of_a_list_and_the_line_of_json_lines(tmp_path):
    """In a JSON list or a wrapper the place is ``record N``: its N-th item, not line N of the file."""
    bad = [MC_ROWS[0], {"query": "Q", "choices": ["a", "b"]}]
    for name, text in (
        ("list.json", json.dumps(bad, indent=2)),
        ("wrapped.json", json.dumps({"test": bad})),
        ("one_line_list.jsonl", json.dumps(bad)),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=rf"{name}: record 2: missing field 'gold'"):
            load_task(str(tmp_path / name))
    with pytest.raises(DataError, match=r"lines.jsonl: line 3: missing field 'gold'"):
        load_task(str(write_jsonl(tmp_path / "lines.jsonl", [MC_ROWS[0], *bad])))
    dup = {"query": "Q", "choices": ["blue", "blue", "red"], "gold": 2}
    (tmp_path / "dup.json").write_text(json.dumps({"test": [MC_ROWS[0], MC_ROWS[1], dup]}, indent=2))
    with pytest.warns(UserWarning, match=r"dup.json: 1 item\(s\) list a wrong choice twice \(first at record 3\)"):
        load_task(str(tmp_path / "dup.json"))


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty file|no items"):
        load_task(str(tmp_path / "empty.jsonl"))
    (tmp_path / "e2.jsonl").write_text("")
    with pytest.raises(DataError, match="no items"):
        load_task(str(tmp_path / "e2.jsonl"), fields={"gold": "gold"})
    with pytest.raises(DataError, match="not found"):
        load_task(str(tmp_path / "missing.jsonl"))
    (tmp_path / "list.json").write_text("[]\n")  # not an empty file: a list with no item in it
    with pytest.raises(DataError, match=r"list.json: holds no items \(e.g. an empty list\)$"):
        load_task(str(tmp_path / "list.json"))


@pytest.mark.parametrize("limit", [0, -3])
def test_bad_limit(tmp_path, limit):
    p = write_jsonl(tmp_path / "mc.jsonl", [{"query": "Q", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(ConfigError, match="limit must be a positive"):
        load_task(str(p), limit=limit)


def test_bad_options(tmp_path):
    p = write_jsonl(tmp_path / "mc.jsonl", [{"query": "Q", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(ConfigError, match="unknown key"):
        load_task(str(p), fields={"question": "q"})
    with pytest.raises(ConfigError, match="only applies to MMLU"):
        load_task(str(p), subject="anatomy")


# ----------------------------------------------------------------------------- the files people bring

MC_ROWS = [
    {"query": "Question: What do cats say?\nAnswer:", "choices": ["meow", "moo"], "gold": 0},
    {"query": "Question: What do cows say?\nAnswer:", "choices": ["meow", "moo"], "gold": 1},
]


def test_gzip_task_files_load_transparently(tmp_path):
    import gzip

    plain = write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    zipped = tmp_path / "mc.jsonl.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    as_list = tmp_path / "list.json.gz"
    as_list.write_bytes(gzip.compress(json.dumps(MC_ROWS).encode()))
    a, b, c = load_task(str(plain)), load_task(str(zipped)), load_task(str(as_list))
    assert a.items == b.items == c.items and a.fingerprint == c.fingerprint


def test_binary_task_files_are_named(tmp_path):
    import gzip

    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in MC_ROWS * 20))[:25])
    with pytest.raises(DataError, match="gzip file is truncated or corrupt"):
        load_task(str(cut))
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes(json.dumps(MC_ROWS[0]).encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text; save it as UTF-8"):
        load_task(str(utf16))
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"query": "caf\xe9", "choices": ["a", "b"], "gold": 0}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_task(str(latin))


def test_sft_file_as_task_points_to_data(tmp_path):
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}]))
    with pytest.raises(DataError, match=r"SFT records \(alpaca format\), not multiple-choice items; .*--data"):
        load_task(str(sft))
    custom = write_jsonl(tmp_path / "c.jsonl", [{"text": "Q?", "choices": ["a", "b"], "label": 1}])
    with pytest.raises(DataError, match="missing field 'query'"):  # MC with other names: the field is named
        load_task(str(custom))


def test_folders_are_named_for_what_they_are(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="a folder with no task files") as err:
        load_task(str(empty))
    assert "MMLU CSVs" in str(err.value) and "no MMLU" not in str(err.value)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(DataError, match="a model folder, not a task; give it as --model"):
        load_task(str(model))
    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    (mmlu / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no MMLU"):  # CSVs: it looks like MMLU, so MMLU is named
        load_task(str(mmlu))


def test_long_items_encode_without_the_tokenizer_warning(stories_path):
    """transformers logs "Token indices sequence length is longer than ..." once per tokenizer and marks
    it in ``deprecation_warnings``; the mark is read rather than stderr (under pytest its logger writes
    to a capture bound at collection, which no fixture sees)."""
    from transformers import AutoTokenizer

    from layerscope.scoring.encoding import encode_requests

    tok = AutoTokenizer.from_pretrained(str(stories_path))  # fresh: the warning is given once per tokenizer
    long_context = "Question: " + "why " * 700 + "\nAnswer:"
    reqs = encode_requests(tok, [long_context], [[" yes", " no"]])
    assert len(reqs[0][0][0]) > tok.model_max_length  # encoded whole: the evaluator truncates from the left
    assert not tok.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")
    tok(long_context)  # the check can fail: a plain call does give the warning
    assert tok.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")


def test_a_path_to_a_known_tasks_file_is_told_it_scores_differently_from_the_name(shared_dir, tmp_path, capsys):
    """By name lm-eval's prompts and metric are rebuilt; by path the queries are scored as written: a user who
    gave the path of arc_easy's own file, or of a copy of its items, learns why the numbers differ from
    --task arc_easy and how to get those (once per file)."""
    from layerscope.core.tasks import registry

    registry._told.clear()
    path = shared_dir / "data" / "eval" / "arc_easy.jsonl"
    by_path, again = load_task(str(path), limit=4), load_task(str(path), limit=4)
    by_name = load_task("arc_easy", limit=4)
    assert by_path.items[0].context != by_name.items[0].context and again.metric == by_path.metric
    written = 'scored as written (query + " " + choice; headline acc, acc_norm reported too)'
    name_says = (
        'by name with lm-eval\'s prompt ("Question: ...\\nAnswer:") and metric (acc_norm), as published results are'
    )
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"note: {path} is the file --task arc_easy reads; as a file its items are {written}, {name_says}: "
        "give --task arc_easy for those"
    ]
    own = tmp_path / "mine.jsonl"
    own.write_text("".join(path.read_text(encoding="utf-8").splitlines(True)[2:4]), encoding="utf-8")
    load_task(str(own)), load_task(str(own))  # the same items in another file: a copy, named as one, once
    assert capsys.readouterr().err.splitlines() == [
        f"note: {own} holds items of arc_easy (from its file, arc_easy.jsonl); as a file its items are "
        f"{written}, {name_says}: give --task arc_easy (--limit N: its first N items), or for other items save "
        "this file as arc_easy.jsonl in a folder and set LAYERSCOPE_DATA to that folder"
    ]
    obqa = tmp_path / "obqa.jsonl"  # openbook_qa's prompt is its query: only the metric differs
    obqa.write_text((shared_dir / "data" / "eval" / "openbook_qa.jsonl").read_text().splitlines(True)[5])
    load_task(str(obqa))
    assert "by name with the same prompt and metric (acc_norm)" in capsys.readouterr().err
    mine = write_jsonl(tmp_path / "unrelated.jsonl", [{"query": "Q: 2+2?\nA:", "choices": ["4", "5"], "gold": 0}])
    assert load_task(str(mine)).reported == ("acc", "acc_norm")
    assert capsys.readouterr().err == ""  # the user's own items: no name to compare with, stderr kept clear


def test_a_copy_saved_as_the_known_file_gets_the_names_prompt(shared_dir, tmp_path, monkeypatch):
    """What the note says of a copy holds: saved as arc_easy.jsonl in a folder given as LAYERSCOPE_DATA, the
    copy's items get lm-eval's prompt and acc_norm, as the name's do."""
    lines = (shared_dir / "data" / "eval" / "arc_easy.jsonl").read_text(encoding="utf-8").splitlines(True)[3:6]
    (tmp_path / "arc_easy.jsonl").write_text("".join(lines), encoding="utf-8")
    named = load_task("arc_easy", limit=6)
    monkeypatch.setenv("LAYERSCOPE_DATA", str(tmp_path))
    copy = load_task("arc_easy")
    assert copy.source == str(tmp_path / "arc_easy.jsonl") and copy.metric == "acc_norm"
    assert copy.items == named.items[3:6]  # the copy's 3 items, prompts as the name builds them
    assert copy.items[0].context.endswith("\nAnswer:")


def test_choices_with_a_leading_space_are_noted_once_and_scored_as_written(tmp_path, capsys):
    """lm-eval's delimiter (one space) always joins query and choice: " girl" is scored as "  girl", far less
    likely. Said once per file (a command loads its task twice), naming the first; the items are unchanged."""
    rows = [
        {"query": "Once upon a time there was a", "choices": [" girl", " dog"], "gold": 0},
        {"query": "Once upon a time there was a", "choices": ["girl", " dog"], "gold": 0},  # mixed: still said
    ]
    spaced = write_jsonl(tmp_path / "spaced.jsonl", rows)
    task, again = load_task(str(spaced)), load_task(str(spaced))
    assert task.items[0].choices == [" girl", " dog"] and task.items[0].requests(" ")[0][1] == "  girl"
    assert again.fingerprint == task.fingerprint
    assert _leading_space_notes(capsys) == [
        f"note: {spaced}: 3 of 4 choices start with whitespace (first: line 1, ' girl'); query and choice are "
        "joined with one space, as lm-eval does, so it is scored as '  girl', which lowers its log-likelihood: "
        "drop the leading space"
    ]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{**r, "choices": ["girl", "dog"]} for r in rows])
    load_task(str(plain))
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"q": "Q", "opts": ["\ta", "b"], "a": 0}])
    load_task(str(renamed), fields={"query": "q", "choices": "opts", "gold": "a"})
    assert _leading_space_notes(capsys) == [
        f"note: {renamed}: 1 of 2 choices start with whitespace (first: line 1, '\\ta'); query and choice are "
        "joined with one space, as lm-eval does, so it is scored as ' \\ta', which lowers its log-likelihood: "
        "drop the leading space"
    ]


def _leading_space_notes(capsys) -> list[str]:
    """stderr's lines less the note every custom multiple-choice file gets (scored as written)."""
    return [line for line in capsys.readouterr().err.splitlines() if "scored as written" not in line]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_name_is_refused_not_read_as_the_current_folder(empty, tmp_path, monkeypatch):
    """The Python API's twin of the CLI's refusal of ``--task ""``: ``Path("")`` is the current folder."""
    from layerscope.core.data import load_sft
    from layerscope.methods.similarity import load_sequences

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"instruction": "Hi", "output": "Hello."}\n')
    with pytest.raises(DataError, match="^no task given"):
        load_task(empty)
    with pytest.raises(DataError, match="^no SFT data given"):
        load_sft(empty, tokenizer=object())
    with pytest.raises(DataError, match="^no sequences given"):
        load_sequences(empty, tokenizer=object())


def test_a_utf16_task_file_without_byte_order_mark_is_named(tmp_path):
    """A spreadsheet's UTF-16 export with no BOM: its ASCII is valid UTF-8 with a NUL after every
    character, which JSON called 'invalid JSON at column 2'."""
    path = tmp_path / "mc.jsonl"
    path.write_bytes((json.dumps({"query": "Q?", "choices": ["a", "b"], "gold": 0}) + "\n").encode("utf-16-le"))
    with pytest.raises(DataError, match=r"mc\.jsonl: UTF-16 text \(no byte-order mark\); save it as UTF-8$"):
        load_task(str(path))


def test_items_in_memory_load_as_the_same_items_in_a_file_do(tmp_path):
    """A list of dicts (or a datasets.Dataset) is the items, not a file name: it was looked up as a path
    (a raw "File name too long" for a long list) or refused as an unknown task."""
    rows = [{"query": f"Question number {i}?", "choices": ["yes", "no", "maybe"], "gold": i % 3} for i in range(60)]
    from_file = load_task(str(write_jsonl(tmp_path / "mc.jsonl", rows)))
    task = load_task(rows, limit=50)
    assert task.source == "in-memory records" and len(task) == 50 and task.metric == "acc"
    assert [(it.context, it.choices, it.gold) for it in task.items] == [
        (it.context, it.choices, it.gold) for it in from_file.items[:50]
    ]
    assert task.items[3].place == "in-memory records: record 4"
    assert load_task(rows[:1]).items[0].gold == 0  # a short list, not a hub id
    partial = [{"contexts": ["The cat sat.", "The dog sat."], "continuation": "It purred.", "gold": 0}]
    assert load_task(partial).items[0].contexts == partial[0]["contexts"]  # every kind of file record
    # a pandas to_dict("records") row holds numpy values: read as the numbers and lists they are
    import numpy as np

    numpy_rows = [{**r, "gold": np.int64(r["gold"]), "choices": np.array(r["choices"])} for r in rows]
    assert load_task(numpy_rows).fingerprint == from_file.fingerprint
    datasets = pytest.importorskip("datasets")
    assert load_task(datasets.Dataset.from_list(rows)).fingerprint == from_file.fingerprint


@pytest.mark.parametrize(
    "given, error",
    [
        ([{"query": "Q?", "choices": ["a", "b"], "gold": 0}, {"query": "Q?", "choices": ["a"], "gold": 0}], "record 2"),
        ([{"query": "Q?", "choices": ["a", "b"], "gold": 5}], r"record 1: gold 5 out of range"),
        ([{"instruction": "Hi", "output": "Hello."}], "SFT records .*not multiple-choice items"),
        ([], "empty list, no records$"),
        (7, r"^a task is a known task name, a file name, .* or a datasets.Dataset, not int$"),
    ],
)
def test_bad_items_in_memory_are_named_by_their_index(given, error):
    with pytest.raises(DataError, match=error):
        load_task(given)


@pytest.mark.parametrize(
    "record, message",
    [
        # a mapping of labels to texts: not "a list of at least 2 strings", which it might be read as holding
        (
            {"query": "Q", "choices": {"A": "a", "B": "b", "C": "c", "D": "d"}, "gold": "B"},
            r'line 1: choices are an object \({"A", "B", "C", "D"}: labels to texts\); a list is needed: write the',
        ),
        # the gold named as the file names it, under --fields too
        (
            {"activity_label": "A", "ctx_a": "x", "ctx_b": "y", "endings": ["b", "c"], "label": 7},
            r"line 1: label 7 out of range for 2 choices$",
        ),
        (
            {"activity_label": "A", "ctx_a": "x", "ctx_b": "y", "endings": "b or c", "label": 0},
            r"line 1: endings must be a list of at least 2 strings$",
        ),
    ],
)
def test_messages_name_what_the_file_wrote(tmp_path, record, message):
    path = write_jsonl(tmp_path / "items.jsonl", [record])
    with pytest.raises(DataError, match=message):
        load_task(str(path))


def test_a_mapped_gold_is_named_by_its_field(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [{"question": "Q", "options": ["a", "b"], "answer": 7}])
    with pytest.raises(DataError, match=r"line 1: answer 7 out of range for 2 choices$"):
        load_task(str(path), fields={"query": "question", "choices": "options", "gold": "answer"})


def test_a_folder_of_json_files_says_what_a_folder_is_read_as(tmp_path):
    folder = tmp_path / "items"
    folder.mkdir()
    for name in ("b.jsonl", "a.jsonl"):
        write_jsonl(folder / name, [{"query": "Q", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(DataError, match=r"a folder with no task files: a folder is read as MMLU CSVs") as err:
        load_task(str(folder))
    assert str(err.value).endswith(f"give one of its files as the task (e.g. {folder / 'a.jsonl'})")


def test_sft_records_as_a_task_name_every_command_that_reads_loss_files(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Say hi.", "output": "Hi."}])
    with pytest.raises(DataError, match=r"--task loss:FILE \(eval, ablate, shapley, prune, prune-curve\)$"):
        load_task(str(sft))


def test_a_csv_whose_subject_comes_from_its_name_says_so(tmp_path, capsys):
    """One CSV's subject is its file name, which lm-eval's prompt states ("... about my quiz."): renaming the
    file changed the scores without a word."""
    quiz = tmp_path / "my_quiz.csv"
    quiz.write_text("What is 2+2?,3,4,5,6,B\n")
    task, _ = load_task(str(quiz)), load_task(str(quiz))  # a command reads its task twice: one note
    assert "questions (with answers) about my quiz.\n" in task.items[0].context
    assert capsys.readouterr().err.splitlines() == [
        f'note: {quiz}: the prompt names the subject from the file name ("... (with answers) about my quiz."), so '
        "renaming the file changes the scores; name it SUBJECT_test.csv (e.g. high_school_physics_test.csv) for "
        "the subject you mean"
    ]
    named = tmp_path / "anatomy_test.csv"  # named as MMLU's own files are: nothing to say
    named.write_text("What is 2+2?,3,4,5,6,B\n")
    load_task(str(named))
    assert capsys.readouterr().err == ""

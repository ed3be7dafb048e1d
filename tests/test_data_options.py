"""The data options offered wherever they apply: ``--subject`` in every command that scores an MMLU task,
``--format`` wherever SFT records are read for training or measuring (ila, finetune, similarity), and
``--append-eos`` in prune and prune-curve, which score ``loss:FILE`` and read SFT data; each takes effect,
is recorded in the result, and is refused in one line where it would have none."""

from __future__ import annotations

import json

import pytest
from test_error_hints import _refused

from layerscope.cli.app import main
from layerscope.core.errors import ConfigError


def _run(argv: list) -> int:
    """``layerscope ARGV``'s exit code, paths given as they are."""
    return main([str(a) for a in argv])


def _mmlu(folder):
    """An MMLU folder of two subjects: anatomy (2 items) and toy_math (3 items)."""
    (folder / "data" / "test").mkdir(parents=True)
    (folder / "data" / "test" / "anatomy_test.csv").write_text("Bone?,a,b,c,d,A\nMuscle?,a,b,c,d,B\n")
    (folder / "data" / "test" / "toy_math_test.csv").write_text("1+1?,1,2,3,4,B\n2+2?,1,2,3,4,D\n3-3?,0,1,2,3,A\n")
    return folder


def _json(path):
    return json.loads(path.read_text())


def _texts(path, n: int = 6):
    """SFT records that read as prompt_completion (detected) or, forced, as text: the two readings differ."""
    rows = [
        {"prompt": f"Tell story {i}.", "completion": "The dog ran home.", "text": f"Once upon a time {i} cats sat."}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _plain_texts(path, n: int = 6):
    """Text records (format text): the ones --append-eos ends with the eos token."""
    path.write_text("\n".join(json.dumps({"text": f"Once upon a time there was a cat called {i}."}) for i in range(n)))
    return path


# ---- --subject: ablate, shapley, prune, prune-curve --------------------------------------------------


def test_subject_picks_the_mmlu_items_scored_in_every_task_command(stories_path, tmp_path, capsys):
    """eval's --subject, the same in ablate, shapley, prune and prune-curve: the items of the subject alone
    are scored, and the result says which (the task ``mmlu:SUBJECT`` and its items, as eval prints them)."""
    mmlu = _mmlu(tmp_path / "mmlu")
    common = ["--model", stories_path, "--task", mmlu, "--no-progress", "--threads", "1"]
    block = [*common, "--granularity", "block"]
    assert _run(["ablate", *block, "--out", tmp_path / "all"]) == 0
    assert _run(["ablate", *block, "--subject", "anatomy", "--out", tmp_path / "anatomy"]) == 0
    whole, picked = _json(tmp_path / "all" / "importance.json"), _json(tmp_path / "anatomy" / "importance.json")
    assert (whole["data"]["n_items"], picked["data"]["n_items"]) == (5, 2)
    assert picked["data"]["task"] == "mmlu:anatomy" and picked["data"]["source"].endswith("[anatomy]")
    shapley = ["shapley", *block, "--estimator", "proximity", "--subject", "toy_math", "--out", tmp_path / "s"]
    assert _run(shapley) == 0
    assert _json(tmp_path / "s" / "importance.json")["data"]["n_items"] == 3

    prune = ["prune", *common, "--method", "last", "--remove", "1"]
    assert _run([*prune, "--subject", "anatomy", "--out", tmp_path / "p"]) == 0
    value = _json(tmp_path / "p" / "pruning_note.json")["value"]  # what was scored, as ablate records it
    assert (value["task"], value["n_items"], value["source"]) == ("mmlu:anatomy", 2, f"{mmlu} [anatomy]")
    out = capsys.readouterr().out
    assert "mmlu:anatomy: full model acc" in out and "mmlu:anatomy (acc): full model" in out  # ablate's, prune's
    assert _run([*prune, "--out", tmp_path / "p2"]) == 0
    assert (_json(tmp_path / "p2" / "pruning_note.json")["value"]["n_items"]) == 5

    curve = ["prune-curve", *common, "--orders", "last", "--k-max", "1"]
    assert _run([*curve, "--subject", "anatomy", "--out", tmp_path / "c"]) == 0
    data = _json(tmp_path / "c" / "mmlu" / "curves.json")["data"]
    assert (data["task"], data["n_items"]) == ("mmlu:anatomy", 2)


def test_subject_is_refused_where_it_would_pick_nothing(tmp_path, capsys):
    """Refused in one line, before any model loads: beside SFT data and a task the command chose itself, with a
    task that is not MMLU (the loader's refusal, as in eval), and in prune where no task is scored."""
    mmlu = _mmlu(tmp_path / "mmlu")
    assert _refused(capsys, ["ablate", "--task", "loss:demo", "--subject", "anatomy"]) == (
        "layerscope ablate: error: --task loss: evaluates loss on SFT data; --subject applies to a multiple-choice "
        "--task only: drop it"
    )
    line = _refused(capsys, ["shapley", "--task", "arc_easy", "--subject", "anatomy", "--out", tmp_path / "s"])
    assert "error: --subject only applies to MMLU, not " in line and line.endswith("arc_easy.jsonl")
    for command in ("ablate", "shapley"):  # the task the command chose itself, not a path it was never given
        assert _refused(capsys, [command, "--subject", "anatomy", "--out", tmp_path / "s"]) == (
            f"layerscope {command}: error: --subject picks MMLU subjects; {command} scores arc_easy by default: "
            "drop it, or give --task mmlu (or an MMLU file)"
        )
    assert _refused(capsys, ["ablate", "--fields", "query=q", "--out", tmp_path / "s"]) == (
        "layerscope ablate: error: --fields renames a custom file's fields; ablate scores arc_easy by default "
        "(a known task): drop it, or give --task FILE"
    )
    line = _refused(capsys, ["ablate", "--task", mmlu, "--subject", "astrology", "--out", tmp_path / "a"])
    assert "unknown MMLU subject 'astrology'" in line
    prune = ["prune", "--remove", "1", "--out", tmp_path / "p", "--subject", "anatomy"]
    assert _refused(capsys, [*prune, "--method", "last"]) == (
        "layerscope prune: error: --subject applies to the items of --task; --method last without --task scores "
        "none: drop it"
    )
    assert _refused(capsys, [*prune, "--method", "ablation"]) == (
        "layerscope prune: error: --subject picks MMLU subjects; --method ablation scores arc_easy by default: "
        "drop it, or give --task mmlu (or an MMLU file)"
    )
    assert _refused(capsys, ["prune-curve", "--subject", "anatomy", "--out", tmp_path / "c"]) == (
        "layerscope prune-curve: error: --subject picks MMLU subjects; prune-curve scores arc_easy by default: "
        "drop it, or give --task mmlu (or an MMLU file)"
    )
    both = ["prune-curve", "--task", mmlu, "--task", "loss:demo", "--subject", "anatomy", "--out", tmp_path / "c"]
    assert "--task loss: evaluates loss on SFT data; --subject applies" in _refused(capsys, both)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_subject_beside_a_task_that_names_its_own_is_refused(shared_dir, tmp_path, capsys):
    """``--task mmlu:anatomy --subject virology`` scored virology and recorded mmlu:virology: one replaced the
    other without a word. Refused in the loader, so in every command (eval too), before any model loads; the
    same subjects given twice are one task, read as the task alone reads it."""
    from layerscope.core.tasks import load_task

    assert _refused(capsys, ["ablate", "--task", "mmlu:anatomy", "--subject", "virology", "--out", tmp_path / "a"]) == (
        "layerscope ablate: error: --task mmlu:anatomy names its subject; --subject virology would replace it: give one"
    )
    assert _refused(capsys, ["eval", "--task", "mmlu_anatomy", "--subject", "virology"]) == (
        "layerscope eval: error: --task mmlu_anatomy names its subject; --subject virology would replace it: give one"
    )
    curve = ["prune-curve", "--task", "mmlu:anatomy,virology", "--subject", "STEM", "--out", tmp_path / "c"]
    assert _refused(capsys, curve) == (
        "layerscope prune-curve: error: --task mmlu:anatomy,virology names its subjects; --subject STEM would "
        "replace them: give one"
    )
    alone = load_task("mmlu:anatomy", limit=3)
    for subject in ("anatomy", "Anatomy", " anatomy "):
        twice = load_task("mmlu:anatomy", limit=3, subject=subject)
        assert (twice.name, twice.fingerprint, twice.source) == (alone.name, alone.fingerprint, alone.source)
    assert load_task("mmlu", limit=3, subject="anatomy").name == "mmlu:anatomy"  # --subject alone, as before
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_ablate_and_shapley_still_score_arc_easy_by_default(stories_path, tmp_path, capsys):
    """The default task is filled in after parsing (so messages can say it was the command's choice): --help
    names it, and a run without --task scores it and records it."""
    for command in ("ablate", "shapley"):
        with pytest.raises(SystemExit):
            _run([command, "--help"])
        assert "negative held-out loss (default arc_easy)" in " ".join(capsys.readouterr().out.split())
    argv = ["ablate", "--model", stories_path, "--granularity", "block", "--limit", "2", "--threads", "1"]
    assert _run([*argv, "--no-progress", "--out", tmp_path / "a"]) == 0
    assert _json(tmp_path / "a" / "importance.json")["data"]["task"] == "arc_easy"


# ---- --format: finetune and similarity, as ila has it ------------------------------------------------


def test_format_forces_how_similarity_reads_sft_records(stories_path, tmp_path, capsys):
    """Detected, the records are prompt_completion; --format text reads their text instead, and the result
    records the format read (as ila's does)."""
    data = _texts(tmp_path / "sft.jsonl")
    argv = ["similarity", "--model", stories_path, "--data", data, "--limit", "4", "--max-length", "32"]
    argv += ["--threads", "1", "--no-progress"]
    assert _run([*argv, "--out", tmp_path / "auto"]) == 0
    assert _run([*argv, "--format", "text", "--out", tmp_path / "text"]) == 0
    auto = _json(tmp_path / "auto" / "block_influence" / "importance.json")["data"]
    text = _json(tmp_path / "text" / "block_influence" / "importance.json")["data"]
    assert (auto["format"], text["format"]) == ("prompt_completion", "text")
    assert auto["n_tokens"] != text["n_tokens"]  # other token sequences
    assert "4 sequences (sft)" in capsys.readouterr().out


def test_format_is_refused_where_similarity_reads_no_sft_records(tmp_path, capsys):
    (tmp_path / "book.txt").write_text("Once upon a time.\n")
    base = ["similarity", "--out", tmp_path / "o"]
    assert _refused(capsys, [*base, "--data", f"text:{tmp_path / 'book.txt'}", "--format", "text"]) == (
        f"layerscope similarity: error: --format text applies to SFT data; --data text:{tmp_path / 'book.txt'} is "
        "read as plain text: drop it"
    )
    assert _refused(capsys, [*base, "--format", "alpaca", "--no-append-eos"]) == (
        "layerscope similarity: error: --no-append-eos and --format alpaca apply to SFT data; --data arc_easy is "
        "read as a task's contexts: drop them"
    )
    line = _refused(capsys, [*base, "--format", "bogus"])
    assert line.startswith("layerscope similarity: error: argument --format: unknown data format 'bogus'; use auto")
    from layerscope.methods.sequences import load_sequences  # the API refuses it too, before reading anything

    with pytest.raises(ConfigError, match=r"^format 'text' reads SFT records; arc_easy is read as a task: leave"):
        load_sequences("arc_easy", None, format="text")


def test_format_forces_how_finetune_reads_data_and_heldout(stories_path, tmp_path, capsys):
    """--format reads --data and --heldout in the format given; report.json records the format of each."""
    data, held = _texts(tmp_path / "train.jsonl"), _texts(tmp_path / "held.jsonl", 2)
    held.write_text(held.read_text().replace("cats", "dogs").replace("dog ran", "cat ran"))  # its own examples
    argv = ["finetune", "--model", stories_path, "--data", data, "--heldout", held, "--mode", "all"]
    argv += ["--max-steps", "1", "--batch-size", "2", "--max-length", "64", "--threads", "1", "--no-progress"]
    assert _run([*argv, "--out", tmp_path / "auto"]) == 0
    assert _run([*argv, "--format", "text", "--out", tmp_path / "text"]) == 0
    auto, text = _json(tmp_path / "auto" / "report.json"), _json(tmp_path / "text" / "report.json")
    assert {side: auto["data"][side]["format"] for side in ("train", "heldout")} == {
        "train": "prompt_completion",
        "heldout": "prompt_completion",
    }
    assert {side: text["data"][side]["format"] for side in ("train", "heldout")} == {"train": "text", "heldout": "text"}
    assert auto["heldout_loss_before"] != text["heldout_loss_before"]  # other tokens scored
    capsys.readouterr()
    line = _refused(capsys, ["finetune", "--data", data, "--format", "bogus"])
    assert line.startswith("layerscope finetune: error: argument --format: unknown data format 'bogus'; use auto")


# ---- --append-eos: prune and prune-curve -------------------------------------------------------------


def test_append_eos_shapes_the_loss_that_prune_and_prune_curve_score(stories_path, tmp_path):
    """With a loss:FILE of text records, --no-append-eos scores the texts alone: another value, recorded (prune:
    the note's append_eos; prune-curve: the data fingerprint, as ablate records it, and the sequences its
    similarity orders measured, as similarity records them)."""
    task = f"loss:{_plain_texts(tmp_path / 'texts.jsonl')}"
    common = ["--model", stories_path, "--task", task, "--max-length", "32", "--threads", "1", "--no-progress"]
    prune = ["prune", *common, "--method", "last", "--remove", "1"]
    assert _run([*prune, "--out", tmp_path / "eos"]) == 0
    assert _run([*prune, "--no-append-eos", "--out", tmp_path / "no-eos"]) == 0
    eos, no_eos = _json(tmp_path / "eos" / "pruning_note.json"), _json(tmp_path / "no-eos" / "pruning_note.json")
    assert (eos["append_eos"], no_eos["append_eos"]) == (True, False)
    assert eos["value"]["full"] != no_eos["value"]["full"]

    # the similarity orders' --data too: the sequences they measured are recorded beside the task's data
    curve = ["prune-curve", *common, "--data", task[len("loss:") :], "--orders", "block-influence,last", "--k-max", "1"]
    assert _run([*curve, "--out", tmp_path / "c-eos"]) == 0
    assert _run([*curve, "--no-append-eos", "--out", tmp_path / "c-no-eos"]) == 0
    eos, no_eos = (
        _json(tmp_path / "c-eos" / "texts" / "curves.json"),
        _json(tmp_path / "c-no-eos" / "texts" / "curves.json"),
    )
    assert eos["data"]["fingerprint"] != no_eos["data"]["fingerprint"]
    assert eos["baseline"]["full"] != no_eos["baseline"]["full"]
    assert (eos["sequences"]["append_eos"], no_eos["sequences"]["append_eos"]) == (True, False)
    assert eos["sequences"]["fingerprint"] != no_eos["sequences"]["fingerprint"]  # the eos token, or not


def test_append_eos_is_refused_where_prune_reads_no_sft_data(tmp_path, capsys):
    prune = ["prune", "--remove", "1", "--out", tmp_path / "p"]
    assert _refused(capsys, [*prune, "--method", "last", "--task", "arc_easy", "--no-append-eos"]) == (
        "layerscope prune: error: --no-append-eos applies to SFT data (--task loss:<file>, --heal, or an SFT --data "
        "of --method block-influence / angular); this run reads none: drop it"
    )
    assert "--append-eos applies to SFT data" in _refused(capsys, [*prune, "--method", "angular", "--append-eos"])
    assert _refused(capsys, ["prune-curve", "--no-append-eos", "--out", tmp_path / "c"]) == (
        "layerscope prune-curve: error: --no-append-eos applies to SFT data (a --task loss:<file>, or an SFT --data "
        "of block-influence / angular); this run reads none: drop it"
    )
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()
    from layerscope.cli import app, prune

    # where prune reads SFT data it takes it: an SFT --data of angular, --heal (as the loss of loss:FILE, above)
    for how in (["--method", "angular", "--data", "sft.jsonl"], ["--method", "last", "--heal", "sft.jsonl"]):
        args = app.build_parser(only="prune").parse_args(["prune", "--remove", "1", *how, "--no-append-eos"])
        prune._check_unused(args)
        assert args.append_eos is False


def _mc_items(path, n: int = 4):
    """Multiple-choice items: a --data file that similarity's readers take as a task's contexts."""
    rows = [{"query": f"Where did cat {i} sit?", "choices": ["on the mat", "in the sky"], "gold": 0} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_append_eos_is_refused_once_the_data_read_turns_out_to_be_a_task(stories_path, tmp_path, capsys):
    """A --data file may hold SFT records or a task's items, which shows only once it is read: read as a task's
    contexts, a given --append-eos had no effect, and was recorded as if it had. Refused then (as similarity
    refuses it), before anything is written; left out, the note records the sequences read, and no append_eos."""
    mc = _mc_items(tmp_path / "mc.jsonl")
    base = ["--model", stories_path, "--data", mc, "--limit", "4", "--max-length", "32"]
    base += ["--threads", "1", "--no-progress"]
    prune = ["prune", *base, "--method", "block-influence", "--remove", "1"]
    assert _refused(capsys, [*prune, "--no-append-eos", "--out", tmp_path / "p"]) == (
        "layerscope prune: error: --no-append-eos applies to SFT data (--task loss:<file>, --heal, or an SFT --data "
        f"of --method block-influence / angular); --data {mc} is read as a task's contexts: drop it"
    )
    curve = ["prune-curve", *base, "--orders", "block-influence", "--k-max", "1"]
    assert _refused(capsys, [*curve, "--append-eos", "--out", tmp_path / "c"]) == (
        "layerscope prune-curve: error: --append-eos applies to SFT data (a --task loss:<file>, or an SFT --data of "
        f"block-influence / angular); --data {mc} is read as a task's contexts: drop it"
    )
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()
    assert _run([*prune, "--out", tmp_path / "p"]) == 0
    note = _json(tmp_path / "p" / "pruning_note.json")
    assert (note["sequences"]["kind"], note["sequences"]["n_sequences"]) == ("task contexts", 4)
    assert "append_eos" not in note


def test_no_append_eos_changes_what_prune_heals_on_and_measures(stories_path, tmp_path):
    """--heal and an SFT --data of angular read text records with or without the eos token: other data (their
    fingerprints), another held-out loss, and the note says which was read."""
    texts = _plain_texts(tmp_path / "texts.jsonl", 10)
    common = ["prune", "--model", stories_path, "--remove", "1", "--max-length", "32", "--threads", "1"]
    common += ["--no-progress"]
    heal = [*common, "--method", "last", "--heal", texts, "--max-steps", "1"]
    assert _run([*heal, "--out", tmp_path / "h-eos"]) == 0
    assert _run([*heal, "--no-append-eos", "--out", tmp_path / "h-no-eos"]) == 0
    eos, no_eos = _json(tmp_path / "h-eos" / "pruning_note.json"), _json(tmp_path / "h-no-eos" / "pruning_note.json")
    assert (eos["append_eos"], no_eos["append_eos"]) == (True, False)
    assert eos["healing"]["data"]["train"]["fingerprint"] != no_eos["healing"]["data"]["train"]["fingerprint"]
    assert eos["healing"]["heldout_loss_before"] != no_eos["healing"]["heldout_loss_before"]

    angular = [*common, "--method", "angular", "--data", texts, "--limit", "4"]
    assert _run([*angular, "--out", tmp_path / "a-eos"]) == 0
    assert _run([*angular, "--no-append-eos", "--out", tmp_path / "a-no-eos"]) == 0
    eos, no_eos = _json(tmp_path / "a-eos" / "pruning_note.json"), _json(tmp_path / "a-no-eos" / "pruning_note.json")
    assert (eos["append_eos"], no_eos["append_eos"]) == (True, False)
    assert (eos["sequences"]["append_eos"], no_eos["sequences"]["append_eos"]) == (True, False)
    assert eos["sequences"]["fingerprint"] != no_eos["sequences"]["fingerprint"]

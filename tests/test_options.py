"""Options checked before work starts, a trained adapter kept when a later step fails, tied rankings
warned about wherever they select modules, and ``--threads``."""

import json
import warnings
from unittest import mock

import pytest
import torch
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.core.atomic import WriteError
from layerscope.core.errors import DataError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.core.ties import TiedRankingWarning, tie_groups, tie_warning, ties_across
from layerscope.training import FinetuneConfig, finetune
from layerscope.training.selection import select_modules

TRAIN, HELD = random_sft(12, 0), random_sft(4, 1)
MC = [
    {"query": "Question: What do cats say?\nAnswer:", "choices": ["meow", "moo"], "gold": 0},
    {"query": "Question: What do cows say?\nAnswer:", "choices": ["meow", "moo"], "gold": 1},
]


def _ranking(model, scores=None, method="ablation"):
    lm = build_layer_map(model)
    players = lm.players("module")
    scores = list(range(len(players))) if scores is None else scores
    return lm, LayerImportance(method, "module", players, [float(s) for s in scores], model_info(model, lm, "tiny"))


def _selection(model, mode="top", fraction=0.25):
    lm, imp = _ranking(model)
    return select_modules(lm, imp, mode, fraction)


# ----------------------------------------------------------------------------- late options, adapter kept


def test_unknown_eval_task_fails_before_training(tmp_path):
    model = tiny_model("llama", n_layers=2)
    cfg = FinetuneConfig(max_steps=1, batch_size=4, eval_tasks=["arc_esay"], out_dir=str(tmp_path / "run"))
    with mock.patch("layerscope.training.finetuning._train", side_effect=AssertionError("training reached")):
        with pytest.raises(DataError, match="unknown task 'arc_esay'"):
            finetune(model, TinyTokenizer(), TRAIN, HELD, _selection(model), cfg)


def test_unwritable_out_fails_before_training(tmp_path):
    model = tiny_model("llama", n_layers=2)
    (tmp_path / "blocker").write_text("a file\n")
    cfg = FinetuneConfig(max_steps=1, batch_size=4, out_dir=str(tmp_path / "blocker" / "run"))
    with mock.patch("layerscope.training.finetuning._train", side_effect=AssertionError("training reached")):
        with pytest.raises(WriteError, match="cannot write"):
            finetune(model, TinyTokenizer(), TRAIN, HELD, _selection(model), cfg)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_failure_after_training_keeps_the_adapter_and_says_where(tmp_path):
    model = tiny_model("llama", n_layers=2)
    out = tmp_path / "run"
    cfg = FinetuneConfig(max_steps=2, batch_size=4, lr=1e-2, out_dir=str(out))
    full = WriteError(f"{out / 'report.json'}: cannot write (No space left on device)")
    with mock.patch("layerscope.training.finetuning._write_report", side_effect=full):
        with pytest.raises(WriteError) as caught:
            finetune(model, TinyTokenizer(), TRAIN, HELD, _selection(model), cfg)
    message = str(caught.value)
    assert "No space left on device" in message and f"adapter is saved in {out / 'adapter'}" in message
    assert "\n" not in message  # still the CLI's one line
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "report.json").exists()  # its absence marks the run as unfinished
    assert not list(out.glob(".*"))  # no temp folders


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_bug_in_evaluation_keeps_the_adapter_and_notes_it(tmp_path, capsys):
    model = tiny_model("llama", n_layers=2)
    out = tmp_path / "run"
    cfg = FinetuneConfig(method="full", max_steps=2, batch_size=4, lr=1e-3, eval_tasks=[], out_dir=str(out))
    with mock.patch("layerscope.training.evaluation.heldout_loss", side_effect=[3.0, RuntimeError("boom")]):
        with pytest.raises(RuntimeError, match="boom"):
            finetune(model, TinyTokenizer(), TRAIN, HELD, _selection(model), cfg)
    # full fine-tuning saves the trained tensors, not an adapter: trained/, and the note says so
    assert (out / "trained" / "trained_weights.safetensors").is_file() and not (out / "adapter").exists()
    assert f"the trained weights are saved in {out / 'trained'}" in capsys.readouterr().err


def test_demo_refuses_an_output_below_a_file_before_loading(tmp_path, capsys):
    from layerscope.cli.app import main

    (tmp_path / "blocker").write_text("a file\n")
    with mock.patch("layerscope.core.models.load_model", side_effect=AssertionError("model loaded")):
        rc = main(["demo", "--out", str(tmp_path / "blocker" / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]


# ----------------------------------------------------------------------------- tied rankings


def test_tie_groups_and_tied_fraction():
    assert tie_groups([1.0, 2.0, 3.0]) == []
    assert tie_groups([2.0, 1.0, 2.0 + 1e-7, 5.0]) == [[0, 2]]  # float noise ties; a real gap does not
    assert tie_groups([float("nan"), None, 1.0]) == [[0, 1]]  # missing scores rank last, together
    model = tiny_model("llama", n_layers=2)
    _, distinct = _ranking(model)
    assert distinct.tied_fraction() == 0.0
    # what an ILA run stopped after one gate step looks like: every gate a few ulps from 2.9
    _, flat = _ranking(model, [2.9 + 1e-6 * (i % 7) for i in range(len(distinct.players))], method="ila")
    assert flat.tied_fraction() == 1.0


def test_tie_warning_says_why_and_what_to_do():
    model = tiny_model("llama", n_layers=2)
    lm, imp = _ranking(model)
    n = len(imp.players)
    assert tie_warning(imp, imp.top(0.3)) is None
    _, flat = _ranking(model, [1.0] * n, method="ila")
    note = tie_warning(flat, flat.top(0.3))
    assert "every score" in note and "layer order, not importance" in note and "--gate-steps" in note
    # two players tied across the cut of the top 2: one is in, one is out
    scores = [0.0] * n
    scores[0], scores[1], scores[2] = 5.0, 3.0, 3.0
    _, cut = _ranking(model, scores)
    assert ties_across(cut, cut.ranking()[:2]) == [cut.players[1]]
    assert "1 of the 2 selected players tie" in tie_warning(cut, cut.ranking()[:2])
    # the example names the chosen player and the one left out it ties with, never a chosen one as "left out"
    assert f"(e.g. {cut.players[1]} with {cut.players[2]})" in tie_warning(cut, cut.ranking()[:2])
    assert "--limit" in tie_warning(cut, cut.ranking()[:2])  # ablation: more items
    # a tie with a player that is not eligible (below --min-block) decides nothing
    assert tie_warning(cut, cut.ranking()[:2], pool=cut.ranking()[:2]) is None


def test_select_modules_warns_on_tied_rankings_only():
    model = tiny_model("llama", n_layers=2)
    lm, imp = _ranking(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiedRankingWarning)
        select_modules(lm, imp, "top", 0.3)
        select_modules(lm, imp, "freeze-bottom", 0.25)
        select_modules(lm, LayerImportance(**{**imp.__dict__, "scores": [1.0] * len(imp.players)}), "random", 0.3)
    flat = LayerImportance(**{**imp.__dict__, "method": "ila", "scores": [1.0] * len(imp.players)})
    for mode in ("top", "freeze-bottom"):
        with pytest.warns(TiedRankingWarning, match="raise|--gate-steps"):
            select_modules(lm, flat, mode, 0.3)


def test_export_prints_the_tie_warning_as_one_line(tmp_path, capsys):
    from layerscope.cli.app import main

    model = tiny_model("llama", n_layers=2)
    _, imp = _ranking(model, [1.0] * 14, method="ila")
    path = imp.save(tmp_path / "imp.json")
    assert main(["export", str(path), "--to", "peft", "--out", str(tmp_path / "peft")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and err[0].startswith("layerscope export: warning: every score of the ila ranking")


# ----------------------------------------------------------------------------- --threads


def test_threads_option_is_applied_and_recorded(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(x) + "\n" for x in MC))
    out = tmp_path / "abl"
    try:
        argv = ["ablate", "--model", str(stories_path), "--task", str(mc), "--granularity", "block"]
        rc = main([*argv, "--threads", "2", "--out", str(out), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        assert torch.get_num_threads() == 2
        assert json.loads((out / "importance.json").read_text())["timings"]["threads"] == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)


def test_threads_default_leaves_torch_alone_and_zero_is_refused():
    import argparse

    from layerscope.cli.common import add_model_args, apply_threads
    from layerscope.core.errors import ConfigError

    p = argparse.ArgumentParser()
    add_model_args(p)
    assert p.parse_args([]).threads is None
    before = torch.get_num_threads()
    apply_threads(None)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="--threads must be >= 1"):
        apply_threads(0)


# ----------------------------------------------------------------------------- CLI options that named nothing


def _tiny_folder(tmp_path, stories_path, n_layers: int):
    """A tiny llama of ``n_layers`` blocks saved as a model folder, with stories260K's tokenizer."""
    folder = tmp_path / f"llama{n_layers}"
    tiny_model("llama", n_layers=n_layers, vocab=512).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).symlink_to(stories_path / name)
    return folder


def _mc_file(tmp_path):
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(x) + "\n" for x in MC))
    return mc


def test_exact_shapley_cap_is_the_one_the_help_states():
    import argparse

    from layerscope.cli import prune, prune_curve
    from layerscope.methods.shapley import EXACT_MAX_PLAYERS

    assert prune.EXACT_MAX_PLAYERS == EXACT_MAX_PLAYERS
    p = argparse.ArgumentParser()
    prune.add_arguments(p)
    text = " ".join(p.format_help().split())
    assert f"at most {EXACT_MAX_PLAYERS} players" in text and "~16" not in text
    assert set(prune.ESTIMATORS) == {"auto", "proximity", "exact"}  # permutation / owen would need a --budget
    p = argparse.ArgumentParser()
    prune_curve.add_arguments(p)
    assert f"at most {EXACT_MAX_PLAYERS} blocks" in " ".join(p.format_help().split())


def test_exact_shapley_on_too_many_blocks_is_refused_before_any_work(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    model, mc = str(_tiny_folder(tmp_path, stories_path, 15)), str(_mc_file(tmp_path))
    capsys.readouterr()  # saving the model's own progress
    common = ["--model", model, "--task", mc, "--threads", "1", "--no-progress"]
    with mock.patch("layerscope.cli.prune_curve.task_curves", side_effect=AssertionError("curves computed")):
        for option in ("--estimator", "--shapley"):  # --shapley: the earlier name, still accepted
            rc = main(["prune-curve", *common, option, "exact", "--out", str(tmp_path / "curves")])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1 and "--estimator exact: the model has 15 blocks" in err[0], err
    with mock.patch("layerscope.cli.ablate.build_evaluator", side_effect=AssertionError("task loaded")):
        argv = ["prune", *common, "--method", "shapley", "--estimator", "exact", "--remove", "1"]
        rc = main([*argv, "--out", str(tmp_path / "pruned")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--estimator exact: the model has 15 blocks" in err[0], err


def test_max_length_default_is_the_same_in_every_command():
    import argparse

    from layerscope.cli import ablate, eval, prune, prune_curve, shapley, similarity

    for module in (eval, ablate, shapley, prune, prune_curve, similarity):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        # None in eval / ablate / shapley / prune: a --max-length given where it cuts no text is refused, one
        # left out becomes 512 (cli.common.check_sft_only_options, cli.prune._check_max_length; tests/test_cli.py)
        expected = None if module in (eval, ablate, shapley, prune) else 512
        assert p.get_default("max_length") == expected, module.__name__
        assert "(default 512)" in " ".join(p.format_help().split()), module.__name__


def test_at_chance_note_says_below_chance_when_it_is():
    from layerscope.methods.ablation import at_chance_note

    below = at_chance_note(0.15, 0.25)
    assert "below chance (0.2500)" in below and "within" not in below
    above = at_chance_note(0.26, 0.25)
    assert "within 0.02 above chance (0.2500)" in above


def test_printed_values_name_their_metric(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    mc, sft = str(_mc_file(tmp_path)), str(tmp_path / "sft.json")
    (tmp_path / "sft.json").write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi there."}] * 6))
    common = ["--model", str(stories_path), "--threads", "1", "--no-progress"]
    argv = ["shapley", *common, "--task", mc, "--granularity", "block", "--out", str(tmp_path / "sh")]
    assert main(argv) == 0
    assert "mc: full model acc 0.5000" in capsys.readouterr().out  # an MC file's metric: acc
    argv = ["prune", *common, "--task", f"loss:{sft}", "--method", "last", "--remove", "1"]
    assert main([*argv, "--out", str(tmp_path / "pruned")]) == 0
    assert f"loss:{sft} (-loss): full model -" in capsys.readouterr().out
    argv = ["prune-curve", *common, "--task", f"loss:{sft}", "--k-max", "1", "--no-greedy", "--shapley", "none"]
    assert main([*argv, "--data", sft, "--limit", "4", "--out", str(tmp_path / "curves")]) == 0
    out = capsys.readouterr().out
    assert f"== loss:{sft}: full model -loss -" in out and "1 point = 0.01 nats of loss" in out


# ----------------------------------------------------------------------------- help texts and output names


def _help(module) -> str:
    import argparse

    p = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, width=10_000))
    module.add_arguments(p)  # one line per option: no word split at a hyphen
    return " ".join(p.format_help().split())


def test_prune_curve_names_the_shapley_estimator_as_shapley_and_prune_do():
    """--estimator, as `shapley` and `prune` spell it; --shapley still parses, to the same value, unlisted."""
    import argparse

    from layerscope.cli import prune, prune_curve, shapley

    p = argparse.ArgumentParser()
    prune_curve.add_arguments(p)
    assert p.parse_args([]).shapley == "auto"
    assert p.parse_args(["--estimator", "proximity"]).shapley == "proximity"
    assert p.parse_args(["--shapley", "none"]).shapley == "none"
    text = _help(prune_curve)
    assert "--estimator {auto,exact,proximity,none}" in text and "--shapley" not in text
    assert "--estimator" in _help(prune) and "--estimator" in _help(shapley)


def test_help_states_the_defaults_and_what_limit_picks():
    from layerscope.cli import eval, finetune, ila, prune, prune_curve

    curve = _help(prune_curve)
    assert "one subfolder per task (default layerscope-out/prune-curve)" in curve
    assert "(as `similarity`; default arc_easy)" in curve
    assert "(default layerscope-out/finetune-<mode>-<method>" in _help(finetune) and "trained/" in _help(finetune)
    assert "(default layerscope-out/ila)" in _help(ila)
    assert "new model folder, which must not exist (default layerscope-out/prune)" in _help(prune)
    # --limit: eval takes the first N; ila and finetune a random subset under their seed
    assert "use the first N items / examples, in file order" in _help(eval)
    assert "drawn at random (with --data-seed), not the file's first N" in _help(ila)
    assert "a random subset drawn with --data-seed" in _help(finetune)
    # prune: the value before and after pruning is measured only with --task (or a method that needs it)
    assert "That comparison is made only with --task or one of those methods" in _help(prune)
    assert "default arc_easy when needed" not in _help(prune)


def test_prune_without_a_task_says_that_nothing_was_compared(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    model = str(_tiny_folder(tmp_path, stories_path, 3))
    capsys.readouterr()
    argv = ["prune", "--model", model, "--method", "last", "--remove", "1", "--threads", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "pruned")]) == 0
    captured = capsys.readouterr()
    assert "full model" not in captured.out and "no value compared before and after pruning" in captured.err
    assert "--task T" in captured.err


def test_cli_full_fine_tuning_writes_trained_says_how_to_load_and_prints_no_log_dicts(tmp_path, stories_path, capsys):
    """finetune --method full: the raw tensors go to OUT/trained (not adapter/, which is a peft adapter's
    name) with one line on loading them; the progress bar (on: no --no-progress) puts no log dict on stdout."""
    from layerscope.cli.app import main

    folder = _tiny_folder(tmp_path, stories_path, 2)
    model = tiny_model("llama", n_layers=2, vocab=512)
    lm, imp = _ranking(model)
    imp.model["fingerprint"] = None
    imp_path = imp.save(tmp_path / "imp.json")
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"instruction": f"Say {i}.", "output": f"Number {i} here."} for i in range(12)]))
    capsys.readouterr()
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(folder), "--data", str(sft), "--importance", str(imp_path), "--method", "full"]
    argv += ["--max-steps", "2", "--batch-size", "2", "--seq-len", "128", "--threads", "1", "--out", str(out)]
    rc = main([*argv, "--ignore-fingerprint"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "trained" / "trained_weights.safetensors").is_file() and not (out / "adapter").exists()
    assert f"wrote {out / 'report.json'} and {out / 'trained'}" in captured.out
    assert "not an adapter" in captured.out and "load_trained(base_model" in captured.out
    assert "{'" not in captured.out and "train_runtime" not in captured.out, captured.out
    assert "fine-tuning:" in captured.err and "loss=" in captured.err


def test_prune_estimator_default_and_auto_are_prune_curves(tmp_path):
    """prune --method shapley resolved --estimator as prune-curve does (auto: exact up to 10 players), so the
    curve a user chooses from is the order prune applies; it defaulted to proximity."""
    import argparse
    import types

    from layerscope.cli import prune, prune_curve

    p = argparse.ArgumentParser()
    prune.add_arguments(p)
    assert "(default auto)" in _help(prune) and "(default auto)" in _help(prune_curve)
    for n, want in ((8, "exact"), (10, "exact"), (12, "proximity")):
        args = p.parse_args(["--method", "shapley", "--remove", "1"])
        prune._check_unused(args)
        assert args.estimator == "auto"
        prune._check_exact(args, types.SimpleNamespace(players=lambda granularity, n=n: list(range(n))))
        assert args.estimator == want == prune_curve.shapley_estimator("auto", n), n
    args = p.parse_args(["--method", "shapley", "--estimator", "proximity", "--remove", "1"])
    prune._check_unused(args)
    prune._check_exact(args, types.SimpleNamespace(players=lambda granularity: list(range(4))))
    assert args.estimator == "proximity"  # a given estimator is kept


def test_prune_checks_its_inputs_before_its_out(tmp_path, monkeypatch, capsys):
    """A missing --importance is named, not the default --out left by an earlier run; that one's refusal
    says to give another --out or remove it (prune has no --overwrite)."""
    from layerscope.cli.app import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerscope-out" / "prune").mkdir(parents=True)
    assert main(["prune", "--importance", str(tmp_path / "nope"), "--remove", "1"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "already exists" not in err
    assert main(["prune", "--method", "last", "--remove", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "give --out another folder, or remove it (rm -r layerscope-out/prune)" in err


def test_finetune_evaluates_in_batches_of_eval_and_ablate():
    """finetune --eval-batch-size defaulted to 8, eval's and ablate's --batch-size to 16."""
    from layerscope.cli import ablate, eval, finetune

    for module in (finetune,):
        assert "--eval-batch-size EVAL_BATCH_SIZE rows per forward in evaluation (default 16)" in _help(module)
    for module in (eval, ablate):
        assert "--batch-size BATCH_SIZE rows per forward pass (default 16)" in _help(module)


def test_one_setting_parses_under_the_name_other_commands_give_it():
    """compare --granularity (ablate's name for --level), plot --fraction (compare's for --top), and finetune
    --lora-dropout as export has it, reaching the training config (finetune fixed it at 0 before)."""
    import argparse

    from layerscope.cli import compare, finetune, plot

    def parsed(module, argv):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        return p.parse_args(argv)

    assert parsed(compare, ["a", "b", "--granularity", "block"]).level == "block"
    assert parsed(plot, ["a", "--fraction", "0.2"]).top == 0.2
    args = parsed(finetune, ["--data", "demo", "--importance", "x", "--lora-dropout", "0.1"])
    assert finetune._finetune_config(args).lora_dropout == 0.1
    assert "--granularity" not in _help(compare) and "--fraction" not in _help(plot)
    assert "--lora-dropout LORA_DROPOUT LoRA dropout (default 0)" in _help(finetune)

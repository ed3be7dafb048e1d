import json
import re

import pytest

from layerscope.cli.app import main


@pytest.mark.slow
def test_demo_runs_end_to_end_on_stories(stories_path, tmp_path):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--model",
            str(stories_path),
            "--out",
            str(out),
            "--steps",
            "4",
            "--gate-steps",
            "3",
            "--seq-len",
            "96",
        ]
    )
    assert rc == 0
    for sub in ("ila", "ablation", "similarity"):
        d = json.loads((out / sub / "importance.json").read_text())
        assert d["schema_version"] == 1 and len(d["players"]) == len(d["scores"])
    assert (out / "ila" / "heatmap.png").stat().st_size > 0
    assert (out / "ablation" / "bar.png").stat().st_size > 0  # the names layerscope plot gives them
    assert (out / "similarity" / "bar.png").stat().st_size > 0
    cfg = json.loads((out / "peft_top30" / "adapter_config.json").read_text())
    assert cfg["target_modules"]
    names = {
        sub: json.loads((out / sub / "importance.json").read_text())["model"]
        for sub in ("ila", "ablation", "similarity")
    }
    assert {m["name"] for m in names.values()} == {"stories260K"}  # the model's own name, in every result
    assert len({m["fingerprint"] for m in names.values()}) == 1


@pytest.mark.slow
def test_demo_results_compare(stories_path, tmp_path, capsys):
    """The demo's module (ILA), sub-layer (ablation) and block (block influence) results compare per block."""
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--model",
                str(stories_path),
                "--out",
                str(out),
                "--steps",
                "2",
                "--gate-steps",
                "1",
                "--seq-len",
                "64",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(out / "ila"), str(out / "ablation"), str(out / "similarity"), "--fraction", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "3 results, 5 players" in text and "compared at block level" in text
    assert main(["compare", str(out), "--level", "block", "--out", str(tmp_path / "cmp")]) == 0  # the folder whole
    comp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comp["labels"] == ["ablation", "ila", "similarity"] and comp["level"] == "block"
    assert comp["granularities"] == ["sublayer", "module", "block"]
    assert main(["compare", str(out / "ila"), str(out / "ablation"), "--level", "sublayer"]) == 0
    assert "2 results, 10 players" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_writes_the_report_and_next_steps_that_run(stories_path, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--model", str(stories_path), "--out", str(out), "--steps", "4", "--gate-steps", "3"]
    assert main([*args, "--seq-len", "96"]) == 0
    got = capsys.readouterr()
    printed = got.out
    assert "stage 1: stopped at step 4, the step cap (--max-steps)" in printed  # 4 steps: one check, r = 1
    assert "layerscope demo: warning: ILA stage 1 hit the step cap" in got.err
    assert "raise --max-steps or --eps" in got.err
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") or html.lstrip().lower().startswith("<!doctype html>")
    assert f"report: {out / 'report.html'}" in printed
    # the printed next steps run as printed (fine-tuning shortened to 2 steps)
    lines = printed[printed.index("next steps:") :].splitlines()[1:]
    commands = []
    for line in lines:
        line = line.split("#")[0].strip()
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + " " + line
        elif line.startswith("layerscope "):
            commands.append(line)
    assert [c.split()[1] for c in commands] == ["finetune", "export", "report"]
    for c in commands:
        argv = c.split()[1:]
        if argv[0] == "finetune":
            argv[argv.index("--max-steps") + 1] = "2"
        assert main(argv) == 0, c
    assert (out / "axolotl").exists()


@pytest.mark.slow
def test_demo_stage1_stops_stable_and_times_each_step(stories_path, tmp_path, capsys):
    """--eps reaches the ILA config; a loose eps stops stage 1 "stable" before the cap, said so, and the
    closing line gives every step's wall time (the demo's promised time is checked against these);
    --threads reaches the run."""
    import torch

    out = tmp_path / "demo"
    argv = ["demo", "--model", str(stories_path), "--out", str(out), "--steps", "40", "--eps", "0.9"]
    threads_before = torch.get_num_threads()
    try:
        # 2, not the suite's 1 (conftest), so a flag that never reached the run would show
        assert main([*argv, "--gate-steps", "1", "--seq-len", "64", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads_before)  # the setting is process-wide: leave it as the other tests found it
    printed = capsys.readouterr().out
    ila = json.loads((out / "ila" / "importance.json").read_text())
    assert ila["timings"]["threads"] == 2
    cfg, extras = ila["method_config"], ila["extras"]
    assert cfg["eps"] == 0.9 and cfg["check_every"] == 4 and cfg["patience"] == 2 and cfg["max_steps"] == 40
    assert extras["stop_reason"] == "stable" and extras["stop_step"] < 40
    ratios = [r for _, r in extras["stage1_stability"]]
    assert ratios[-1] < 0.9 and ratios[-2] < 0.9  # patience 2: the last two checks under eps
    assert f"stage 1: stopped at step {extras['stop_step']}, stable" in printed
    assert "warning" not in printed
    done = next(line for line in printed.splitlines() if line.startswith("done in "))
    for step in ("model and data", "ILA", "ablation", "block influence", "agreement and report"):
        assert re.search(rf"\b{step} \d+ s\b", done), done

import json

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
    assert (out / "ablation" / "ablation.png").stat().st_size > 0
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
    printed = capsys.readouterr().out
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

import json

from layerscope.cli.app import main


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

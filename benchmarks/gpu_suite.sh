#!/usr/bin/env bash
# Issue 15's GPU figures in prepared calls on a lent GPU machine (the device tool), the most wanted first;
# each command is bounded so that a slow one cannot eat the rest of the call.
#
#   here, once:      make gpu-wheels      (our pure-Python dependencies as wheels, at the versions tested here)
#   on the machine:  bash benchmarks/gpu_suite.sh 1   (then 2), carry [".gpu_wheels"], timeout_s 600
#
# Part 1: LoRA at SD1.5 512 px batch 1 and 4, batch 4 also with checkpointing (floor, trainer, diffusers-style
# reference) and SDXL 1024 px with checkpointing; part 2: iLECO and Difference against their floors, the 8-bit base, the optimizer
# step and train_compile. Everything lands in $OUT/log.txt.
set -u
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
for wheel in .gpu_wheels/*.whl; do  # only what the image lacks: its torch (and what matches it) stays
  [ -e "$wheel" ] || continue
  name=$(basename "$wheel" | cut -d- -f1)
  python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null \
    || python3 -m pip install -q --no-deps "$wheel" 2>&1 | tail -1
done
export PYTHONPATH=src:benchmarks
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$OUT/log.txt"

measure() {  # measure SECONDS SCRIPT ARGS...: the script's table (warnings left out) and exit status
  local limit=$1
  shift
  echo "== $* (limit ${limit}s)" >> "$OUT/log.txt"
  timeout "$limit" python3 "$@" > "$OUT/last.txt" 2>&1
  echo "rc=$?" >> "$OUT/log.txt"
  grep -v -i -e warn -e "^ *warnings\." "$OUT/last.txt" | tail -40 >> "$OUT/log.txt"
}

case "${1:-1}" in
  1)
    measure 300 benchmarks/run.py --size "SD1.5 512px b1" --size "SD1.5 512px b4" --size "SD1.5 512px b4 gc" \
      --mode LoRA --variant floor --variant trainer --variant reference
    measure 180 benchmarks/run.py --size "SDXL 1024px b1 gc" --mode LoRA --variant floor --variant trainer
    ;;
  2)
    measure 150 benchmarks/run.py --size "SD1.5 512px b1" --mode iLECO --mode Difference \
      --variant floor --variant trainer
    measure 90 benchmarks/quantized_base.py --size 512 --batch 1
    measure 30 benchmarks/optimizer_step.py --full
    measure 240 benchmarks/run.py --size "SD1.5 512px b1" --mode LoRA --variant floor --variant compiled
    ;;
esac
cat "$OUT/log.txt"

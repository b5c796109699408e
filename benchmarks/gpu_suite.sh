#!/usr/bin/env bash
# One call on a lent GPU machine: LoRA training-step figures for an SD1.5-size UNet (random weights).
# Carries diffusers as a wheel (the GPU image has torch/transformers/peft but not diffusers).
set -u
python3 -m pip install -q --no-deps .gpu_wheels/*.whl 2>&1 | tail -1
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for args in "--size 512 --batch 1" "--size 512 --batch 4" "--size 512 --batch 4 --checkpointing" "--size 768 --batch 2" "--size 512 --batch 1 --dtype fp32"; do
  python3 benchmarks/bench_train_step.py --full --repeats 10 $args 2>&1 | grep -E "^(device|reference)|Error" | tee -a "${OUT:-/tmp}/bench.txt"
done

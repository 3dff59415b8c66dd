#!/usr/bin/env bash
# Where a fast-path step's GPU time goes (bench_train_fast.py profile): the gpu-fast profile's settings on
# packed rows of 8,192 tokens and of 16,384 tokens, each in its own process; tables sorted by CPU and GPU time.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
for L in ${LENGTHS:-8192 16384}; do
  run p_$L 200 python3 scripts/bench_train_fast.py profile $MODEL ${N:-1200} $L
done

#!/usr/bin/env bash
# Where a fast-path step's GPU time goes (bench_train_fast.py profile): the gpu-fast profile's settings on
# packed rows of 8,192 tokens and of 16,384 tokens, each in its own process; tables sorted by CPU and GPU time.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
for L in ${LENGTHS:-8192 16384}; do
  timeout 200 python3 scripts/bench_train_fast.py profile $MODEL ${N:-1200} $L > "$OUT/p_$L.log" 2>&1 || { echo "p_$L: exit $?"; tail -5 "$OUT/p_$L.log"; }
  grep -h RESULT "$OUT/p_$L.log" | cut -c1-400
done

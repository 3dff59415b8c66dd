#!/usr/bin/env bash
# Issue 7, after the sequence-bounds fix (packed rows now get varlen attention): the options last measured
# while quadratic attention took most of the step, again, side by side on the seed Q&A mix, one GPU, one
# run: gpu-fast as shipped, + train.torch_compile, rows of 16,384 tokens, and both; then where a step's
# time goes now (bench_train_fast.py profile, 8,192-token rows; is the step now bound by kernel launches?).
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-2000}
run a1_fast 90 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1
run a2_fast_compiled 110 env COMPILE=1 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1
run a3_fast_16k 90 python3 scripts/bench_train_fast.py workload $MODEL $N 16384 1
run a4_fast_16k_compiled 110 env COMPILE=1 python3 scripts/bench_train_fast.py workload $MODEL $N 16384 1
grep -h "train: attention\|sequence bounds" "$OUT"/a*.log | sort | uniq -c | cut -c1-300
python3 scripts/bench_train_gpu.py table "$OUT"/a*.log
[ -n "${NO_PROFILE:-}" ] || LENGTHS=8192 N=1200 bash scripts/gpu/bench_profile.sh

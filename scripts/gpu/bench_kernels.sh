#!/usr/bin/env bash
# Issue 7: train.fused_kernels (Liger's RMSNorm and SwiGLU) against the fast path without them, on the seed
# Q&A mix, beside the report's recipe as written, one GPU, one run; then fused kernels under a 16 GiB cap
# (NF4 + checkpointing) to compare its loss with lease G's.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-2000}
run k1_papertune 100 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1
run k2_papertune_fused 100 env FUSED_KERNELS=1 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1
run k3_seed_as_written 120 python3 .gpu-ref/seed_recipe.py $MODEL ${N_ASWRITTEN:-320}
run k4_fused_cap16 50 env FUSED_KERNELS=1 MEMORY_CAP=16 python3 scripts/bench_train_fast.py workload $MODEL 300 8192 1
grep -h "papertune.train" "$OUT"/k2_papertune_fused.log "$OUT"/k4_fused_cap16.log | cut -c1-250
python3 scripts/bench_train_gpu.py table "$OUT"/k*.log

#!/usr/bin/env bash
# Issue 7, target 3 (run on nvidia-h200-x2): the fast path on the seed Q&A mix, one GPU vs two (torchrun),
# same global batch (1 GPU: one 8,192-token row x accumulation 2; 2 GPUs: one row x accumulation 1 x 2
# ranks), beside the report's recipe with TRL packing on one GPU, all in one run.
source scripts/gpu/env.sh
N=${N:-2000}
CUDA_VISIBLE_DEVICES=0 python3 .gpu-ref/seed_recipe.py $MODEL $N packed > "$OUT/d_seed_packed.log" 2>&1 || tail -5 "$OUT/d_seed_packed.log"
CUDA_VISIBLE_DEVICES=0 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 2 > "$OUT/d_fast_1gpu.log" 2>&1 || tail -20 "$OUT/d_fast_1gpu.log"
CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc_per_node 2 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/d_fast_2gpu.log" 2>&1 || tail -20 "$OUT/d_fast_2gpu.log"
grep -h RESULT "$OUT"/d_*.log
python3 scripts/bench_train_gpu.py table "$OUT"/d_*.log

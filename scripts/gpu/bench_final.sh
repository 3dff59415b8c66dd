#!/usr/bin/env bash
# Issue 7 targets 2 (workload) and 1 (memory cap), side by side on one GPU in one run: papertune's fast path
# as configs/gpu-fast.yaml sets it (eager, then with train.torch_compile), the report's recipe with TRL packing
# and as written (../shared/gpu/seed_recipe.py), on the same 2,000-example Q&A mix; then the fast path under
# train.memory_cap_gib=16, which must pick its own settings (NF4 + checkpointing) and stay under the cap.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-2000}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run w1_papertune 120 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1
[ -n "${SKIP_PACKED:-}" ] || run w2_seed_packed 170 python3 .gpu-ref/seed_recipe.py $MODEL $N packed
run w3_seed_as_written ${ASWRITTEN_LIMIT:-200} python3 .gpu-ref/seed_recipe.py $MODEL ${N_ASWRITTEN:-320}
if [ -z "${CORE_ONLY:-}" ]; then  # CORE_ONLY=1: the three-way comparison alone (fits one 10-minute call with margin)
  run w4_papertune_compiled 130 env COMPILE=1 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1
  run w5_papertune_cap16 80 env MEMORY_CAP=16 python3 scripts/bench_train_fast.py workload $MODEL 300 8192 1
fi
grep -h "train: attention" "$OUT"/w1_papertune.log "$OUT"/w5_papertune_cap16.log 2>/dev/null | cut -c1-300
python3 scripts/bench_train_gpu.py table "$OUT"/w*.log

#!/usr/bin/env bash
# Issue 7, target 3 (run on nvidia-h200-x2): the fast path (configs/gpu-fast.yaml's settings) on the seed Q&A
# mix, two GPUs (torchrun) vs one, at the same global batch (2 GPUs: one 8,192-token row x accumulation 1 x 2
# ranks; 1 GPU: one row x accumulation 2), one after the other in one run; compare the steady tokens/s (the
# first run on a fresh machine also compiles the Triton kernels). SEED=1 adds the report's recipe with TRL
# packing on one GPU as a reference.
# BUILD_MIX_BESIDE=1: while GPU 0 runs the one-GPU half, GPU 1 runs scripts/gpu/bench_build_mix.sh (its own
# settings: N, MAX_STEPS, ...), and then GPU 0 checks that a NaN loss stops a GPU run at its step.
source scripts/gpu/env.sh
N=${N:-4000}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
CUDA_VISIBLE_DEVICES=0,1 timeout 200 torchrun --nproc_per_node 2 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/d_fast_2gpu.log" 2>&1 || tail -20 "$OUT/d_fast_2gpu.log"
if [ "${BUILD_MIX_BESIDE:-0}" = 1 ]; then
  N=${BUILD_MIX_N:-1000} BUILD_MIX_GPU=1 bash scripts/gpu/bench_build_mix.sh > "$OUT/build_mix.txt" 2>&1 &
fi
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 2 > "$OUT/d_fast_1gpu.log" 2>&1 || tail -20 "$OUT/d_fast_1gpu.log"
if [ "${SEED:-0}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=0 python3 .gpu-ref/seed_recipe.py $MODEL $N packed > "$OUT/d_seed_packed.log" 2>&1 || tail -5 "$OUT/d_seed_packed.log"
fi
grep -h RESULT "$OUT"/d_*.log | cut -c1-600
python3 - "$OUT" <<'PY'
import sys
sys.path.insert(0, "scripts")
from bench_train_gpu import markdown_table, results
one, two = (results([f"{sys.argv[1]}/{name}.log"]) for name in ("d_fast_1gpu", "d_fast_2gpu"))
if one and two:
    rows = [dict(r, gpus=n) for n, r in ((1, one[0]), (2, two[0]))]
    markdown_table(rows, {"GPUs": "gpus", "optimizer steps": "optimizer_steps", "wall s": "wall_s",
                          "tokens/s (epoch)": "tokens_per_s", "steady tokens/s": "steady_tokens_per_s",
                          "first step s": "first_step_s", "final loss": "final_loss", "peak GiB/GPU": "peak_gib"})
    print(f"scaling: epoch {two[0]['tokens_per_s'] / one[0]['tokens_per_s']:.2f}x, "
          f"steady {two[0]['steady_tokens_per_s'] / one[0]['steady_tokens_per_s']:.2f}x")
PY
if [ "${BUILD_MIX_BESIDE:-0}" = 1 ]; then
  # The non-finite loss check on a GPU (read back without blocking, train/trainer.py), a NaN injected at
  # step 3 of a copy of the build mix's run: the run must stop at step 3 with checkpoint-2 and nothing after.
  for _ in $(seq 60); do [ -f /tmp/qa/dataset/dataset_dict.json ] && break; sleep 2; done
  rm -rf /tmp/qa_nan && cp -r /tmp/qa /tmp/qa_nan
  CUDA_VISIBLE_DEVICES=0 PAPERTUNE_FAULT_NAN_AT_STEP=3 timeout 90 python3 -m papertune train --config configs/gpu-fast.yaml \
    --run-dir /tmp/qa_nan --set train.model=$MODEL --set build.model=$MODEL --set train.max_steps=6 \
    --set train.eval_strategy=steps --set train.eval_steps=2 --set train.logging_steps=1 > "$OUT/nan_check.log" 2>&1
  echo "nan check: exit $?, checkpoints: $(ls /tmp/qa_nan/train/checkpoints 2>/dev/null | tr '\n' ' ')"
  grep -h "loss became" "$OUT/nan_check.log" | tail -1 | cut -c1-240
  wait
  tail -8 "$OUT/build_mix.txt"
fi

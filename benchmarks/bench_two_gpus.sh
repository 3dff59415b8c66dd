#!/usr/bin/env bash
# 2 GPUs (nvidia-h200-x2): data parallel scaling of the fast path. The seed Q&A mix (N examples) through
# train_seed_mix.py workload with configs/gpu-fast.yaml's settings on two GPUs (torchrun) and on one, at the same
# global batch (2 GPUs: one PACKED_LENGTH-token row x accumulation 1 x 2 ranks; 1 GPU: one row x accumulation 2),
# one after the other in one run; compare the steady tokens/s (the first run on a fresh machine also compiles
# the Triton kernels). Options:
#  SEED=1              the report's recipe with TRL packing on one GPU as a reference (needs seed_recipe.py)
#  REPORT=1            also `papertune train` with the report's recipe (hf backend, QLoRA) on REPORT_N build-mix
#                      pairs, 1 GPU (batch 2 x 16) vs 2 (2 x 8 x 2 ranks), with the validation loss curves
#  BUILD_MIX_BESIDE=1  while GPU 0 runs the one-GPU half, GPU 1 runs benchmarks/bench_build_mix.sh with
#                      N=BUILD_MIX_N (its other settings as given: MAX_STEPS, NAN_CHECK, ...); its output in
#                      $OUT/build_mix.txt
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
N=${N:-4000}
PACKED_LENGTH=${PACKED_LENGTH:-8192}
[ "${SEED:-0}" = 0 ] || need_shared seed_recipe.py
rm -f "$OUT"/d_*.log
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
CUDA_VISIBLE_DEVICES=0,1 run d_fast_2gpu ${WORKLOAD_LIMIT:-200} torchrun --nproc_per_node 2 benchmarks/train_seed_mix.py workload $MODEL $N $PACKED_LENGTH 1
if [ "${BUILD_MIX_BESIDE:-0}" = 1 ]; then
  N=${BUILD_MIX_N:-1000} BUILD_MIX_GPU=1 WORK=/tmp/build_mix bash benchmarks/bench_build_mix.sh > "$OUT/build_mix.txt" 2>&1 &
fi
CUDA_VISIBLE_DEVICES=0 run d_fast_1gpu ${WORKLOAD_LIMIT:-200} python3 benchmarks/train_seed_mix.py workload $MODEL $N $PACKED_LENGTH 2
if [ "${SEED:-0}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=0 run d_seed_packed ${PACKED_LIMIT:-200} python3 "$SHARED_GPU/seed_recipe.py" $MODEL $N packed
fi
python3 benchmarks/results.py scaling "$OUT/d_fast_1gpu.log" "$OUT/d_fast_2gpu.log"
if [ "${REPORT:-0}" = 1 ]; then
  W=/tmp/two_gpus
  rm -rf $W && mkdir -p $W
  python3 benchmarks/train_build_mix.py qa-run $W/qa $MODEL ${REPORT_N:-320} > "$OUT/d_qa_build.log" 2>&1 || { tail -20 "$OUT/d_qa_build.log"; exit 1; }
  cp -r $W/qa $W/one; cp -r $W/qa $W/two
  COMMON=(--set train.model=$MODEL --set train.backend=hf --set train.eval_strategy=steps --set train.eval_steps=2
          --set train.logging_steps=1 --set train.early_stopping_patience=0 --set train.num_train_epochs=1
          --set train.learning_rate=2e-4 --set build.model=$MODEL)
  CUDA_VISIBLE_DEVICES=0 python3 -m papertune train -q --run-dir $W/one "${COMMON[@]}" --set train.gradient_accumulation_steps=16 > "$OUT/d_report_1gpu.log" 2>&1 || tail -30 "$OUT/d_report_1gpu.log"
  CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc_per_node 2 -m papertune train -q --run-dir $W/two "${COMMON[@]}" --set train.gradient_accumulation_steps=8 > "$OUT/d_report_2gpu.log" 2>&1 || tail -30 "$OUT/d_report_2gpu.log"
  python3 benchmarks/train_build_mix.py two-gpu-table $W/one $W/two
fi
if [ "${BUILD_MIX_BESIDE:-0}" = 1 ]; then
  wait
  tail -12 "$OUT/build_mix.txt"
fi

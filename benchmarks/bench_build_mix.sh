#!/usr/bin/env bash
# Build mix: `papertune train` on the length mix `papertune build` really produces (chat template, prompt-masked
# labels), configs/gpu-fast.yaml against configs/gpu.yaml (the report's recipe as written, Unsloth), one GPU, one
# run. N synthetic Q&A pairs are built into $WORK/qa/dataset by the build stage (train_build_mix.py qa-run); then
# gpu-fast trains one epoch, gpu-fast again with each of VARIANTS, and the report's recipe MAX_STEPS optimizer
# steps (default 8; 0: the whole epoch). PACKED=1 adds the report's recipe with TRL packing=True over the same
# training split (train_build_mix.py trl-recipe). NAN_CHECK=1 then checks on the GPU that a NaN loss injected at
# step 3 stops gpu-fast at that step with checkpoint-2 kept and nothing after. Figures per run (train_build_mix.py
# build-mix-table): train-only tokens/s (the last training log line of metrics.jsonl, before the end-of-epoch
# evaluation), the same after the first log line (warm-up), and report.json's tokens/s over the whole
# trainer.train() (evaluation and checkpoint included).
# VARIANTS="A B ...": comma-separated KEY=VALUE settings, e.g. train.packed_length=16384,train.torch_compile=true.
# CPU smoke: SMOKE=1 MODEL=/path/to/a/tiny/model EXTRA="--set train.load_in_4bit=false ..." (no bundle needed).
cd "$(dirname "$0")/.."
if [ -z "${SMOKE:-}" ]; then
  source benchmarks/gpu_env.sh
  export CUDA_VISIBLE_DEVICES=${BUILD_MIX_GPU:-0}
else
  : "${MODEL:?SMOKE=1 needs MODEL, a local model folder}"
  export OUT=${OUT:-/tmp/out} PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}; mkdir -p "$OUT"
fi
N=${N:-2000}
W=${WORK:-/tmp}
rm -rf $W/qa $W/qa_fast $W/qa_report $W/qa_v* $W/qa_nan "$OUT"/b_*.log
python3 benchmarks/train_build_mix.py qa-run $W/qa $MODEL $N > "$OUT/qa_build.log" 2>&1 || { tail -20 "$OUT/qa_build.log"; exit 1; }
cp -r $W/qa $W/qa_fast; cp -r $W/qa $W/qa_report
COMMON=(--set train.model=$MODEL --set build.model=$MODEL --set train.num_train_epochs=1 --set train.early_stopping_patience=0)
timeout ${FAST_LIMIT:-240} python3 -m papertune train --config configs/gpu-fast.yaml --run-dir $W/qa_fast "${COMMON[@]}" \
  --set train.logging_steps=5 ${EXTRA:-} > "$OUT/b_fast.log" 2>&1 || { echo "fast: exit $?"; tail -20 "$OUT/b_fast.log"; }
i=0
for variant in ${VARIANTS:-}; do
  i=$((i + 1)); rm -rf $W/qa_v$i; cp -r $W/qa $W/qa_v$i; echo "$variant" > $W/qa_v$i/variant.txt
  settings=(); IFS=, read -ra pairs <<< "$variant"
  for pair in "${pairs[@]}"; do settings+=(--set "$pair"); done
  timeout ${FAST_LIMIT:-240} python3 -m papertune train --config configs/gpu-fast.yaml --run-dir $W/qa_v$i "${COMMON[@]}" \
    --set train.logging_steps=5 ${EXTRA:-} "${settings[@]}" > "$OUT/b_v$i.log" 2>&1 || { echo "$variant: exit $?"; tail -20 "$OUT/b_v$i.log"; }
done
timeout ${REPORT_LIMIT:-280} python3 -m papertune train --config configs/gpu.yaml --run-dir $W/qa_report "${COMMON[@]}" \
  $([ "${MAX_STEPS:-8}" = 0 ] || echo --set train.max_steps=${MAX_STEPS:-8}) --set train.logging_steps=1 ${EXTRA:-} ${EXTRA_REPORT:---set train.backend=unsloth} > "$OUT/b_report.log" 2>&1 \
  || { echo "report: exit $?"; tail -20 "$OUT/b_report.log"; }
if [ -n "${PACKED:-}" ]; then
  timeout ${PACKED_LIMIT:-200} python3 benchmarks/train_build_mix.py trl-recipe $W/qa $MODEL packed > "$OUT/b_packed.log" 2>&1 \
    || { echo "packed: exit $?"; tail -5 "$OUT/b_packed.log"; }
fi
python3 benchmarks/train_build_mix.py build-mix-table $W "$OUT/b_packed.log"
if [ -n "${NAN_CHECK:-}" ]; then
  # The non-finite loss check on a GPU (read back without blocking): the run must stop at step 3 (exit code 4)
  # with checkpoint-2 and nothing after.
  rm -rf $W/qa_nan && cp -r $W/qa $W/qa_nan
  PAPERTUNE_FAULT_NAN_AT_STEP=3 timeout 90 python3 -m papertune train --config configs/gpu-fast.yaml \
    --run-dir $W/qa_nan --set train.model=$MODEL --set build.model=$MODEL --set train.max_steps=6 \
    --set train.eval_strategy=steps --set train.eval_steps=2 --set train.logging_steps=1 ${EXTRA:-} > "$OUT/b_nan_check.log" 2>&1
  echo "nan check: exit $?, checkpoints: $(ls $W/qa_nan/train/checkpoints 2>/dev/null | tr '\n' ' ')"
  grep -h "loss became" "$OUT/b_nan_check.log" | tail -1 | cut -c1-240
fi

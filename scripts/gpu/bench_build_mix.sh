#!/usr/bin/env bash
# Issue 7, target 2 on the length mix `papertune build` really produces (chat template, prompt-masked labels):
# N synthetic Q&A pairs built into RUN/dataset by papertune's build stage (bench_train_gpu.py qa-run), then
# `papertune train` with configs/gpu-fast.yaml for one epoch beside configs/gpu.yaml (the report's recipe as
# written, Unsloth) for MAX_STEPS optimizer steps (0: the whole epoch), one GPU, one run. Figures per run:
# train-only tokens/s (the last training log line of metrics.jsonl, before the end-of-epoch evaluation),
# the same after the first log line (warm-up), and report.json's tokens/s over the whole trainer.train()
# (evaluation and checkpoint included). PACKED=1 adds the report's recipe with TRL packing=True
# (bench_train_gpu.py trl-recipe) over the same training split. VARIANTS="A B ...": gpu-fast again with each
# of A, B, ... (comma-separated KEY=VALUE settings, e.g. train.packed_length=16384,train.torch_compile=true),
# after gpu-fast as shipped and before the report's recipe.
# CPU smoke: EXTRA="--set train.load_in_4bit=false ..." with MODEL set to a tiny local model.
if [ -z "${SMOKE:-}" ]; then source scripts/gpu/env.sh; export CUDA_VISIBLE_DEVICES=${BUILD_MIX_GPU:-0}; fi
N=${N:-2000}
W=${WORK:-/tmp}
rm -rf $W/qa $W/qa_fast $W/qa_report $W/qa_v* "$OUT"/b_*.log
python3 scripts/bench_train_gpu.py qa-run $W/qa $MODEL $N > "$OUT/qa_build.log" 2>&1 || { tail -20 "$OUT/qa_build.log"; exit 1; }
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
  timeout ${PACKED_LIMIT:-200} python3 scripts/bench_train_gpu.py trl-recipe $W/qa $MODEL packed > "$OUT/b_packed.log" 2>&1 \
    || { echo "packed: exit $?"; tail -5 "$OUT/b_packed.log"; }
fi
python3 scripts/bench_train_gpu.py build-mix-table $W "$OUT/b_packed.log"

#!/usr/bin/env bash
# Issue 7, target 2 on the length mix `papertune build` really produces (chat template, prompt-masked labels):
# N synthetic Q&A pairs built into RUN/dataset by papertune's build stage (bench_train_gpu.py qa-run), then
# `papertune train` with configs/gpu-fast.yaml for one epoch beside configs/gpu.yaml (the report's recipe as
# written, Unsloth) for MAX_STEPS optimizer steps, one GPU, one run. Tokens/s from each run's report.json.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-2000}
rm -rf /tmp/qa /tmp/qa_fast /tmp/qa_report
python3 scripts/bench_train_gpu.py qa-run /tmp/qa $MODEL $N > "$OUT/qa_build.log" 2>&1 || { tail -20 "$OUT/qa_build.log"; exit 1; }
cp -r /tmp/qa /tmp/qa_fast; cp -r /tmp/qa /tmp/qa_report
COMMON=(--set train.model=$MODEL --set build.model=$MODEL --set train.num_train_epochs=1 --set train.early_stopping_patience=0)
timeout 240 python3 -m papertune train --config configs/gpu-fast.yaml --run-dir /tmp/qa_fast "${COMMON[@]}" > "$OUT/b_fast.log" 2>&1 || tail -20 "$OUT/b_fast.log"
timeout 200 python3 -m papertune train --config configs/gpu.yaml --run-dir /tmp/qa_report "${COMMON[@]}" --set train.max_steps=${MAX_STEPS:-8} > "$OUT/b_report.log" 2>&1 || tail -20 "$OUT/b_report.log"
python3 - <<'PY'
import json
rows = {}
for name, label in (("qa_report", "report as written (configs/gpu.yaml)"), ("qa_fast", "papertune gpu-fast")):
    try:
        rows[name] = (label, json.load(open(f"/tmp/{name}/train/report.json")))
    except OSError as exc:
        print(f"{name}: no report ({exc})")
print("| recipe | optimizer steps | wall s | tokens seen | tokens/s | best eval loss | peak GiB |")
print("|---|---|---|---|---|---|---|")
for label, r in rows.values():
    print(f"| {label} | {r['global_steps']} | {r['wall_s']} | {r['tokens_seen']} | {r['tokens_per_s']} | "
          f"{r.get('best_eval_loss')} | {r.get('peak_gpu_gib')} |")
if len(rows) == 2:
    print(f"ratio: {rows['qa_fast'][1]['tokens_per_s'] / rows['qa_report'][1]['tokens_per_s']:.2f}x")
PY

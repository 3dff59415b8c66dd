#!/usr/bin/env bash
# Issue 7, target 2 on the length mix `papertune build` really produces (chat template, prompt-masked labels):
# N synthetic Q&A pairs built into RUN/dataset by papertune's build stage (bench_train_gpu.py qa-run), then
# `papertune train` with configs/gpu-fast.yaml for one epoch beside configs/gpu.yaml (the report's recipe as
# written, Unsloth) for MAX_STEPS optimizer steps (0: the whole epoch), one GPU, one run. Figures per run:
# train-only tokens/s (the last training log line of metrics.jsonl, before the end-of-epoch evaluation),
# the same after the first log line (warm-up), and report.json's tokens/s over the whole trainer.train()
# (evaluation and checkpoint included). PACKED=1 adds the report's recipe with TRL packing=True
# (bench_train_gpu.py trl-recipe) over the same training split.
# CPU smoke: EXTRA="--set train.load_in_4bit=false ..." with MODEL set to a tiny local model.
if [ -z "${SMOKE:-}" ]; then source scripts/gpu/env.sh; export CUDA_VISIBLE_DEVICES=0; fi
N=${N:-2000}
W=${WORK:-/tmp}
rm -rf $W/qa $W/qa_fast $W/qa_report
python3 scripts/bench_train_gpu.py qa-run $W/qa $MODEL $N > "$OUT/qa_build.log" 2>&1 || { tail -20 "$OUT/qa_build.log"; exit 1; }
cp -r $W/qa $W/qa_fast; cp -r $W/qa $W/qa_report
COMMON=(--set train.model=$MODEL --set build.model=$MODEL --set train.num_train_epochs=1 --set train.early_stopping_patience=0)
timeout ${FAST_LIMIT:-240} python3 -m papertune train --config configs/gpu-fast.yaml --run-dir $W/qa_fast "${COMMON[@]}" \
  --set train.logging_steps=5 ${EXTRA:-} > "$OUT/b_fast.log" 2>&1 || { echo "fast: exit $?"; tail -20 "$OUT/b_fast.log"; }
timeout ${REPORT_LIMIT:-280} python3 -m papertune train --config configs/gpu.yaml --run-dir $W/qa_report "${COMMON[@]}" \
  $([ "${MAX_STEPS:-8}" = 0 ] || echo --set train.max_steps=${MAX_STEPS:-8}) --set train.logging_steps=1 ${EXTRA:-} ${EXTRA_REPORT:---set train.backend=unsloth} > "$OUT/b_report.log" 2>&1 \
  || { echo "report: exit $?"; tail -20 "$OUT/b_report.log"; }
if [ -n "${PACKED:-}" ]; then
  timeout ${PACKED_LIMIT:-200} python3 scripts/bench_train_gpu.py trl-recipe $W/qa $MODEL packed > "$OUT/b_packed.log" 2>&1 \
    || { echo "packed: exit $?"; tail -5 "$OUT/b_packed.log"; }
fi
W=$W OUT=$OUT python3 - <<'PY'
import json, os
from pathlib import Path
work = Path(os.environ["W"])
rows = {}
for name, label in (("qa_report", "report as written (configs/gpu.yaml)"), ("qa_fast", "papertune gpu-fast")):
    train = work / name / "train"
    try:
        report = json.loads((train / "report.json").read_text())
    except OSError as exc:
        print(f"{name}: no report ({exc})")
        continue
    logs = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if "loss" in r and "tokens_per_s" in r]
    first, last = train_logs[0], train_logs[-1]  # after warm-up: from the first training log line to the last
    steady = (round((last["tokens_seen"] - first["tokens_seen"]) / (last["time_s"] - first["time_s"]))
              if last["time_s"] > first["time_s"] else None)
    rows[name] = (label, report, last, steady)
print("| recipe | backend | optimizer steps | train tokens/s | after warm-up | whole-run tokens/s | wall s | tokens seen | last train loss | eval loss | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for label, r, t, steady in rows.values():
    print(f"| {label} | {r['backend']} | {r['global_steps']} | {t['tokens_per_s']} | {steady} | {r['tokens_per_s']} | {r['wall_s']} | "
          f"{r['tokens_seen']} | {t['loss']:.4f} | {r.get('best_eval_loss')} | {r.get('peak_gpu_gib')} |")
packed = [l for l in (Path(os.environ["OUT"]) / "b_packed.log").read_text().splitlines() if l.startswith("RESULT ")] \
    if (Path(os.environ["OUT"]) / "b_packed.log").is_file() else []
if packed:
    r = json.loads(packed[-1][len("RESULT "):])
    print(f"| report + TRL packing=True (bench_train_gpu.py trl-recipe) | {'hf' if r['gpu'] == 'cpu' else 'unsloth'} | {r['optimizer_steps']} | | | "
          f"{r['tokens_per_s']} | {r['wall_s']} | {r['trained_tokens']} | {r['final_loss']} | | {r['peak_gib']} |")
    if "qa_fast" in rows:
        print(f"ratio to packed (gpu-fast train tokens/s / packed epoch tokens/s): "
              f"{rows['qa_fast'][2]['tokens_per_s'] / r['tokens_per_s']:.2f}x")
if len(rows) == 2:
    fast, slow = rows["qa_fast"], rows["qa_report"]
    print(f"ratio train tokens/s: {fast[2]['tokens_per_s'] / slow[2]['tokens_per_s']:.2f}x; after warm-up: "
          f"{fast[3] / slow[3] if fast[3] and slow[3] else float('nan'):.2f}x; whole run: {fast[1]['tokens_per_s'] / slow[1]['tokens_per_s']:.2f}x")
PY

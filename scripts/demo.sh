#!/usr/bin/env bash
# The main job on a fresh machine: install, then run every stage on the bundled sample corpus with the CPU
# profile (SmolLM2-135M-Instruct), in one run directory, ending with base-vs-tuned evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR="${RUN_DIR:-runs/cpu}"
CONFIG="${CONFIG:-configs/cpu.yaml}"
PT=(.venv/bin/papertune)
"${PT[@]}" ingest --config "$CONFIG" --run-dir "$RUN_DIR" "$@"
for stage in generate curate augment build; do
  "${PT[@]}" "$stage" --config "$CONFIG" --run-dir "$RUN_DIR" "$@"
done
if [ -f "$RUN_DIR/train/adapter/adapter_model.safetensors" ]; then
  echo "demo: $RUN_DIR/train/adapter exists; delete $RUN_DIR/train to train again" >&2
else
  "${PT[@]}" train --config "$CONFIG" --run-dir "$RUN_DIR" --force "$@"
fi
"${PT[@]}" evaluate --config "$CONFIG" --run-dir "$RUN_DIR" "$@"
echo "demo: done. Dataset card: $RUN_DIR/dataset_card.md; loss table: $RUN_DIR/train/loss_table.md;" \
     "loss curve: $RUN_DIR/train/loss_curve.png; base vs tuned: $RUN_DIR/eval/report.md." \
     "Ask the tuned model: .venv/bin/papertune ask --run-dir $RUN_DIR --cite \"What is QLoRA?\"" >&2

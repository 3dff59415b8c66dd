#!/usr/bin/env bash
# The main job on a fresh machine: install (with the cpu profile's teacher model), then run every stage on the
# bundled sample corpus with the CPU profile (pairs written and judged by Qwen2.5-Coder-0.5B-Instruct in
# llama.cpp, SmolLM2-135M-Instruct trained), in one run directory, ending with base-vs-tuned evaluation.
# `papertune run` skips the stages whose outputs are current, so running this again only redoes what changed;
# extra arguments go to it (e.g. --set train.max_steps=8, --from augment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR="${RUN_DIR:-runs/cpu}"
CONFIG="${CONFIG:-configs/cpu.yaml}"
status=0
.venv/bin/papertune run "$CONFIG" --run-dir "$RUN_DIR" "$@" || status=$?
# 3: finished, but some documents failed (listed in the summary); anything else non-zero: a stage failed.
if [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; then
  echo "demo: done. Summary: $RUN_DIR/summary.md; dataset card: $RUN_DIR/dataset_card.md;" \
       "loss curve: $RUN_DIR/train/loss_curve.png; base vs tuned: $RUN_DIR/eval/report.md." \
       "Ask the tuned model (answers cite the documents): .venv/bin/papertune ask --run-dir $RUN_DIR \"What is QLoRA?\"" >&2
fi
exit "$status"

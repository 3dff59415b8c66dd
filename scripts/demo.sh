#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the pipeline on the bundled sample corpus with the
# CPU profile. Today the pipeline is the ingest stage; later stages join here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR="${RUN_DIR:-runs/cpu}"
.venv/bin/papertune ingest --config configs/cpu.yaml --run-dir "$RUN_DIR" "$@"
echo "demo: chunks in $RUN_DIR/chunks.jsonl, report in $RUN_DIR/ingest/report.json" >&2

#!/usr/bin/env bash
# Engine: the generate stage's real prompts through today's static batches of 64 and through continuous batching
# (one model per GPU for each count in GPUS), side by side in one process, on a staged real model
# (benchmarks/bench_engine.py prints the table: chunks/s, output tokens/s, peak GPU memory, first answer,
# greedy agreement against static batches and static-16's own agreement).
#   MODEL=/tmp/stage/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf CHUNKS=/tmp/chunks.jsonl bash benchmarks/bench_engine.sh
# Optional: GPUS=1,2 (continuous rows), LIMIT=N (first N chunks), MAX_NEW=384, LIMIT_S=580 (time limit),
# ARGS="--schema --max-batch-tokens 4096 --compile-level 1 ..." (more bench_engine.py flags).
# The GGUF file needs the gguf wheel in .whl/ (carry .whl and .gpu-bundle, see benchmarks/README.md).
# CPU smoke: SMOKE=1 bash benchmarks/bench_engine.sh (a tiny random model, no bundle needed).
cd "$(dirname "$0")/.."
if [ -n "${SMOKE:-}" ]; then
  exec "${PYTHON:-.venv/bin/python}" benchmarks/bench_engine.py --smoke ${ARGS:-}
fi
model=${MODEL:?MODEL=path to the staged model (a .gguf file or a model folder)}
chunks=${CHUNKS:?CHUNKS=path to a chunks.jsonl (papertune ingest writes RUN/chunks.jsonl)}
REFERENCE_MODEL=0 source benchmarks/gpu_env.sh
timeout "${LIMIT_S:-580}" python3 benchmarks/bench_engine.py --model "$model" --chunks "$chunks" --gpus "${GPUS:-1}" \
  --limit "${LIMIT:-0}" --max-new-tokens "${MAX_NEW:-384}" --json "$OUT/bench_engine.json" ${ARGS:-} \
  2> "$OUT/bench_engine.err"
status=$?
[ $status = 0 ] || { echo "bench_engine.py: exit $status"; tail -30 "$OUT/bench_engine.err"; }
exit $status

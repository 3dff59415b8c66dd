#!/usr/bin/env bash
# GPU workload: one epoch of the seed Q&A mix (N examples of ../shared/gpu/seed_recipe.py's lengths and ids, loss
# on every token) through papertune's trainer with configs/gpu-fast.yaml's settings (train_seed_mix.py workload,
# rows of PACKED_LENGTH tokens, one row per optimizer step), beside the report's recipe on the same mix
# (seed_recipe.py: with TRL packing=True, and as written on N_ASWRITTEN examples), one GPU, one run.
# VARIANTS="A B ...": the fast path again with each of A, B, ... (comma-separated VAR=VALUE settings of
# train_seed_mix.py's environment, N or PACKED_LENGTH, e.g. COMPILE=1 or MEMORY_CAP=16,N=300 or PACKED_LENGTH=16384).
# REFERENCES="packed as-written" (default; empty: none) picks the report's runs; they need seed_recipe.py.
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
N=${N:-2000}
PACKED_LENGTH=${PACKED_LENGTH:-8192}
REFERENCES=${REFERENCES-packed as-written}
[ -z "$REFERENCES" ] || need_shared seed_recipe.py
rm -f "$OUT"/w_*.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run w_fast ${FAST_LIMIT:-120} python3 benchmarks/train_seed_mix.py workload $MODEL $N $PACKED_LENGTH 1
for reference in $REFERENCES; do
  case $reference in
    packed) run w_seed_packed ${PACKED_LIMIT:-170} python3 "$SHARED_GPU/seed_recipe.py" $MODEL $N packed ;;
    as-written) run w_seed_as_written ${ASWRITTEN_LIMIT:-200} python3 "$SHARED_GPU/seed_recipe.py" $MODEL ${N_ASWRITTEN:-320} ;;
    *) echo "REFERENCES: unknown recipe $reference (packed, as-written)"; exit 2 ;;
  esac
done
i=0
for variant in ${VARIANTS:-}; do
  i=$((i + 1))
  echo "variant $i: $variant"
  (IFS=, read -ra settings <<< "$variant"; export "${settings[@]}"
   run w_v$i ${VARIANT_LIMIT:-130} python3 benchmarks/train_seed_mix.py workload $MODEL $N $PACKED_LENGTH 1)
done
grep -h "train: attention\|sequence bounds" "$OUT"/w_fast.log "$OUT"/w_v*.log 2>/dev/null | sort | uniq -c | cut -c1-300
python3 benchmarks/results.py table "$OUT"/w_*.log

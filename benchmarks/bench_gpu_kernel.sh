#!/usr/bin/env bash
# GPU kernel level: papertune's fast path against QLoRA as the report runs it, at the seed shape (batch 2 x 2048
# tokens, LoRA r=16 on all 7 linear layers, Qwen2.5-3B's shape with random weights), one GPU, one run, so the
# ratios compare. In order (each step logs to $OUT; see benchmarks/README.md for the settings):
#  1. packed attention: varlen flash vs SDPA with the block-diagonal mask (agreement and speed)   ATTENTION=0 skips
#  2. the reference's own loop (../shared/gpu/qlora_anchor.py run MODE) for each of ANCHOR_MODES
#  3. the fast path's layouts (train_fast_kernel.py kernel) for each of VARIANTS (default: all)
#  4. papertune's loader under the reference's loop for each of BACKENDS (train_backends.py kernel)
#  5. papertune's full trainer for each of TRAINERS (train_backends.py trainer; BENCH_AMP=0: no autocast)
#  6. GRADCHECK=1: LoRA gradients of eager vs torch.compile'd layers vs float32 (train_fast_kernel.py gradcheck)
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
ANCHOR_MODES=${ANCHOR_MODES-unsloth4 unsloth4+nogc}
BACKENDS=${BACKENDS-hf unsloth}
[ -z "$ANCHOR_MODES" ] || need_shared qlora_anchor.py
rm -f "$OUT"/k_*.log
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, trl, peft, datasets, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'bnb', bitsandbytes.__version__)"
[ "${ATTENTION:-1}" = 0 ] || run k_attention 120 python3 benchmarks/train_fast_kernel.py attention
for m in $ANCHOR_MODES; do
  run "k_anchor_$m" 200 python3 "$SHARED_GPU/qlora_anchor.py" run "$m" $MODEL
done
run k_fast_path ${KERNEL_LIMIT:-500} python3 benchmarks/train_fast_kernel.py kernel $MODEL ${VARIANTS:-}
for b in $BACKENDS; do
  run "k_papertune_$b" 200 python3 benchmarks/train_backends.py kernel "$b" $MODEL
done
for b in ${TRAINERS:-}; do
  run "k_trainer_$b" 200 python3 benchmarks/train_backends.py trainer "$b" $MODEL
done
[ -z "${GRADCHECK:-}" ] || run k_gradcheck 120 python3 benchmarks/train_fast_kernel.py gradcheck $MODEL
grep -E "dequantized|loaded|FAILED" "$OUT/k_fast_path.log" | cut -c1-400
beside=$(ls "$OUT"/k_anchor_*.log "$OUT"/k_papertune_*.log "$OUT"/k_trainer_*.log 2>/dev/null)
[ -z "$beside" ] || python3 benchmarks/results.py table $beside
grep -A20 "^| variant" "$OUT/k_fast_path.log"

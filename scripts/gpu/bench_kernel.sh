#!/usr/bin/env bash
# Kernel level, seed shape (batch 2 x 2048, LoRA r=16 on all linear layers): the anchor's hf4 and unsloth4
# beside papertune's hf and unsloth backends, one after another on GPU 0.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, trl, peft, datasets, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'bnb', bitsandbytes.__version__)"
for m in hf4 unsloth4; do
  python3 .gpu-ref/qlora_anchor.py run $m $MODEL > "$OUT/k_anchor_$m.log" 2>&1 || tail -30 "$OUT/k_anchor_$m.log"
  grep RESULT "$OUT/k_anchor_$m.log"
done
for b in hf unsloth; do
  python3 scripts/bench_train_gpu.py kernel $b $MODEL > "$OUT/k_papertune_$b.log" 2>&1 || tail -30 "$OUT/k_papertune_$b.log"
  grep RESULT "$OUT/k_papertune_$b.log"
done
python3 scripts/bench_train_gpu.py table "$OUT"/k_*.log

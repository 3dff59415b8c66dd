#!/usr/bin/env bash
# Issue 7 kernel level and issue 4 follow-up, one GPU, in order of importance (each step logs to $OUT):
#  1. packed attention: varlen flash vs SDPA with a block mask (agreement and speed)
#  2. papertune fast-path variants at the seed shape (scripts/bench_train_fast.py)
#  3. the anchor's unsloth4 and unsloth4+nogc beside them
#  4. papertune's unsloth backend through the full trainer (float32 adapters)
#  5. `papertune train` end to end on a small Q&A run: unsloth backend, then the fast hf path with packing
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
python3 scripts/bench_train_fast.py attention 2>&1 | tee "$OUT/attention.log" | grep -E "RESULT|Error"
python3 scripts/bench_train_fast.py kernel $MODEL ${VARIANTS:-} > "$OUT/fast.log" 2>&1; grep -E "RESULT|FAILED|dequantized|loaded" "$OUT/fast.log" | cut -c1-400
for m in unsloth4 unsloth4+nogc; do
  python3 .gpu-ref/qlora_anchor.py run $m $MODEL > "$OUT/anchor_$m.log" 2>&1 || tail -5 "$OUT/anchor_$m.log"
  grep RESULT "$OUT/anchor_$m.log"
done
python3 scripts/bench_train_gpu.py trainer unsloth $MODEL > "$OUT/t_unsloth.log" 2>&1 || tail -20 "$OUT/t_unsloth.log"
grep RESULT "$OUT/t_unsloth.log"
rm -rf /tmp/qa && python3 scripts/bench_train_gpu.py qa-run /tmp/qa $MODEL ${N:-96} > "$OUT/qa_build.log" 2>&1 || tail -20 "$OUT/qa_build.log"
cp -r /tmp/qa /tmp/e2e_unsloth; cp -r /tmp/qa /tmp/e2e_fast
COMMON="--set train.model=$MODEL --set build.model=$MODEL --set train.eval_strategy=steps --set train.eval_steps=2 --set train.logging_steps=1 --set train.max_steps=4 --set train.learning_rate=2e-4"
python3 -m papertune train --run-dir /tmp/e2e_unsloth $COMMON --set train.backend=unsloth > "$OUT/e2e_unsloth.log" 2>&1 || tail -30 "$OUT/e2e_unsloth.log"
python3 -m papertune train --run-dir /tmp/e2e_fast $COMMON --set train.backend=hf --set train.packing=true \
  --set train.packed_length=8192 --set train.per_device_train_batch_size=1 --set train.gradient_accumulation_steps=1 \
  --set train.dequantize_base=auto --set train.gradient_checkpointing=auto --set train.fused_cross_entropy=auto \
  > "$OUT/e2e_fast.log" 2>&1 || tail -30 "$OUT/e2e_fast.log"
grep -E "train:" "$OUT/e2e_fast.log" | cut -c1-300
for r in e2e_unsloth e2e_fast; do
  python3 -c "import json;r=json.load(open('/tmp/$r/train/report.json'));print('$r', {k: r[k] for k in ('backend','global_steps','wall_s','tokens_seen','tokens_per_s','peak_gpu_gib','best_eval_loss','train_loss')})" 2>&1 | tail -1
done
python3 scripts/bench_train_gpu.py table "$OUT"/anchor_*.log "$OUT"/t_unsloth.log
grep -A20 "^| variant" "$OUT/fast.log"

#!/usr/bin/env bash
# Issue 7 workload follow-up: where the fast path's time goes in the trainer (allocator, static row shapes),
# and issue 4: Unsloth's own loop vs papertune's unsloth trainer with and without autocast, side by side.
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-2000}
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/w_fast_exp.log" 2>&1 || tail -20 "$OUT/w_fast_exp.log"; grep RESULT "$OUT/w_fast_exp.log"
PAD_TO=8192 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/w_fast_pad.log" 2>&1 || tail -20 "$OUT/w_fast_pad.log"; grep RESULT "$OUT/w_fast_pad.log"
python3 .gpu-ref/qlora_anchor.py run unsloth4 $MODEL > "$OUT/anchor_unsloth4.log" 2>&1 || tail -5 "$OUT/anchor_unsloth4.log"; grep RESULT "$OUT/anchor_unsloth4.log"
python3 scripts/bench_train_gpu.py trainer unsloth $MODEL > "$OUT/t_unsloth.log" 2>&1 || tail -8 "$OUT/t_unsloth.log"; grep RESULT "$OUT/t_unsloth.log"
BENCH_AMP=0 python3 scripts/bench_train_gpu.py trainer unsloth $MODEL > "$OUT/t_unsloth_noamp.log" 2>&1 || tail -8 "$OUT/t_unsloth_noamp.log"; grep RESULT "$OUT/t_unsloth_noamp.log"

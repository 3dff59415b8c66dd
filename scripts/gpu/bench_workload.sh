#!/usr/bin/env bash
# Issue 7 workload level (one GPU, side by side): the report's recipe as written and with TRL packing
# (../shared/gpu/seed_recipe.py) against papertune's fast path on the same Q&A mix; plus the compile
# gradient check, the Unsloth trainer without autocast (issue 4) and answer generation (issue 5).
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-2000}
python3 scripts/bench_train_fast.py gradcheck $MODEL > "$OUT/gradcheck.log" 2>&1 || tail -5 "$OUT/gradcheck.log"; grep RESULT "$OUT/gradcheck.log"
python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/w_fast.log" 2>&1 || tail -20 "$OUT/w_fast.log"; grep -E "RESULT|fast:|plan|gradient checkpointing" "$OUT/w_fast.log" | cut -c1-300
python3 .gpu-ref/seed_recipe.py $MODEL $N packed > "$OUT/w_seed_packed.log" 2>&1 || tail -5 "$OUT/w_seed_packed.log"; grep RESULT "$OUT/w_seed_packed.log"
python3 .gpu-ref/seed_recipe.py $MODEL ${N_ASWRITTEN:-320} > "$OUT/w_seed.log" 2>&1 || tail -5 "$OUT/w_seed.log"; grep RESULT "$OUT/w_seed.log"
BENCH_AMP=0 python3 scripts/bench_train_gpu.py trainer unsloth $MODEL > "$OUT/t_unsloth_noamp.log" 2>&1 || tail -8 "$OUT/t_unsloth_noamp.log"; grep RESULT "$OUT/t_unsloth_noamp.log"
python3 scripts/bench_answer.py --model $MODEL --device cuda --batch-size 16 --questions 32 --max-new-tokens 64 --dtype bfloat16 > "$OUT/answer.log" 2>&1 || tail -8 "$OUT/answer.log"; tail -8 "$OUT/answer.log"
python3 scripts/bench_train_gpu.py table "$OUT"/w_*.log "$OUT"/t_unsloth_noamp.log

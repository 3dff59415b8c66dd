#!/usr/bin/env bash
# Issue 7 diagnosis, one GPU: (1) where a step's time goes, the plain loop against trainer.train() on the same
# packed rows (profile); (2) the fast path with train.torch_compile against eager, side by side; (3) the compiled
# LoRA gradients against eager and a float32 reference (gradcheck).
source scripts/gpu/env.sh
export CUDA_VISIBLE_DEVICES=0
N=${N:-1000}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 170 python3 scripts/bench_train_fast.py profile $MODEL 600 8192 > "$OUT/profile.log" 2>&1 || tail -20 "$OUT/profile.log"
grep RESULT "$OUT/profile.log" | cut -c1-600
COMPILE=1 timeout 200 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/w_compiled.log" 2>&1 || tail -20 "$OUT/w_compiled.log"
grep RESULT "$OUT/w_compiled.log"
timeout 110 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/w_eager.log" 2>&1 || tail -20 "$OUT/w_eager.log"
grep RESULT "$OUT/w_eager.log"
timeout 120 python3 scripts/bench_train_fast.py gradcheck $MODEL > "$OUT/gradcheck.log" 2>&1 || tail -20 "$OUT/gradcheck.log"
grep RESULT "$OUT/gradcheck.log"
python3 scripts/bench_train_gpu.py table "$OUT"/w_*.log "$OUT/profile.log"

#!/usr/bin/env bash
# Issue 7, target 3 (run on nvidia-h200-x2): the fast path (configs/gpu-fast.yaml's settings) on the seed Q&A
# mix, one GPU vs two (torchrun), at the same global batch (1 GPU: one 8,192-token row x accumulation 2;
# 2 GPUs: one row x accumulation 1 x 2 ranks), one after the other in one run. SEED=1 adds the report's
# recipe with TRL packing on one GPU as a reference.
source scripts/gpu/env.sh
N=${N:-4000}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
if [ "${SEED:-0}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=0 python3 .gpu-ref/seed_recipe.py $MODEL $N packed > "$OUT/d_seed_packed.log" 2>&1 || tail -5 "$OUT/d_seed_packed.log"
fi
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 scripts/bench_train_fast.py workload $MODEL $N 8192 2 > "$OUT/d_fast_1gpu.log" 2>&1 || tail -20 "$OUT/d_fast_1gpu.log"
CUDA_VISIBLE_DEVICES=0,1 timeout 200 torchrun --nproc_per_node 2 scripts/bench_train_fast.py workload $MODEL $N 8192 1 > "$OUT/d_fast_2gpu.log" 2>&1 || tail -20 "$OUT/d_fast_2gpu.log"
grep -h RESULT "$OUT"/d_*.log | cut -c1-600
python3 - "$OUT" <<'PY'
import sys
sys.path.insert(0, "scripts")
from bench_train_gpu import markdown_table, results
one, two = (results([f"{sys.argv[1]}/{name}.log"]) for name in ("d_fast_1gpu", "d_fast_2gpu"))
if one and two:
    rows = [dict(r, gpus=n) for n, r in ((1, one[0]), (2, two[0]))]
    markdown_table(rows, {"GPUs": "gpus", "optimizer steps": "optimizer_steps", "wall s": "wall_s",
                          "tokens/s (epoch)": "tokens_per_s", "steady tokens/s": "steady_tokens_per_s",
                          "final loss": "final_loss", "peak GiB/GPU": "peak_gib"})
    print(f"scaling: epoch {two[0]['tokens_per_s'] / one[0]['tokens_per_s']:.2f}x, "
          f"steady {two[0]['steady_tokens_per_s'] / one[0]['steady_tokens_per_s']:.2f}x")
PY

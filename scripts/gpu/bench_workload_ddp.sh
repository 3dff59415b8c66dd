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
import json, pathlib, sys
rows = {}
for name in ("d_fast_1gpu", "d_fast_2gpu"):
    for line in (pathlib.Path(sys.argv[1]) / f"{name}.log").read_text().splitlines():
        if line.startswith("RESULT "):
            rows[name] = json.loads(line[7:])
if len(rows) == 2:
    one, two = rows["d_fast_1gpu"], rows["d_fast_2gpu"]
    print("| GPUs | optimizer steps | wall s | tokens/s (epoch) | steady tokens/s | final loss | peak GiB/GPU |")
    print("|---|---|---|---|---|---|---|")
    for n, r in ((1, one), (2, two)):
        print(f"| {n} | {r['optimizer_steps']} | {r['wall_s']} | {r['tokens_per_s']} | {r['steady_tokens_per_s']} | {r['final_loss']} | {r['peak_gib']} |")
    print(f"scaling: epoch {two['tokens_per_s'] / one['tokens_per_s']:.2f}x, steady {two['steady_tokens_per_s'] / one['steady_tokens_per_s']:.2f}x")
PY

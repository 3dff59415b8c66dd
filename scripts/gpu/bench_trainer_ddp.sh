#!/usr/bin/env bash
# (1) papertune's full trainer at the seed shape, each backend, GPU 0.
# (2) Data parallel: the same Q&A workload (hf backend, QLoRA) on 1 GPU (batch 2 x accumulation 16) and on
#     2 GPUs with torchrun (batch 2 x accumulation 8 x 2 ranks): same global batch, compare throughput and
#     the validation loss curve.
source scripts/gpu/env.sh
N=${N:-320}
for b in hf unsloth; do
  CUDA_VISIBLE_DEVICES=0 python3 scripts/bench_train_gpu.py trainer $b $MODEL > "$OUT/t_papertune_$b.log" 2>&1 || tail -30 "$OUT/t_papertune_$b.log"
  grep RESULT "$OUT/t_papertune_$b.log"
done
rm -rf /tmp/qa /tmp/ddp1 /tmp/ddp2
python3 scripts/bench_train_gpu.py qa-run /tmp/qa $MODEL $N > "$OUT/qa_build.log" 2>&1 || tail -20 "$OUT/qa_build.log"
cp -r /tmp/qa /tmp/ddp1; cp -r /tmp/qa /tmp/ddp2
COMMON="--set train.model=$MODEL --set train.backend=hf --set train.eval_strategy=steps --set train.eval_steps=2 --set train.logging_steps=1 --set train.early_stopping_patience=0 --set train.num_train_epochs=1 --set train.learning_rate=2e-4 --set build.model=$MODEL"
CUDA_VISIBLE_DEVICES=0 python3 -m papertune train -q --run-dir /tmp/ddp1 $COMMON --set train.gradient_accumulation_steps=16 > "$OUT/ddp1.log" 2>&1 || tail -30 "$OUT/ddp1.log"
CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc_per_node 2 -m papertune train -q --run-dir /tmp/ddp2 $COMMON --set train.gradient_accumulation_steps=8 > "$OUT/ddp2.log" 2>&1 || tail -30 "$OUT/ddp2.log"
python3 - <<'PY'
import json
rows = {}
for name in ("ddp1", "ddp2"):
    rep = json.load(open(f"/tmp/{name}/train/report.json"))
    evals = [json.loads(l) for l in open(f"/tmp/{name}/train/metrics.jsonl") if "eval_loss" in l]
    rows[name] = (rep, {e["step"]: e["eval_loss"] for e in evals})
    print(name, json.dumps({k: rep[k] for k in ("global_steps", "wall_s", "tokens_seen", "tokens_per_s", "peak_gpu_gib", "best_eval_loss")}))
r1, r2 = rows["ddp1"][0], rows["ddp2"][0]
print("| GPUs | optimizer steps | wall s | tokens/s | peak GiB/GPU | scaling |\n|---|---|---|---|---|---|")
print(f"| 1 | {r1['global_steps']} | {r1['wall_s']} | {r1['tokens_per_s']} | {r1['peak_gpu_gib']} | 1.00x |")
# tokens_seen is gathered over all ranks by the Trainer.
print(f"| 2 | {r2['global_steps']} | {r2['wall_s']} | {r2['tokens_per_s']} | {r2['peak_gpu_gib']} | {r1['wall_s'] / r2['wall_s']:.2f}x (by wall time) |")
print("| step | val loss 1 GPU | val loss 2 GPUs |\n|---|---|---|")
for step in sorted(set(rows["ddp1"][1]) | set(rows["ddp2"][1])):
    print(f"| {step} | {rows['ddp1'][1].get(step, float('nan')):.4f} | {rows['ddp2'][1].get(step, float('nan')):.4f} |")
PY
python3 scripts/bench_train_gpu.py table "$OUT"/t_*.log

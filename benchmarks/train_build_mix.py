"""``papertune train`` on the length mix the build stage really produces (chat template, prompt-masked labels),
beside the report's recipe on the same data; the tables of benchmarks/bench_build_mix.sh and of
benchmarks/bench_two_gpus.sh's REPORT=1 run.

    python benchmarks/train_build_mix.py qa-run  RUN_DIR MODEL_DIR N             # a RUN/dataset of N synthetic Q&A pairs
    python benchmarks/train_build_mix.py trl-recipe RUN_DIR MODEL_DIR [packed]    # the report's recipe on RUN/dataset
    python benchmarks/train_build_mix.py build-mix-table WORK PACKED_LOG         # bench_build_mix.sh's table
    python benchmarks/train_build_mix.py two-gpu-table RUN_1GPU RUN_2GPU         # bench_two_gpus.sh REPORT=1's table

MODEL_DIR is the Qwen2.5-3B-shaped random-weight model of ../shared/gpu/qlora_anchor.py (``build``), or any
local model folder for a CPU smoke test.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from results import markdown_table, results

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def qa_run(run_dir: str, model_dir: str, n: int) -> None:
    """N synthetic Q&A pairs with the report-like length mix (log-normal, median ~220 tokens), built into
    RUN/dataset by papertune's build stage with the model's tokenizer."""
    from train_seed_mix import seed_length

    from papertune import build
    from papertune.config import load_config

    words = ("transformer attention lora quantization adapter gradient").split()
    rng = random.Random(3407)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    with (run / "qa_augmented.jsonl").open("w") as fh:
        for i in range(n):
            length = seed_length(rng)
            q_len = max(8, length // 5)
            question = " ".join(rng.choice(words) for _ in range(q_len)) + f" {i}?"
            answer = " ".join(rng.choice(words) for _ in range(length - q_len))
            fh.write(json.dumps({"id": f"q{i}", "question": question, "answer": answer, "chunk_id": f"c{i // 4}",
                                 "source": f"d{i // 40}.md", "generator": "synthetic"}) + "\n")
    build.run(load_config(None, [f"run_dir={run}", f"build.model={model_dir}", "build.num_proc=4",
                                 "build.leakage_threshold=0.95"]))


def trl_recipe(run_dir: str, model_dir: str, packed: bool) -> None:
    """The report's recipe (Unsloth 4-bit, TRL SFTTrainer, batch 2 x 16, lr 2e-5, gradient checkpointing) for
    one epoch over RUN/dataset's training split as papertune tokenizes it (prompt masked), with TRL's
    ``packing=True`` or as written; like ../shared/gpu/seed_recipe.py, but on the build stage's length mix.
    Without CUDA (a smoke test of the script) it runs transformers + PEFT in float32 instead of Unsloth."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        from unsloth import FastLanguageModel  # before trl/transformers: Unsloth patches them at import
    from trl import SFTConfig, SFTTrainer

    from papertune.train.data import load_training_data

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if cuda:
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=model_dir, max_seq_length=2048, dtype=None,
                                                             load_in_4bit=True, local_files_only=True)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                                 target_modules=targets, use_gradient_checkpointing="unsloth",
                                                 random_state=3407)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                               LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    data, counts = load_training_data(Path(run_dir), tokenizer, 2048)
    train, tokens = data["train"], counts["train_tokens"]
    args = SFTConfig(output_dir=str(Path(run_dir) / "trl_recipe_out"), per_device_train_batch_size=2,
                     gradient_accumulation_steps=16, learning_rate=2e-5, num_train_epochs=1, max_length=2048,
                     packing=packed, bf16=cuda, logging_steps=10, report_to="none", save_strategy="no",
                     eval_strategy="no", seed=3407, dataset_num_proc=1)
    trainer = SFTTrainer(model=model, train_dataset=train, args=args, processing_class=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    out = trainer.train()
    wall = time.time() - started
    print("RESULT", json.dumps(dict(
        recipe="report: unsloth4 + SFTTrainer, bs2 ga16" + (", packing=True" if packed else ", no packing") + ", build mix",
        examples=len(train), trained_tokens=tokens, optimizer_steps=trainer.state.global_step, wall_s=round(wall, 1),
        tokens_per_s=round(tokens / wall), final_loss=round(out.training_loss, 4),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        gpu=torch.cuda.get_device_name() if cuda else "cpu")), flush=True)


def build_mix_table(work_dir: str, packed_log: str) -> None:
    """The table of benchmarks/bench_build_mix.sh: the ``papertune train`` runs in WORK/qa_report, WORK/qa_fast
    and WORK/qa_v1, qa_v2, ... (gpu-fast with the settings in variant.txt) from report.json and metrics.jsonl,
    the TRL-packing reference's RESULT line if it ran, and ratios."""
    runs = {}
    variants = [(v.name, "gpu-fast + " + (v / "variant.txt").read_text().strip())
                for v in sorted(Path(work_dir).glob("qa_v*"), key=lambda v: int(v.name[4:])) if (v / "variant.txt").is_file()]
    for name, label in [("qa_report", "report as written (configs/gpu.yaml)"), ("qa_fast", "papertune gpu-fast")] + variants:
        train = Path(work_dir) / name / "train"
        if not (train / "report.json").is_file():
            print(f"{name}: no report.json in {train}")
            continue
        report = json.loads((train / "report.json").read_text())
        logs = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
        train_logs = [r for r in logs if "loss" in r and "tokens_per_s" in r]
        first, last = train_logs[0], train_logs[-1]  # after warm-up: from the first training log line to the last
        runs[name] = dict(
            recipe=label, backend=report["backend"], steps=report["global_steps"], train_tps=last["tokens_per_s"],
            steady_tps=round((last["tokens_seen"] - first["tokens_seen"]) / (last["time_s"] - first["time_s"]))
            if last["time_s"] > first["time_s"] else None,
            whole_tps=report["tokens_per_s"], wall_s=report["wall_s"], tokens=report["tokens_seen"],
            loss=round(last["loss"], 4), eval_loss=report.get("best_eval_loss"), peak_gib=report.get("peak_gpu_gib"))
    packed = results([packed_log]) if Path(packed_log).is_file() else []
    rows = list(runs.values()) + [dict(
        recipe="report + TRL packing=True (train_build_mix.py trl-recipe)", backend="hf" if r["gpu"] == "cpu" else "unsloth",
        steps=r["optimizer_steps"], whole_tps=r["tokens_per_s"], wall_s=r["wall_s"], tokens=r["trained_tokens"],
        loss=r["final_loss"], peak_gib=r["peak_gib"]) for r in packed[-1:]]
    markdown_table(rows, {"recipe": "recipe", "backend": "backend", "optimizer steps": "steps",
                          "train tokens/s": "train_tps", "after warm-up": "steady_tps", "whole-run tokens/s": "whole_tps",
                          "wall s": "wall_s", "tokens seen": "tokens", "last train loss": "loss",
                          "eval loss": "eval_loss", "peak GiB": "peak_gib"})
    fast, slow = runs.get("qa_fast"), runs.get("qa_report")
    if fast and packed:
        print(f"ratio to packed (gpu-fast train tokens/s / packed epoch tokens/s): "
              f"{fast['train_tps'] / packed[-1]['tokens_per_s']:.2f}x")
    for name, run in runs.items():
        if name != "qa_report" and slow:
            steady = run["steady_tps"] / slow["steady_tps"] if run["steady_tps"] and slow["steady_tps"] else float("nan")
            print(f"{run['recipe']} / report as written: train tokens/s {run['train_tps'] / slow['train_tps']:.2f}x; "
                  f"after warm-up {steady:.2f}x; whole run {run['whole_tps'] / slow['whole_tps']:.2f}x")


def two_gpu_table(one_gpu_run: str, two_gpu_run: str) -> None:
    """The table of ``benchmarks/bench_two_gpus.sh`` with REPORT=1: ``papertune train`` on one GPU and on two
    (torchrun) at the same global batch, from each run's report.json and metrics.jsonl: throughput, scaling by
    wall time, and the validation loss at every evaluation step side by side."""
    rows = {}
    for name in (one_gpu_run, two_gpu_run):
        train = Path(name) / "train"
        report = json.loads((train / "report.json").read_text())
        evals = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
        rows[name] = (report, {e["step"]: e["eval_loss"] for e in evals})
        print(name, json.dumps({k: report[k] for k in ("global_steps", "wall_s", "tokens_seen", "tokens_per_s",
                                                        "peak_gpu_gib", "best_eval_loss")}))
    (r1, loss1), (r2, loss2) = rows[one_gpu_run], rows[two_gpu_run]
    print("| GPUs | optimizer steps | wall s | tokens/s | peak GiB/GPU | scaling |\n|---|---|---|---|---|---|")
    print(f"| 1 | {r1['global_steps']} | {r1['wall_s']} | {r1['tokens_per_s']} | {r1['peak_gpu_gib']} | 1.00x |")
    # tokens_seen is gathered over all ranks by the Trainer.
    print(f"| 2 | {r2['global_steps']} | {r2['wall_s']} | {r2['tokens_per_s']} | {r2['peak_gpu_gib']} | "
          f"{r1['wall_s'] / r2['wall_s']:.2f}x (by wall time) |")
    print("| step | val loss 1 GPU | val loss 2 GPUs |\n|---|---|---|")
    for step in sorted(set(loss1) | set(loss2)):
        print(f"| {step} | {loss1.get(step, float('nan')):.4f} | {loss2.get(step, float('nan')):.4f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    command, *rest = sys.argv[1:] or [""]
    if command == "qa-run":
        qa_run(rest[0], rest[1], int(rest[2]))
    elif command == "trl-recipe":
        trl_recipe(rest[0], rest[1], rest[2:] == ["packed"])
    elif command == "build-mix-table":
        build_mix_table(rest[0], rest[1])
    elif command == "two-gpu-table":
        two_gpu_table(rest[0], rest[1])
    else:
        sys.exit(__doc__)

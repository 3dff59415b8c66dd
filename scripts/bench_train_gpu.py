"""GPU training benchmarks for papertune, measured beside the reference scripts in the same run.

    python scripts/bench_train_gpu.py kernel  hf|unsloth  MODEL_DIR   # papertune's loader, the anchor's step loop
    python scripts/bench_train_gpu.py trainer hf|unsloth  MODEL_DIR   # papertune's trainer (SFTTrainer subclass)
    python scripts/bench_train_gpu.py qa-run  RUN_DIR MODEL_DIR N     # a RUN/dataset of N synthetic Q&A examples
    python scripts/bench_train_gpu.py trl-recipe RUN_DIR MODEL_DIR [packed]  # the report's recipe on RUN/dataset
    python scripts/bench_train_gpu.py build-mix-table WORK PACKED_LOG  # scripts/gpu/bench_build_mix.sh's table
    python scripts/bench_train_gpu.py table   LOG...                  # RESULT lines -> a markdown table

MODEL_DIR is the Qwen2.5-3B-shaped random-weight model of ../shared/gpu/qlora_anchor.py (``build``).
Kernel and trainer modes use the anchor's shape: batch 2 x 2048 tokens, LoRA r=16 on all 7 linear layers,
gradient checkpointing, AdamW, median of 10 steps after 3 warm-up steps. Each mode runs in its own process
(Unsloth patches libraries at import), and prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEQ, BATCH, WARM, STEPS = 2048, 2, 3, 10


def seed_length(rng: random.Random) -> int:
    """One Q&A example's length in tokens, as ../shared/gpu/seed_recipe.py draws it: log-normal, median 220,
    clipped to 60-700."""
    return min(700, max(60, int(math.exp(rng.gauss(math.log(220), 0.5)))))


def results(paths: list[str]) -> list[dict]:
    """The ``RESULT {json}`` lines of benchmark logs, in order."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[len("RESULT "):]))
    return rows


def markdown_table(rows: list[dict], columns: dict[str, object]) -> None:
    """Print ``rows`` as a Markdown table; ``columns``: header -> the row's key, or a function of the row."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(cell(row) if callable(cell) else row.get(cell)) for cell in columns.values()) + " |")


def _cfg(model_dir: str, backend: str):
    from papertune.config import TrainConfig

    return TrainConfig(model=model_dir, backend=backend, load_in_4bit=True, max_seq_length=SEQ, lora_r=16,
                       lora_alpha=16, lora_dropout=0.0, gradient_checkpointing=True,
                       per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, learning_rate=2e-4)


def _result(**fields) -> None:
    import torch

    fields.update(peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), gpu=torch.cuda.get_device_name())
    print("RESULT", json.dumps(fields), flush=True)


def kernel(backend: str, model_dir: str) -> None:
    if backend == "unsloth":
        import unsloth  # noqa: F401
    import torch

    from papertune.train.model import load_for_training

    started = time.time()
    model, _ = load_for_training(_cfg(model_dir, backend), backend)
    load_s = time.time() - started
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 150000, (BATCH, SEQ), generator=gen).cuda() for _ in range(4)]
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(WARM + STEPS):
        x = batches[i % 4]
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        losses.append(float(loss))
        if i >= WARM:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    _result(mode=f"papertune {backend} (loader + anchor loop)", load_s=round(load_s, 1), step_s_median=round(med, 4),
            tokens_per_s=round(BATCH * SEQ / med), loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))


def step_clock():
    """A TrainerCallback that records (time, tokens seen) at the end of every optimizer step, after a CUDA sync."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    return StepClock()


def trainer(backend: str, model_dir: str) -> None:
    if backend == "unsloth":
        import unsloth  # noqa: F401
    import tempfile

    import torch
    from datasets import Dataset

    from papertune.train.model import load_for_training
    from papertune.train.stage import _sft_config, build_trainer
    from papertune.train.trainer import MetricsCallback

    cfg = _cfg(model_dir, backend)
    cfg.eval_strategy, cfg.eval_steps, cfg.max_steps, cfg.logging_steps = "steps", 10_000, WARM + STEPS, 1
    model, tokenizer = load_for_training(cfg, backend)
    gen = random.Random(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in
            ([gen.randrange(0, 150000) for _ in range(SEQ)] for _ in range(BATCH * (WARM + STEPS)))]
    out = Path(tempfile.mkdtemp())
    clock = step_clock()
    metrics = MetricsCallback(out)
    args = _sft_config(cfg, out, True, torch.cuda.is_bf16_supported())
    if os.environ.get("BENCH_AMP") == "0":  # experiment: no autocast around Unsloth's own mixed-precision kernels
        args.bf16 = args.fp16 = False
    trainer_ = build_trainer(cfg, backend, model, tokenizer, Dataset.from_list(rows), Dataset.from_list(rows[:2]),
                             args, [clock, metrics])
    metrics.trainer = trainer_
    torch.cuda.reset_peak_memory_stats()
    trainer_.train()
    marks = [t for t, _ in clock.marks]
    steps = [b - a for a, b in zip(marks[WARM - 1:], marks[WARM:])]
    med = statistics.median(steps)
    _result(mode=f"papertune {backend} (PapertuneSFTTrainer{', no autocast' if os.environ.get('BENCH_AMP') == '0' else ''})", step_s_median=round(med, 4),
            tokens_per_s=round(BATCH * SEQ / med), steps_timed=len(steps),
            losses=[round(float(h["loss"]), 3) for h in trainer_.state.log_history if "loss" in h])


def qa_run(run_dir: str, model_dir: str, n: int) -> None:
    """N synthetic Q&A pairs with the report-like length mix (log-normal, median ~220 tokens), built into
    RUN/dataset by papertune's build stage with the model's tokenizer."""
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
    """The table of scripts/gpu/bench_build_mix.sh: the ``papertune train`` runs in WORK/qa_report, WORK/qa_fast
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
        recipe="report + TRL packing=True (bench_train_gpu.py trl-recipe)", backend="hf" if r["gpu"] == "cpu" else "unsloth",
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


def table(paths: list[str]) -> None:
    markdown_table(results(paths), {
        "mode": lambda r: r.get("mode", r.get("recipe")), "tokens/s": "tokens_per_s",
        "step s (median)": lambda r: r.get("step_s_median", r.get("wall_s")), "peak GiB": "peak_gib", "GPU": "gpu"})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    command, *rest = sys.argv[1:]
    if command == "kernel":
        kernel(rest[0], rest[1])
    elif command == "trainer":
        trainer(rest[0], rest[1])
    elif command == "qa-run":
        qa_run(rest[0], rest[1], int(rest[2]))
    elif command == "trl-recipe":
        trl_recipe(rest[0], rest[1], rest[2:] == ["packed"])
    elif command == "build-mix-table":
        build_mix_table(rest[0], rest[1])
    elif command == "table":
        table(rest)
    else:
        sys.exit(__doc__)

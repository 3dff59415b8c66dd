"""papertune's training backends (hf, unsloth) at the seed shape, measured the way ../shared/gpu/qlora_anchor.py
measures the reference: batch 2 x 2048 tokens, LoRA r=16 on all 7 linear layers, gradient checkpointing, AdamW,
median of 10 steps after 3 warm-up steps.

    python benchmarks/train_backends.py kernel  hf|unsloth  MODEL_DIR   # papertune's loader, the anchor's step loop
    python benchmarks/train_backends.py trainer hf|unsloth  MODEL_DIR   # papertune's trainer (SFTTrainer subclass)

MODEL_DIR is the Qwen2.5-3B-shaped random-weight model of ../shared/gpu/qlora_anchor.py (``build``). Each mode
runs in its own process (Unsloth patches libraries at import) and prints one ``RESULT {json}`` line.
BENCH_AMP=0 runs the trainer without bf16 autocast (around Unsloth's own mixed-precision kernels).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEQ, BATCH, WARM, STEPS = 2048, 2, 3, 10


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


def trainer(backend: str, model_dir: str) -> None:
    if backend == "unsloth":
        import unsloth  # noqa: F401
    import tempfile

    import torch
    from datasets import Dataset

    from papertune.train.model import load_for_training
    from papertune.train.stage import sft_config, build_trainer
    from papertune.train.trainer import MetricsCallback
    from train_seed_mix import step_clock

    cfg = _cfg(model_dir, backend)
    cfg.eval_strategy, cfg.eval_steps, cfg.max_steps, cfg.logging_steps = "steps", 10_000, WARM + STEPS, 1
    model, tokenizer = load_for_training(cfg, backend)
    gen = random.Random(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in
            ([gen.randrange(0, 150000) for _ in range(SEQ)] for _ in range(BATCH * (WARM + STEPS)))]
    out = Path(tempfile.mkdtemp())
    clock = step_clock()
    metrics = MetricsCallback(out)
    args = sft_config(cfg, out, True, torch.cuda.is_bf16_supported())
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


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    command, *rest = sys.argv[1:] or [""]
    if command == "kernel":
        kernel(rest[0], rest[1])
    elif command == "trainer":
        trainer(rest[0], rest[1])
    else:
        sys.exit(__doc__)

"""The seed Q&A mix (the lengths and random token ids of ../shared/gpu/seed_recipe.py) through papertune's
trainer with the fast path as ``configs/gpu-fast.yaml`` ships it: one epoch's speed, and where a step's time goes.

    python benchmarks/train_seed_mix.py workload MODEL_DIR N PACKED_LEN ACCUM   # one epoch; torchrun for 2 GPUs
    python benchmarks/train_seed_mix.py profile  MODEL_DIR N PACKED_LEN         # plain loop vs trainer, profiled

MODEL_DIR is the Qwen2.5-3B-shaped random-weight model of ../shared/gpu/qlora_anchor.py (``build``). The
environment switches one setting of gpu-fast at a time: COMPILE=1 (train.torch_compile), FUSED_KERNELS=0|1,
WORKERS=N (train.dataloader_workers), OPTIM=NAME, MEMORY_CAP=GIB (train.memory_cap_gib), PAD_TO=N (rows padded
to this multiple, 0: not padded). Each run prints one ``RESULT {json}`` line (benchmarks/results.py reads them).
Without CUDA (a smoke test of the script) it runs unquantized with the token ids folded into a small vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def seed_length(rng: random.Random) -> int:
    """One Q&A example's length in tokens, as ../shared/gpu/seed_recipe.py draws it: log-normal, median 220,
    clipped to 60-700."""
    return min(700, max(60, int(math.exp(rng.gauss(math.log(220), 0.5)))))


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


def seed_mix(n: int) -> tuple[list[int], list[dict]]:
    """The lengths and random ids of ../shared/gpu/seed_recipe.py's Q&A mix (same generator, same order)."""
    rng = random.Random(3407)
    lengths = [seed_length(rng) for _ in range(n)]
    rows = [{"input_ids": ids, "labels": ids} for ids in
            ([rng.randrange(1000, 150000) for _ in range(length)] for length in lengths)]
    return lengths, rows


def _workload_trainer(model_dir: str, n: int, packed_length: int, accumulation: int, callbacks: list) -> tuple:
    """papertune's trainer with the fast path as ``configs/gpu-fast.yaml`` sets it, over the seed mix."""
    import tempfile

    from datasets import Dataset
    from transformers import set_seed

    import torch

    from papertune.config import load_config
    from papertune.profiles import profile_path
    from papertune.train.model import load_for_training
    from papertune.train.stage import sft_config, build_trainer

    lengths, rows = seed_mix(n)
    if not torch.cuda.is_available():  # a smoke test of the script on the CPU, with a tiny model
        rows = [{k: [t % 400 for t in v] for k, v in r.items()} for r in rows]
    # configs/gpu-fast.yaml's train section as shipped, for one epoch without evaluation; the environment
    # switches one thing at a time (COMPILE=1, FUSED_KERNELS=0, WORKERS=0, OPTIM=..., MEMORY_CAP=16).
    profile = load_config(str(profile_path("gpu-fast")), []).train
    overrides = dict(model=model_dir, num_train_epochs=1, packed_length=packed_length,
                     gradient_accumulation_steps=accumulation, eval_strategy="steps", eval_steps=100_000,
                     early_stopping_patience=0, load_in_4bit=torch.cuda.is_available())
    env = {"COMPILE": ("torch_compile", lambda v: v == "1"), "FUSED_KERNELS": ("fused_kernels", lambda v: v == "1"),
           "WORKERS": ("dataloader_workers", int), "OPTIM": ("optim", str), "MEMORY_CAP": ("memory_cap_gib", float)}
    for name, (field, parse) in env.items():
        if name in os.environ:
            overrides[field] = parse(os.environ[name])
    cfg = dataclasses.replace(profile, **overrides)
    cfg.validate()
    set_seed(cfg.seed)
    model, tokenizer = load_for_training(cfg, "hf")
    args = sft_config(cfg, Path(tempfile.mkdtemp()), torch.cuda.is_available(), True)
    if os.environ.get("PAD_TO"):  # rows padded to this multiple (papertune pads them to packed_length)
        args.pad_to_multiple_of = int(os.environ["PAD_TO"]) or None
    trainer = build_trainer(cfg, "hf", model, tokenizer, Dataset.from_list(rows), Dataset.from_list(rows[:8]), args,
                            callbacks)
    return trainer, lengths, cfg


def workload(model_dir: str, n: int, packed_length: int, accumulation: int) -> None:
    """One epoch over the seed recipe's Q&A mix (the same lengths and random ids as ../shared/gpu/seed_recipe.py,
    loss on every token) through papertune's trainer with the fast path: padding-free packing in rows of
    ``packed_length`` tokens (whole examples), varlen attention, dequantized base, checkpointing and loss
    chosen from the memory budget. Run it under torchrun for data parallel."""
    import torch

    from papertune.train.fast import resolve_fused_kernels

    clock = step_clock()
    trainer, lengths, cfg = _workload_trainer(model_dir, n, packed_length, accumulation, [clock])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    if trainer.is_world_process_zero():
        world = int(os.environ.get("WORLD_SIZE", 1))
        tokens = sum(lengths)
        print("RESULT", json.dumps(dict(
            recipe=f"papertune fast path: packed {packed_length} x accumulation {accumulation} x {world} GPU(s)"
                   f"{', compiled' if cfg.torch_compile else ''}{', Liger norm+SwiGLU' if resolve_fused_kernels(cfg.fused_kernels) else ''}, {cfg.optim}",
            examples=n, trained_tokens=tokens, wall_s=round(wall, 1), tokens_per_s=round(tokens / wall),
            optimizer_steps=trainer.state.global_step, final_loss=round(result.training_loss, 4),
            first_step_s=round(clock.marks[0][0] - started, 2),
            steady_tokens_per_s=round((clock.marks[-1][1] - clock.marks[5][1]) / (clock.marks[-1][0] - clock.marks[5][0]))
            if len(clock.marks) > 6 else None,  # after 5 warm-up steps
            memory_cap_gib=cfg.memory_cap_gib, dataloader_workers=cfg.dataloader_workers,
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            gpu=torch.cuda.get_device_name() if cuda else "cpu")), flush=True)


def profile(model_dir: str, n: int, packed_length: int, steps: int = 12) -> None:
    """Where a step's time goes: the same packed rows through (a) a plain loop calling the trainer's own
    loss, with and without the Trainer's gradient clipping, and (b) ``trainer.train()``. Prints each one's
    median step time, the GPU's busy share of a profiled step, and the CPU calls that wait on the GPU."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clock = step_clock()
    trainer, _, cfg = _workload_trainer(model_dir, n, packed_length, 1, [clock])
    model = trainer.model
    batches = [b for _, b in zip(range(steps + 2), trainer.get_train_dataloader())]
    tokens = statistics.mean(int(b["input_ids"].numel()) for b in batches)  # per row, padding included
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = cfg.optim.endswith("fused")

    def summarise(prof, label: str, step_s: float, profiled_steps: int) -> dict:
        events = prof.key_averages()
        device_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
        syncs = {e.key: e.count for e in events if any(k in e.key for k in ("Synchronize", "item", "_local_scalar_dense", "Memcpy"))}
        print(f"--- {label}: top CPU ops per {profiled_steps} steps")
        print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
        if cuda:  # where the GPU time goes, by operator (aten ops and Triton kernels)
            print(f"--- {label}: top ops by GPU time per {profiled_steps} steps")
            print(events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
        return dict(gpu_busy=round(device_us / 1e6 / (step_s * profiled_steps), 3),
                    sync_calls_per_step={k: v / profiled_steps for k, v in syncs.items()})

    def plain(clip: bool, label: str) -> None:
        opt = torch.optim.AdamW(trainable, lr=2e-5, fused=fused)
        times = []

        def one(batch):
            with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                items = (batch["labels"] != -100).sum()
                loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for i, batch in enumerate(batches):
            sync()
            t = time.perf_counter()
            one(batch)
            sync()
            if i >= 2:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        with torch_profile(activities=activities) as prof:
            for batch in batches[2:5]:
                one(batch)
            sync()
        print("RESULT", json.dumps(dict(mode=label, step_s_median=round(med, 4), tokens_per_s=round(tokens / med),
                                        **summarise(prof, label, med, 3))), flush=True)

    plain(False, "plain loop, trainer's loss, no clipping")
    plain(True, "plain loop, trainer's loss, clip 1.0")

    class Profile(TrainerCallback):  # profile optimizer steps 6-8
        prof = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 5:
                sync()
                self.prof = torch_profile(activities=activities)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 8 and self.prof is not None:
                sync()
                self.prof.__exit__(None, None, None)

    profiler = Profile()
    trainer.add_callback(profiler)
    trainer.args.max_steps = steps + 2
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.train()
    marks = [t for t, _ in clock.marks]
    unprofiled = [b - a for i, (a, b) in enumerate(zip(marks, marks[1:]), start=1) if i >= 2 and not 5 <= i < 8]
    med = statistics.median(unprofiled)
    print("RESULT", json.dumps(dict(mode="trainer.train()", step_s_median=round(med, 4), tokens_per_s=round(tokens / med),
                                    **summarise(profiler.prof, "trainer", med, 3))), flush=True)


if __name__ == "__main__":
    import logging

    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("papertune").setLevel(logging.INFO)  # the fast path's plan (dequantize, checkpointing)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    command, *rest = sys.argv[1:] or [""]
    if command == "workload":
        workload(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    elif command == "profile":
        profile(rest[0], int(rest[1]), int(rest[2]))
    else:
        sys.exit(__doc__)

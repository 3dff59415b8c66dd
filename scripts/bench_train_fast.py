"""Kernel-level speed of papertune's fast GPU path against QLoRA as the report runs it (issue 7).

    python scripts/bench_train_fast.py kernel MODEL_DIR [VARIANT ...]   # seed shape, one process, variants in turn
    python scripts/bench_train_fast.py attention                         # packed short examples: varlen vs SDPA mask
    python scripts/bench_train_fast.py workload MODEL_DIR N PACKED_LEN ACCUM   # seed_recipe.py's mix, papertune's trainer
    python scripts/bench_train_fast.py profile MODEL_DIR N PACKED_LEN    # plain loop vs trainer, same packed rows
    python scripts/bench_train_fast.py gradcheck MODEL_DIR               # LoRA gradients: eager vs torch.compile

MODEL_DIR is the Qwen2.5-3B-shaped random-weight model of ../shared/gpu/qlora_anchor.py (``build``).
The model is loaded through papertune's loader (hf backend, LoRA r=16 on all 7 linear layers) twice: in
4-bit NF4 as QLoRA runs it, then with ``train.dequantize_base``; the same seed gives both the same LoRA
initialisation. Every variant starts from those LoRA weights and a fresh AdamW, trains on the same random
token rows (2,048 tokens each) under bf16 autocast like the Trainer, with an optimizer step per
micro-batch, and reports tokens/s (median of the timed steps), MFU, peak GiB and the loss of every step:
variants with the same micro-batch see the same rows, so their losses compare step by step with the NF4
reference. One ``RESULT {json}`` line per variant, then a table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SEQ = 2048
WARM, STEPS = 2, 6
PEAK_TFLOPS = 790.0  # the card's measured bf16 matmul rate (../shared/gpu/README.md)

# name: (dequantized base, gradient checkpointing, sequences of 2048 per micro-batch, layout, loss, compile)
VARIANTS = {
    "nf4-gc-b2": (False, True, 2, "rows", "model", False),
    "nf4-nogc-b2": (False, False, 2, "rows", "model", False),
    "deq-gc-b2": (True, True, 2, "rows", "model", False),
    "deq-nogc-b2": (True, False, 2, "rows", "model", False),
    "deq-nogc-b2-flce": (True, False, 2, "rows", "liger", False),
    "deq-nogc-b4-flce": (True, False, 4, "rows", "liger", False),
    "deq-nogc-b8-flce": (True, False, 8, "rows", "liger", False),
    "deq-nogc-flat8-varlen-flce": (True, False, 8, "flat", "liger", False),
    "deq-nogc-b8-flce-compile": (True, False, 8, "rows", "liger", True),
}


def _flops_per_token(config, seq: int, gc: bool) -> float:
    """Training FLOPs per token with frozen base weights: forward 2N, backward 2N (input gradients only),
    causal attention, plus a recomputed forward under checkpointing (the README's 13.5 / 20 GFLOP)."""
    layers, hidden, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    per_layer = 2 * (hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * inter)
    lm_head = 2 * hidden * config.vocab_size
    forward = layers * per_layer + lm_head + layers * 2 * seq * hidden  # causal attention, fwd
    # Backward with frozen weights: input gradients only (1x forward), LoRA's own weight gradients are small.
    return forward * (2 + (1 if gc else 0))


def kernel(model_dir: str, names: list[str]) -> None:
    import torch
    from transformers import set_seed

    from papertune.config import TrainConfig
    from papertune.train.model import load_for_training

    results = []
    for deq in (False, True):
        group = [n for n in names if VARIANTS[n][0] == deq]
        if not group:
            continue
        # papertune's loader, as `papertune train` uses it; the same seed gives the same LoRA initialisation.
        cfg = TrainConfig(model=model_dir, backend="hf", load_in_4bit=True, max_seq_length=SEQ, lora_r=16,
                          lora_alpha=16, lora_dropout=0.0, gradient_checkpointing=True, dequantize_base=deq,
                          packing=deq, per_device_train_batch_size=2)
        set_seed(3407)
        t0 = time.time()
        model, _ = load_for_training(cfg, "hf")
        print(f"loaded (dequantize_base={deq}) in {time.time() - t0:.1f} s, "
              f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
        results += _run_variants(model, group)
        del model
        torch.cuda.empty_cache()
    _table(results)


def _run_variants(model, names: list[str]) -> list[dict]:
    import torch

    inner = model.base_model.model  # the *ForCausalLM under PEFT
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 150000, (16, SEQ), generator=gen).cuda()
    results = []
    for name in names:
        _, gc, seqs, layout, loss_kind, compile_ = VARIANTS[name]
        try:
            with torch.no_grad():
                for n_, p in model.named_parameters():
                    if n_ in lora:
                        p.copy_(lora[n_])
            if gc:
                inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                inner.enable_input_require_grads()
            else:
                inner.gradient_checkpointing_disable()
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
            step_fn = _make_step(model, inner, loss_kind, layout, compile_)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            times, losses = [], []
            for i in range(WARM + STEPS):
                rows = torch.cat([pool[(i * seqs + j) % 16][None] for j in range(seqs)])
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):  # as the Trainer runs with bf16=True
                    loss = step_fn(rows)
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                losses.append(round(float(loss), 4))
                if i >= WARM:
                    times.append(time.perf_counter() - t)
            med = statistics.median(times)
            tok_s = seqs * SEQ / med
            flops = _flops_per_token(inner.config, SEQ, gc)
            row = dict(mode=name, attn=inner.config._attn_implementation, tokens_per_micro_batch=seqs * SEQ,
                       tokens_per_s=round(tok_s), mfu=round(tok_s * flops / (PEAK_TFLOPS * 1e12), 3),
                       peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), losses=losses,
                       gpu=torch.cuda.get_device_name())
            print("RESULT", json.dumps(row), flush=True)
            results.append(row)
        except Exception:  # one failing variant must not hide the others' numbers
            traceback.print_exc()
            print(f"FAILED {name}", flush=True)
            torch.cuda.empty_cache()
    return results


def _make_step(model, inner, loss_kind: str, layout: str, compile_: bool):
    import torch

    flce = None
    if loss_kind == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(reduction="mean")
    if compile_:
        for layer in inner.model.layers:
            layer.compile(dynamic=False)

    def step(rows):
        kwargs = {}
        if layout == "flat":
            n, length = rows.shape
            ids = rows.reshape(1, -1)
            labels = ids.clone()
            labels[0, ::length] = -100  # the first token of each sequence is not predicted from the previous one
            positions = torch.arange(length, device=rows.device).repeat(n)[None]
            cu = torch.arange(0, n * length + 1, length, dtype=torch.int32)
            kwargs = dict(position_ids=positions, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=length,
                          max_length_k=length)
        else:
            ids, labels = rows, rows
        if flce is None:
            loss = model(input_ids=ids, labels=labels, use_cache=False, **kwargs).loss
        else:
            hidden = inner.model(input_ids=ids, use_cache=False, **kwargs).last_hidden_state
            h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
            loss = flce(inner.lm_head.weight, h, labels[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach()

    return step


def attention() -> None:
    """Packed rows of short examples (the Q&A length mix): varlen flash attention vs SDPA with the
    block-diagonal mask transformers builds from restarting positions; also checks they agree."""
    import random

    import torch
    import torch.nn.functional as F

    from bench_train_gpu import seed_length
    from papertune.train import fast

    rng = random.Random(3407)
    heads, kv_heads, dim = 16, 2, 128
    for total in (8192, 16384):
        lengths = []
        while sum(lengths) < total:
            lengths.append(seed_length(rng))
        lengths[-1] -= sum(lengths) - total
        cu = torch.tensor([0] + list(__import__("itertools").accumulate(lengths)), dtype=torch.int32)
        q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).cuda()
        idx = torch.arange(total, device="cuda")
        mask = (doc[:, None] == doc[None, :]) & (idx[:, None] >= idx[None, :])

        class M:
            is_causal = True
            num_key_value_groups = heads // kv_heads
            training = True

        def run_varlen():
            out, _ = fast.papertune_varlen_attention(M(), q, k, v, None, scaling=dim ** -0.5, cu_seq_lens_q=cu,
                                                      max_length_q=max(lengths))
            return out

        def run_sdpa():
            kk = k.repeat_interleave(heads // kv_heads, dim=1)
            vv = v.repeat_interleave(heads // kv_heads, dim=1)
            return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask[None, None]).transpose(1, 2)

        a, b = run_varlen(), run_sdpa()
        diff = (a.float() - b.float()).abs().max().item()
        timings = {}
        for label, fn in (("varlen", run_varlen), ("sdpa_mask", run_sdpa)):
            for _ in range(3):
                fn().sum().backward()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                fn().sum().backward()
            torch.cuda.synchronize()
            timings[label] = (time.perf_counter() - t) / 10
        print("RESULT", json.dumps(dict(mode=f"attention fwd+bwd, {total} tokens in {len(lengths)} examples",
                                        varlen_ms=round(timings["varlen"] * 1e3, 2),
                                        sdpa_mask_ms=round(timings["sdpa_mask"] * 1e3, 2),
                                        speedup=round(timings["sdpa_mask"] / timings["varlen"], 2),
                                        max_abs_diff=round(diff, 4))), flush=True)


def _seed_mix(n: int) -> tuple[list[int], list[dict]]:
    """The lengths and random ids of ../shared/gpu/seed_recipe.py's Q&A mix (same generator, same order)."""
    import random

    from bench_train_gpu import seed_length

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
    from papertune.pipeline import profile_path
    from papertune.train.model import load_for_training
    from papertune.train.stage import _sft_config, build_trainer

    lengths, rows = _seed_mix(n)
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
    args = _sft_config(cfg, Path(tempfile.mkdtemp()), torch.cuda.is_available(), True)
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

    from bench_train_gpu import step_clock
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

    from bench_train_gpu import step_clock

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


def gradcheck(model_dir: str) -> None:
    """LoRA gradients of one micro-batch on the dequantized model: bf16 eager, bf16 with torch.compile'd
    decoder layers, and a float32 reference; which bf16 one is off, and by how much."""
    import torch
    from transformers import set_seed

    from papertune.config import TrainConfig
    from papertune.train.model import load_for_training

    cfg = TrainConfig(model=model_dir, backend="hf", load_in_4bit=True, max_seq_length=SEQ, lora_r=16, lora_alpha=16,
                      lora_dropout=0.0, gradient_checkpointing=False, dequantize_base=True)
    set_seed(3407)
    model, _ = load_for_training(cfg, "hf")
    inner = model.base_model.model
    with torch.no_grad():  # non-zero B, as after some training, so that A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    rows = torch.randint(0, 150000, (2, SEQ), generator=torch.Generator().manual_seed(1)).cuda()

    def grads(amp: bool) -> tuple[float, dict]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=rows, labels=rows, use_cache=False).loss
        loss.backward()
        return float(loss), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def rel(a: dict, b: dict) -> float:
        return float(sum(((a[k] - b[k]) ** 2).sum() for k in a) / sum((b[k] ** 2).sum() for k in b)) ** 0.5

    # Reference: the same step in float32 (the frozen bf16 weights cast up exactly, no autocast), to tell
    # which of eager and compiled bf16 is closer to the exact gradient.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.data = p.data.float()
    loss_fp32, exact = grads(False)
    for p in frozen:
        p.data = p.data.to(torch.bfloat16)  # exact: these values came from bf16
    loss_eager, eager = grads(True)
    loss_eager2, eager2 = grads(True)
    from papertune.train.fast import compile_decoder_layers

    compile_decoder_layers(model)  # as train.torch_compile does it
    loss_compiled, compiled = grads(True)
    loss_compiled2, compiled2 = grads(True)
    print("RESULT", json.dumps(dict(mode="gradcheck", loss_fp32=loss_fp32, loss_eager=loss_eager,
                                    loss_compiled=loss_compiled,
                                    rel_eager_vs_fp32=rel(eager, exact), rel_compiled_vs_fp32=rel(compiled, exact),
                                    rel_eager_vs_eager_again=rel(eager2, eager),
                                    rel_compiled_vs_eager=rel(compiled, eager),
                                    rel_compiled_vs_compiled_again=rel(compiled2, compiled),
                                    grad_norm_eager=float(sum((g ** 2).sum() for g in eager.values()) ** 0.5),
                                    grad_norm_compiled=float(sum((g ** 2).sum() for g in compiled.values()) ** 0.5),
                                    missing_in_compiled=[k for k in eager if k not in compiled][:3])), flush=True)


def _table(rows: list[dict]) -> None:
    from bench_train_gpu import markdown_table

    markdown_table(rows, {"variant": "mode", "attention": "attn", "tokens/micro-batch": "tokens_per_micro_batch",
                          "tokens/s": "tokens_per_s", "MFU": "mfu", "peak GiB": "peak_gib",
                          "losses": lambda r: " ".join(map(str, r["losses"]))})


if __name__ == "__main__":
    import logging

    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("papertune").setLevel(logging.INFO)  # the fast path's plan (dequantize, checkpointing)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train_gpu's helpers
    command, *rest = sys.argv[1:]
    if command == "kernel":
        kernel(rest[0], rest[1:] or list(VARIANTS))
    elif command == "attention":
        attention()
    elif command == "workload":
        workload(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    elif command == "profile":
        profile(rest[0], int(rest[1]), int(rest[2]))
    elif command == "gradcheck":
        gradcheck(rest[0])
    else:
        sys.exit(__doc__)

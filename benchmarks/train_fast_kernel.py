"""Kernel-level speed of papertune's fast GPU path at the seed shape (batch 2 x 2048 tokens, LoRA r=16 on all
7 linear layers) against QLoRA as the report runs it, and the checks behind its choices.

    python benchmarks/train_fast_kernel.py kernel MODEL_DIR [VARIANT ...]   # seed shape, one process, variants in turn
    python benchmarks/train_fast_kernel.py attention                         # packed short examples: varlen vs SDPA mask
    python benchmarks/train_fast_kernel.py gradcheck MODEL_DIR               # LoRA gradients: eager vs torch.compile

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

    from train_seed_mix import seed_length
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
    from results import markdown_table

    markdown_table(rows, {"variant": "mode", "attention": "attn", "tokens/micro-batch": "tokens_per_micro_batch",
                          "tokens/s": "tokens_per_s", "MFU": "mfu", "peak GiB": "peak_gib",
                          "losses": lambda r: " ".join(map(str, r["losses"]))})


if __name__ == "__main__":
    import logging

    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("papertune").setLevel(logging.INFO)  # the fast path's plan (dequantize, checkpointing)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    command, *rest = sys.argv[1:] or [""]
    if command == "kernel":
        kernel(rest[0], rest[1:] or list(VARIANTS))
    elif command == "attention":
        attention()
    elif command == "gradcheck":
        gradcheck(rest[0])
    else:
        sys.exit(__doc__)

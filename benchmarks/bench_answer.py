"""Benchmark answer generation for evaluation: ``evaluate.generate_answers`` batched vs one at a time.

    python benchmarks/bench_answer.py                                    # SmolLM2-135M-Instruct on the CPU
    python benchmarks/bench_answer.py --model /path/to/qwen2.5-3b-shaped --device cuda --batch-size 16 --questions 64

The same --questions questions are answered greedily with the training prompt (chat template and
build.system_prompt), as ``papertune evaluate`` does, once with --batch-size B (left padding) and once
with batch size 1, after a short warm-up. Answer tokens are the tokens each question really got (up to
and including its end-of-turn token), not the padding a finished row carries while its batch goes on;
a random-weight model never ends early, so every question gets --max-new-tokens. The last line says
whether both ways gave the same answers (greedy: they should, up to floating-point ties in low
precision). The model is anything a papertune model setting takes: a folder, a .gguf file,
python-package:MODULE/FILE; it needs a chat template.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_answer")

TOPICS = ["LoRA", "QLoRA", "NF4 quantization", "mixture of experts", "attention heads", "layer normalization",
          "the KV cache", "speculative decoding", "RLHF", "DPO", "gradient checkpointing", "FlashAttention",
          "rotary position embeddings", "instruction tuning", "knowledge distillation", "beam search"]
FORMS = ["What is {}?", "Why does {} matter for large language models?", "How does {} work, in short?",
         "What are the main drawbacks of {}?", "Which paper introduced {}, and what problem did it solve?"]


def questions(n: int) -> list[str]:
    pool = [form.format(topic) for form in FORMS for topic in TOPICS]
    return [pool[i % len(pool)] for i in range(n)]


class TokenCounter:
    """Wraps ``model.generate`` to count the tokens each row really generated (up to its EOS)."""

    def __init__(self, model, eos_id: int | None) -> None:
        self.generate = model.generate
        self.eos_id = eos_id
        self.tokens = 0
        model.generate = self

    def __call__(self, *args, **kwargs):
        output = self.generate(*args, **kwargs)
        width = kwargs["input_ids"].shape[1]
        for row in output[:, width:].tolist():
            self.tokens += row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
        return output


def main() -> None:
    from papertune.config import SMOLLM2_PACKAGED, BuildConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2_PACKAGED, help="the model (default: the CPU profile's)")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; use fewer on a busy machine)")
    parser.add_argument("--skip-unbatched", action="store_true", help="measure only the batched run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch

    from papertune.evaluate import generate_answers
    from papertune.models import load_causal_lm
    from papertune.train.model import fix_pad_token

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    log.info("loading %s on %s (%s)", args.model, device, dtype)
    model, tokenizer = load_causal_lm(args.model, setting="--model", device=device, dtype=getattr(torch, dtype))
    fix_pad_token(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{args.model} has no chat template; use an instruct model folder")
    counter = TokenCounter(model, tokenizer.eos_token_id)
    system_prompt = BuildConfig().system_prompt
    qs = questions(args.questions)
    generate_answers(model, tokenizer, qs[:2], system_prompt, batch_size=2, max_new_tokens=4, desc="warm-up")

    def timed(batch_size: int) -> tuple[float, int, list[str]]:
        counter.tokens = 0
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        answers = generate_answers(model, tokenizer, qs, system_prompt, batch_size=batch_size,
                                   max_new_tokens=args.max_new_tokens, desc=f"batch {batch_size}")
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, counter.tokens, answers

    runs = [("batched", args.batch_size, *timed(args.batch_size))]
    if not args.skip_unbatched:
        runs.append(("one at a time", 1, *timed(1)))
    hardware = (torch.cuda.get_device_name() if device == "cuda"
                else f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores")
    lines = [
        f"answer generation benchmark: {args.model} ({dtype}, {hardware}); {len(qs)} questions, greedy, "
        f"max_new_tokens {args.max_new_tokens}",
        "",
        "| mode | batch size | questions | seconds | questions/s | answer tokens | answer tokens/s | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    slowest = max(seconds for _, _, seconds, _, _ in runs)
    for mode, batch_size, seconds, tokens, _ in runs:
        lines.append(f"| {mode} | {batch_size} | {len(qs)} | {seconds:.2f} | {len(qs) / seconds:.2f} | {tokens} | "
                     f"{tokens / seconds:.1f} | {slowest / seconds:.2f}x |")
    if len(runs) == 2:
        same = sum(a == b for a, b in zip(runs[0][4], runs[1][4]))
        lines += ["", f"same answers batched and one at a time: {same}/{len(qs)}"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

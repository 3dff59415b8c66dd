"""vLLM on one GPU against one replica per GPU (``generate.llm.replicas``), the same prompts, one run.

    python benchmarks/bench_replicas.py --model MODEL --chunks RUN/chunks.jsonl [--gpus 1,2] [--copies 8]
        [--max-new-tokens 384] [--memory-share 0.5] [--json OUT.json]

The prompts are the generate stage's (benchmarks/bench_engine.py builds them, papertune.generate.llm's
prompt in the model's chat template) for every chunk, ``--copies`` times: copy r of a chunk has its first r
sentences moved to its end, so every prompt is distinct (vLLM's prefix cache shares only what the real
prompts share: the system prompt) and a corpus of a few hundred chunks stands for one of a few thousand.
For each GPU count, :class:`papertune.inference.vllm_engine.VLLMReplicas` loads one engine per GPU (each in
a process of its own, as ``papertune generate`` does with ``replicas``), then answers every prompt greedily,
unconstrained and then held to the reply's JSON schema (as the teacher's replies are). Load time is
timed apart. Columns: prompts/s, output tokens/s, the speed-up over one GPU, and greedy agreement with one
GPU's replies (first 50 tokens).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import agreement, load_chunks, prompts_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def rotated(chunks: list[dict[str, Any]], copies: int) -> list[dict[str, Any]]:
    """Each chunk ``copies`` times; copy r with its first r sentences moved to the end (the same words, another
    prompt)."""
    out = []
    for r in range(copies):
        for chunk in chunks:
            sentences = re.split(r"(?<=[.!?])\s+", chunk["text"].strip())
            k = r % max(len(sentences), 1)
            out.append({**chunk, "text": " ".join(sentences[k:] + sentences[:k])})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="papertune model setting: folder, .gguf, Hub id, ...")
    parser.add_argument("--chunks", type=Path, required=True, help="RUN/chunks.jsonl")
    parser.add_argument("--gpus", default="1,2", help="comma-separated GPU counts, e.g. 1,2")
    parser.add_argument("--copies", type=int, default=8, help="each chunk this many times, rotated")
    parser.add_argument("--limit", type=int, default=0, help="first N chunks (0: all)")
    parser.add_argument("--pairs-per-chunk", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--memory-share", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from papertune.generate.prompt import reply_schema
    from papertune.inference import Decoding
    from papertune.inference.vllm_engine import VLLMReplicas
    from papertune.models import resolve_model

    counts = sorted({int(g) for g in args.gpus.split(",")})
    if max(counts) > torch.cuda.device_count():
        parser.error(f"--gpus {args.gpus}: torch sees {torch.cuda.device_count()} GPU(s)")
    path = resolve_model(args.model, "--model")  # a .gguf converted once, before any replica starts
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = prompts_for(rotated(load_chunks(args.chunks, args.limit), args.copies), tokenizer,
                          args.pairs_per_chunk)
    lengths = sorted(len(p) for p in prompts)
    longest = lengths[-1] + args.max_new_tokens + 16
    print(f"{len(prompts)} prompts ({args.copies} copies), {lengths[0]}-{lengths[-1]} tokens (median "
          f"{lengths[len(lengths) // 2]}), at most {args.max_new_tokens} new tokens, greedy", flush=True)
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    schema = reply_schema(args.pairs_per_chunk)
    rows: list[dict[str, Any]] = []
    reference: dict[str, list[Any]] = {}
    for count in counts:
        started = time.perf_counter()
        engine = VLLMReplicas(path, devices=[str(i) for i in range(count)], setting="--model",
                              memory_share=args.memory_share, max_model_len=longest)
        load_s = time.perf_counter() - started
        for name, json_schema in (("plain", None), ("schema", schema)):
            started = time.perf_counter()
            answers = engine.generate(prompts, decoding, json_schema=json_schema)
            seconds = time.perf_counter() - started
            tokens = sum(a.completion_tokens for a in answers)
            reference.setdefault(name, answers)
            one = next((r for r in rows if r["gpus"] == counts[0] and r["replies"] == name), None)
            rows.append({"gpus": count, "replies": name, "load_s": load_s, "seconds": seconds,
                         "prompts_per_s": len(prompts) / seconds, "output_tokens": tokens,
                         "output_tokens_per_s": tokens / seconds,
                         "speedup": one["seconds"] / seconds if one else 1.0,
                         "agreement": agreement(answers, reference[name])})
            print(table(rows), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
        engine.release()
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| GPUs | replies | load s | s | prompts/s | output tokens/s | speed-up | agreement with 1 GPU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gpus']} | {r['replies']} | {r['load_s']:.1f} | {r['seconds']:.1f} | "
                     f"{r['prompts_per_s']:.1f} | {r['output_tokens_per_s']:,.0f} | {r['speedup']:.2f}x | "
                     f"{r['agreement']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

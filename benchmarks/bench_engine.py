"""Benchmark the in-process generation engines on the generate stage's real prompts, side by side in one run.

    python benchmarks/bench_engine.py --model MODEL --chunks RUN/chunks.jsonl [--limit N] [--max-new-tokens 384]
        [--static-batch 64] [--baseline-batch 16] [--agreement-prompts 64] [--gpus 1,2] [--schema]
        [--max-batch-tokens 0] [--num-blocks 0] [--compile-level 0] [--vllm] [--json OUT.json]
    python benchmarks/bench_engine.py --smoke      # a tiny random model on the CPU, a few synthetic chunks

MODEL is any papertune model setting (a folder, a .gguf file, python-package:..., a Hub id). Every prompt is
the one ``papertune generate``'s llm generator sends for that chunk (papertune.generate.llm), in the model's
chat template; greedy, at most --max-new-tokens new tokens. Rows, each timed from the first request to the
last answer:

- ``static-B``: today's hf path, prompts sorted by length in left-padded batches of B (--static-batch,
  --also-static);
- ``compiled-B``: the compiled engine: static batches of B over one static KV cache, the decoding step
  compiled by torch.compile into CUDA graphs (--compiled-batch; compilation included in its time);
- ``continuous``: transformers' continuous batching through papertune.inference (CUDA graph warm-up included);
- ``continuous xK``: one model per GPU, the prompts shared out (--gpus, values above 1);
- ``continuous [K=V,...]``: the same with other engine settings (--variant, repeatable: fields of
  papertune.inference.ContinuousSettings, e.g. ``cuda_graphs=true,max_batch_tokens=8192`` or ``compile_level=1``);
- ``static-B + schema``: static batches constrained to the reply's JSON schema (--schema, needs xgrammar).
- ``vllm`` and ``vllm + schema`` (the reply's JSON schema): vLLM in this process (--vllm, papertune.inference.vllm_engine)
  on the same token ids, all prompts handed over at once; its load and CUDA-graph capture are timed apart.

Columns: chunks/s, output tokens/s (tokens generated, end-of-turn included), peak GPU memory (allocated by
torch, summed over GPUs), seconds to the first finished answer, and greedy agreement: the share of prompts
whose first 50 generated tokens equal static-B's. The baseline agreement (static-B against static-b,
--baseline-batch, on the first --agreement-prompts prompts) shows how much plain ``generate`` itself
disagrees with itself across batch sizes; the continuous rows are compared with it on the same prompts
and on all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

AGREEMENT_TOKENS = 50
SMOKE_TEXTS = [
    "Low-rank adaptation freezes the pretrained weights and trains two small matrices per layer. The update is "
    "their product, so the number of trained parameters falls by orders of magnitude. Quantizing the frozen "
    "weights to four bits cuts the memory again, which lets a 3B model train on one consumer GPU.",
    "Retrieval-augmented generation fetches passages from an index and puts them in the prompt. Dense retrievers "
    "embed queries and passages in one space; BM25 matches words. Hybrid retrieval combines both rankings.",
    "Continuous batching adds a request to the running batch as soon as another one finishes, so the GPU never "
    "waits for the longest answer. A paged key-value cache stores each sequence in fixed-size blocks.",
]


def load_chunks(path: Path | None, limit: int) -> list[dict[str, Any]]:
    if path is None:
        chunks = [{"id": f"smoke-{i}", "text": SMOKE_TEXTS[i % len(SMOKE_TEXTS)] + f" (Note {i}.)",
                   "title": "Smoke test", "section": f"Part {i}"} for i in range(limit or 6)]
        return chunks
    chunks = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return chunks[:limit] if limit else chunks


def prompts_for(chunks: list[dict[str, Any]], tokenizer: Any, pairs_per_chunk: int) -> list[list[int]]:
    from papertune.generate.llm import pairs_to_ask
    from papertune.generate.prompt import build_conversation

    prompts = []
    for chunk in chunks:
        n = pairs_to_ask(chunk["text"], pairs_per_chunk)
        conversation = build_conversation(chunk["text"], n, chunk.get("title"), chunk.get("section"))
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        prompts.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return prompts


def smoke_model(folder: Path) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights (untied, so it talks)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from papertune.config import SMOLLM2_PACKAGED
    from papertune.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2_PACKAGED))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=2048, tie_word_embeddings=False)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_models(spec: str, devices: list[str], dtype: str) -> list[tuple[Any, Any]]:
    import torch

    from papertune.models import load_causal_lm

    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    models = []
    for device in devices:
        started = time.perf_counter()
        models.append(load_causal_lm(spec, setting="--model", device=device, dtype=torch_dtype))
        print(f"loaded {spec} on {device} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return models


def reset_peak(devices: list[str]) -> None:
    import torch

    for device in devices:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)


def peak_gib(devices: list[str]) -> float | None:
    import torch

    if not any(d.startswith("cuda") for d in devices):
        return None
    return sum(torch.cuda.max_memory_allocated(d) for d in devices if d.startswith("cuda")) / 2**30


def run_static(model: Any, tokenizer: Any, prompts: list[list[int]], batch: int, max_new_tokens: int,
               eos: Any, schema: dict[str, Any] | None = None) -> tuple[list[Any], float, float]:
    """generate()'s static path, batch by batch (longest prompts first), timing the first finished batch."""
    from papertune.inference import Decoding, GenerationRequest, generate_batch

    decoding = Decoding(max_new_tokens=max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[Any] = [None] * len(prompts)
    started = time.perf_counter()
    first = None
    for start in range(0, len(order), batch):
        index = order[start:start + batch]
        done = generate_batch(model, tokenizer, [GenerationRequest(prompts[i], decoding, json_schema=schema)
                                                 for i in index], eos_token_id=eos)
        for i, completion in zip(index, done):
            results[i] = completion
        first = first if first is not None else time.perf_counter() - started
    return results, time.perf_counter() - started, first or 0.0


def run_compiled(model: Any, tokenizer: Any, prompts: list[list[int]], batch: int, max_new_tokens: int,
                 eos: Any) -> tuple[list[Any], float, None]:
    """generate()'s compiled engine (static batches of ``batch`` over one static KV cache, compiled on a GPU),
    compilation included."""
    from papertune.inference import Decoding, generate

    started = time.perf_counter()
    results = generate(model, tokenizer, prompts, Decoding(max_new_tokens=max_new_tokens), batch_size=batch,
                       eos_token_id=eos, engine="compiled")
    return results, time.perf_counter() - started, None


def run_continuous(models: list[tuple[Any, Any]], prompts: list[list[int]], max_new_tokens: int, eos: Any,
                   settings: Any) -> tuple[list[Any], float, float]:
    """Continuous batching on each model (one per GPU), prompts shared out round-robin, in parallel threads."""
    from papertune.inference import Decoding, GenerationRequest, generate_continuous

    decoding = Decoding(max_new_tokens=max_new_tokens)
    n = len(models)
    results: list[Any] = [None] * len(prompts)
    first: list[float] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def work(k: int) -> None:
        model, tokenizer = models[k]
        index = list(range(k, len(prompts), n))

        def done(position: int, completion: Any) -> None:
            with lock:
                if not first:
                    first.append(time.perf_counter() - started)

        answers = generate_continuous(model, tokenizer, [GenerationRequest(prompts[i], decoding) for i in index],
                                      eos_token_id=eos, settings=settings, on_done=done)
        for i, completion in zip(index, answers):
            results[i] = completion

    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"continuous x{n} failed: {errors[0]!r}") from errors[0]
    return results, time.perf_counter() - started, first[0] if first else 0.0


def run_vllm(engine: Any, prompts: list[list[int]], max_new_tokens: int,
             schema: dict[str, Any] | None = None) -> tuple[list[Any], float, None]:
    """vLLM's continuous batching on every prompt at once (the engine loaded before the clock starts)."""
    from papertune.inference import Decoding

    started = time.perf_counter()
    results = engine.generate(prompts, Decoding(max_new_tokens=max_new_tokens), json_schema=schema)
    return results, time.perf_counter() - started, None


def variant_settings(base: Any, variant: str) -> Any:
    """``base`` (ContinuousSettings) with the comma-separated KEY=VALUE fields of ``variant`` replaced."""
    import dataclasses

    import yaml

    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for pair in filter(None, (p.strip() for p in variant.split(","))):
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"--variant {variant!r}: {key!r} is not one of {', '.join(fields)}")
        changes[key] = yaml.safe_load(value)
    return dataclasses.replace(base, **changes)


def agreement(a: list[Any], b: list[Any], count: int | None = None) -> float:
    pairs = list(zip(a, b))[:count]
    same = sum(x.token_ids[:AGREEMENT_TOKENS] == y.token_ids[:AGREEMENT_TOKENS] for x, y in pairs)
    return same / max(len(pairs), 1)


def row(name: str, results: list[Any], seconds: float, first: float | None, peak: float | None, n_chunks: int,
        reference: list[Any] | None, subset: int) -> dict[str, Any]:
    tokens = sum(c.completion_tokens for c in results)
    return {"engine": name, "seconds": seconds, "chunks_per_s": n_chunks / seconds, "output_tokens": tokens,
            "output_tokens_per_s": tokens / seconds, "peak_gib": peak, "first_answer_s": first,
            "agree_all": agreement(results, reference) if reference is not None else None,
            "agree_subset": agreement(results, reference, subset) if reference is not None else None}


def table(rows: list[dict[str, Any]], subset: int) -> str:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"| engine | s | chunks/s | output tokens/s | peak GPU GiB | first answer s | agreement "
             f"(first {AGREEMENT_TOKENS} tokens), all | on the first {subset} |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['seconds']:.1f} | {r['chunks_per_s']:.2f} | {r['output_tokens_per_s']:,.0f} "
                     f"| {fmt(r['peak_gib'], '.1f')} | {fmt(r['first_answer_s'], '.1f')} | {fmt(r['agree_all'], '.0%')} "
                     f"| {fmt(r['agree_subset'], '.0%')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="papertune model setting: folder, .gguf, python-package:..., Hub id")
    parser.add_argument("--chunks", type=Path, help="RUN/chunks.jsonl (papertune ingest writes it)")
    parser.add_argument("--limit", type=int, default=0, help="first N chunks (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--pairs-per-chunk", type=int, default=3)
    parser.add_argument("--static-batch", type=int, default=64)
    parser.add_argument("--baseline-batch", type=int, default=16)
    parser.add_argument("--agreement-prompts", type=int, default=64, help="prompts the baseline agreement runs on")
    parser.add_argument("--gpus", default="1", help="comma-separated GPU counts for the continuous rows, e.g. 1,2")
    parser.add_argument("--schema", action="store_true", help="add static batches constrained to the JSON schema")
    parser.add_argument("--max-batch-tokens", type=int, default=0)
    parser.add_argument("--num-blocks", type=int, default=0)
    parser.add_argument("--compile-level", type=int, default=0)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--variant", action="append", default=[],
                        help="another continuous row with these ContinuousSettings, e.g. cuda_graphs=true,page_size=64")
    parser.add_argument("--compiled-batch", type=int, action="append", default=[],
                        help="a row for the compiled engine with batches of N (repeatable)")
    parser.add_argument("--also-static", type=int, action="append", default=[],
                        help="a row for static batches of N besides --static-batch (repeatable)")
    parser.add_argument("--no-continuous", action="store_true", help="no continuous rows but the --variant ones")
    parser.add_argument("--vllm", action="store_true", help="add vLLM rows (vLLM in this process, a GPU)")
    parser.add_argument("--vllm-memory-share", type=float, default=0.5, help="GPU memory share vLLM reserves")
    parser.add_argument("--dtype", default=None, help="torch dtype (default bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, synthetic chunks, CPU")
    args = parser.parse_args(argv)

    import torch

    from papertune.generate.prompt import reply_schema
    from papertune.inference import ContinuousSettings

    cuda = torch.cuda.is_available() and not args.smoke
    if args.smoke:
        args.model = args.model or str(smoke_model(Path(tempfile.mkdtemp(prefix="bench-engine-")) / "tiny"))
        args.limit = args.limit or 6
        args.max_new_tokens = min(args.max_new_tokens, 24)
        args.static_batch, args.baseline_batch = min(args.static_batch, 4), min(args.baseline_batch, 2)
    elif not args.model or not args.chunks:
        parser.error("--model and --chunks are needed (or --smoke)")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    gpu_counts = sorted({int(g) for g in args.gpus.split(",")}) if cuda else [1]
    if cuda and max(gpu_counts) > torch.cuda.device_count():
        parser.error(f"--gpus {args.gpus}: torch sees {torch.cuda.device_count()} GPU(s)")
    devices = [f"cuda:{i}" for i in range(max(gpu_counts))] if cuda else ["cpu"]

    models = load_models(args.model, devices, dtype)
    model, tokenizer = models[0]
    eos = model.generation_config.eos_token_id
    chunks = load_chunks(None if args.smoke else args.chunks, args.limit)
    prompts = prompts_for(chunks, tokenizer, args.pairs_per_chunk)
    subset = min(args.agreement_prompts, len(prompts))
    settings = ContinuousSettings(max_batch_tokens=args.max_batch_tokens, num_blocks=args.num_blocks,
                                  compile_level=args.compile_level,
                                  cuda_graphs=False if args.no_cuda_graphs else None)
    lengths = sorted(len(p) for p in prompts)
    print(f"{len(prompts)} prompts, {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
          f"at most {args.max_new_tokens} new tokens, greedy, {dtype} on {', '.join(devices)}", flush=True)

    rows = []
    reset_peak(devices[:1])
    static, seconds, first = run_static(model, tokenizer, prompts, args.static_batch, args.max_new_tokens, eos)
    rows.append(row(f"static-{args.static_batch}", static, seconds, first, peak_gib(devices[:1]), len(prompts),
                    None, subset))
    reset_peak(devices[:1])
    baseline, seconds, first = run_static(model, tokenizer, prompts[:subset], args.baseline_batch,
                                          args.max_new_tokens, eos)
    base_row = row(f"static-{args.baseline_batch} (first {subset})", baseline, seconds, first,
                   peak_gib(devices[:1]), subset, static, subset)
    base_row["agree_all"] = None
    rows.append(base_row)

    def done_row(new: dict[str, Any]) -> None:  # the table so far, after each row: a time limit keeps what ran
        rows.append(new)
        print(table(rows, subset), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")

    print(table(rows, subset), flush=True)
    for batch in args.compiled_batch:
        reset_peak(devices[:1])
        answers, seconds, first = run_compiled(model, tokenizer, prompts, batch, args.max_new_tokens, eos)
        done_row(row(f"compiled-{batch}", answers, seconds, first, peak_gib(devices[:1]), len(prompts), static,
                     subset))
    for batch in args.also_static:
        reset_peak(devices[:1])
        answers, seconds, first = run_static(model, tokenizer, prompts, batch, args.max_new_tokens, eos)
        done_row(row(f"static-{batch}", answers, seconds, first, peak_gib(devices[:1]), len(prompts), static,
                     subset))
    for count in ([] if args.no_continuous else gpu_counts):
        reset_peak(devices[:count])
        answers, seconds, first = run_continuous(models[:count], prompts, args.max_new_tokens, eos, settings)
        name = "continuous" if count == 1 else f"continuous x{count}"
        done_row(row(name, answers, seconds, first, peak_gib(devices[:count]), len(prompts), static, subset))
    for variant in args.variant:
        reset_peak(devices[:1])
        answers, seconds, first = run_continuous(models[:1], prompts, args.max_new_tokens, eos,
                                                 variant_settings(settings, variant))
        done_row(row(f"continuous {variant}", answers, seconds, first, peak_gib(devices[:1]), len(prompts),
                     static, subset))
    if args.schema:
        reset_peak(devices[:1])
        constrained, seconds, first = run_static(model, tokenizer, prompts, args.static_batch, args.max_new_tokens,
                                                 eos, reply_schema(args.pairs_per_chunk))
        done_row(row(f"static-{args.static_batch} + schema", constrained, seconds, first, peak_gib(devices[:1]),
                     len(prompts), None, subset))
    if args.vllm:
        from papertune.inference.vllm_engine import VLLMEngine

        started = time.perf_counter()
        engine = VLLMEngine(args.model, setting="--model", memory_share=args.vllm_memory_share,
                            max_model_len=max(lengths) + args.max_new_tokens + 16)
        print(f"vLLM loaded (CUDA graphs captured) in {time.perf_counter() - started:.1f} s", flush=True)
        reserved = args.vllm_memory_share * torch.cuda.get_device_properties(0).total_memory / 2**30  # vLLM's own
        answers, seconds, first = run_vllm(engine, prompts, args.max_new_tokens)
        done_row(row("vllm (GiB: reserved)", answers, seconds, first, reserved, len(prompts), static, subset))
        answers, seconds, first = run_vllm(engine, prompts, args.max_new_tokens, reply_schema(args.pairs_per_chunk))
        done_row(row("vllm + schema", answers, seconds, first, reserved, len(prompts), None, subset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

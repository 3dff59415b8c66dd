"""Can curate's judge tell a planted wrong answer from a genuine one?

    python benchmarks/judge_planted.py RUN_DIR [--n 20] [--gguf FILE.gguf | --base-url URL --model NAME |
                                                --vllm MODEL]

Takes the kept pairs of a run (``RUN/qa_curated.jsonl`` and ``RUN/chunks.jsonl``) and plants N wrong
answers: a pair's answer is swapped for the answer of ANOTHER pair, from a different chunk of the SAME
document, chosen to share as many words with this pair's chunk as possible (a fluent, on-topic, wrong
answer: the kind curate's lexical support check lets through), but not one the chunk states itself (half
its words in runs of the chunk's: neighbouring chunks share a sentence, so such an answer is right). The N
pairs whose planted answer shares the most words with their chunk are used, and their N genuine originals.

Both sets go to the grounded judge (``papertune.curate.judge``, the settings of ``curate`` in the default
config, thresholds overridable with ``--set curate.KEY=VALUE``) and, for comparison, to a plain judge
asked "is this answer correct according to the passage?" (a JSON boolean). Prints planted dropped (x/N),
genuine kept (y/M) and reply tokens/s (counted with the Qwen2.5 BPE) for each.

``--gguf`` starts llama.cpp's server in this process (xllamacpp) on that file and talks to it as an
OpenAI-compatible server; ``--base-url`` uses a server already running; ``--vllm`` judges with vLLM in this
process (a GPU machine: the judge's settings of benchmarks/raft_gpu.yaml). Replies are greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from papertune.config import LLMConfig, load_config
from papertune.curate import overlap_support
from papertune.curate.judge import PairJudge, quote_match
from papertune.ingest.chunk import get_token_counter
from papertune.llm import make_chat_model
from papertune.rundir import CHUNKS, QA_CURATED, read_jsonl

STATED = 0.5  # a donor answer with this share of its words in runs of the chunk's words is stated by the chunk
PLAIN_SCHEMA = {"type": "object", "properties": {"correct": {"type": "boolean"}}, "required": ["correct"],
                "additionalProperties": False}


def plant(kept: list[dict[str, Any]], chunks: dict[str, str], n: int) -> list[tuple[dict, dict, float]]:
    """(genuine pair, planted pair, the planted answer's word overlap with the chunk), best overlap first."""
    chunk_source = {r["chunk_id"]: r["source"] for r in kept}
    candidates = []
    for pair in kept:
        chunk = chunks[pair["chunk_id"]]
        # Not an answer this chunk states itself (neighbouring chunks share a sentence): that one is no
        # wrong answer.
        donors = [q for q in kept if q["chunk_id"] != pair["chunk_id"]
                  and chunk_source[q["chunk_id"]] == pair["source"] and q["answer"] != pair["answer"]
                  and quote_match(q["answer"], chunk) < STATED]
        if not donors:
            continue
        # Most words shared with this chunk; ties go to the earlier donor (deterministic).
        donor = max(donors, key=lambda q: overlap_support(q["answer"], chunk))
        planted = {**pair, "id": pair["id"] + "::planted", "answer": donor["answer"]}
        candidates.append((pair, planted, overlap_support(donor["answer"], chunk)))
    candidates.sort(key=lambda c: -c[2])
    return candidates[:n]


def plain_judge(model: Any, pairs: list[dict[str, Any]], chunks: dict[str, str]) -> tuple[list[bool | None], float, int]:
    """The baseline: "is this answer correct?" per pair (None: unreadable), seconds, reply tokens."""
    conversations = [[
        {"role": "system", "content": "You check answers to questions about a passage of a machine-learning "
         "document. Reply with one JSON object: {\"correct\": true or false}."},
        {"role": "user", "content": f"Passage:\n<<<\n{chunks[p['chunk_id']]}\n>>>\n\nQuestion: {p['question']}\n"
         f"Answer: {p['answer']}\n\nIs this answer correct according to the passage? Reply with the JSON object only."},
    ] for p in pairs]
    started = time.perf_counter()
    replies = model.chat(conversations, json_schema=PLAIN_SCHEMA, max_new_tokens=16)
    seconds = time.perf_counter() - started
    verdicts: list[bool | None] = []
    for reply in replies:
        try:
            value = json.loads(reply).get("correct")
        except (json.JSONDecodeError, AttributeError):
            value = None
        verdicts.append(value if isinstance(value, bool) else None)
    return verdicts, seconds, sum(get_token_counter("qwen2.5")(replies))


def start_server(gguf: str, ctx: int, threads: int, parallel: int) -> tuple[Any, str]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_ctx = ctx * parallel  # llama.cpp splits the context among the slots
    params.n_parallel = parallel
    params.warmup = False
    params.verbosity = -1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)
    return server, server.listening_address.rstrip("/") + "/v1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=20, help="planted wrong answers")
    parser.add_argument("--genuine", type=int, help="genuine pairs judged: the originals of the first planted "
                        "ones (default: as many as planted)")
    parser.add_argument("--gguf", help="start llama.cpp's server on this GGUF file")
    parser.add_argument("--base-url", help="an OpenAI-compatible server already running (…/v1)")
    parser.add_argument("--model", default="judge", help="the model name the server knows")
    parser.add_argument("--vllm", help="judge with vLLM in this process on this model (GGUF file or folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="tokens per conversation")
    parser.add_argument("--parallel", type=int, default=4, help="conversations decoded at once (server slots)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="curate.KEY=VALUE")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain yes/no judge")
    parser.add_argument("--out", type=Path, help="write every pair's verdicts here (JSON lines)")
    parser.add_argument("--cache-dir", type=Path,
                        help="keep the judge's replies here (DIR/curate/judge_cache.jsonl): a rerun with other "
                             "thresholds judges nothing again; default: a fresh temporary folder")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.gguf, args.base_url, args.vllm))) != 1:
        parser.error("give one of --gguf FILE, --base-url URL or --vllm MODEL")

    chunks = {c["id"]: c["text"] for c in read_jsonl(args.run_dir / CHUNKS)}
    kept = list(read_jsonl(args.run_dir / QA_CURATED))
    trials = plant(kept, chunks, args.n)
    genuine, planted = [t[0] for t in trials][:args.genuine], [t[1] for t in trials]
    cfg = load_config(None, args.set).curate
    min_support = cfg.min_support
    lexical_pass = sum(t[2] >= min_support for t in trials)
    print(f"{len(kept)} kept pairs; {len(planted)} planted wrong answers, {lexical_pass} of them pass curate's "
          f"lexical support check (overlap >= {min_support:g})", flush=True)

    server = None
    base_url = args.base_url
    if args.gguf:
        server, base_url = start_server(args.gguf, args.ctx, args.threads, args.parallel)
    if args.vllm:
        cfg.judge = LLMConfig(backend="vllm", model=args.vllm, batch_size=1024, max_new_tokens=args.max_new_tokens,
                              context_length=4096, memory_share=0.5, constrain_json=True)
    else:
        cfg.judge = LLMConfig(backend="openai", model=args.model, base_url=base_url, concurrency=args.parallel,
                              timeout_s=900, max_new_tokens=args.max_new_tokens)
    model = make_chat_model(cfg.judge, "curate.judge")
    rows = genuine + planted
    with tempfile.TemporaryDirectory() as tmp:  # without --cache-dir, a fresh cache: every pair is judged
        judge = PairJudge(cfg, args.cache_dir or Path(tmp), model)
        verdicts = judge(rows, chunks)
    stats = judge.stats.report(cfg)
    n, m = len(planted), len(genuine)
    table = [("grounded judge", sum(not v.passed for v in verdicts[m:]), sum(v.passed for v in verdicts[:m]),
              stats["reply_tokens_per_s"], stats["unparseable"])]
    plain: list[bool | None] = []
    if not args.no_baseline:
        plain, seconds, tokens = plain_judge(model, rows, chunks)
        table.append(("plain 'correct?' judge", sum(v is not True for v in plain[m:]), sum(v is True for v in plain[:m]),
                      round(tokens / seconds, 1), sum(v is None for v in plain)))
    print(f"\n| judge ({args.gguf or args.vllm or args.model}) | planted dropped | genuine kept | reply tokens/s | unreadable |")
    print("|---|---|---|---|---|")
    for name, dropped, kept_n, tps, bad in table:
        print(f"| {name} | {dropped}/{n} | {kept_n}/{m} | {tps} | {bad} |")
    print("\ngrounded judge, failed checks:", json.dumps(stats["failed_checks"]))
    if args.out:
        with args.out.open("w", encoding="utf-8") as fh:
            for i, (row, verdict) in enumerate(zip(rows, verdicts)):
                fh.write(json.dumps({"kind": "genuine" if i < m else "planted", "id": row["id"], "question": row["question"],
                                     "answer": row["answer"], "detail": verdict.detail, "judge": verdict.record,
                                     "plain": plain[i] if plain else None}, ensure_ascii=False) + "\n")
    del server  # xllamacpp stops the server when the object is released
    return 0


if __name__ == "__main__":
    sys.exit(main())

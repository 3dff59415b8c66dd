"""Benchmark the teacher: the generate stage's llm generator with the llamacpp backend, 1 vs 2 slots.

    python benchmarks/bench_teacher.py --run-dir RUN [--chunks 5] [--model packaged:qwen2.5-coder-0.5b-instruct]
                                       [--slots 1,2] [--threads 0] [--max-new-tokens 384]

Takes the first --chunks chunks of RUN/chunks.jsonl (``papertune ingest DOCS --run-dir RUN`` writes it) and
runs the generate stage on them (generators: llm only) once per --slots value, each time in a fresh run
directory and with a fresh llama.cpp server on the GGUF file (started before the clock starts). Prints one
Markdown table: seconds, reply tokens per second (the replies tokenized by the model's own tokenizer, summed
over all slots), pairs kept per chunk, and replies that did not parse (0 with JSON-schema constrained replies).
Greedy decoding: the replies differ between settings only where batching moves floating-point ties.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class CountingChat:
    """A chat model that keeps every reply, to count the tokens the teacher wrote."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = model.name
        self.replies: list[str] = []

    def chat(self, conversations: Any, **options: Any) -> list[str]:
        replies = self.model.chat(conversations, **options)
        self.replies += replies
        return replies


def measure(chunk_lines: list[str], slots: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from papertune import generate
    from papertune.config import load_config
    from papertune.generate.stage import REPORT_FILE
    from papertune.llm import LlamaCppChatModel

    run_dir = scratch / f"slots-{slots}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "chunks.jsonl").write_text("".join(chunk_lines), encoding="utf-8")
    config = load_config(None, [
        f"run_dir={run_dir}", "generate.generators={llm: 1}", "generate.llm.backend=llamacpp",
        f"generate.llm.model={args.model}", f"generate.llm.parallel={slots}", f"generate.llm.threads={args.threads}",
        f"generate.llm.max_new_tokens={args.max_new_tokens}", f"generate.llm.context_length={args.context_length}",
        f"generate.llm.concurrency={max(slots, 1)}", "generate.llm.timeout_s=3600",
    ])
    model = LlamaCppChatModel(config.generate.llm, "generate.llm")
    server = model.start()
    counting = CountingChat(model)
    started = time.perf_counter()
    generate.run(config, chat_model=counting)
    seconds = time.perf_counter() - started
    tokens = sum(len(server.tokenize(reply)) for reply in counting.replies)
    model.close()
    report = json.loads((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    chunks = report["chunks_processed"]
    return {"slots": slots, "chunks": chunks, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "pairs_per_chunk": report["pairs"] / max(chunks, 1),
            "unparseable": report["dropped"].get("llm", {}).get("unparseable", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run directory holding chunks.jsonl")
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--model", default="packaged:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--slots", default="1,2", help="llama.cpp server slots to compare, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--context-length", type=int, default=4096)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO / "src"))

    chunks_file = args.run_dir / "chunks.jsonl"
    if not chunks_file.is_file():
        sys.exit(f"{chunks_file} does not exist: run `papertune ingest DOCS --run-dir {args.run_dir}` first")
    lines = [line for line in chunks_file.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    lines = lines[:args.chunks]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as scratch:
        for slots in [int(s) for s in args.slots.split(",")]:
            rows.append(measure(lines, slots, args, Path(scratch)))
            print(f"slots {slots}: {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(f"\nteacher {args.model}, {len(lines)} chunks of {args.run_dir}, max_new_tokens {args.max_new_tokens}, "
          f"threads {args.threads or 'all'}\n")
    print("| slots | chunks | seconds | reply tokens | tokens/s | pairs/chunk | unparseable |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['slots']} | {r['chunks']} | {r['seconds']:.1f} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
              f"{r['pairs_per_chunk']:.2f} | {r['unparseable']} |")


if __name__ == "__main__":
    main()

"""How many chunks that kept no pair does curate's refill recover, and are the recovered pairs right?

    python benchmarks/refill_chunks.py RUN_DIR [--n 25] [--seed 1] [--rounds 1] [--set KEY=VALUE ...]

Takes a finished curate run (``RUN/qa.jsonl``, ``RUN/qa_curated.jsonl``, ``RUN/chunks.jsonl``), picks N of the
chunks the llm wrote pairs for and none was kept (a seeded draw), and runs ``papertune.curate.refill`` on
them with the config's ``generate.llm`` teacher and ``curate.judge`` (defaults below: the 1.5B teacher and
judge in llama.cpp on this machine; ``--set`` overrides). The kept pairs of the run are the ones the new pairs
must not repeat. Prints a table (chunks asked, with a pair after the refill, new pairs kept, teacher and judge
tokens/s) and every kept pair with its chunk's opening, for a hand check.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from papertune.config import load_config
from papertune.curate.judge import PairJudge
from papertune.curate.refill import chunks_to_refill, refill
from papertune.generate.content import non_content_reason
from papertune.rundir import CHUNKS, QA, QA_CURATED, read_jsonl

DEFAULTS = ["generate.generators={llm: 1.0}", "generate.pairs_per_chunk=5", "generate.llm.backend=llamacpp",
            "generate.llm.model=packaged:qwen2.5-coder-1.5b-instruct", "generate.llm.parallel=2",
            "generate.llm.concurrency=2", "generate.llm.context_length=4096", "generate.llm.max_new_tokens=512",
            "curate.judge_enabled=true", "curate.judge.backend=llamacpp",
            "curate.judge.model=packaged:qwen2.5-coder-1.5b-instruct", "curate.judge.parallel=2",
            "curate.judge.concurrency=2", "curate.judge.context_length=4096", "curate.judge.max_new_tokens=256",
            "ingest.segmenter=nltk"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=25, help="chunks to refill (a seeded draw; 0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    run = args.run_dir
    with open(run / CHUNKS, encoding="utf-8") as f:
        chunk_rows = [json.loads(line) for line in f if line.strip()]
    rows, kept = list(read_jsonl(run / QA)), list(read_jsonl(run / QA_CURATED))
    content = [c for c in chunk_rows if not non_content_reason(c["text"])]
    todo = chunks_to_refill(rows, kept, content)
    if args.n and args.n < len(todo):
        todo = sorted(random.Random(args.seed).sample(todo, args.n), key=chunk_rows.index)
    picked = {c["id"] for c in todo}
    config = load_config(None, [f"run_dir={run}", *DEFAULTS, f"curate.refill_rounds={args.rounds}", *args.set])
    chunks = {str(c["id"]): c["text"] for c in chunk_rows}
    judge = PairJudge(config.curate, Path(run))
    started = time.perf_counter()
    new_kept, _, report = refill(config, [r for r in rows if r["chunk_id"] in picked], kept, [], todo, chunks, judge)
    seconds = time.perf_counter() - started
    judged = judge.stats.report(config.curate)
    added = new_kept[len(kept):]
    print("| content chunks without a kept pair (run) | asked again | with a kept pair after | new pairs kept "
          "| new pairs | teacher tok/s | judge tok/s | s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(chunks_to_refill(rows, kept, content))} | {report['chunks']} | {report['chunks_recovered']} "
          f"| {report['kept']} | {report['pairs']} | {(report['teacher'] or {}).get('reply_tokens_per_s', 'cached')} "
          f"| {judged['reply_tokens_per_s']} | {seconds:.0f} |")
    print(f"\njudge: {judged['passed']} of {judged['pairs']} passed, failed checks {judged['failed_checks']}")
    for row in added:
        print(f"\n[{row['id']}] {row['question']}\n  A: {row['answer']}\n  chunk: {chunks[row['chunk_id']][:300]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

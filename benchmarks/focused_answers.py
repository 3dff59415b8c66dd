"""Does answering each question again on its own (``generate.llm_focused_answers``) give better answers?

    python benchmarks/focused_answers.py RUN_DIR [--n 30] [--seed 12] [--set KEY=VALUE ...]

Takes a curated run (``RUN/qa_curated.jsonl``, ``RUN/chunks.jsonl``; written with the focused pass off, or any
run whose answers came from the first reply), draws N kept llm pairs (``random.Random(seed).sample`` in file
order, the draw a hand check of that run used), and asks the config's ``generate.llm`` teacher each question
again through the generator's own answer pass (:meth:`papertune.generate.llm.LLMGenerator.answer_again`;
defaults below: the 1.5B teacher in llama.cpp on this machine). Prints a table (questions, answers replaced,
first answers kept, found not in the passage, the teacher's tokens/s) and writes ``focused_answers.jsonl``
beside the run: each question with its chunk, first answer and focused answer, for grading by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from papertune.config import load_config
from papertune.generate.base import ChunkResult
from papertune.generate.llm import LLMGenerator
from papertune.rundir import CHUNKS, QA_CURATED, read_jsonl

DEFAULTS = ["generate.generators={llm: 1.0}", "generate.llm.backend=llamacpp",
            "generate.llm.model=packaged:qwen2.5-coder-1.5b-instruct", "generate.llm.parallel=2",
            "generate.llm.concurrency=2", "generate.llm.context_length=4096", "ingest.segmenter=nltk"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=30, help="kept pairs to ask again (a seeded draw)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(None, [f"run_dir={args.run_dir}", *DEFAULTS, *args.set])
    chunks = {c["id"]: c for c in read_jsonl(args.run_dir / CHUNKS)}
    kept = [r for r in read_jsonl(args.run_dir / QA_CURATED) if r.get("generator", "llm") == "llm"]
    sample = random.Random(args.seed).sample(kept, min(args.n, len(kept)))
    # One result per pair (a pair's own "chunk"), so answers that coincide across pairs of a chunk are all shown.
    keyed = [({**chunks[r["chunk_id"]], "id": r["id"]}, r) for r in sample]
    results = {c["id"]: ChunkResult(pairs=[{"question": r["question"], "answer": r["answer"], "kind": r.get("kind")}])
               for c, r in keyed}
    teacher = LLMGenerator(config)
    started = time.perf_counter()
    failure = teacher.answer_again([c for c, _ in keyed], results)
    seconds = time.perf_counter() - started
    if failure is not None:
        raise failure
    out = args.run_dir / "focused_answers.jsonl"
    with out.open("w", encoding="utf-8") as fh:
        for n, (chunk, row) in enumerate(keyed, 1):
            pairs = results[chunk["id"]].pairs
            fh.write(json.dumps({"n": n, "id": row["id"], "question": row["question"], "first": row["answer"],
                                 "focused": pairs[0]["answer"] if pairs else None,
                                 "chunk": chunks[row["chunk_id"]]["text"]}, ensure_ascii=False) + "\n")
    stats = teacher.stats.report()
    focused = stats["focused_answers"]
    print("| questions | replaced | first answer kept | not in the passage | seconds | teacher tokens/s |")
    print("|---|---|---|---|---|---|")
    print(f"| {focused['questions']} | {focused['replaced']} | {focused['kept_first']} | {focused['not_in_passage']} "
          f"| {seconds:.0f} | {stats['reply_tokens_per_s']} |")
    print(f"side by side for grading: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

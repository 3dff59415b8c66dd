"""Which outside questions of a finished evaluation does the index answer all the same?

    python benchmarks/outside_in_index.py EVAL_DIR CHUNKS.jsonl [--model packaged:qwen2.5-coder-1.5b-instruct]
                                          [--backend llamacpp | vllm] [--sheet FILE]

Reads ``EVAL_DIR/answers.jsonl`` (an evaluation made with retrieval, before evaluate read outside questions
against their passages) and asks the judge of ``papertune.evaluate.outside`` for the sentence of the
passages retrieved for each outside question (their text from CHUNKS.jsonl) that answers it. Prints, for
each system, the outside questions declined before and after leaving out those the judge finds answered,
and the questions left out with the judge's quote. ``--sheet`` writes every question with its reference and
the judge's quote, to read by hand.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from papertune.config import LLMConfig
from papertune.evaluate.outside import answered_by_passages
from papertune.llm import make_chat_model
from papertune.rundir import read_chunks, read_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("chunks", type=Path)
    parser.add_argument("--model", default="packaged:qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--backend", default="llamacpp", choices=["llamacpp", "vllm"])
    parser.add_argument("--sheet", type=Path)
    args = parser.parse_args()

    answers = read_jsonl(args.eval_dir / "answers.jsonl")
    outside = [a for a in answers if a["set"] == "outside"]
    if not outside:
        raise SystemExit(f"{args.eval_dir / 'answers.jsonl'} has no outside questions")
    texts = {c["id"]: c["text"] for c in read_chunks(args.chunks)[0]}
    first_system = next(a["system"] for a in outside if a["passages"])
    rows = [a for a in outside if a["system"] == first_system]  # every retrieval system saw the same passages
    questions = [{"id": a["id"], "question": a["question"], "answer": a["reference"]} for a in rows]
    passages = [[texts[p["chunk_id"]] for p in a["passages"]] for a in rows]

    batch = 1024 if args.backend == "vllm" else 8
    judge = make_chat_model(LLMConfig(backend=args.backend, model=args.model, context_length=8192, batch_size=batch),
                            "judge")
    start = time.perf_counter()
    found = answered_by_passages(judge, questions, passages, batch)
    seconds = time.perf_counter() - start
    left = {q["id"] for q, f in zip(questions, found, strict=True) if f is not None and f.in_index}

    quoted = sum(bool(f and f.quote.strip()) for f in found)
    print(f"{len(questions)} outside questions read in {seconds:.0f} s; the judge quoted a sentence for {quoted}, "
          f"{len(left)} held (the quote in a passage, holding half of what the reference adds); "
          f"{sum(f is None for f in found)} replies unread\n")
    print("| system | outside declined, all | outside declined, those the index does not answer |")
    print("|---|---|---|")
    for system in dict.fromkeys(a["system"] for a in outside):
        mine = [a for a in outside if a["system"] == system]
        kept = [a for a in mine if a["id"] not in left]
        print(f"| {system} | {sum(a['abstained'] for a in mine)} / {len(mine)} "
              f"({sum(a['abstained'] for a in mine) / len(mine):.1%}) | {sum(a['abstained'] for a in kept)} / "
              f"{len(kept)} ({sum(a['abstained'] for a in kept) / max(1, len(kept)):.1%}) |")
    print()
    for q, f in zip(questions, found, strict=True):
        if f is not None and f.in_index:
            print(f"- {q['question']}  <- \"{f.quote}\"")
    if args.sheet:
        with args.sheet.open("w", encoding="utf-8") as out:
            for q, f in zip(questions, found, strict=True):
                out.write(json.dumps({**q, "found": None if f is None else asdict(f)}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

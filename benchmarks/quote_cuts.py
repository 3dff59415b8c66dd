"""Does a JSON-constrained teacher cut answers at a straight double quote it copies from the chunk?

    python benchmarks/quote_cuts.py CHUNKS.jsonl [--chunks 24] [--model packaged:qwen2.5-coder-1.5b-instruct]

A reply held to a JSON schema ends a string at the first straight '"' the model writes, so an answer that
copies 'also known as "learning to learn"' stops at "also known as". Takes the chunks of CHUNKS.jsonl holding
at least two straight double quotes (seeded draw), asks the teacher (the cpu profile's generate.llm, llama.cpp,
replies constrained to the reply schema) for pairs twice: with the chunk as written, and as papertune shows it
(straight quote pairs written curly, ``papertune.text.curly_quotes``), and prints how many of the raw answers
and questions stop mid-sentence (``papertune.text.unfinished``). About 7 minutes per variant for 24 chunks with
the 1.5B on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from papertune.config import load_config
from papertune.generate import base as chunk_text
from papertune.generate import prompt as teacher
from papertune.generate.replies import parse_pairs
from papertune.llm import make_chat_model
from papertune.text import unfinished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chunks", type=Path)
    parser.add_argument("--chunks", dest="n", type=int, default=24, help="chunks with quotes to use (default 24)")
    parser.add_argument("--model", default="packaged:qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.chunks.read_text(encoding="utf-8").splitlines() if line.strip()]
    quoted = [r for r in rows if r["text"].count('"') >= 2]
    random.Random(args.seed).shuffle(quoted)
    quoted = quoted[:args.n]
    cfg = load_config("configs/cpu.yaml", ["generate.llm.parallel=2", f"generate.llm.model={args.model}"]).generate.llm
    model = make_chat_model(cfg, "generate.llm")
    shown_curly = chunk_text.curly_quotes
    print(f"{len(quoted)} chunks with straight quotes, teacher {args.model}\n")
    print("| chunk shown | answers | stop mid-sentence |")
    print("|---|---|---|")
    try:
        for label, show in (("as written", lambda text: text), ("curly quotes (papertune)", shown_curly)):
            chunk_text.curly_quotes = show  # what build_conversation shows the teacher
            conversations = [teacher.build_conversation(r["text"], 3, r.get("title"), r.get("section"))
                             for r in quoted]
            replies = model.chat(conversations, json_schema=teacher.reply_schema(3))
            pairs = [p for reply in replies for p in (parse_pairs(reply) or [])]
            cut = sum(unfinished(p.answer) or unfinished(p.question) for p in pairs)
            print(f"| {label} | {len(pairs)} | {cut} |")
    finally:
        chunk_text.curly_quotes = shown_curly
        close = getattr(model, "close", None)
        if close:
            close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Retrieval recall on real questions: is the chunk a question was written from among the top k passages?

Reads a ``chunks.jsonl`` and questions with the chunk each came from: evaluate's ``RUN/eval/answers.jsonl``
(rows of the sets test and heldout; the sources of its ``outside`` rows are left out of the index, as
evaluate leaves them out) or any JSONL of pairs with ``question`` and ``chunk_id``. ``--extra`` adds the
chunks of other documents (more distractors). Each ``--variant NAME=SETTING[;SETTING...]`` is the product's
:class:`papertune.retrieval.Retriever` under those ``--set`` overrides, on one copy of the chunks.

    python benchmarks/bench_retrieval.py --chunks RUN/chunks.jsonl --questions RUN/eval/answers.jsonl \\
        --variant "one embedding per chunk=retrieval.window_words=0" --variant "windows=" \\
        --variant "bm25=retrieval.method=bm25"

Prints a table: recall@1, @4 and @10 per question set and variant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from papertune.config import load_config  # noqa: E402
from papertune.retrieval import Retriever  # noqa: E402


def load_questions(path: Path) -> tuple[list[dict], set[str]]:
    """Questions (``question``, ``chunk_id``, ``set``), one per id, and the documents to leave out of the index."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    outside = {r["source"] for r in rows if r.get("set") == "outside" and r.get("source")}
    seen, questions = set(), []
    for r in rows:
        key = r.get("id") or (r["question"], r["chunk_id"])
        if r.get("set", "all") == "outside" or not r.get("chunk_id") or key in seen:
            continue
        seen.add(key)
        questions.append({"question": r["question"], "chunk_id": r["chunk_id"], "set": r.get("set", "all")})
    return questions, outside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=Path, required=True)
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--extra", type=Path, help="chunks.jsonl of other documents, added as distractors")
    ap.add_argument("--variant", action="append", default=[], help="NAME=SETTING[;SETTING...] ('windows=': defaults)")
    args = ap.parse_args()
    questions, outside = load_questions(args.questions)
    run = Path(tempfile.mkdtemp(prefix="bench_retrieval_"))
    lines = args.chunks.read_text(encoding="utf-8").splitlines()
    if args.extra:
        known = {json.loads(line)["source"] for line in lines if line.strip()}
        lines += [line for line in args.extra.read_text(encoding="utf-8").splitlines()
                  if line.strip() and json.loads(line)["source"] not in known]
    (run / "chunks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sets = sorted({q["set"] for q in questions})
    counts = ", ".join(f"{s}: {sum(q['set'] == s for q in questions)}" for s in sets)
    print(f"{len(questions)} questions ({counts}), {len(lines)} chunks, {len(outside)} documents left out")
    print("| variant | set | recall@1 | recall@4 | recall@10 |\n|---|---|---|---|---|")
    for variant in args.variant or ["defaults="]:
        name, _, settings = variant.partition("=")
        cfg = load_config(None, [s for s in settings.split(";") if s]).retrieval
        shutil.rmtree(run / "index", ignore_errors=True)
        found = Retriever.for_run(run, cfg, exclude_sources=outside).search_many([q["question"] for q in questions], 10)
        for s in sets:
            hits = [[p.chunk_id for p in f].index(q["chunk_id"]) + 1 if q["chunk_id"] in [p.chunk_id for p in f]
                    else 99 for q, f in zip(questions, found, strict=True) if q["set"] == s]
            cells = " | ".join(f"{100 * sum(h <= k for h in hits) / len(hits):.1f}%" for k in (1, 4, 10))
            print(f"| {name} | {s} ({len(hits)}) | {cells} |")
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How good are the generated questions: coverage, kinds, self-containment, measured on a generate run.

Usage: ``python benchmarks/question_quality.py RUN_DIR [RUN_DIR ...] [--common] [--curated] [--examples 10]``

Reads each run's ``generate/progress.jsonl`` (the finished chunks, so an interrupted run can be measured
too) and ``chunks.jsonl``. A chunk is content unless :func:`papertune.generate.content.non_content_reason`
names it (decided again here, so runs made before the detector existed compare fairly). Prints one row per
run: chunks, content chunks, content chunks with a kept pair, pairs, pairs per content chunk, the kind
mix, the share of kept questions that are not self-contained
(:func:`papertune.generate.questions.context_dependence`), the share opening with "What", and the drop
reasons; then the targets (at least 90% of content chunks with a pair, at most 3% not self-contained, no
kind above 40% and at least 5 kinds) and example pairs. ``--common`` keeps only the chunks every run
finished, so a run with the old prompt and one with the new compare on the same chunks. ``--curated``
measures the pairs curate kept (``qa_curated.jsonl``; drop reasons from ``qa_dropped.jsonl``) instead of
the generated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from papertune.generate.content import non_content_reason
from papertune.generate.questions import context_dependence, guess_kind
from papertune.rundir import CHUNKS, GENERATE_PROGRESS, QA_CURATED, QA_DROPPED


def read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    records = {}
    with (run_dir / GENERATE_PROGRESS).open(encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
            if isinstance(row, dict) and row.get("kind") == "chunk":
                records[row["chunk_id"]] = row
    return records


def curated_records(run_dir: Path, records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``records`` with each chunk's pairs replaced by the generated pairs curate kept, and its drops by
    curate's reasons (augmented copies are left out: they are not the teacher's)."""
    kept: dict[str, list[dict[str, Any]]] = {c: [] for c in records}
    dropped: dict[str, Counter[str]] = {c: Counter() for c in records}
    for name, into in ((QA_CURATED, kept), (QA_DROPPED, None)):
        path = run_dir / name
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run papertune curate first)")
        with path.open(encoding="utf-8") as fh:
            for row in map(json.loads, fh):
                if row.get("augmentation") or row.get("chunk_id") not in records:
                    continue
                if into is not None:
                    into[row["chunk_id"]].append(row)
                else:
                    dropped[row["chunk_id"]][row["drop_reason"]] += 1
    return {c: {**r, "pairs": kept[c], "dropped": dict(dropped[c])} for c, r in records.items()}


def read_chunks(run_dir: Path) -> dict[str, dict[str, Any]]:
    with (run_dir / CHUNKS).open(encoding="utf-8") as fh:
        return {str(row["id"]): row for row in map(json.loads, fh)}


def measure(run_dir: Path, chunk_ids: list[str], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    chunks = read_chunks(run_dir)
    content = [c for c in chunk_ids if not non_content_reason(chunks[c]["text"], chunks[c].get("section"))]
    pairs = [(c, p) for c in chunk_ids for p in records[c]["pairs"]]
    kinds = Counter(p.get("kind") or guess_kind(p["question"]) for _, p in pairs)
    dropped: Counter[str] = Counter()
    for c in chunk_ids:
        dropped.update(records[c].get("dropped", {}))
    not_contained = [p for _, p in pairs if context_dependence(p["question"])]
    return {
        "run": str(run_dir),
        "chunks": len(chunk_ids),
        "content": len(content),
        "content_with_pairs": sum(bool(records[c]["pairs"]) for c in content),
        "pairs": len(pairs),
        "kinds": kinds,
        "not_self_contained": len(not_contained),
        "what": sum(p["question"].lower().startswith("what") for _, p in pairs),
        "dropped": dropped,
        "examples": pairs,
    }


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | chunks | content | content with pairs | pairs | pairs / content chunk | kinds (max share) "
             "| not self-contained | 'What' questions | dropped |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top = r["kinds"].most_common(1)
        kinds = f"{len(r['kinds'])} ({top[0][0]} {share(top[0][1], r['pairs'])})" if top else "0"
        dropped = ", ".join(f"{k} {n}" for k, n in r["dropped"].most_common()) or "none"
        lines.append(
            f"| {r['run']} | {r['chunks']} | {r['content']} | {r['content_with_pairs']} "
            f"({share(r['content_with_pairs'], r['content'])}) | {r['pairs']} | "
            f"{r['pairs'] / r['content']:.2f} | {kinds} | {r['not_self_contained']} "
            f"({share(r['not_self_contained'], r['pairs'])}) | {share(r['what'], r['pairs'])} | {dropped} |"
            if r["content"] else f"| {r['run']} | {r['chunks']} | 0 | - | {r['pairs']} | - | {kinds} | - | - | - |"
        )
    return "\n".join(lines)


def targets(r: dict[str, Any]) -> str:
    top = max(r["kinds"].values(), default=0)
    checks = [
        ("content chunks with a kept pair >= 90%", r["content"] and r["content_with_pairs"] >= 0.9 * r["content"]),
        ("not self-contained <= 3%", r["pairs"] and r["not_self_contained"] <= 0.03 * r["pairs"]),
        ("no kind above 40%", r["pairs"] and top <= 0.4 * r["pairs"]),
        ("at least 5 kinds", len(r["kinds"]) >= 5),
    ]
    return "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--common", action="store_true", help="only the chunks every run finished")
    parser.add_argument("--curated", action="store_true", help="the pairs curate kept, not the generated ones")
    parser.add_argument("--examples", type=int, default=10, help="example pairs to show per run (default 10)")
    args = parser.parse_args(argv)
    runs = [(d.resolve(), read_records(d)) for d in args.run_dirs]
    if args.curated:
        runs = [(d, curated_records(d, records)) for d, records in runs]
    os.chdir(Path(__file__).resolve().parent.parent)
    common = set.intersection(*(set(records) for _, records in runs)) if args.common else None
    rows = []
    for run_dir, records in runs:
        ids = [c for c in records if common is None or c in common]
        if not ids:
            print(f"{run_dir}: no finished chunks", file=sys.stderr)
            return 1
        rows.append(measure(run_dir, ids, records))
    print(table(rows))
    for r in rows:
        print(f"\n{r['run']}\n  kinds: " + ", ".join(f"{k} {n} ({share(n, r['pairs'])})" for k, n in r["kinds"].most_common()))
        print(f"  targets: {targets(r)}")
        seen: set[str] = set()
        shown = 0
        for chunk_id, pair in r["examples"]:  # one pair per chunk first, so the examples span the run
            if chunk_id in seen or shown >= args.examples:
                continue
            seen.add(chunk_id)
            shown += 1
            flag = context_dependence(pair["question"])
            print(f"  [{pair.get('kind') or guess_kind(pair['question'])}] Q: {pair['question']}"
                  + (f"   <- not self-contained: {flag}" if flag else ""))
            print(f"      A: {pair['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

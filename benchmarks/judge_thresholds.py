"""What curate's judge keeps at other thresholds, from the replies a run already cached (nothing is judged again).

    python benchmarks/judge_thresholds.py RUN_DIR --config CONFIG [--try curate.KEY=V ...]
                                          [--sheet FILE --compare curate.KEY=V --n 15 --seed 30]

Reads ``RUN/chunks.jsonl``, the pairs of ``RUN/qa_curated.jsonl`` and ``RUN/qa_dropped.jsonl`` and the judge's
replies in ``RUN/curate/judge_cache.jsonl`` (the judge settings of CONFIG must be the run's: they are part of
the cache key), and prints one row per setting: pairs judged, pairs that pass the judge, and the chunks left
with a pair (passing the judge, or kept unjudged). Only the judge's verdict is recomputed: the lexical checks
keep their decisions, and pairs that pass the judge may still be dropped later (near-duplicates).

``--sheet`` writes a blind reading sheet for a hand check of one change (``--compare``): N random pairs that
pass under CONFIG's settings but not under the changed ones and N that pass both, shuffled together, each with its
chunk; the key (which pair is which) goes to FILE.key, to be read after the sheet is labelled.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from papertune.config import CurateConfig, load_config
from papertune.errors import ConfigError
from papertune.curate.judge import CACHE_FILE, assess, cache_key
from papertune.rundir import CHUNKS, QA_CURATED, QA_DROPPED, read_jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="the run's config (its curate.judge settings)")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="curate.KEY=V[,curate.KEY=V]",
                        help="a setting to compare with the run's (repeat for more rows)")
    parser.add_argument("--sheet", type=Path, help="write a blind reading sheet of --compare here")
    parser.add_argument("--compare", help="the change the sheet is about (curate.KEY=V[,curate.KEY=V])")
    parser.add_argument("--n", type=int, default=15, help="pairs of each group on the sheet")
    parser.add_argument("--seed", type=int, default=30)
    args = parser.parse_args(argv)
    if bool(args.sheet) != bool(args.compare):
        parser.error("--sheet and --compare go together")

    def settings(change: str) -> CurateConfig:  # CONFIG with "curate.KEY=V[,curate.KEY=V]" set, checked
        return load_config(args.config, change.split(",") if change else []).curate

    base = settings("")
    chunks = {c["id"]: c for c in read_jsonl(args.run_dir / CHUNKS)}
    cache = {r["key"]: r for r in read_jsonl(args.run_dir / CACHE_FILE)}
    pairs: dict[tuple[str, str, str], dict] = {}
    unjudged_kept: set[str] = set()  # chunks with a kept pair the judge did not read (other generators)
    for name in (QA_CURATED, QA_DROPPED):
        for row in read_jsonl(args.run_dir / name):
            pairs.setdefault((row["chunk_id"], row["question"], row["answer"]), row)
            if name == QA_CURATED and "judge" not in row:
                unjudged_kept.add(row["chunk_id"])
    judged = [(row, cache[k]) for row in pairs.values()
              if (k := cache_key(base.judge, chunks[row["chunk_id"]]["text"], row["question"], row["answer"])) in cache]
    if not judged:
        sys.exit("judge_thresholds: no pair of the run has a cached reply under these judge settings "
                 "(is --config the run's config?)")

    def passing(cfg: CurateConfig) -> list[bool]:
        return [assess(row, chunks[row["chunk_id"]]["text"], replies["grade"], replies["blind"], cfg).passed
                for row, replies in judged]

    before = passing(base)
    print("| setting | judged | pass the judge | chunks with a pair |\n|---|---|---|---|")
    for label, change in [("the config's", "")] + [(t, t) for t in args.tries]:
        ok = passing(settings(change)) if change else before
        covered = unjudged_kept | {row["chunk_id"] for (row, _), p in zip(judged, ok) if p}
        print(f"| {label} | {len(judged)} | {sum(ok)} | {len(covered)} |")

    if args.sheet:
        after = passing(settings(args.compare))
        dropped = [row for (row, _), b, a in zip(judged, before, after) if b and not a]
        kept = [row for (row, _), b, a in zip(judged, before, after) if b and a]
        rng = random.Random(args.seed)
        sample = ([("dropped", r) for r in rng.sample(dropped, min(args.n, len(dropped)))]
                  + [("kept", r) for r in rng.sample(kept, min(args.n, len(kept)))])
        rng.shuffle(sample)
        with args.sheet.open("w", encoding="utf-8") as fh:
            for i, (_, row) in enumerate(sample, 1):
                chunk = chunks[row["chunk_id"]]
                fh.write(f"=== {i} {row['chunk_id']} | {chunk.get('section')}\nQ: {row['question']}\n"
                         f"A: {row['answer']}\nCHUNK: {chunk['text']}\nLABEL (correct / partial / wrong):\n\n")
        Path(f"{args.sheet}.key").write_text(" ".join(tag for tag, _ in sample) + "\n", encoding="utf-8")
        print(f"\n{len(sample)} pairs on {args.sheet} ({len(dropped)} dropped by {args.compare}, {len(kept)} kept);"
              f" the key: {args.sheet}.key")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        sys.exit(f"judge_thresholds: {exc}")

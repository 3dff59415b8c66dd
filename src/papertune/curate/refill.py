"""Refill (``curate.refill_rounds``): chunks that kept no pair after curation, though the llm generator wrote
pairs for them, are asked again. A small teacher's first pairs for a chunk are often all wrong and the judge
drops them all; sampled anew, about half of such chunks got a pair that held up (12 of 25 with the 1.5B
teacher and judge, docs/benchmarks.md). Chunks that gave no pair at all were already asked again by generate
(``generate.llm_retries``) and are not asked here.

Each round asks ``generate.llm`` for new pairs of every such chunk, sampling at
``generate.llm_retry_temperature``; the pairs (ids ``CHUNK::llm-refillN::K``) go through every check and the
judge (:func:`papertune.curate.filters.curate_more`), and those kept join the curated pairs. The teacher's
pairs are kept in ``RUN/curate/refill_cache.jsonl`` by teacher, prompt, chunk and round, written after each
round (also one a failed request stopped): a rerun of curate (other thresholds, or after a failure) asks only
for what is not there.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from papertune.config import PapertuneConfig
from papertune.curate.filters import Judge, curate_more
from papertune.generate.llm import LLMGenerator, prompt_fingerprint
from papertune.generate.rows import pair_rows
from papertune.rundir import CURATE_DIR, read_jsonl, sha256_json, write_jsonl_atomic

log = logging.getLogger(__name__)

ROUND_SEEDS = 1000  # round r's requests are seeded from 1000 r on: apart from generate's retries and each other

CACHE_FILE = f"{CURATE_DIR}/refill_cache.jsonl"


def chunks_to_refill(rows: list[dict[str, Any]], kept: list[dict[str, Any]],
                     chunk_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks (rows of ``RUN/chunks.jsonl``, in file order) the llm wrote pairs for and none was kept."""
    asked = {r["chunk_id"] for r in rows if r.get("generator") == LLMGenerator.name}
    covered = {r["chunk_id"] for r in kept}
    return [c for c in chunk_rows if str(c["id"]) in asked - covered]


class RefillCache:
    """The teacher's refill pairs by key (teacher settings, prompt, chunk text, round), in ``RUN/curate``."""

    def __init__(self, config: PapertuneConfig) -> None:
        self.path = Path(config.run_dir) / CACHE_FILE
        gen = config.generate
        self.identity = [prompt_fingerprint(gen.llm_evidence_first), gen.llm.backend, gen.llm.model,
                         gen.llm.max_new_tokens, gen.llm_retry_temperature, gen.pairs_per_chunk, gen.llm_min_support,
                         gen.llm_retries, gen.llm_focused_answers, gen.llm_evidence_first]
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.entries = {row["key"]: row for row in read_jsonl(self.path)
                            if isinstance(row, dict) and {"key", "pairs"} <= row.keys()}

    def key(self, chunk: dict[str, Any], round_: int) -> str:
        return sha256_json([*self.identity, chunk["text"], round_])

    def save(self) -> None:
        write_jsonl_atomic(self.path, list(self.entries.values()))


def _pairs(teacher: Callable[[], LLMGenerator], cache: RefillCache, todo: list[dict[str, Any]], round_: int,
           temperature: float) -> dict[str, list[dict[str, Any]]]:
    """Each chunk's pairs of this round: from the cache, or from the teacher (loaded only then). What the
    teacher wrote is saved to the cache, also when a failed request stops the round."""
    keys = {str(c["id"]): cache.key(c, round_) for c in todo}
    pairs = {cid: cache.entries[key]["pairs"] for cid, key in keys.items() if key in cache.entries}
    ask = [c for c in todo if str(c["id"]) not in pairs]
    if ask:
        generator = teacher()
        log.info("curate: refill round %d: asking %s again for %d chunks that kept no pair (%d from %s)",
                 round_, generator.model, len(ask), len(pairs), cache.path)
        try:
            # each round's requests seeded apart from generate's retries (seeds 1, 2, ...) and the other rounds'
            for chunk_id, result in generator.generate(ask, temperature=temperature, seed=ROUND_SEEDS * round_):
                key = keys[str(chunk_id)]
                cache.entries[key] = {"key": key, "chunk_id": chunk_id, "round": round_, "pairs": result.pairs}
                pairs[str(chunk_id)] = result.pairs
        finally:
            cache.save()
    return pairs


def refill(config: PapertuneConfig, rows: list[dict[str, Any]], kept: list[dict[str, Any]],
           dropped: list[dict[str, Any]], chunk_rows: list[dict[str, Any]], chunks: dict[str, str],
           judge: Judge | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Kept and dropped pairs after ``curate.refill_rounds`` rounds, and the report's ``refill`` section."""
    todo = chunks_to_refill(rows, kept, chunk_rows)
    report: dict[str, Any] = {"rounds": config.curate.refill_rounds, "chunks": len(todo), "asked": 0,
                              "pairs": 0, "kept": 0, "chunks_recovered": 0, "teacher": None}
    if not todo:
        return kept, dropped, report
    cache = RefillCache(config)
    teacher = functools.cache(lambda: LLMGenerator(config))
    for round_ in range(1, config.curate.refill_rounds + 1):
        if not todo:
            break
        pairs = _pairs(teacher, cache, todo, round_, config.generate.llm_retry_temperature)
        new_rows = [row for chunk in todo
                    for row in pair_rows(chunk, pairs.get(str(chunk["id"]), []), LLMGenerator.name,
                                         config.generate.llm.model, tag=f"{LLMGenerator.name}-refill{round_}")]
        new_kept, new_dropped = curate_more(new_rows, kept, chunks, config.curate, judge)
        report["asked"] += len(todo)
        report["pairs"] += len(new_rows)
        report["kept"] += len(new_kept)
        report["chunks_recovered"] += len({r["chunk_id"] for r in new_kept})
        kept, dropped = kept + new_kept, dropped + new_dropped
        todo = chunks_to_refill(rows, kept, todo)
    if teacher.cache_info().currsize:  # the teacher was asked in this run
        report["teacher"] = teacher().stats.report()
    return kept, dropped, report

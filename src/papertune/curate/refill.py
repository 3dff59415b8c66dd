"""Refill (``curate.refill_rounds``): chunks that kept no pair after curation, though the llm generator wrote
pairs for them, are asked again. A small teacher's first pairs for a chunk are often all wrong and the judge
drops them all; sampled anew, about half of such chunks got a pair that held up (12 of 25 with the 1.5B
teacher and judge, docs/benchmarks.md). Chunks that gave no pair at all were already asked again by generate
(``generate.llm_retries``) and are not asked here.

Each round asks ``generate.llm`` for new pairs of every such chunk, sampling at
``generate.llm_retry_temperature``; the pairs (ids ``CHUNK::llm-refillN::K``) go through every check and the
judge (:func:`papertune.curate.filters.curate_more`), and those kept join the curated pairs.
"""

from __future__ import annotations

import logging
from typing import Any

from papertune.config import PapertuneConfig
from papertune.curate.filters import Judge, curate_more
from papertune.generate.llm import LLMGenerator
from papertune.generate.rows import pair_rows

log = logging.getLogger(__name__)


def chunks_to_refill(rows: list[dict[str, Any]], kept: list[dict[str, Any]],
                     chunk_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks (rows of ``RUN/chunks.jsonl``, in file order) the llm wrote pairs for and none was kept."""
    asked = {r["chunk_id"] for r in rows if r.get("generator") == LLMGenerator.name}
    covered = {r["chunk_id"] for r in kept}
    return [c for c in chunk_rows if str(c["id"]) in asked - covered]


def refill(config: PapertuneConfig, rows: list[dict[str, Any]], kept: list[dict[str, Any]],
           dropped: list[dict[str, Any]], chunk_rows: list[dict[str, Any]], chunks: dict[str, str],
           judge: Judge | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Kept and dropped pairs after ``curate.refill_rounds`` rounds, and the report's ``refill`` section."""
    todo = chunks_to_refill(rows, kept, chunk_rows)
    report: dict[str, Any] = {"rounds": config.curate.refill_rounds, "chunks": len(todo), "asked": 0,
                              "pairs": 0, "kept": 0, "chunks_recovered": 0}
    if not todo:
        return kept, dropped, report
    generator = LLMGenerator(config)
    temperature = config.generate.llm_retry_temperature
    for round_ in range(1, config.curate.refill_rounds + 1):
        if not todo:
            break
        log.info("curate: refill round %d: asking %s again for %d chunks that kept no pair", round_,
                 generator.model, len(todo))
        by_id = {str(c["id"]): c for c in todo}
        new_rows = [row for chunk_id, result in generator.generate(todo, temperature=temperature)
                    for row in pair_rows(by_id[chunk_id], result.pairs, LLMGenerator.name, generator.model,
                                         tag=f"{LLMGenerator.name}-refill{round_}")]
        new_kept, new_dropped = curate_more(new_rows, kept, chunks, config.curate, judge)
        report["asked"] += len(todo)
        report["pairs"] += len(new_rows)
        report["kept"] += len(new_kept)
        report["chunks_recovered"] += len({r["chunk_id"] for r in new_kept})
        kept, dropped = kept + new_kept, dropped + new_dropped
        todo = chunks_to_refill(rows, kept, todo)
    report["teacher"] = generator.stats.report()
    return kept, dropped, report

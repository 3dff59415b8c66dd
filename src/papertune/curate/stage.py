"""The curate stage: reads ``RUN/qa.jsonl`` and ``RUN/chunks.jsonl``, runs the checks of
:mod:`papertune.curate.filters` (and the judge of :mod:`papertune.curate.judge` when
``curate.judge_enabled``), and writes the kept pairs, the dropped ones and ``RUN/curate/report.json``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from papertune.config import PapertuneConfig
from papertune.curate.filters import REASONS, curate_rows
from papertune.curate.judge import PairJudge
from papertune.curate.refill import refill
from papertune.errors import InputError
from papertune.rundir import (
    CHUNKS,
    CURATE_DIR,
    CURATE_REPORT,
    PAIR_OF_CHUNK,
    QA,
    QA_CURATED,
    QA_DROPPED,
    read_chunks,
    read_rows,
    record_stage,
    write_json_atomic,
    write_jsonl_atomic,
)
from papertune.stage import StageSpec, run_files

log = logging.getLogger(__name__)

_MAX_PROBLEMS_IN_REPORT = 100


def read_inputs(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """The pairs of ``RUN/qa.jsonl``, the chunk texts by id, and the malformed lines skipped in both."""
    rows, chunk_rows, problems = _read(run_dir)
    return rows, _texts(chunk_rows), problems


def _texts(chunk_rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each chunk's text by id (the first of a repeated id)."""
    chunks: dict[str, str] = {}
    for chunk in chunk_rows:
        chunks.setdefault(str(chunk["id"]), str(chunk["text"]))
    return chunks


def _read(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    qa_path, chunks_path = run_dir / QA, run_dir / CHUNKS
    if not chunks_path.is_file():
        raise InputError(f"{chunks_path} not found: run `papertune ingest DOCS_DIR --run-dir {run_dir}` first")
    if not qa_path.is_file():
        raise InputError(f"{qa_path} not found: run `papertune generate --run-dir {run_dir}` first")
    chunk_rows, chunk_problems = read_chunks(chunks_path)  # each skipped line is logged by the reader
    rows, qa_problems = read_rows(qa_path, PAIR_OF_CHUNK)
    for row in rows:  # ids and texts are compared as strings, whatever the generator wrote
        for key in ("id", "question", "answer", "chunk_id"):
            row[key] = str(row[key])
    return rows, chunk_rows, qa_problems + chunk_problems


SPEC = StageSpec(
    name="curate",
    directory=CURATE_DIR,
    help="drop duplicate, unsupported or malformed pairs (RUN/qa_curated.jsonl)",
    description="Filter RUN/qa.jsonl: near-duplicate questions, answers not supported by their chunk, too short or "
    "long pairs, questions that contain their answer, and (curate.judge_enabled) pairs a judge model reading the "
    "chunk cannot back up. Dropped pairs go to RUN/qa_dropped.jsonl. curate.refill_rounds asks generate.llm again "
    "for chunks that kept no pair.",
    # refill asks the teacher of generate again
    settings=("curate", "generate.llm", "generate.pairs_per_chunk", "generate.llm_min_support",
              "generate.llm_retries", "generate.llm_retry_temperature", "generate.llm_focused_answers",
              "generate.llm_evidence_first"),
    outputs=(QA_CURATED, QA_DROPPED, CURATE_REPORT),
    inputs=run_files(QA, CHUNKS),
)


def run(config: PapertuneConfig) -> Path:
    """Filter ``RUN/qa.jsonl`` into ``RUN/qa_curated.jsonl`` (returned) and ``RUN/qa_dropped.jsonl``."""
    cfg = config.curate
    run_dir = Path(config.run_dir)
    started = time.perf_counter()
    rows, chunk_rows, problems = _read(run_dir)
    chunks = _texts(chunk_rows)
    record_stage(run_dir, "curate", config)
    judge = PairJudge(cfg, run_dir) if cfg.judge_enabled else None
    kept, dropped = curate_rows(rows, chunks, cfg, judge)
    refilled = None
    if cfg.refill_rounds:
        kept, dropped, refilled = refill(config, rows, kept, dropped, chunk_rows, chunks, judge)

    out = run_dir / QA_CURATED
    write_jsonl_atomic(out, kept)
    write_jsonl_atomic(run_dir / QA_DROPPED, dropped)
    by_reason = Counter(d["drop_reason"] for d in dropped)
    report = {
        "input": len(rows),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": {reason: by_reason.get(reason, 0) for reason in REASONS},
        "malformed_lines": len(problems),
        "malformed": problems[:_MAX_PROBLEMS_IN_REPORT],
        "chunks": len(chunks),
        "chunks_with_kept_pairs": len({r["chunk_id"] for r in kept}),
        "settings": {
            "dedup": cfg.dedup,
            "near_duplicate_threshold": cfg.near_duplicate_threshold,
            "support": cfg.support,
            "min_support": cfg.min_support if cfg.support == "overlap" else cfg.min_support_cosine,
            "judge_enabled": cfg.judge_enabled,
        },
        "judge": judge.stats.report(cfg) if judge is not None else None,
        "refill": refilled,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(run_dir / CURATE_REPORT, report)
    log.info(
        "curate: kept %d of %d pairs (%s), %d malformed lines skipped -> %s",
        len(kept), len(rows),
        ", ".join(f"{k} {v}" for k, v in by_reason.most_common()) or "none dropped", len(problems), out,
    )
    if refilled is not None:
        log.info("curate: refill kept %d of %d new pairs; %d of %d chunks without a kept pair have one now",
                 refilled["kept"], refilled["pairs"], refilled["chunks_recovered"], refilled["chunks"])
    if judge is not None:
        stats = report["judge"]
        rate = stats["reply_tokens_per_s"]
        log.info("curate: the judge passed %d of %d pairs (%d from its cache), %s", stats["passed"], stats["pairs"],
                 stats["from_cache"], "nothing judged now" if rate is None else f"{rate:.0f} reply tokens/s")
    return out

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
    qa_path, chunks_path = run_dir / QA, run_dir / CHUNKS
    if not chunks_path.is_file():
        raise InputError(f"{chunks_path} not found: run `papertune ingest DOCS_DIR --run-dir {run_dir}` first")
    if not qa_path.is_file():
        raise InputError(f"{qa_path} not found: run `papertune generate --run-dir {run_dir}` first")
    chunk_rows, chunk_problems = read_chunks(chunks_path)  # each skipped line is logged by the reader
    rows, qa_problems = read_rows(qa_path, PAIR_OF_CHUNK)
    problems = qa_problems + chunk_problems
    chunks: dict[str, str] = {}
    for chunk in chunk_rows:
        chunks.setdefault(str(chunk["id"]), str(chunk["text"]))
    for row in rows:  # ids and texts are compared as strings, whatever the generator wrote
        for key in ("id", "question", "answer", "chunk_id"):
            row[key] = str(row[key])
    return rows, chunks, problems


SPEC = StageSpec(
    name="curate",
    directory=CURATE_DIR,
    help="drop duplicate, unsupported or malformed pairs (RUN/qa_curated.jsonl)",
    description="Filter RUN/qa.jsonl: near-duplicate questions, answers not supported by their chunk, too short or "
    "long pairs, questions that contain their answer, and (curate.judge_enabled) pairs a judge model reading the "
    "chunk cannot back up. Dropped pairs go to RUN/qa_dropped.jsonl.",
    settings=("curate",),
    outputs=(QA_CURATED, QA_DROPPED, CURATE_REPORT),
    inputs=run_files(QA, CHUNKS),
)


def run(config: PapertuneConfig) -> Path:
    """Filter ``RUN/qa.jsonl`` into ``RUN/qa_curated.jsonl`` (returned) and ``RUN/qa_dropped.jsonl``."""
    cfg = config.curate
    run_dir = Path(config.run_dir)
    started = time.perf_counter()
    rows, chunks, problems = read_inputs(run_dir)
    record_stage(run_dir, "curate", config)
    judge = PairJudge(cfg, run_dir) if cfg.judge_enabled else None
    kept, dropped = curate_rows(rows, chunks, cfg, judge)

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
        "settings": {
            "dedup": cfg.dedup,
            "near_duplicate_threshold": cfg.near_duplicate_threshold,
            "support": cfg.support,
            "min_support": cfg.min_support if cfg.support == "overlap" else cfg.min_support_cosine,
            "judge_enabled": cfg.judge_enabled,
        },
        "judge": judge.stats.report(cfg) if judge is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(run_dir / CURATE_REPORT, report)
    log.info(
        "curate: kept %d of %d pairs (%s), %d malformed lines skipped -> %s",
        len(kept), len(rows),
        ", ".join(f"{k} {v}" for k, v in by_reason.most_common()) or "none dropped", len(problems), out,
    )
    if judge is not None:
        stats = report["judge"]
        rate = stats["reply_tokens_per_s"]
        log.info("curate: the judge passed %d of %d pairs (%d from its cache), %s", stats["passed"], stats["pairs"],
                 stats["from_cache"], "nothing judged now" if rate is None else f"{rate:.0f} reply tokens/s")
    return out

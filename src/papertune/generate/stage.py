"""The generate stage: ``RUN/chunks.jsonl`` -> ``RUN/qa.jsonl`` and ``RUN/generate/report.json``.

Each chunk goes to one generator (``generate.generators``: name -> share), chosen from a hash of the
seed and the chunk id, so reruns and resumes agree. Results are appended per batch to
``RUN/generate/progress.jsonl`` and flushed to disk before the next batch starts:

    {"kind": "header", "format": 1, "settings": "<hash of the generate settings>", "created": "..."}
    {"kind": "chunk", "chunk_id": "...", "chunk_hash": "...", "generator": "rules", "model": null,
     "pairs": [{"question": "...", "answer": "...", "kind": "definition"}], "dropped": {"duplicate": 1}}
    {"kind": "chunk", "chunk_id": "...", ..., "pairs": [], "dropped": {}, "skipped": "references"}
    ...

Chunks with no content worth asking about (reference lists, acknowledgments, author lists, front
matter, tables of bare numbers: :mod:`papertune.generate.content`) are recorded as skipped before any
generator sees them (``generate.skip_non_content``). Every pair carries its kind of question
(:data:`papertune.generate.questions.KINDS`); the report shows the mix and the pairs per chunk.

A rerun skips every chunk with a record whose text hash and generator still match, so a run that
crashed, was interrupted or failed on a chunk (an LLM request error, say) continues where it stopped;
the error is raised only after the finished chunks are saved. Changed settings (another hash) start
the progress over. ``qa.jsonl`` is written atomically at the end, in chunk order.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

import papertune
from papertune.config import GENERATORS, INPUT_SELECTION, SPEED_ONLY, PapertuneConfig, settings_without
from papertune.errors import InputError, PapertuneError
from papertune.generate.base import ChunkResult, Generator
from papertune.generate.content import non_content_reason
from papertune.generate.llm import LLMGenerator, TeacherStats, prompt_fingerprint
from papertune.generate.questions import guess_kind
from papertune.generate.rows import pair_rows
from papertune.rundir import (
    CHUNKS,
    GENERATE_DIR,
    GENERATE_PROGRESS,
    GENERATE_REPORT,
    QA,
    atomic_path,
    read_chunks,
    record_stage,
    sha256_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from papertune.stage import StageSpec, run_files

log = logging.getLogger(__name__)

# The layout's names, under the names papertune.generate exports.
QA_FILE = QA
PROGRESS_FILE = GENERATE_PROGRESS
REPORT_FILE = GENERATE_REPORT
PROGRESS_FORMAT = 1
# Cheap generators first: a failing model does not hold back the pairs that need none.
RUN_ORDER = ("rules", "seq2seq", "llm")
assert set(RUN_ORDER) == set(GENERATORS)
# Bumped when a generator's output for the same input changes, so old progress is not reused.
GENERATOR_VERSIONS = {"rules": 3, "llm": 3, "seq2seq": 3}


def assign_generator(chunk_id: str, seed: int, shares: dict[str, float]) -> str:
    """The generator for a chunk: a point in [0, 1) from sha256(seed, id) falls into one share."""
    names = sorted(shares)
    total = sum(shares[n] for n in names)
    point = int.from_bytes(hashlib.sha256(f"{seed}:{chunk_id}".encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name in names:
        edge += shares[name] / total
        if point < edge:
            return name
    return names[-1]


def settings_hash(config: PapertuneConfig) -> str:
    """A hash of every setting that changes what a chunk's pairs are: the generate section less its SPEED_ONLY
    and INPUT_SELECTION settings (max_chunks picks chunks, it changes none) and less the settings of
    generators no chunk goes to, plus the segmenter the rules split sentences with."""
    gen = settings_without(config.generate, SPEED_ONLY, INPUT_SELECTION)
    used = set(gen["generators"])
    extra: dict[str, Any] = {}
    if "llm" in used:
        extra["prompt"] = prompt_fingerprint(config.generate.llm_evidence_first)
    else:
        del gen["llm"], gen["llm_min_support"]
    if "seq2seq" not in used:
        gen = {k: v for k, v in gen.items() if not k.startswith("seq2seq_")}
    settings = {
        **gen,
        **extra,
        "segmenter": config.ingest.segmenter,
        "versions": {name: GENERATOR_VERSIONS[name] for name in sorted(used)},
        "papertune": papertune.__version__,
    }
    return sha256_json(settings)[:16]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Progress:
    """The append-only record of finished chunks, ``RUN/generate/progress.jsonl``."""

    def __init__(self, path: Path, settings: str) -> None:
        self.path = path
        self.settings = settings
        self.records: dict[str, dict[str, Any]] = {}
        self.reset_reason: str | None = None
        self.unreadable_lines = 0
        self._fh: Any = None

    def _header(self) -> dict[str, Any]:
        return {
            "kind": "header",
            "format": PROGRESS_FORMAT,
            "settings": self.settings,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def open(self) -> None:
        """Read what earlier runs finished (if their settings match), then rewrite the file compactly and
        keep it open for appending. A line cut short by a crash is ignored."""
        header: dict[str, Any] | None = None
        if self.path.is_file():
            with self.path.open(encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        self.unreadable_lines += 1
                        log.warning("%s:%d: unreadable progress line (cut short by a crash?); that chunk is redone",
                                    self.path, number)
                        continue
                    if not isinstance(row, dict):
                        self.unreadable_lines += 1
                        continue
                    if row.get("kind") == "header" and header is None:
                        header = row
                    elif row.get("kind") == "chunk" and isinstance(row.get("chunk_id"), str):
                        self.records[row["chunk_id"]] = row  # a later record of a chunk wins
            if header is None or header.get("format") != PROGRESS_FORMAT or header.get("settings") != self.settings:
                self.reset_reason = "settings changed" if header is not None else "no header"
                if self.records or header is not None:
                    log.info("generate: the generate settings changed since %s was written (settings %s, now %s); "
                             "starting over", self.path, header.get("settings") if header else None, self.settings)
                self.records = {}
                header = None
        with atomic_path(self.path) as tmp, tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(header or self._header(), ensure_ascii=False) + "\n")
            for row in self.records.values():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._fh = self.path.open("a", encoding="utf-8")

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add finished chunks; on disk (flushed and fsync'd) when this returns."""
        if not rows:
            return
        for row in rows:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.records[row["chunk_id"]] = row
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def make_generator(name: str, config: PapertuneConfig, chat_model: Any = None) -> Generator:
    if name == "rules":
        from papertune.generate.rules import RulesGenerator

        return RulesGenerator(config.generate.pairs_per_chunk, config.ingest.segmenter)
    if name == "llm":
        return LLMGenerator(config, chat_model=chat_model)
    if name == "seq2seq":
        from papertune.generate.seq2seq import Seq2SeqGenerator

        return Seq2SeqGenerator(config)
    raise PapertuneError(f"generate.generators: unknown generator {name!r}")  # validated in the config


def load_chunks(path: Path) -> tuple[list[dict[str, Any]], list[str], int]:
    """Usable chunks (unique ids, as strings), the file:line problems, and how many repeated ids were skipped."""
    rows, problems = read_chunks(path)  # each skipped line is logged by the reader
    chunks, seen, repeated = [], set(), 0
    for row in rows:
        row["id"] = str(row["id"])
        if not isinstance(row["text"], str):
            problems.append(f"{path}: chunk {row['id']!r}: text is not a string; skipped")
            log.warning(problems[-1])
            continue
        if row["id"] in seen:
            repeated += 1
            log.warning("%s: chunk id %r appears more than once; only the first is used", path, row["id"])
            continue
        seen.add(row["id"])
        chunks.append(row)
    return chunks, problems, repeated


def _qa_rows(chunks: list[dict[str, Any]], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for chunk in chunks:
        record = records[chunk["id"]]
        rows += pair_rows(chunk, record["pairs"], record["generator"], record.get("model"))
    return rows


def _report(
    *,
    chunks_path: Path,
    usable: int,
    chunks: list[dict[str, Any]],
    problems: list[str],
    repeated: int,
    config: PapertuneConfig,
    settings: str,
    progress: Progress,
    assignment: dict[str, str],
    processed: int,
    resumed: int,
    seconds: float,
    error: str | None,
    teacher: dict[str, Any] | None,
) -> dict[str, Any]:
    pairs: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = {}
    kinds: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    per_chunk: Counter[int] = Counter()  # content chunks by number of pairs kept
    without = 0
    for chunk in chunks:
        record = progress.records.get(chunk["id"])
        if record is None:
            continue
        pairs[record["generator"]] += len(record["pairs"])
        dropped.setdefault(record["generator"], Counter()).update(record.get("dropped", {}))
        kinds.update(p.get("kind") or guess_kind(p["question"]) for p in record["pairs"])
        without += not record["pairs"]
        if record.get("skipped"):
            skipped[record["skipped"]] += 1
        else:
            per_chunk[len(record["pairs"])] += 1
    total_dropped: Counter[str] = Counter()
    for counts in dropped.values():
        total_dropped.update(counts)
    return {
        "finished": error is None,
        "error": error,
        "chunks_file": str(chunks_path),
        "malformed_lines": len(problems),
        "problems": problems[:200],
        "duplicate_chunk_ids": repeated,
        "chunks_in_file": usable,
        "chunks": len(chunks),
        "max_chunks": config.generate.max_chunks,
        "chunks_processed": processed,
        "chunks_resumed": resumed,
        "chunks_without_pairs": without,  # skipped ones included
        "skipped_non_content": sum(skipped.values()),
        "skipped_non_content_reasons": dict(sorted(skipped.items())),
        "content_chunks_with_pairs": sum(n for k, n in per_chunk.items() if k),
        "pairs_per_content_chunk": {str(k): n for k, n in sorted(per_chunk.items())},
        "kinds": dict(kinds.most_common()),
        # The llm generator's model, its replies in this run (not those of resumed chunks) and their tokens/s;
        # None when no chunk went to it in this run.
        "teacher": teacher,
        "chunks_per_generator": dict(sorted(Counter(assignment.values()).items())),
        "pairs": sum(pairs.values()),
        "pairs_per_generator": dict(sorted(pairs.items())),
        "dropped": {name: dict(sorted(counts.items())) for name, counts in sorted(dropped.items())},
        "dropped_total": dict(sorted(total_dropped.items())),
        "settings_hash": settings,
        "progress_reset": progress.reset_reason,
        "unreadable_progress_lines": progress.unreadable_lines,
        "seconds": round(seconds, 3),
    }


SPEC = StageSpec(
    name="generate",
    directory=GENERATE_DIR,
    help="chunks -> synthetic question-answer pairs (RUN/qa.jsonl)",
    description="Write grounded question-answer pairs for every chunk in RUN/chunks.jsonl with the generators in "
    "generate.generators (llm, seq2seq, rules). Interrupted generation resumes where it stopped.",
    # The rules generator splits sentences with the ingest segmenter.
    settings=("generate", "ingest.segmenter"),
    outputs=(QA, GENERATE_REPORT),
    inputs=run_files(CHUNKS),
)


def run(config: PapertuneConfig, *, chat_model: Any = None) -> Path:
    """Write ``RUN/qa.jsonl`` from ``RUN/chunks.jsonl``; returns its path.

    ``chat_model`` replaces the model ``generate.llm`` names (any object with the
    :class:`papertune.llm.ChatModel` interface), e.g. one already loaded.
    """
    cfg = config.generate
    run_dir = Path(config.run_dir)
    chunks_path = run_dir / CHUNKS
    if not chunks_path.is_file():
        raise InputError(
            f"{chunks_path} does not exist; run `papertune ingest DOCS_DIR --run-dir {run_dir}` first to write it"
        )
    started = time.perf_counter()
    chunks, problems, repeated = load_chunks(chunks_path)
    usable = len(chunks)
    if cfg.max_chunks:
        chunks = chunks[: cfg.max_chunks]
    if not chunks:
        log.warning("generate: %s has no usable chunks; writing an empty %s", chunks_path, QA)

    record_stage(run_dir, GENERATE_DIR, config)
    settings = settings_hash(config)
    progress = Progress(run_dir / GENERATE_PROGRESS, settings)
    progress.open()

    assignment = {c["id"]: assign_generator(c["id"], cfg.seed, cfg.generators) for c in chunks}
    hashes = {c["id"]: text_hash(c["text"]) for c in chunks}

    def finished(chunk_id: str) -> bool:
        record = progress.records.get(chunk_id)
        return (
            record is not None
            and record.get("chunk_hash") == hashes[chunk_id]
            and record.get("generator") == assignment[chunk_id]
        )

    todo = [c for c in chunks if not finished(c["id"])]
    resumed = len(chunks) - len(todo)
    processed = 0
    if cfg.skip_non_content:
        # Chunks with nothing to ask about are recorded as skipped before any generator sees them.
        reasons = {c["id"]: non_content_reason(c["text"], c.get("section"), config.ingest.segmenter) for c in todo}
        skipped = [c for c in todo if reasons[c["id"]]]
        progress.append([_record(c["id"], hashes[c["id"]], assignment[c["id"]], None, ChunkResult(),
                                 skipped=reasons[c["id"]]) for c in skipped])
        processed += len(skipped)
        todo = [c for c in todo if not reasons[c["id"]]]
        if skipped:
            log.info("generate: %d chunk(s) skipped as non-content (%s)", len(skipped),
                     ", ".join(f"{r} {n}" for r, n in sorted(Counter(reasons[c["id"]] for c in skipped).items())))
    by_generator = Counter(assignment[c["id"]] for c in todo)
    log.info("generate: %d chunks (%d finished earlier, %d to do: %s)", len(chunks), resumed, len(todo),
             ", ".join(f"{n} {name}" for name, n in sorted(by_generator.items())) or "none")

    teacher: TeacherStats | None = None  # the llm generator's, once it has run

    def report(error: str | None) -> dict[str, Any]:
        data = _report(chunks_path=chunks_path, usable=usable, chunks=chunks, problems=problems, repeated=repeated, config=config,
                       settings=settings, progress=progress, assignment=assignment, processed=processed,
                       resumed=resumed, seconds=time.perf_counter() - started, error=error,
                       teacher=teacher.report() if teacher is not None else None)
        write_json_atomic(run_dir / GENERATE_REPORT, data)
        return data

    try:
        with tqdm(total=len(todo), desc="generate", unit="chunk", disable=None) as bar:
            for name in RUN_ORDER:
                group = [c for c in todo if assignment[c["id"]] == name]
                if not group:
                    continue
                generator = make_generator(name, config, chat_model=chat_model)
                if isinstance(generator, LLMGenerator):
                    teacher = generator.stats
                for start in range(0, len(group), generator.batch_size):
                    batch = group[start : start + generator.batch_size]
                    done: list[dict[str, Any]] = []
                    try:
                        for chunk_id, result in generator.generate(batch):
                            done.append(_record(chunk_id, hashes[chunk_id], name, generator.model, result))
                    finally:
                        # Saved before any error goes further, so a rerun starts after these chunks.
                        progress.append(done)
                        processed += len(done)
                        bar.update(len(done))
        missing = [c["id"] for c in chunks if not finished(c["id"])]
        if missing:
            raise PapertuneError(f"generate: no result for {len(missing)} chunk(s), e.g. {missing[0]!r}")
    except BaseException as exc:
        message = str(exc) or type(exc).__name__
        log.error("generate: stopped after %d of %d chunks to do; the %d finished chunks are saved in %s and a "
                  "rerun of the same command continues from there", processed, len(todo),
                  resumed + processed, progress.path)
        try:
            report(message)
        finally:
            progress.close()
        raise
    progress.close()

    out = run_dir / QA
    rows = _qa_rows(chunks, progress.records)
    write_jsonl_atomic(out, rows)
    data = report(None)
    log.info(
        "generate: %d pairs from %d chunks (%s); dropped: %s -> %s",
        data["pairs"], len(chunks),
        ", ".join(f"{name} {n}" for name, n in data["pairs_per_generator"].items()) or "none",
        ", ".join(f"{reason} {n}" for reason, n in data["dropped_total"].items()) or "none",
        out,
    )
    if data["teacher"]:
        log.info("generate: the teacher %s wrote %d replies, %d tokens at %s tokens/s", data["teacher"]["model"],
                 data["teacher"]["replies"], data["teacher"]["reply_tokens"], data["teacher"]["reply_tokens_per_s"])
    return out


def _record(chunk_id: str, chunk_hash: str, generator: str, model: str | None, result: ChunkResult,
            skipped: str | None = None) -> dict[str, Any]:
    record = {
        "kind": "chunk",
        "chunk_id": chunk_id,
        "chunk_hash": chunk_hash,
        "generator": generator,
        "model": model,
        "pairs": result.pairs,
        "dropped": dict(result.dropped),
    }
    if skipped:
        record["skipped"] = skipped  # one of papertune.generate.content.SKIP_REASONS
    return record

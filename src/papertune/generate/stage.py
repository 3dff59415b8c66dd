"""The generate stage: ``RUN/chunks.jsonl`` -> ``RUN/qa.jsonl`` and ``RUN/generate/report.json``.

Each chunk goes to one generator (``generate.generators``: name -> share), chosen from a hash of the
seed and the chunk id, so reruns and resumes agree. Results are appended per batch to
``RUN/generate/progress.jsonl`` and flushed to disk before the next batch starts:

    {"kind": "header", "format": 1, "settings": "<hash of the generate settings>", "created": "..."}
    {"kind": "chunk", "chunk_id": "...", "chunk_hash": "...", "generator": "rules", "model": null,
     "pairs": [{"question": "...", "answer": "..."}], "dropped": {"duplicate": 1}}
    ...

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
from papertune.config import GENERATORS, PapertuneConfig, config_to_dict
from papertune.errors import InputError, PapertuneError
from papertune.generate.base import ChunkResult, Generator
from papertune.rundir import read_jsonl_lenient, record_stage, sha256_json, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)

CHUNKS_FILE = "chunks.jsonl"
QA_FILE = "qa.jsonl"
PROGRESS_FILE = "generate/progress.jsonl"
REPORT_FILE = "generate/report.json"
PROGRESS_FORMAT = 1
# Cheap generators first: a failing model does not hold back the pairs that need none.
RUN_ORDER = ("rules", "seq2seq", "llm")
assert set(RUN_ORDER) == set(GENERATORS)
# Bumped when a generator's output for the same input changes, so old progress is not reused.
GENERATOR_VERSIONS = {"rules": 1, "llm": 1, "seq2seq": 1}


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
    """A hash of every setting that changes what a chunk's pairs are (not speed or limits)."""
    gen = config_to_dict(config.generate)
    used = set(gen["generators"])
    settings: dict[str, Any] = {
        "generators": gen["generators"],
        "pairs_per_chunk": gen["pairs_per_chunk"],
        "seed": gen["seed"],
        "segmenter": config.ingest.segmenter,
        "versions": {name: GENERATOR_VERSIONS[name] for name in sorted(used)},
        "papertune": papertune.__version__,
    }
    if "llm" in used:
        from papertune.generate import llm as llm_generator

        settings["llm"] = {k: gen["llm"][k] for k in ("backend", "model", "max_new_tokens", "temperature")}
        settings["llm_min_support"] = gen["llm_min_support"]
        settings["prompt"] = sha256_json(
            [llm_generator.SYSTEM_PROMPT, llm_generator.EXAMPLE_DOCUMENT, llm_generator.EXAMPLE_REPLY]
        )
    if "seq2seq" in used:
        settings["seq2seq"] = {k: gen[k] for k in ("seq2seq_model", "seq2seq_num_beams")}
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(header or self._header(), ensure_ascii=False) + "\n")
            for row in self.records.values():
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
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
        from papertune.generate.llm import LLMGenerator

        return LLMGenerator(config, chat_model=chat_model)
    if name == "seq2seq":
        from papertune.generate.seq2seq import Seq2SeqGenerator

        return Seq2SeqGenerator(config)
    raise PapertuneError(f"generate.generators: unknown generator {name!r}")  # validated in the config


def load_chunks(path: Path) -> tuple[list[dict[str, Any]], list[str], int]:
    """Usable chunks (unique ids, as strings), the file:line problems, and how many repeated ids were skipped."""
    rows, problems = read_jsonl_lenient(path, required=("id", "text"))
    for problem in problems:
        log.warning(problem)
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
        for k, pair in enumerate(record["pairs"]):
            rows.append(
                {
                    "id": f"{chunk['id']}::{record['generator']}::{k}",
                    "question": pair["question"],
                    "answer": pair["answer"],
                    "chunk_id": chunk["id"],
                    "source": chunk.get("source"),
                    "title": chunk.get("title"),
                    "section": chunk.get("section"),
                    "page_start": chunk.get("page_start"),
                    "page_end": chunk.get("page_end"),
                    "generator": record["generator"],
                    "model": record.get("model"),
                    "parent_id": None,
                    "augmentation": None,
                }
            )
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
) -> dict[str, Any]:
    pairs: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = {}
    without = 0
    for chunk in chunks:
        record = progress.records.get(chunk["id"])
        if record is None:
            continue
        pairs[record["generator"]] += len(record["pairs"])
        dropped.setdefault(record["generator"], Counter()).update(record.get("dropped", {}))
        without += not record["pairs"]
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
        "chunks_without_pairs": without,
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


def run(config: PapertuneConfig, *, chat_model: Any = None) -> Path:
    """Write ``RUN/qa.jsonl`` from ``RUN/chunks.jsonl``; returns its path.

    ``chat_model`` replaces the model ``generate.llm`` names (any object with the
    :class:`papertune.llm.ChatModel` interface), e.g. one already loaded.
    """
    cfg = config.generate
    run_dir = Path(config.run_dir)
    chunks_path = run_dir / CHUNKS_FILE
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
        log.warning("generate: %s has no usable chunks; writing an empty %s", chunks_path, QA_FILE)

    stage = record_stage(run_dir, "generate", config)
    settings = settings_hash(config)
    progress = Progress(stage / Path(PROGRESS_FILE).name, settings)
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
    by_generator = Counter(assignment[c["id"]] for c in todo)
    log.info("generate: %d chunks (%d finished earlier, %d to do: %s)", len(chunks), resumed, len(todo),
             ", ".join(f"{n} {name}" for name, n in sorted(by_generator.items())) or "none")

    processed = 0

    def report(error: str | None) -> dict[str, Any]:
        data = _report(chunks_path=chunks_path, usable=usable, chunks=chunks, problems=problems, repeated=repeated, config=config,
                       settings=settings, progress=progress, assignment=assignment, processed=processed,
                       resumed=resumed, seconds=time.perf_counter() - started, error=error)
        write_json_atomic(run_dir / REPORT_FILE, data)
        return data

    try:
        with tqdm(total=len(todo), desc="generate", unit="chunk", disable=None) as bar:
            for name in RUN_ORDER:
                group = [c for c in todo if assignment[c["id"]] == name]
                if not group:
                    continue
                generator = make_generator(name, config, chat_model=chat_model)
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

    out = run_dir / QA_FILE
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
    return out


def _record(chunk_id: str, chunk_hash: str, generator: str, model: str | None, result: ChunkResult) -> dict[str, Any]:
    return {
        "kind": "chunk",
        "chunk_id": chunk_id,
        "chunk_hash": chunk_hash,
        "generator": generator,
        "model": model,
        "pairs": result.pairs,
        "dropped": dict(result.dropped),
    }

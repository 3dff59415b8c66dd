"""The ingest stage: a folder of documents -> ``RUN/chunks.jsonl`` and ``RUN/ingest/report.json``.

Each document is read in a worker process with a time limit, so one bad or huge file cannot stop or
hang the run. A finished document's chunks are cached under ``RUN/ingest/cache`` by content hash and
settings, so a rerun (or a run resumed after an interruption) only processes new or changed files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

import papertune
from papertune.config import INPUT_SELECTION, SPEED_ONLY, IngestConfig, PapertuneConfig, settings_without
from papertune.errors import DocumentError, InputError
from papertune.ingest.chunk import BUILTIN_TOKENIZERS, chunk_sentences, get_token_counter, sentences_of, text_hash
from papertune.ingest.document import ReadDocument
from papertune.ingest.segment import get_splitter
from papertune.rundir import (
    CHUNKS,
    INGEST_CACHE,
    INGEST_DIR,
    INGEST_REPORT,
    read_jsonl,
    record_stage,
    sha256_file,
    sha256_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from papertune.stage import CommandOption, StageSpec

log = logging.getLogger(__name__)

CHUNKS_FILE = CHUNKS  # the layout's names, under the names papertune.ingest exports
REPORT_FILE = INGEST_REPORT


@dataclasses.dataclass(frozen=True)
class IgnoredFile:
    """A file under the documents folder that is not ingested, and why."""

    path: Path
    reason: str


def discover(docs_dir: Path, extensions: list[str]) -> tuple[list[Path], list[IgnoredFile]]:
    """Files to ingest (sorted, so output order never depends on the file system) and files ignored.

    Symbolic links are followed, to files and to folders; one that points nowhere, or loops back to a
    folder it sits in, is ignored with that reason. Hidden files and folders (.git, .DS_Store) are skipped.
    """
    if not docs_dir.exists():
        raise InputError(f"documents folder {docs_dir} does not exist; pass the folder that holds your PDFs and Markdown")
    if not docs_dir.is_dir():
        raise InputError(f"{docs_dir} is a file, not a folder; pass the folder that holds your PDFs and Markdown")
    wanted = {e.lower() for e in extensions}
    found: list[Path] = []
    ignored: list[IgnoredFile] = []
    _walk(docs_dir, frozenset({docs_dir.resolve()}), wanted, found, ignored)
    found.sort()
    ignored.sort(key=lambda f: f.path)
    if not found:
        raise InputError(
            f"no documents under {docs_dir}: looked for {', '.join(sorted(wanted))} files "
            f"({len(ignored)} other files ignored); check the folder or ingest.extensions"
        )
    return found, ignored


def _walk(folder: Path, ancestors: frozenset[Path], wanted: set[str], found: list[Path],
          ignored: list[IgnoredFile]) -> None:
    """Add the files under ``folder`` to ``found`` or ``ignored``; ``ancestors``: the real folders above."""
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_symlink():
            try:
                target = path.resolve(strict=True)
            except FileNotFoundError:
                ignored.append(IgnoredFile(path, f"dangling symbolic link: its target {os.readlink(path)} does not exist"))
                continue
            except (RuntimeError, OSError):  # a loop of links: RuntimeError before Python 3.13, OSError after
                ignored.append(IgnoredFile(path, "symbolic link loop: the links point at each other"))
                continue
            if target in ancestors:
                ignored.append(IgnoredFile(path, f"symbolic link loop: it points to {target}, a folder it is in"))
                continue
        if path.is_dir():
            _walk(path, ancestors | {path.resolve()}, wanted, found, ignored)
        elif not path.is_file():
            ignored.append(IgnoredFile(path, "not a regular file"))
        elif path.suffix.lower() in wanted:
            found.append(path)
        else:
            ignored.append(IgnoredFile(path, f"not one of ingest.extensions ({', '.join(sorted(wanted))})"))


def cache_key(file_hash: str, cfg: IngestConfig) -> str:
    """The key of one document's cached chunks: its content and every setting that changes its chunks. Left
    out: SPEED_ONLY settings (workers) and INPUT_SELECTION ones -- docs_dir and extensions say which files
    are read, and max_pages, max_file_mb and doc_timeout_s only refuse a document (a refused one is never
    cached), so neither changes the chunks of a document that was read."""
    settings = settings_without(cfg, SPEED_ONLY, INPUT_SELECTION)
    return sha256_json({"file": file_hash, "settings": settings, "papertune": papertune.__version__})[:32]


def _init_worker() -> None:
    # Parallelism comes from documents; Tesseract's own OpenMP threads would only fight over the cores.
    os.environ["OMP_THREAD_LIMIT"] = "1"


def process_document(path: str, source: str, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Read, clean, segment and chunk one file. Runs in a worker process; returns plain data."""
    cfg = IngestConfig(**cfg_dict)
    file_path = Path(path)
    started = time.perf_counter()
    size_mb = file_path.stat().st_size / 2**20
    if size_mb > cfg.max_file_mb:
        raise DocumentError(
            f"{source}: {size_mb:.0f} MB, over ingest.max_file_mb={cfg.max_file_mb:g}; raise it to ingest this file"
        )
    # Loaded by the parent before the workers fork (see _run_documents); imported here so that importing this
    # module (the CLI, the pipeline) does not load PyMuPDF.
    from papertune.ingest.markdown import read_markdown
    from papertune.ingest.pdf import read_pdf

    if file_path.suffix.lower() == ".pdf":
        doc: ReadDocument = read_pdf(file_path, source, cfg)
        kind = "pdf"
    else:
        doc = read_markdown(file_path, source, cfg)
        kind = "markdown"
    sentences = sentences_of(doc.paragraphs, cfg.segmenter)
    drafts = chunk_sentences(
        sentences,
        get_token_counter(cfg.tokenizer),
        budget=cfg.chunk_tokens,
        overlap=cfg.chunk_overlap_sentences,
        min_tokens=cfg.min_chunk_tokens,
    )
    if not drafts:
        doc.warnings.append("no text left after cleaning")
    return {
        "kind": kind,
        "title": doc.title,
        "pages": doc.pages,
        "ocr_pages": doc.ocr_pages,
        "blank_pages": doc.blank_pages,
        "ocr_skipped_pages": doc.ocr_skipped_pages,
        "encoding": doc.encoding,
        "sentences": len(sentences),
        "warnings": doc.warnings,
        "chunks": [d.to_dict() for d in drafts],
        "seconds": round(time.perf_counter() - started, 4),
    }


def _describe(exc: BaseException, source: str, cfg: IngestConfig) -> str:
    if isinstance(exc, concurrent.futures.TimeoutError):
        return f"{source}: not finished after {cfg.doc_timeout_s:g} s (ingest.doc_timeout_s); raise it or check the file"
    if isinstance(exc, DocumentError):
        return str(exc)
    return f"{source}: unexpected {type(exc).__name__}: {exc}"


def _run_documents(
    todo: list[tuple[Path, str]], cfg: IngestConfig
) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """Process documents in worker processes; returns source -> (result, error message)."""
    from pebble import ProcessPool

    # Forked workers start with the readers (and PyMuPDF), the tokenizer and the sentence splitter already
    # loaded, instead of each loading them again before its first document.
    import papertune.ingest.markdown  # noqa: F401
    import papertune.ingest.pdf  # noqa: F401

    get_token_counter(cfg.tokenizer)
    get_splitter(cfg.segmenter)

    cfg_dict = dataclasses.asdict(cfg)
    results: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    if not todo:
        return results
    workers = min(cfg.workers, len(todo))
    with ProcessPool(max_workers=workers, initializer=_init_worker) as pool:
        futures = {
            pool.schedule(process_document, args=(str(path), source, cfg_dict), timeout=cfg.doc_timeout_s): source
            for path, source in todo
        }
        with tqdm(total=len(futures), desc="ingest", unit="doc", disable=None) as bar:
            for future in concurrent.futures.as_completed(futures):
                source = futures[future]
                try:
                    results[source] = (future.result(), None)
                except BaseException as exc:  # noqa: BLE001 - every failure is reported per document
                    message = _describe(exc, source, cfg)
                    log.error(message)
                    log.debug("traceback for %s", source, exc_info=exc)
                    results[source] = (None, message)
                bar.update(1)
    return results


def _inputs(config: PapertuneConfig) -> list[tuple[str, Path]]:
    docs = Path(config.ingest.docs_dir)
    files, _ignored = discover(docs, config.ingest.extensions)
    return [(f"docs/{path.relative_to(docs).as_posix()}", path) for path in files]


SPEC = StageSpec(
    name="ingest",
    directory=INGEST_DIR,
    help="PDFs and Markdown -> clean, sentence-aligned chunks (RUN/chunks.jsonl)",
    description="Extract, clean, segment and chunk every PDF and Markdown file under DOCS_DIR. Pages without a "
    "text layer are OCRed with Tesseract. Unchanged documents are reused from the last run. Exit code 3 means "
    "some documents failed (listed in RUN/ingest/report.json); the rest were written.",
    settings=("ingest",),
    outputs=(CHUNKS, INGEST_REPORT),
    inputs=_inputs,
    options=(
        CommandOption(("docs_dir",), "folder of documents (default: ingest.docs_dir)", setting="ingest.docs_dir",
                      metavar="DOCS_DIR"),
        CommandOption(("--workers", "-j"), "documents processed in parallel (ingest.workers)",
                      setting="ingest.workers", type=int),
    ),
    failures=lambda run_dir: [doc["reason"] for doc in failed_documents(run_dir)],
)


def run(config: PapertuneConfig, docs_dir: str | Path | None = None) -> Path:
    """Ingest ``docs_dir`` (default ``config.ingest.docs_dir``) into ``RUN/chunks.jsonl``; returns its path.

    Per-document failures do not raise: they are logged and listed in ``RUN/ingest/report.json``
    (see :func:`failed_documents`), and the rest of the corpus is written.
    """
    cfg = config.ingest
    if docs_dir is not None:
        cfg = dataclasses.replace(cfg, docs_dir=str(docs_dir))
        config = dataclasses.replace(config, ingest=cfg)
    run_dir = Path(config.run_dir)
    docs = Path(cfg.docs_dir)
    files, ignored = discover(docs, cfg.extensions)
    if cfg.tokenizer.lower() not in BUILTIN_TOKENIZERS:
        get_token_counter(cfg.tokenizer)  # fail fast on a bad tokenizer setting, before any work
    record_stage(run_dir, INGEST_DIR, config)
    cache_dir = run_dir / INGEST_CACHE
    cache_dir.mkdir(exist_ok=True)
    started = time.perf_counter()

    entries: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    todo: list[tuple[Path, str]] = []
    for path in files:
        source = path.relative_to(docs).as_posix()
        keys[source] = cache_key(sha256_file(path), cfg)
        cached = cache_dir / f"{keys[source]}.json"
        if cached.is_file():
            entries[source] = {**json.loads(cached.read_text(encoding="utf-8")), "status": "cached"}
        else:
            todo.append((path, source))
    log.info("ingest: %d documents (%d cached, %d to process) with %d worker(s)", len(files),
             len(files) - len(todo), len(todo), min(cfg.workers, max(len(todo), 1)))

    for source, (result, error) in _run_documents(todo, cfg).items():
        if result is None:
            entries[source] = {"status": "failed", "reason": error, "chunks": []}
            continue
        result["status"] = "ok"
        entries[source] = result
        # Cached as soon as it is known, so an interrupted run keeps every finished document.
        write_json_atomic(cache_dir / f"{keys[source]}.json", result)

    rows, seen, duplicates = [], set(), 0
    report_docs = []
    for path in files:
        source = path.relative_to(docs).as_posix()
        entry = entries[source]
        kept = 0
        for index, chunk in enumerate(entry.get("chunks", [])):
            digest = text_hash(chunk["text"])
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            kept += 1
            rows.append(
                {
                    "id": f"{source}#{index:04d}",
                    "text": chunk["text"],
                    "source": source,
                    "title": entry.get("title"),
                    "section": chunk["section"],
                    "page_start": chunk["page_start"],
                    "page_end": chunk["page_end"],
                    "n_tokens": chunk["n_tokens"],
                    "ocr": chunk["ocr"],
                    "hash": digest,
                }
            )
        report_docs.append(
            {
                "source": source,
                "kind": entry.get("kind"),
                "status": entry["status"],
                "reason": entry.get("reason"),
                "pages": entry.get("pages"),
                "ocr_pages": entry.get("ocr_pages", []),
                "blank_pages": entry.get("blank_pages", []),
                "ocr_skipped_pages": entry.get("ocr_skipped_pages", []),
                "encoding": entry.get("encoding"),
                "sentences": entry.get("sentences"),
                "chunks": kept,
                "seconds": entry.get("seconds"),
                "warnings": entry.get("warnings", []),
            }
        )
        for warning in entry.get("warnings", []):
            log.warning("%s: %s", source, warning)

    out = run_dir / CHUNKS
    write_jsonl_atomic(out, rows)
    failed = [d for d in report_docs if d["status"] == "failed"]
    report = {
        "docs_dir": str(docs),
        "documents": len(files),
        "processed": len(todo),
        "cached": len(files) - len(todo),
        "failed": len(failed),
        "ignored_files": [f.path.relative_to(docs).as_posix() for f in ignored],
        "ignored_reasons": {f.path.relative_to(docs).as_posix(): f.reason for f in ignored},
        "pages": sum(d["pages"] or 0 for d in report_docs),
        "ocr_pages": sum(len(d["ocr_pages"]) for d in report_docs),
        "blank_pages": sum(len(d["blank_pages"]) for d in report_docs),
        "ocr_skipped_pages": sum(len(d["ocr_skipped_pages"]) for d in report_docs),
        "decoded_from": {d["source"]: d["encoding"] for d in report_docs if d["encoding"] not in (None, "utf-8")},
        "chunks": len(rows),
        "duplicate_chunks_dropped": duplicates,
        "seconds": round(time.perf_counter() - started, 3),
        "per_document": report_docs,
    }
    write_json_atomic(run_dir / INGEST_REPORT, report)
    log.info(
        "ingest: %d chunks from %d documents (%d pages, %d OCR), %d duplicate chunks dropped, %d failed -> %s",
        len(rows), len(files) - len(failed), report["pages"], report["ocr_pages"], duplicates, len(failed), out,
    )
    return out


def failed_documents(run_dir: str | Path) -> list[dict[str, Any]]:
    """The report's failed documents (source and reason) of the last ingest in ``run_dir``."""
    report = json.loads((Path(run_dir) / INGEST_REPORT).read_text(encoding="utf-8"))
    return [d for d in report["per_document"] if d["status"] == "failed"]


def load_chunks(run_dir: str | Path) -> list[dict[str, Any]]:
    return list(read_jsonl(Path(run_dir) / CHUNKS))

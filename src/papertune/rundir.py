"""The run directory: every stage reads and writes plain files here, under the names laid out below.

Writes go to a temporary file (or folder) in the same folder and are renamed into place, so a reader (or a
resumed run) never sees half a file. Each stage also records the resolved config and package versions it
ran with, and the config as the run's (``RUN/config.yaml``). Pairs and chunks are read through one checked
reader (:func:`read_rows`) that skips and reports bad lines with their file and line number.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from papertune.config import PapertuneConfig, config_to_dict
from papertune.errors import InputError

log = logging.getLogger(__name__)

# Packages worth recording beside a stage's outputs; missing ones are simply left out.
RECORDED_PACKAGES = (
    "papertune",
    "pymupdf",
    "pytesseract",
    "markdown-it-py",
    "nupunkt",
    "nltk",
    "tiktoken",
    "torch",
    "transformers",
    "datasets",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "unsloth",
)

# --- layout: every file and folder of RUN, named once (paths relative to the run directory) -------------

CHUNKS = "chunks.jsonl"  # ingest: the corpus as chunks
QA = "qa.jsonl"  # generate: question-answer pairs
QA_CURATED = "qa_curated.jsonl"  # curate: the pairs kept ...
QA_DROPPED = "qa_dropped.jsonl"  # ... and those dropped, with the reason
QA_AUGMENTED = "qa_augmented.jsonl"  # augment: curated pairs and their variants
OUTPUT_JSON = "output.json"  # build: every formatted example, JSON lines
DATASET = "dataset"  # build: the datasets.DatasetDict (train/test) the trainer reads
DATASET_CARD = "dataset_card.md"
SUMMARY_JSON = "summary.json"  # papertune run: what ran and what the run directory holds
SUMMARY_MD = "summary.md"
RUN_CONFIG = "config.yaml"  # the resolved config the run was last made with; commands on RUN default to it

# Each stage's own folder holds its report, config.yaml, versions.json and stage_fingerprint.json.
INGEST_DIR = "ingest"
GENERATE_DIR = "generate"
CURATE_DIR = "curate"
AUGMENT_DIR = "augment"
BUILD_DIR = "build"
TRAIN_DIR = "train"
EVAL_DIR = "eval"
EXPORT_DIR = "export"
INDEX_DIR = "index"  # the chunk embedding index of ask --cite and serve
REPORT = "report.json"  # RUN/<stage>/report.json
STAGE_CONFIG = "config.yaml"  # RUN/<stage>/config.yaml: the resolved config the stage ran with
STAGE_VERSIONS = "versions.json"  # RUN/<stage>/versions.json: package versions and git commit
STAGE_FINGERPRINT = "stage_fingerprint.json"  # RUN/<stage>/stage_fingerprint.json: papertune run's record

INGEST_REPORT = f"{INGEST_DIR}/{REPORT}"
INGEST_CACHE = f"{INGEST_DIR}/cache"  # one file of chunks per document content and settings
GENERATE_REPORT = f"{GENERATE_DIR}/{REPORT}"
GENERATE_PROGRESS = f"{GENERATE_DIR}/progress.jsonl"  # finished chunks, appended as they finish
CURATE_REPORT = f"{CURATE_DIR}/{REPORT}"
AUGMENT_REPORT = f"{AUGMENT_DIR}/{REPORT}"
BUILD_REPORT = f"{BUILD_DIR}/{REPORT}"
BUILD_LENGTHS_PLOT = f"{BUILD_DIR}/lengths.png"
TRAIN_ADAPTER = f"{TRAIN_DIR}/adapter"  # the final LoRA adapter, tokenizer and chat template
TRAIN_CHECKPOINTS = f"{TRAIN_DIR}/checkpoints"  # complete checkpoints, checkpoint-N/
TRAIN_MERGED = f"{TRAIN_DIR}/merged"  # the adapter merged into a 16-bit base model (train.merge_16bit)
TRAIN_METRICS = f"{TRAIN_DIR}/metrics.jsonl"  # every log and evaluation
TRAIN_TENSORBOARD = f"{TRAIN_DIR}/tensorboard"
TRAIN_BEST_CHECKPOINT = f"{TRAIN_DIR}/best_checkpoint.json"
TRAIN_LOSS_TABLE = f"{TRAIN_DIR}/loss_table.md"
TRAIN_LOSS_CURVE = f"{TRAIN_DIR}/loss_curve.png"
TRAIN_REPORT = f"{TRAIN_DIR}/{REPORT}"
TRAIN_FINGERPRINT = f"{TRAIN_DIR}/fingerprint.json"  # train's own resume check
TRAIN_PLANNED_ROWS = f"{TRAIN_DIR}/planned_rows.json"  # packed_length=auto's plan, checked on resume
EVAL_METRICS = f"{EVAL_DIR}/metrics.json"
EVAL_ANSWERS = f"{EVAL_DIR}/answers.jsonl"
EVAL_REPORT_MD = f"{EVAL_DIR}/report.md"
EVAL_METRICS_PLOT = f"{EVAL_DIR}/metrics.png"
EVAL_PER_DOCUMENT_PLOT = f"{EVAL_DIR}/per_document.png"
EVAL_FOUR_WAY_PLOT = f"{EVAL_DIR}/four_way.png"
EVAL_ANSWERS_CACHE = f"{EVAL_DIR}/answers_cache.jsonl"  # answers kept as each model finishes (papertune.evaluate)
EXPORT_REPORT = f"{EXPORT_DIR}/{REPORT}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def replace_dir(staged: str | Path, path: str | Path) -> None:
    """Put the finished folder ``staged`` at ``path``: an old folder there is renamed aside first and removed
    afterwards, so ``path`` is at no time a half-written folder."""
    staged, path = Path(staged), Path(path)
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(staged, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` (dot-named, so never taken for data); when the block
    succeeds it replaces ``path`` (:func:`replace_dir`), when it fails it is removed and ``path`` is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line; returns the number of rows."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
            count += 1
    return count


def _json_problem(exc: ValueError | RecursionError) -> str:
    """Why a line is not JSON, in a few words (numbers past Python's digit limit and deep nesting too)."""
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).partition(";")[0]


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every row of a JSONL file papertune wrote itself (metrics, caches, outputs); an ``InputError`` naming
    the file and line where a line is not a JSON object or the file not UTF-8. Pairs and chunks, which users
    bring too, go through :func:`read_rows`, which skips and reports bad lines instead."""
    path = Path(path)
    damaged = "the file is damaged; remove it, or rerun the stage that writes it"
    number = 0
    with path.open(encoding="utf-8") as fh:
        try:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    raise InputError(f"{path}:{number}: not valid JSON ({_json_problem(exc)}); {damaged}") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}; {damaged}")
                yield row
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}:{number + 1}: not UTF-8 text ({exc.reason}); {damaged}") from None


@dataclass(frozen=True)
class RowShape:
    """The fields a row of a JSONL file must have and the types they may take. A string field must also be
    non-blank; an id may be an integer and is read as a string. ``optional`` fields are checked only when
    present and not null."""

    required: dict[str, tuple[type, ...]]
    optional: dict[str, tuple[type, ...]] = field(default_factory=dict)


ID = (str, int)  # ids: strings, or integers (read as strings)
PAIR = RowShape(required={"id": ID, "question": (str,), "answer": (str,)}, optional={"chunk_id": ID})
PAIR_OF_CHUNK = RowShape(required={**PAIR.required, "chunk_id": ID})  # a pair checked against its chunk
CHUNK = RowShape(required={"id": ID, "text": (str,)}, optional={"source": (str,)})

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


def _type_problem(name: str, value: Any, types: tuple[type, ...]) -> str | None:
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
    return f"{name} must be {wanted}, got {_TYPE_NAMES.get(type(value), type(value).__name__)}"


def _row_problem(row: Any, shape: RowShape) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in shape.required if row.get(k) is None or (isinstance(row[k], str) and not row[k].strip())]
    if missing:
        return f"empty or missing {', '.join(missing)}"
    checks = [(k, shape.required[k]) for k in shape.required]
    checks += [(k, types) for k, types in shape.optional.items() if row.get(k) is not None]
    wrong = [problem for k, types in checks if (problem := _type_problem(k, row[k], types))]
    return "; ".join(wrong) or None


def _is_text(row: dict[str, Any]) -> bool:
    """Whether every string of ``row`` can be written as UTF-8 (JSON's \\ud800 escapes decode to lone
    surrogates, which cannot)."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_rows(path: str | Path, shape: RowShape) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a JSONL file that have ``shape`` (ids as strings), and a ``file:line: problem`` message,
    logged as a warning, for each line skipped: not valid JSON, not an object, a required field empty or
    missing, a field of the wrong type, or a string that is not text (a lone surrogate escape). Bytes that are
    not UTF-8 are read as U+FFFD."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    path = Path(path)
    id_fields = [k for k, types in {**shape.optional, **shape.required}.items() if types == ID]
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                problems.append(f"{path}:{number}: not valid JSON ({_json_problem(exc)}); line skipped")
                continue
            problem = _row_problem(row, shape)
            if not problem and "\\u" in line and not _is_text(row):
                problem = "holds a lone surrogate escape (\\ud800-\\udfff), which is not text"
            if problem:
                problems.append(f"{path}:{number}: {problem}; line skipped")
                continue
            for key in id_fields:
                if row.get(key) is not None:
                    row[key] = str(row[key])
            rows.append(row)
    for message in problems:
        log.warning("%s", message)
    return rows, problems


def read_chunks(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The chunks of a chunks file (:data:`CHUNK` rows) and a message for each line skipped."""
    return read_rows(path, CHUNK)


def read_pairs(path: str | Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Question-answer rows of a pairs file (:data:`PAIR` rows): (rows, skipped-line messages, duplicate-id
    messages).

    Each message is logged as a warning; a row whose id was seen before is skipped (variants point at
    ids, so ids must be unique).
    """
    rows, problems = read_rows(path, PAIR)
    seen: set[str] = set()
    unique, duplicates = [], []
    for row in rows:
        if row["id"] in seen:
            duplicates.append(f"{path}: id {row['id']!r} occurs more than once; later copies skipped")
            continue
        seen.add(row["id"])
        unique.append(row)
    for message in duplicates:
        log.warning("%s", message)
    return unique, problems, duplicates


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


SAMPLE_BYTES = 1 << 20  # the head and tail of a file that :func:`sample_digest` reads


def sample_digest(path: str | Path) -> str:
    """A short name for a large file's contents, read in two MiB: its name, its size, and its first and last
    MiB (for model files: the header, the tensor index and the last weights). The same file in two places
    gets the same digest; reading whole gigabytes for it would take seconds."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}:".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(size - SAMPLE_BYTES, 0))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:12]


def data_files(folder: str | Path) -> list[Path]:
    """The files under ``folder`` that hold data, sorted: not temporary (dot-named, e.g. ``.x.tmp``) and not
    the ``cache-*`` files datasets writes beside a saved dataset."""
    folder = Path(folder)
    return [item for item in sorted(folder.rglob("*"))
            if item.is_file() and not any(part.startswith(".") for part in item.relative_to(folder).parts)
            and not item.name.startswith("cache-")]


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def package_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions.update(extra or {})
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    path = Path(run_dir) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_run_config(run_dir: str | Path, cfg: PapertuneConfig) -> Path:
    """Write ``RUN/config.yaml``, the resolved config the run was made with (left untouched when it already
    says the same), which commands given ``--run-dir RUN`` and no ``--config`` load. ``run_dir`` is left out:
    the file's own folder is the run directory, wherever it has been moved."""
    path = Path(run_dir) / RUN_CONFIG
    settings = {key: value for key, value in config_to_dict(cfg).items() if key != "run_dir"}
    text = yaml.safe_dump(settings, sort_keys=False)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_text_atomic(path, text)
    return path


def record_stage(
    run_dir: str | Path, stage: str, cfg: PapertuneConfig, extra_versions: dict[str, str] | None = None
) -> Path:
    """Write ``RUN/<stage>/config.yaml`` (the resolved config) and ``versions.json``, and the config as the
    run's (:func:`record_run_config`); returns the stage dir."""
    path = stage_dir(run_dir, stage)
    write_text_atomic(path / STAGE_CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    record_run_config(run_dir, cfg)
    write_json_atomic(
        path / STAGE_VERSIONS,
        {
            "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "packages": package_versions(extra_versions),
        },
    )
    return path

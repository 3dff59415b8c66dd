"""The run directory: every stage reads and writes plain files here.

Writes go to a temporary file in the same folder and are renamed into place, so a reader (or a resumed
run) never sees half a file. Each stage also records the resolved config and package versions it ran with.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import logging

import yaml

from papertune.config import PapertuneConfig, config_to_dict

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


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def read_jsonl_lenient(path: str | Path, required: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSONL file, and a ``file:line: problem`` message for each row that had to be skipped.

    A malformed line, a line that is not an object, or an object missing a required key (or with it
    empty) is skipped and reported; the rest are used.
    """
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg}); line skipped")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}; line skipped")
                continue
            missing = [k for k in required if row.get(k) in (None, "") or (isinstance(row.get(k), str) and not row[k].strip())]
            if missing:
                problems.append(f"{path}:{number}: empty or missing {', '.join(missing)}; line skipped")
                continue
            rows.append(row)
    return rows, problems


def read_pairs(path: str | Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Question-answer rows of a pairs file: (rows, malformed-line messages, duplicate-id messages).

    Each message is logged as a warning; a row whose id was seen before is skipped (variants point at
    ids, so ids must be unique).
    """
    rows, problems = read_jsonl_lenient(path, required=("id", "question", "answer"))
    seen: set[str] = set()
    unique, duplicates = [], []
    for row in rows:
        row["id"] = str(row["id"])
        if row["id"] in seen:
            duplicates.append(f"{path}: id {row['id']!r} occurs more than once; later copies skipped")
            continue
        seen.add(row["id"])
        unique.append(row)
    for message in problems + duplicates:
        log.warning("%s", message)
    return unique, problems, duplicates


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


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


def record_stage(
    run_dir: str | Path, stage: str, cfg: PapertuneConfig, extra_versions: dict[str, str] | None = None
) -> Path:
    """Write ``RUN/<stage>/config.yaml`` (the resolved config) and ``versions.json``; returns the stage dir."""
    path = stage_dir(run_dir, stage)
    write_text_atomic(path / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    write_json_atomic(
        path / "versions.json",
        {
            "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "packages": package_versions(extra_versions),
        },
    )
    return path

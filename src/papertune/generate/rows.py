"""The rows of ``RUN/qa.jsonl`` that a chunk's pairs become: one function, used by the generate stage and by
curate's refill (:mod:`papertune.curate.refill`), so that both write the same fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from papertune.generate.questions import guess_kind


def pair_rows(chunk: dict[str, Any], pairs: Sequence[dict[str, Any]], generator: str, model: str | None,
              tag: str | None = None) -> list[dict[str, Any]]:
    """One row per pair, with the chunk's source fields; ids ``CHUNK::GENERATOR::K`` (``CHUNK::TAG::K`` with
    ``tag``: pairs written again for the chunk get ids of their own)."""
    return [
        {
            "id": f"{chunk['id']}::{tag or generator}::{k}",
            "question": pair["question"],
            "answer": pair["answer"],
            "kind": pair.get("kind") or guess_kind(pair["question"]),
            "chunk_id": chunk["id"],
            "source": chunk.get("source"),
            "title": chunk.get("title"),
            "section": chunk.get("section"),
            "page_start": chunk.get("page_start"),
            "page_end": chunk.get("page_end"),
            "generator": generator,
            "model": model,
            "parent_id": None,
            "augmentation": None,
        }
        for k, pair in enumerate(pairs)
    ]

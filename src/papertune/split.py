"""Which pairs train, which test, and which documents are kept out of training altogether.

- :func:`hold_out_documents`: a seeded draw of whole documents (``build.heldout_documents`` and
  ``build.outside_documents``, shares of the documents that have pairs). Documents whose chunks are
  near-duplicates of each other (:func:`same_text_documents`: the same paper as Markdown and as PDF)
  are drawn together, so a held-out document never has a twin in training.
- :func:`grouped_split`: the 80/20 split (seed 3407 like the training report's ``train_test_split``) of
  the remaining pairs, by group: every pair of a source chunk (or document), with all its augmented
  variants, lands on one side, and groups that share near-duplicate questions are joined first.
- :func:`count_leaks`: near-duplicate questions and shared chunks across a split, for the grouped split
  (none, by construction) and for what the report's plain row-level split would have leaked.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from papertune.config import BuildConfig
from papertune.errors import InputError
from papertune.text import jaccard, shingles

SHINGLE_WORDS = 3
# Chunks at least this similar (Jaccard of word 3-shingles) say the same thing: the same text in two files.
SAME_TEXT_THRESHOLD = 0.5


class NearDuplicates:
    """MinHash LSH over word 3-shingles; candidates are confirmed with the exact Jaccard similarity."""

    def __init__(self, texts: list[str], threshold: float) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.shingles = [shingles(t, SHINGLE_WORDS) for t in texts]
        self.lsh = MinHashLSH(threshold=threshold, num_perm=128)
        self.hashes = []
        for i, sh in enumerate(self.shingles):
            mh = MinHash(num_perm=128, seed=1)
            mh.update_batch([s.encode() for s in sh])
            self.hashes.append(mh)
            if sh:
                self.lsh.insert(i, mh)
        self._neighbours: dict[int, list[int]] = {}  # split, RAFT and leak counts ask for the same ones

    def neighbours(self, i: int) -> list[int]:
        if i not in self._neighbours:
            self._neighbours[i] = [
                j for j in (self.lsh.query(self.hashes[i]) if self.shingles[i] else [])
                if j != i and jaccard(self.shingles[i], self.shingles[j]) >= self.threshold
            ]
        return self._neighbours[i]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# --- documents kept out of training ----------------------------------------------------------------


@dataclass
class DocumentSplit:
    """Document names (chunk ``source``) per role: trained on, held out (in the index), outside (not even there)."""

    train: list[str]
    heldout: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {"train": self.train, "heldout": self.heldout, "outside": self.outside}

    def role(self, source: str | None) -> str:
        """``heldout``, ``outside`` or ``train`` for a pair whose chunk comes from ``source``."""
        if source in self.heldout:
            return "heldout"
        if source in self.outside:
            return "outside"
        return "train"


def _draw_count(share: float, groups: int) -> int:
    if share <= 0:
        return 0
    return max(1, round(share * groups)) if groups >= 3 else round(share * groups)


def same_text_documents(chunks: list[dict], near: NearDuplicates) -> dict[str, frozenset[str]]:
    """Each document of ``chunks`` (by ``source``) with the documents holding the same text, itself included:
    documents are joined when any of their chunks are near-duplicates (``near`` indexes the chunks' texts in
    order), e.g. a paper as Markdown and as PDF."""
    names = sorted({c["source"] for c in chunks if c.get("source")})
    index = {name: i for i, name in enumerate(names)}
    groups = _UnionFind(len(names))
    for i, chunk in enumerate(chunks):
        for j in near.neighbours(i):
            if chunk.get("source") and chunks[j].get("source"):
                groups.union(index[chunk["source"]], index[chunks[j]["source"]])
    members: dict[int, set[str]] = {}
    for name in names:
        members.setdefault(groups.find(index[name]), set()).add(name)
    return {name: frozenset(members[groups.find(index[name])]) for name in names}


def hold_out_documents(rows: list[dict], twins: dict[str, frozenset[str]], cfg: BuildConfig) -> DocumentSplit:
    """The documents kept out of training: a draw with ``build.seed`` over the sorted groups of documents
    that have pairs (at least one group per share > 0 once there are three). A group is a document with its
    ``twins`` (:func:`same_text_documents`): the same text in two files is drawn as one document."""
    with_pairs = sorted({r["source"] for r in rows if r.get("source")})
    if cfg.heldout_documents <= 0 and cfg.outside_documents <= 0:
        return DocumentSplit(train=with_pairs)
    groups = {twins.get(name, frozenset({name})) for name in with_pairs}
    order = sorted((sorted(group) for group in groups), key=lambda names: names[0])
    random.Random(cfg.seed).shuffle(order)
    n_heldout = _draw_count(cfg.heldout_documents, len(order))
    n_outside = _draw_count(cfg.outside_documents, len(order))
    if n_heldout + n_outside >= len(order):
        raise InputError(
            f"build.heldout_documents={cfg.heldout_documents} and build.outside_documents={cfg.outside_documents} "
            f"would keep {n_heldout + n_outside} of the {len(order)} document(s) with pairs (documents with the "
            "same text count as one) out of training, leaving nothing to train on: lower them, or add documents"
        )

    def flat(groups_: Iterable[list[str]]) -> list[str]:
        return sorted(name for group in groups_ for name in group)

    heldout, outside = flat(order[:n_heldout]), flat(order[n_heldout:n_heldout + n_outside])
    return DocumentSplit(train=[d for d in with_pairs if d not in set(heldout) | set(outside)],
                         heldout=heldout, outside=outside)


# --- train and test --------------------------------------------------------------------------------


def grouped_split(rows: list[dict], cfg: BuildConfig, dups: NearDuplicates) -> set[int]:
    """Indices of test rows: whole groups, joined over near-duplicate questions, ~test_size of the rows."""
    groups = _UnionFind(len(rows))
    # Variants share their original's chunk and source; a row without either is grouped by its original.
    key_field = "chunk_id" if cfg.group_by == "chunk" else "source"
    first_of_key: dict[Any, int] = {}
    for i, row in enumerate(rows):
        key = row.get(key_field) or row.get("parent_id") or row["id"]
        groups.union(i, first_of_key.setdefault(key, i))
    for i in range(len(rows)):
        for j in dups.neighbours(i):
            groups.union(i, j)

    components: dict[int, list[int]] = {}
    for i in range(len(rows)):
        components.setdefault(groups.find(i), []).append(i)
    order = sorted(components)  # by first row: independent of hash seeds
    random.Random(cfg.seed).shuffle(order)
    target = cfg.test_size * len(rows)
    test: set[int] = set()
    for root in order:
        if len(test) >= target:
            break
        if len(components) > 1 and len(test) + len(components[root]) >= len(rows):
            continue  # never leave train empty
        test.update(components[root])
    return test


def random_split(n: int, cfg: BuildConfig) -> set[int]:
    """What the report's row-level ``train_test_split(test_size, seed)`` would put in test."""
    indices = list(range(n))
    random.Random(cfg.seed).shuffle(indices)
    return set(indices[: max(1, round(cfg.test_size * n))])


def count_leaks(rows: list[dict], test_ids: set[int], dups: NearDuplicates) -> dict[str, int]:
    """Test rows whose question has a near-duplicate in train, or whose chunk also feeds train."""
    train_chunks = {rows[i].get("chunk_id") for i in range(len(rows)) if i not in test_ids}
    near = sum(1 for i in test_ids if any(j not in test_ids for j in dups.neighbours(i)))
    shared = sum(1 for i in test_ids if rows[i].get("chunk_id") in train_chunks)
    return {"test_rows_with_near_duplicate_in_train": near, "test_rows_sharing_a_chunk_with_train": shared}

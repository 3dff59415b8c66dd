"""Hybrid retrieval over ``RUN/chunks.jsonl``: which passages answer a question.

Two rankers over the same chunks, fused by reciprocal rank (RRF: a chunk scores ``sum 1 / (rrf_k + rank)``
over the rankers that place it in their top ``candidates``):
- lexical: BM25 (``bm25s``) over Snowball-stemmed words without English stopwords, of each chunk's document
  title, section and text (:func:`lexical_text`: a question naming the system finds the chunks of its
  document even where the text only says "the model"), indexed in memory when the retriever is made
  (milliseconds per thousand chunks);
- semantic: sentence embeddings of each chunk's text in windows, a chunk scoring as its best window
  (:class:`papertune.index.ChunkIndex`, cached in ``RUN/index/`` and rebuilt when ``chunks.jsonl``, the
  embedding model or ``retrieval.window_words`` changes).
``retrieval.method`` picks ``hybrid`` (both), ``bm25`` or ``embedding``. Ask, chat, serve, build (RAFT
distractors) and evaluate all retrieve through :class:`Retriever`, and check a grounded answer's citations
with :meth:`Retriever.check_answer`: an answer its passages do not support (no passage holds
``retrieval.min_question_support`` of the question's words, or ``retrieval.min_support`` of the answer's)
becomes the decline, and a cited passage that holds clearly less of the answer than another passage is
replaced by that one.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papertune.chat import (ABSTAIN, abstains, cited_answer, cited_numbers, passage_label, renumber_citations,
                            strip_citations)
from papertune.config import RetrievalConfig
from papertune.index import ChunkIndex
from papertune.text import content_words

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk: ``n`` is its number in the prompt ([n] in answers), ``score`` the fused score."""

    n: int
    chunk: dict
    score: float

    @property
    def chunk_id(self) -> str:
        return self.chunk["id"]

    def label(self) -> str:
        return passage_label(self.chunk)

    def to_json(self) -> dict[str, Any]:
        """What ``ask``, ``serve`` and evaluation records say about the passage."""
        c = self.chunk
        return {"n": self.n, "chunk_id": c["id"], "source": c.get("source"), "section": c.get("section"),
                "page_start": c.get("page_start"), "page_end": c.get("page_end"), "score": round(self.score, 6)}


@functools.cache
def _snowball() -> Any:
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


def stem_words(words: list[str]) -> list[str]:
    """Snowball stems of ``words`` (bm25s calls this with the vocabulary)."""
    stemmer = _snowball()
    return [stemmer.stem(w) for w in words]


def lexical_text(chunk: dict) -> str:
    """What BM25 indexes of a chunk: its document's title (or file name), its section and its text."""
    head = " ".join(str(x) for x in (chunk.get("title") or chunk.get("source"), chunk.get("section")) if x)
    return f"{head}\n{chunk['text']}" if head else chunk["text"]


# A cited passage stands when it holds at least this share of the best passage's support for the answer.
CITATION_MARGIN = 0.8


def bm25_tokens(texts: list[str], *, ids: bool) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=stem_words, return_ids=ids, show_progress=False)


class Retriever:
    """Ranks the chunks of one run for a query: BM25, embeddings, or both fused by reciprocal rank.

    ``exclude_sources`` leaves whole documents out of the index (evaluation's outside documents);
    :meth:`search` can further leave out chunks and documents per query (RAFT distractors).
    """

    def __init__(self, index: ChunkIndex, cfg: RetrievalConfig, exclude_sources: Collection[str] = ()) -> None:
        import numpy as np

        self.cfg = cfg
        self.index = index
        left_out = set(exclude_sources)
        keep = [i for i, cid in enumerate(index.ids) if index.chunks[cid].get("source") not in left_out]
        self.ids: list[str] = [index.ids[i] for i in keep]
        self.chunks: dict[str, dict] = {cid: index.chunks[cid] for cid in self.ids}
        self.row = {cid: j for j, cid in enumerate(self.ids)}  # a chunk's row in the score arrays
        self.keep = np.array(keep, dtype=np.int64)  # the index rows of self.ids
        self.sources = np.array([self.chunks[cid].get("source") or "" for cid in self.ids], dtype=object)
        self.bm25 = None
        if cfg.method in ("hybrid", "bm25") and self.ids:
            import bm25s

            self.bm25 = bm25s.BM25()
            texts = [lexical_text(self.chunks[cid]) for cid in self.ids]
            self.bm25.index(bm25_tokens(texts, ids=True), show_progress=False)

    @classmethod
    def for_run(cls, run_dir: Path, cfg: RetrievalConfig, exclude_sources: Collection[str] = ()) -> Retriever:
        """The retriever over ``run_dir/chunks.jsonl`` (embeddings loaded from, or built into, ``run_dir/index``)."""
        model = cfg.embedding_model if cfg.method != "bm25" else ""
        return cls(ChunkIndex.load_or_build(Path(run_dir), model, cfg.window_words), cfg, exclude_sources)

    def __len__(self) -> int:
        return len(self.ids)

    def _scores(self, queries: Sequence[str]) -> list[list[Any]]:
        """Per query, each ranker's score for every chunk (higher is better; -inf: not ranked)."""
        import numpy as np

        per_query: list[list[Any]] = [[] for _ in queries]
        if self.bm25 is not None:
            for row, tokens in zip(per_query, bm25_tokens(list(queries), ids=False), strict=True):
                scores = self.bm25.get_scores(tokens) if tokens else np.zeros(len(self.ids), dtype=np.float32)
                row.append(np.where(scores > 0, scores, -np.inf))  # BM25 ranks only chunks sharing a word
        if self.cfg.method in ("hybrid", "embedding"):
            cosines = self.index.scores(self.index.embed(list(queries)))[:, self.keep]
            for row, scores in zip(per_query, cosines, strict=True):
                row.append(scores)
        return per_query

    def search_many(self, queries: Sequence[str], k: int | None = None, *,
                    exclude_ids: Sequence[Collection[str]] | None = None,
                    exclude_sources: Sequence[Collection[str]] | None = None) -> list[list[Passage]]:
        """The top ``k`` passages (default ``retrieval.top_k``) for each query, best first, numbered from 1;
        ``exclude_ids[i]`` / ``exclude_sources[i]`` are chunks / documents query ``i`` must not get."""
        import numpy as np

        k = k or self.cfg.top_k
        if not self.ids or not queries:
            return [[] for _ in queries]
        results = []
        for i, rankings in enumerate(self._scores(queries)):
            allowed = np.ones(len(self.ids), dtype=bool)
            if exclude_ids is not None and exclude_ids[i]:
                allowed[[self.row[c] for c in exclude_ids[i] if c in self.row]] = False
            if exclude_sources is not None and exclude_sources[i]:
                allowed &= ~np.isin(self.sources, list(exclude_sources[i]))
            fused = self._fuse(rankings, allowed)
            order = [j for j in np.argsort(-fused, kind="stable")[:k] if np.isfinite(fused[j])]
            results.append([Passage(n, self.chunks[self.ids[j]], float(fused[j])) for n, j in enumerate(order, 1)])
        return results

    def _fuse(self, rankings: list[Any], allowed: Any) -> Any:
        """One query's fused score for every chunk (-inf: ranked by no ranker among the ``allowed`` chunks):
        a single ranker's own scores, or reciprocal rank over each ranker's top ``retrieval.candidates``."""
        import numpy as np

        fused = np.full(len(self.ids), -np.inf)
        for scores in rankings:
            masked = np.where(allowed, scores, -np.inf)
            top = np.argsort(-masked, kind="stable")[: self.cfg.candidates]
            top = top[np.isfinite(masked[top])]
            if len(rankings) == 1:
                fused[top] = masked[top]
            else:  # ranks from 1: a chunk ranked r adds 1 / (rrf_k + r)
                fused[top] = np.where(np.isfinite(fused[top]), fused[top], 0.0)
                fused[top] += 1.0 / (self.cfg.rrf_k + 1 + np.arange(len(top)))
        return fused

    def rank_many(self, queries: Sequence[str], id_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each ``id_lists[i]`` in the order retrieval would hand those chunks to a model asked ``queries[i]``
        (best first, by the fused score over all chunks); chunks it would not rank, or does not hold, come
        last in their given order."""
        import numpy as np

        if not self.ids:
            return [list(ids) for ids in id_lists]
        out: list[list[str]] = []
        allowed = np.ones(len(self.ids), dtype=bool)
        for rankings, ids in zip(self._scores(queries), id_lists, strict=True):
            fused = self._fuse(rankings, allowed)
            score = {cid: fused[self.row[cid]] if cid in self.row else -np.inf for cid in ids}
            out.append(sorted(ids, key=lambda cid: -score[cid]))  # sorted is stable: ties keep their order
        return out

    @functools.cached_property
    def chunk_words(self) -> dict[str, set[str]]:
        """Each chunk's content words, computed once (the answer check asks for them per passage)."""
        return {cid: content_words(self.chunks[cid]["text"]) for cid in self.ids}

    @functools.cached_property
    def rarity(self) -> dict[str, float]:
        """Each content word's inverse document frequency over the chunks (``log((N + 1) / (df + 0.5))``)."""
        df = Counter(w for words in self.chunk_words.values() for w in words)
        return {w: math.log((len(self.ids) + 1) / (n + 0.5)) for w, n in df.items()}

    def weight(self, words: set[str]) -> float:
        """The summed rarity of ``words`` (a word in no chunk weighs most)."""
        top = math.log((len(self.ids) + 1) / 0.5)
        return sum(self.rarity.get(w, top) for w in words)

    def support(self, answer: str, passage: dict) -> float:
        """How much of ``answer`` (its "[n]" markers left out) a passage (a chunk dict) holds: the
        :meth:`weight` of the content words they share."""
        held = self.chunk_words.get(passage["id"])
        if held is None:  # a chunk this retriever does not hold
            held = content_words(passage["text"])
        return self.weight(content_words(strip_citations(answer)) & held)

    def support_share(self, text: str, passages: Sequence[Passage]) -> float | None:
        """The largest share of ``text``'s content words (by :meth:`weight`; its "[n]" markers left out) that
        one passage holds; None when the text has no content words."""
        total = self.weight(content_words(strip_citations(text)))
        if total <= 0:
            return None
        return max((self.support(text, p.chunk) / total for p in passages), default=0.0)

    def check_answer(self, question: str, answer: str, passages: Sequence[Passage]) -> str:
        """A grounded answer as papertune shows it: :data:`papertune.chat.ABSTAIN` when the passages do not
        support it, otherwise the answer with its citations checked (:meth:`check_citations`). Unsupported:
        no passage holds ``retrieval.min_question_support`` of the question's content words (the passages
        are about something else: the model would answer from its memory or from an unrelated passage), or
        none holds ``retrieval.min_support`` of the answer's (it was invented). A model that declines in its
        own words is left as it is."""
        if abstains(answer):
            return answer
        asked = self.support_share(question, passages)
        said = self.support_share(answer, passages)
        if (asked is not None and asked < self.cfg.min_question_support) or (
                said is not None and said < self.cfg.min_support):
            return ABSTAIN
        return self.check_citations(answer, passages)

    def check_citations(self, answer: str, passages: Sequence[Passage]) -> str:
        """``answer`` with its citations checked against ``passages`` (numbered from 1): when no cited passage
        holds :data:`CITATION_MARGIN` of the support (:meth:`support`) of the passage that holds most of the
        answer, the answer's citations become that passage, and an answer citing nothing cites that passage
        (``chat.cited_answer``). A small model cites the wrong one of four passages often, most often a
        neighbour of the right one, and sometimes none; a base model seldom cites. Left as it is when no
        passage holds any of the answer's words."""
        if not passages:
            return answer
        scores = [self.support(answer, p.chunk) for p in passages]
        best = max(range(len(scores)), key=scores.__getitem__) + 1
        if scores[best - 1] <= 0:
            return answer
        numbers = cited_numbers(answer)
        if not numbers:
            return cited_answer(answer, best)
        cited = [n for n in numbers if 1 <= n <= len(passages)]
        if any(scores[n - 1] >= CITATION_MARGIN * scores[best - 1] for n in cited):
            return answer
        return renumber_citations(answer, {n: best for n in numbers})

    def search(self, query: str, k: int | None = None) -> list[Passage]:
        """The top ``k`` passages for ``query``, best first, numbered from 1."""
        return self.search_many([query], k)[0]

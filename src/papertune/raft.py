"""RAFT examples (``build.mode: raft``): which passages each pair's prompt holds, and what its answer says.

Every train and test pair is asked after ``retrieval.top_k`` passages. With probability
``build.raft_source_share`` (drawn per pair, seeded by ``build.seed`` and the pair's id, so a rebuild draws
the same) its source chunk is one of them, at a random position (``build.raft_order: random``) or where
retrieval ranks it among them (``retrieval``: the order the model sees when it answers), and the target
answer cites it (``chat.cited_answer``); otherwise every passage is a distractor and the target is
``chat.ABSTAIN`` (``raft_without_source: abstain``) or the plain answer (``answer``).

Distractors are hard negatives: the chunks :class:`papertune.retrieval.Retriever` ranks highest for the
question, never near-duplicates of the source chunk or of each other, never a chunk of a held-out or outside
document (the retriever leaves those out) and, for a train pair, never a chunk of a test pair nor a
near-duplicate of one. ``build.raft_distractors`` says which documents they come from: ``other_documents``
(not the source's, nor a file holding the same text), ``retrieved`` (any, as retrieval hands passages
to the model when it answers: mostly the source's neighbours), then leaving out every chunk that holds
the answer (:func:`holds_answer`), or ``mixed``: retrieved beside the source, from other documents when
the source is left out (a row that teaches declining then never holds a neighbour that says the answer in
other words). A row without the source never holds a chunk that says the answer, whatever the setting.
When retrieval finds too few, seeded random eligible chunks fill the prompt and are counted.

With ``build.raft_quote`` a target that cites its source first quotes the source's sentence (or two adjacent
sentences) that carries most of the answer (:func:`supporting_quote`, ``chat.quoted_answer``), as RAFT's
answers quote the golden passage before answering; a pair whose answer no such span carries keeps the
plain target.

``build.raft_decline_copies`` adds rows instead of replacing them: that share of the train pairs (a seeded
draw per pair) is asked a second time with distractors only (:func:`decline_copies`), so a question the model
learns to answer from its source it also learns to decline without it. ``build.raft_verify_rows`` adds
verification rows (:func:`verify_rows`): one passage and the question, the target whether the passage
contains the answer (``retrieval.verify`` asks the tuned model the same after each grounded answer).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from papertune.chat import ABSTAIN, VERIFY_NO, VERIFY_YES, cited_answer, quoted_answer
from papertune.config import BuildConfig
from papertune.errors import InputError
from papertune.ingest.segment import split_sentences
from papertune.split import NearDuplicates
from papertune.text import answer_words, carried, carried_share, held_words, words

_SEARCH_BATCH = 256  # questions searched or ranked at once (each holds a score per chunk and ranker)


@dataclass
class RaftPassages:
    """The passages of one example: chunk ids in prompt order, and the source chunk's number among them."""

    passage_ids: list[str]
    source_passage: int  # 1-based; 0 when the source chunk is not among the passages


def raft_target(answer: str, source_passage: int, without_source: str, quote: str | None = None) -> str:
    """What a RAFT example teaches the model to reply: the answer citing its source passage (after ``quote``,
    the source's words that carry it, when given), or, when the source is absent,
    :data:`papertune.chat.ABSTAIN` (``abstain``) or the answer uncited (``answer``)."""
    if source_passage:
        return quoted_answer(quote, source_passage, answer) if quote else cited_answer(answer, source_passage)
    return ABSTAIN if without_source == "abstain" else answer


QUOTE_MAX_WORDS = 60  # a longer span is no quote a reader checks at a glance
QUOTE_MIN_SHARE = 0.5  # the share of the answer's content words a quote must carry (text.carried_share)
QUOTE_PAIR_GAIN = 0.15  # two adjacent sentences are quoted only when they carry this much more than one


def supporting_quote(chunk_text: str, answer: str, segmenter: str) -> str | None:
    """The span of ``chunk_text`` a quoting target quotes: the sentence (or two adjacent sentences, when they
    carry clearly more) holding the largest share of ``answer``'s content words, at most
    :data:`QUOTE_MAX_WORDS` words, its spacing made single; None when no span carries
    :data:`QUOTE_MIN_SHARE`."""
    sentences = [" ".join(s.split()) for s in split_sentences(chunk_text, segmenter)]
    sentences = [s for s in sentences if s]
    wanted = answer_words(answer)

    def best(spans: list[str]) -> tuple[float, str | None]:
        scored = [(carried(wanted, held_words(s)), -len(words(s)), s) for s in spans
                  if len(words(s)) <= QUOTE_MAX_WORDS]
        if not scored:
            return 0.0, None
        share, _, span = max(scored)
        return share, span

    share, quote = best(sentences)
    pair_share, pair = best([f"{a} {b}" for a, b in zip(sentences, sentences[1:])])
    if pair is not None and pair_share >= share + QUOTE_PAIR_GAIN:
        share, quote = pair_share, pair
    return quote if share >= QUOTE_MIN_SHARE else None


# A chunk holding this share of an answer's content words (stemmed), and all its numbers, holds the answer.
HOLDS_ANSWER = 0.6


def holds_answer(chunk_text: str, answer: str) -> bool:
    """Whether a chunk says what the answer says (it would be no distractor for the question)."""
    return carried_share(answer, chunk_text) >= HOLDS_ANSWER


DECLINE_COPY = "::decline"  # the id suffix of a decline copy (its parent_id is the pair's id)


def decline_copies(train_rows: list[dict], cfg: BuildConfig) -> list[dict]:
    """A copy of each train pair drawn with probability ``build.raft_decline_copies`` (seeded by ``build.seed``
    and the pair's id), to be asked with distractors only: id ``<id>::decline``, ``parent_id`` the pair's id."""
    return [dict(row, id=row["id"] + DECLINE_COPY, parent_id=row["id"]) for row in train_rows
            if random.Random(f"{cfg.seed}:raft-decline:{row['id']}").random() < cfg.raft_decline_copies]


VERIFY_ROW = "::verify-"  # the id of a verification row: <pair id>::verify-yes or ::verify-no


def verify_rows(train_rows: list[dict], chunks: dict[str, dict]) -> list[dict]:
    """Verification rows of the train pairs whose RAFT passages hold their source (decline copies left out):
    the source passage alone with ``verify`` "yes", and the first of the other passages (in prompt order) that
    does not hold the answer (:func:`holds_answer`) with "no". ``parent_id`` is the pair's id."""
    out: list[dict] = []
    for row in train_rows:
        if not row["source_passage"] or row["id"].endswith(DECLINE_COPY):
            continue
        base = dict(row, parent_id=row["id"], quote=None)  # a yes or no quotes nothing
        out.append(dict(base, id=f"{row['id']}{VERIFY_ROW}{VERIFY_YES}", passage_ids=[row["chunk_id"]],
                        source_passage=1, verify=VERIFY_YES))
        negative = next((cid for cid in row["passage_ids"]
                         if cid != row["chunk_id"] and not holds_answer(chunks[cid]["text"], row["answer"])), None)
        if negative is not None:
            out.append(dict(base, id=f"{row['id']}{VERIFY_ROW}{VERIFY_NO}", passage_ids=[negative],
                            source_passage=0, verify=VERIFY_NO))
    return out


def _near_ids(chunk_id: str, position: dict[str, int], ids: list[str], near: NearDuplicates) -> set[str]:
    return {ids[j] for j in near.neighbours(position[chunk_id])} if chunk_id in position else set()


def assign_passages(rows: list[dict], sides: list[str], chunks: dict[str, dict], near: NearDuplicates,
                    twins: dict[str, frozenset[str]], retriever: Any, cfg: BuildConfig,
                    top_k: int) -> tuple[list[RaftPassages], dict[str, Any]]:
    """The passages of every row (``sides[i]`` is ``train`` or ``test``) and the counts the report gives.

    ``chunks`` are all chunks of the run by id, in the order ``near`` indexed their texts; ``twins`` gives
    the documents holding the same text as a document (no distractor comes from them);
    ``retriever`` already leaves out the documents kept out of training.
    """
    missing = sorted({str(r.get("chunk_id")) for r in rows if r.get("chunk_id") not in chunks})
    if missing:
        raise InputError(
            f"build.mode=raft: {len(missing)} source chunk(s) of the pairs are not in chunks.jsonl (e.g. "
            f"{', '.join(missing[:3])}); RAFT puts each pair's source chunk in its prompt. Regenerate the pairs "
            "from the current chunks (papertune run --from generate) or set build.mode=closed_book"
        )
    ids = list(chunks)
    position = {cid: i for i, cid in enumerate(ids)}
    test_chunks = {r["chunk_id"] for r, side in zip(rows, sides) if side == "test"}
    banned_for_train = set(test_chunks)
    for cid in test_chunks:
        banned_for_train |= _near_ids(cid, position, ids, near)

    rngs = [random.Random(f"{cfg.seed}:raft:{row['id']}") for row in rows]
    copy = [str(row["id"]).endswith(DECLINE_COPY) for row in rows]
    with_source = [rng.random() < cfg.raft_source_share and not c for rng, c in zip(rngs, copy)]
    # Per row: are its distractors drawn from other documents only?
    other_documents = [cfg.raft_distractors == "other_documents" or (cfg.raft_distractors == "mixed" and not w)
                       for w in with_source]
    # Each row's own chunk and its near-duplicates; a train row also never sees banned_for_train (shared,
    # joined with a row's own only for the rows being searched).
    own_banned = [{row["chunk_id"]} | _near_ids(row["chunk_id"], position, ids, near) for row in rows]
    exclude_sources: list[Collection[str]] = []
    for i, row in enumerate(rows):
        source = chunks[row["chunk_id"]].get("source")
        exclude_sources.append({source} | twins.get(source, frozenset()) if other_documents[i] else set())

    def excluded(i: int, cid: str) -> bool:
        return cid in own_banned[i] or (sides[i] == "train" and cid in banned_for_train)

    hits: list[list[Any]] = []
    for start in range(0, len(rows), _SEARCH_BATCH):
        end = min(start + _SEARCH_BATCH, len(rows))
        exclude_ids = [own_banned[i] | banned_for_train if sides[i] == "train" else own_banned[i]
                       for i in range(start, end)]
        # Twice as many as needed: a hit repeating the text of one taken before (a twin file) is passed over.
        hits += retriever.search_many([r["question"] for r in rows[start:end]], 2 * top_k,
                                      exclude_ids=exclude_ids, exclude_sources=exclude_sources[start:end])

    fallbacks = short_rows = 0
    holding: set[str] = set()  # chunks passed over because they hold a pair's answer
    out: list[RaftPassages] = []
    for i, row in enumerate(rows):
        rng, need = rngs[i], top_k - 1 if with_source[i] else top_k
        distractors: list[str] = []
        repeats: set[str] = set()

        def take(cid: str) -> None:
            distractors.append(cid)
            repeats.update(_near_ids(cid, position, ids, near))

        def fits(cid: str) -> bool:
            if cid in repeats:
                return False
            # A chunk of the source's own document may say the answer too: then it is no distractor; nor, in a
            # row that teaches declining, a chunk of any document that says it.
            if (not other_documents[i] or not with_source[i]) and holds_answer(chunks[cid]["text"], row["answer"]):
                holding.add(cid)
                return False
            return True

        for passage in hits[i]:
            if len(distractors) < need and fits(passage.chunk_id):
                take(passage.chunk_id)
        if len(distractors) < need:
            pool = [cid for cid in retriever.ids if not excluded(i, cid) and cid not in distractors
                    and retriever.chunks[cid].get("source") not in exclude_sources[i]]
            rng.shuffle(pool)
            for cid in pool:
                if len(distractors) < need and fits(cid):
                    take(cid)
                    fallbacks += 1
            short_rows += len(distractors) < need
        if not distractors and not with_source[i]:
            raise InputError(
                f"build.mode=raft: no chunk can be a distractor for pair {row['id']!r} (build.raft_distractors="
                f"{cfg.raft_distractors}); RAFT needs chunks of at least two documents in the training documents "
                "(add documents, lower build.heldout_documents / build.outside_documents, or set "
                "build.mode=closed_book)"
            )
        rng.shuffle(distractors)
        if with_source[i]:
            at = rng.randrange(len(distractors) + 1)
            distractors.insert(at, row["chunk_id"])
            out.append(RaftPassages(distractors, at + 1))
        else:
            out.append(RaftPassages(distractors, 0))
    if cfg.raft_order == "retrieval":
        ranked: list[list[str]] = []
        for start in range(0, len(rows), _SEARCH_BATCH):
            ranked += retriever.rank_many([r["question"] for r in rows[start:start + _SEARCH_BATCH]],
                                          [p.passage_ids for p in out[start:start + _SEARCH_BATCH]])
        out = [RaftPassages(ids, ids.index(row["chunk_id"]) + 1 if p.source_passage else 0)
               for ids, p, row in zip(ranked, out, rows, strict=True)]
    stats = {
        "source_share": cfg.raft_source_share,
        "without_source_target": cfg.raft_without_source,
        "with_source": sum(with_source),
        "without_source": len(rows) - sum(with_source),
        "decline_copies": sum(copy),
        "distractors": cfg.raft_distractors,
        "distractor_fallbacks": fallbacks,
        "passed_over_holding_the_answer": len(holding),
        "rows_with_fewer_passages": short_rows,
        "passages_per_row": top_k,
        "order": cfg.raft_order,
        "source_first": sum(p.source_passage == 1 for p in out),
    }
    return out, stats

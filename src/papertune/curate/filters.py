"""The checks of the curate stage: which generated pairs are dropped, and why (see :mod:`papertune.curate`).

Lexical and embedding checks (injection, ids, lengths, answer in question, an amount asked for and not
given, a comparison answered about one side only, a formula its chunk does not hold, support in the chunk,
duplicates) and the order they run in (:func:`curate_rows`); the grounded judge, when enabled, is handed in
by the stage (:mod:`papertune.curate.judge`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from papertune.config import CurateConfig
from papertune.generate.questions import answer_source_reference, context_dependence
from papertune.index import embed_texts
from papertune.injection import looks_injected, separate_injected
from papertune.rundir import CHUNKS
from papertune.text import changed_formula, content_stems, jaccard, normalize, shingles, stemmer, unfinished, words

REASONS = (
    "injection",
    "duplicate_id",
    "unknown_chunk",
    "question_too_short",
    "question_too_long",
    "answer_too_short",
    "answer_too_long",
    "unfinished_answer",
    "answer_in_question",
    "amount_not_given",
    "one_sided_comparison",
    "not_self_contained",
    "answer_refers_to_source",
    "formula_changed",
    "unsupported_answer",
    "judge",
    "exact_duplicate",
    "near_duplicate",
)


class Verdict(Protocol):
    """What a judge says of one pair: whether it passes, why not, and the scores to store with the pair."""

    passed: bool
    detail: str
    record: dict[str, Any]


Judge = Callable[[list[dict[str, Any]], dict[str, str]], list[Verdict]]


def overlap_support(answer: str, chunk_text: str) -> float:
    """Share of the answer's content words (stemmed) that occur in the chunk; all words if none is content."""
    chunk = set(content_stems(chunk_text)) | {stemmer()(w.lower()) for w in words(chunk_text)}
    tokens = content_stems(answer) or [stemmer()(w.lower()) for w in words(answer)]
    if not tokens:
        return 0.0
    return sum(t in chunk for t in tokens) / len(tokens)


# A parenthesised reference ("(Lakkaraju, Bach & Leskovec, 2016)") tells no more than the question, unless the
# question asks who or when; words that carry an answer's meaning though no content word ("Beta-VAE is the same
# as VAE", "it does not") keep it from counting as saying nothing.
_REFERENCE = re.compile(r"\([^()]*\b(?:1[89]|20)\d\d[a-z]?\)")
_ASKS_WHO = re.compile(r"^\s*(?:who|when|in which year|which (?:paper|work|authors?|group))\b", re.I)
_MEANS_BY_FUNCTION_WORDS = re.compile(r"\b(?:same|not|no|never|none|only|identical|equal|equivalent|neither|nor)\b",
                                      re.I)
# Words that add no fact to a restated question ("The tradeoff between X and Y is clear.").
_VAGUE = frozenset(content_stems("clear clearly important significant crucial key essential various several many "
                                 "different effective useful helpful interesting notable common possible simple"))
# A symbol naming a thing the sentence names ("the weight matrix $\mathbf{W}$"): a formula right after a word
# that does not lead to a value (not "is $\gamma$", "with $n = 256$"), holding no digit or relation.
_LEADS_TO_VALUE = re.compile(r"\b(?:is|are|was|were|be|equals?|denoted|called|named|as|of|to|by|with|at|for|from|in|on|"
                             r"than)\s*$", re.I)
_INLINE_FORMULA = re.compile(r"\$[^$]{1,40}\$")


def _without_symbol_labels(answer: str) -> str:
    kept, last = [], 0
    for formula in _INLINE_FORMULA.finditer(answer):
        before = answer[:formula.start()]
        if (re.search(r"[A-Za-z)]\s*$", before) and not _LEADS_TO_VALUE.search(before)
                and not re.search(r"[\d=<>]", formula.group(0))):
            kept.append(answer[last:formula.start()])
            last = formula.end()
    return "".join(kept) + answer[last:]


def answer_in_question(question: str, answer: str) -> bool:
    """Whether the answer says nothing the question does not: the question holds the whole answer (as words,
    ignoring case and punctuation), or every content word of the answer (stemmed; a parenthesised reference
    and symbols labelling what the sentence names left out) is in the question or adds no fact (:data:`_VAGUE`):
    "What is the DQN used to stabilize the training with experience replay?" answered "DQN is used to
    stabilize the training with experience replay.", "What is the tradeoff between X and Y?" answered "The
    tradeoff between X and Y is clear.".

    Answers without any content word ("yes", "it") never count: they occur in many questions by chance.
    """
    if not content_stems(answer):
        return False
    if f" {normalize(answer)} " in f" {normalize(question)} ":
        return True
    said = content_stems(_without_symbol_labels(answer if _ASKS_WHO.match(question) else _REFERENCE.sub(" ", answer)))
    return (bool(said) and not _MEANS_BY_FUNCTION_WORDS.search(answer)
            and set(said) <= set(content_stems(question)) | _VAGUE)


# A question asking for an amount ("How many layers ...", "By what factor ...") and an answer that states one:
# a digit, a formula, or a number word. "much longer", "several" or "cheaper" state none.
_ASKS_AMOUNT = re.compile(r"\b(?:how (?:much|many)|by what (?:factor|margin|percentage)|what (?:is|was|are|were) "
                          r"the (?:number|percentage|proportion|fraction|amount) of)\b", re.I)
_STATES_AMOUNT = re.compile(
    r"\d|\$|\\\(|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|"
    r"fifty|hundreds?|thousands?|millions?|billions?|trillions?|half|twice|thrice|double[sd]?|tripled?|triples|"
    r"quadrupled?|dozens?|single|none)\b", re.I)


def amount_not_given(question: str, answer: str) -> bool:
    """Whether the question asks how much or how many and the answer states no amount (a number, a formula
    or a number word): "How much does fine-tuning the adapter cost?" answered "It is computationally cheaper."
    """
    return bool(_ASKS_AMOUNT.search(question)) and not _STATES_AMOUNT.search(answer)


# A question comparing two things ("What is the difference between X and Y?", "How does X differ from Y?",
# "X compared to Y"); the sides end before a qualifier ("in terms of ...", "when ...").
_SIDE_END = r"(?=\?|$|,|\s(?:in terms of|in|when|for|with|by|on)\s)"
_COMPARES = tuple(re.compile(p, re.I) for p in (
    rf"\bdifferences? between (?P<x>.+?) and (?P<y>.+?){_SIDE_END}",
    rf"\b(?:does|do|is|are) (?P<x>.+?) (?:differ|different) from (?P<y>.+?){_SIDE_END}",
    rf"\b(?:does|do|is|are) (?P<x>.+?) compare (?:to|with) (?P<y>.+?){_SIDE_END}",
    rf"^(?P<x>.+?) (?:compared (?:to|with)|versus|vs\.?) (?P<y>.+?){_SIDE_END}",
))
# A side the answer need not name: "other methods", "traditional supervised learning", "previous work".
_UNNAMED_SIDE = re.compile(r"^(?:the |a |an )?(?:other|others|traditional|previous|prior|existing|standard|"
                           r"conventional|earlier|similar|alternative|competing)\b", re.I)


def _without_possessives(text: str) -> str:
    return re.sub(r"'s\b", "", text)  # "WGAN's" names WGAN


def _named_in(side: str, answer_words: set[str], answer_stems: set[str]) -> bool:
    """Whether the answer names ``side``: a content word of it, or its initials ("Proximal Policy
    Optimization" as PPO)."""
    stems = set(content_stems(side))
    initials = "".join(w[0] for w in words(side) if w[0].isupper() and w not in ("The", "A", "An")).lower()
    return not stems or bool(stems & answer_stems) or (len(initials) > 1 and initials in answer_words)


def one_sided_comparison(question: str, answer: str) -> str | None:
    """The side of a comparison the answer never names, if the question compares two named things ("How does
    RACE differ from SQuAD?" answered "RACE has more than 28,000 passages." -> "SQuAD"); None otherwise.
    Generic sides ("other methods") need not be named."""
    match = next((m for p in _COMPARES if (m := p.search(question.strip()))), None)
    if match is None:
        return None
    answer = _without_possessives(answer)
    answer_words, answer_stems = {w.lower() for w in words(answer)}, set(content_stems(answer))
    for side in (_without_possessives(match["x"]).strip(), _without_possessives(match["y"]).strip()):
        if not _UNNAMED_SIDE.match(side) and not _named_in(side, answer_words, answer_stems):
            return side
    return None


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
    if unfinished(row["answer"]):
        return "unfinished_answer", f"the answer stops mid-sentence: {row['answer'][-40:]!r}"
    return None


def _injection_reason(
    row: dict[str, Any], chunk: str | None, clean: str | None, cfg: CurateConfig
) -> tuple[str, str] | None:
    """Why the pair counts as injected, or None. ``clean`` is the chunk without its injected sentences."""
    if looks_injected(row["question"]) or looks_injected(row["answer"]):
        return "injection", "the question or answer carries an instruction aimed at the model"
    if chunk is None or clean is None or clean == chunk or overlap_support(row["answer"], chunk) < cfg.min_support:
        return None  # nothing injected in the chunk, or the answer is not supported by it at all
    question = set(content_stems(row["question"]))
    clean_stems = set(content_stems(clean))
    if overlap_support(row["answer"], clean) < cfg.min_support or (question and not question & clean_stems):
        return "injection", "the pair is grounded only in the chunk's injected sentences"
    return None


def _support_scores(rows: list[dict[str, Any]], chunks: dict[str, str], cfg: CurateConfig) -> list[float]:
    if cfg.support == "overlap":
        return [overlap_support(r["answer"], chunks[r["chunk_id"]]) for r in rows]
    # Each distinct chunk is embedded once.
    chunk_ids = sorted({r["chunk_id"] for r in rows})
    chunk_vecs = embed_texts([chunks[c] for c in chunk_ids], cfg.embedding_model, "curate.embedding_model")
    index = {c: i for i, c in enumerate(chunk_ids)}
    answer_vecs = embed_texts([r["answer"] for r in rows], cfg.embedding_model, "curate.embedding_model")
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

    vecs = embed_texts([rows[i]["question"] for i in candidates], cfg.embedding_model, "curate.embedding_model")
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


def curate_rows(
    rows: list[dict[str, Any]], chunks: dict[str, str], cfg: CurateConfig, judge: Judge | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept rows and dropped rows (each with ``drop_reason`` and ``drop_detail``), both in input order.

    ``judge`` (optional) sees the pairs that passed every check but the duplicate ones, before those: a
    good pair is never dropped as the duplicate of one the judge rejects. Judged rows, kept or dropped,
    carry the judge's record under ``judge``.
    """
    verdicts: list[tuple[str, str] | None] = [None] * len(rows)
    # Injected pairs go first, so they claim no id and win no duplicate contest against a genuine pair.
    clean_texts: dict[str, str] = {}
    for i, row in enumerate(rows):
        chunk = chunks.get(row["chunk_id"])
        if chunk is not None and row["chunk_id"] not in clean_texts:
            clean_texts[row["chunk_id"]] = separate_injected(chunk).clean
        verdicts[i] = _injection_reason(row, chunk, clean_texts.get(row["chunk_id"]), cfg)
    seen_ids: set[str] = set()
    for i, row in enumerate(rows):
        if verdicts[i] is not None:
            continue
        if row["id"] in seen_ids:
            verdicts[i] = ("duplicate_id", f"id {row['id']!r} already used by an earlier pair")
            continue
        seen_ids.add(row["id"])
        if row["chunk_id"] not in chunks:
            verdicts[i] = ("unknown_chunk", f"chunk_id {row['chunk_id']!r} is not in {CHUNKS}")
            continue
        verdicts[i] = _length_reason(row, cfg)
        if verdicts[i] is None and cfg.drop_answer_in_question and answer_in_question(row["question"], row["answer"]):
            verdicts[i] = ("answer_in_question", "the answer says nothing the question does not")
        if verdicts[i] is None and cfg.drop_amount_not_given and amount_not_given(row["question"], row["answer"]):
            verdicts[i] = ("amount_not_given", "the question asks how much or how many; the answer gives no amount")
        if verdicts[i] is None and cfg.drop_one_sided_comparison and \
                (side := one_sided_comparison(row["question"], row["answer"])):
            verdicts[i] = ("one_sided_comparison",
                           f"the question compares two things; the answer never names {side!r}")
        if verdicts[i] is None and (leans_on := context_dependence(row["question"])):
            verdicts[i] = ("not_self_contained", leans_on)  # whoever wrote qa.jsonl
        if verdicts[i] is None and (points_at := answer_source_reference(row["answer"])):
            verdicts[i] = ("answer_refers_to_source", f"the answer points at its source: {points_at!r}")
        if verdicts[i] is None and cfg.drop_formula_changed and \
                (formula := changed_formula(row["answer"], chunks[row["chunk_id"]])):
            verdicts[i] = ("formula_changed", f"the answer's formula {formula[:80]!r} is not its chunk's")

    pending = [i for i, v in enumerate(verdicts) if v is None]
    threshold = cfg.min_support if cfg.support == "overlap" else cfg.min_support_cosine
    setting = "curate.min_support" if cfg.support == "overlap" else "curate.min_support_cosine"
    measure = "content-word overlap" if cfg.support == "overlap" else "cosine"
    for i, score in zip(pending, _support_scores([rows[i] for i in pending], chunks, cfg)):
        if score < threshold:
            verdicts[i] = ("unsupported_answer", f"{measure} with the chunk {score:.2f} < {setting}={threshold:g}")

    records: dict[int, dict[str, Any]] = {}
    if judge is not None:
        pending = [i for i, v in enumerate(verdicts)
                   if v is None and (not cfg.judge_generators or rows[i].get("generator") in cfg.judge_generators)]
        for i, judged in zip(pending, judge([rows[i] for i in pending], chunks), strict=True):
            records[i] = judged.record
            if not judged.passed:
                verdicts[i] = ("judge", judged.detail)

    pending = [i for i, v in enumerate(verdicts) if v is None]
    for i, verdict in zip(pending, _dedup([rows[i] for i in pending], cfg)):
        verdicts[i] = verdict

    kept, dropped = [], []
    for i, (row, verdict) in enumerate(zip(rows, verdicts)):
        judged = {"judge": records[i]} if i in records else {}
        if verdict is None:
            kept.append({**row, **judged})
        else:
            dropped.append({**row, "drop_reason": verdict[0], "drop_detail": verdict[1], **judged})
    return kept, dropped


def curate_more(rows: list[dict[str, Any]], kept: list[dict[str, Any]], chunks: dict[str, str], cfg: CurateConfig,
                judge: Judge | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`curate_rows` for ``rows`` written after ``kept`` was curated: every check, and a new pair that
    repeats a kept one (or an earlier new one) is dropped as its duplicate."""
    new_kept, dropped = curate_rows(rows, chunks, cfg, judge)
    verdicts = _dedup(kept + new_kept, cfg)[len(kept):]
    still = [row for row, verdict in zip(new_kept, verdicts) if verdict is None]
    dropped += [{**row, "drop_reason": verdict[0], "drop_detail": verdict[1]}
                for row, verdict in zip(new_kept, verdicts) if verdict is not None]
    return still, dropped

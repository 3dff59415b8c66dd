"""Text cleaning shared by the PDF and Markdown readers.

Order matters: broken diacritics are repaired before Unicode normalisation (NFKC would turn a spacing
accent into a space plus a combining mark), and footnote marks are removed before NFKC turns superscript
digits into ordinary ones ("model¹" would become "model1").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Iterable

from wordfreq import zipf_frequency

# pdfTeX and friends often emit an accent as a separate spacing character before its letter:
# "Montr´eal", "G¨odel", "Universit`a". Map each spacing accent to its combining mark.
_SPACING_TO_COMBINING = {
    "\u00b4": "\u0301",  # acute
    "\u02ca": "\u0301",
    "\u0060": "\u0300",  # grave (only between letters, see the regex below)
    "\u02cb": "\u0300",
    "\u00a8": "\u0308",  # diaeresis
    "\u02c6": "\u0302",  # circumflex
    "\u02dc": "\u0303",  # tilde
    "\u00b8": "\u0327",  # cedilla
    "\u02d8": "\u0306",  # breve
    "\u02c7": "\u030c",  # caron
    "\u02da": "\u030a",  # ring
    "\u02d9": "\u0307",  # dot above
    "\u00af": "\u0304",  # macron
}
_ACCENT_BEFORE_LETTER = re.compile(
    r"([\u00b4\u02ca\u02cb\u00a8\u02c6\u02dc\u00b8\u02d8\u02c7\u02da\u02d9\u00af])\s?([A-Za-z\u0131])"
    # A backtick is an accent only inside a word before a vowel ("Universit`a"), never around code.
    r"|(?<=[A-Za-z])(`)([AEIOUaeiou])(?![A-Za-z]*`)"
)

_ANY_ACCENT = re.compile("[" + "".join(_SPACING_TO_COMBINING) + "]")
_INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
_SUPERSCRIPT_DIGITS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
# Footnote marks glued to a word: "model¹", "training†,"; superscripts after a digit are exponents.
_FOOTNOTE_MARK = re.compile(rf"(?<=[A-Za-z\)\.,;:])[{_SUPERSCRIPT_DIGITS}†‡§¶]+")
_ANY_MARK = re.compile(f"[{_SUPERSCRIPT_DIGITS}†‡§¶]")
_EXPONENT = re.compile(rf"(?<=\d)([{_SUPERSCRIPT_DIGITS}]+)")
_SUPERSCRIPT_TABLE = str.maketrans(_SUPERSCRIPT_DIGITS, "0123456789")

# Numeric citations: [3], [1, 4], [2-5], [7–9]. Intervals such as [0, 1] start at 0 and are kept.
_NUMERIC_CITATION = re.compile(r"\s?\[[1-9]\d{0,3}(?:\s*[,\u2013\u2014-]\s*[1-9]\d{0,3})*\]")
_AUTHOR = r"(?:[A-Z][A-Za-z\u00c0-\u024f'\-]+(?:\s+(?:et\s+al\.?|and\s+[A-Z][A-Za-z\u00c0-\u024f'\-]+|&\s+[A-Z][A-Za-z\u00c0-\u024f'\-]+))?)"
_YEAR = r"(?:19|20)\d{2}[a-z]?"
_ONE_AUTHOR_YEAR = rf"(?:(?:see|e\.g\.,?|cf\.)\s+)?{_AUTHOR},?\s+{_YEAR}(?:,\s*{_YEAR})*"
# Parenthetical author-year citations: (Hu et al., 2021), (Smith and Jones, 2020; Lee, 2019a).
_AUTHOR_YEAR_CITATION = re.compile(rf"\s?\({_ONE_AUTHOR_YEAR}(?:\s*;\s*{_ONE_AUTHOR_YEAR})*\)")

_REFERENCES_HEADING = re.compile(
    r"^\s*(?:[0-9]+\.?|[IVX]+\.)?\s*(references?|bibliography|works cited|literature cited|reference list)\s*:?\s*$",
    re.IGNORECASE,
)
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?)\]])")
# "word-" at a line end, then a lower-case continuation; a hyphen after the continuation marks a compound
# ("state-\nof-the-art").
_HYPHEN_LINEBREAK = re.compile(r"(\w+)-\n\s*([a-z]+)(-?)")
# A joined word at least this common (Zipf scale: 3 = once per million words) is taken as one word
# ("an-\nother" -> "another"), even where its halves are common words as well.
_COMMON_WORD_ZIPF = 3.0
# A continuation rarer than this is a word fragment ("token-\nizer"), not the second word of a compound.
_FRAGMENT_ZIPF = 2.0
# "global-\nand local-level": a suspended hyphen, which keeps its space ("global- and local-level").
_CONJUNCTIONS = frozenset({"and", "or", "nor"})


def fix_diacritics(text: str) -> str:
    """Recombine accents that PDF extraction split from their letters ("Montr´eal" -> "Montréal")."""
    if not _ANY_ACCENT.search(text):
        return text

    def before(m: re.Match[str]) -> str:
        accent, letter = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        letter = "i" if letter == "\u0131" else letter
        return letter + _SPACING_TO_COMBINING[accent]

    return _ACCENT_BEFORE_LETTER.sub(before, text)


def normalize_unicode(text: str) -> str:
    """Repair diacritics, drop invisible characters and footnote marks, then NFKC (ligatures, widths)."""
    if text.isascii() and "`" not in text:  # most paragraphs: nothing below can apply
        return text
    text = fix_diacritics(text)
    text = _INVISIBLE.sub("", text)
    if _ANY_MARK.search(text):
        text = _FOOTNOTE_MARK.sub("", text)
        text = _EXPONENT.sub(lambda m: "^" + m.group(1).translate(_SUPERSCRIPT_TABLE), text)
    return unicodedata.normalize("NFKC", text)


@functools.lru_cache(maxsize=65536)
def _zipf(words: str) -> float:
    return zipf_frequency(words, "en")


def is_compound_break(head: str, tail: str, document_words: Collection[str] = ()) -> bool:
    """Whether "head-" at a line end followed by "tail" is a compound ("held-out") rather than one word split.

    The document's own words decide first (the joined word or the hyphenated form used elsewhere);
    otherwise English word frequencies do: "lay|ers" -> "layers" is a common word, "held|out" is not
    a word but "held out" is a common phrase, "token|izer" has a fragment for a second word. Heads
    with digits ("3-\\nlayer") are always compounds.
    """
    if not head.isalpha():
        return True
    joined = (head + tail).lower()
    if joined in document_words:
        return False
    if f"{head}-{tail}".lower() in document_words:
        return True
    joined_zipf = _zipf(joined)
    return (
        joined_zipf < _COMMON_WORD_ZIPF
        and _zipf(tail) >= _FRAGMENT_ZIPF
        and joined_zipf < _zipf(f"{head} {tail}")
    )


_WORD = re.compile(r"[a-z]+")
_HYPHENATED_WORD = re.compile(r"[a-z]+(?:-[a-z]+)+")


def document_vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """The lower-cased words and hyphenated compounds of a document, for :func:`join_hyphenated`.

    Words broken at a line end are left out: they must not vouch for their own halves.
    """
    text = _HYPHEN_LINEBREAK.sub(" ", "\n".join(texts)).lower()
    return frozenset(_WORD.findall(text)) | frozenset(_HYPHENATED_WORD.findall(text))


def join_hyphenated(text: str, document_words: Collection[str] = ()) -> str:
    """Mend words split across a line break: "trans-\\nformer" -> "transformer", "held-\\nout" -> "held-out".

    See :func:`is_compound_break` for how a split word is told from a compound; ``document_words`` are
    the lower-cased words (and hyphenated compounds) of the whole document. A continuation that is
    itself hyphenated ("state-\\nof-the-art") was a compound: its hyphen stays; so does the space after
    a suspended hyphen ("global-\\nand local-level" -> "global- and local-level").
    """
    if "-\n" not in text:
        return text

    def mend(m: re.Match[str]) -> str:
        head, tail, more = m.group(1), m.group(2), m.group(3)
        if more:
            return f"{head}-{tail}{more}"
        if is_compound_break(head, tail, document_words):
            return f"{head}- {tail}" if tail in _CONJUNCTIONS else f"{head}-{tail}"
        return head + tail

    return _HYPHEN_LINEBREAK.sub(mend, text)


def drop_citations(text: str) -> str:
    if "[" in text:
        text = _NUMERIC_CITATION.sub("", text)
    if "(" in text:
        text = _AUTHOR_YEAR_CITATION.sub("", text)
    return text


def squash_whitespace(text: str) -> str:
    """One space between words, no space before closing punctuation."""
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def clean_paragraph(text: str, *, citations: str = "drop", document_words: Collection[str] = ()) -> str:
    """The cleaning every paragraph goes through, whatever its source.

    ``document_words`` (see :func:`document_vocabulary`) help to mend words split at line ends.
    """
    text = normalize_unicode(join_hyphenated(text, document_words))
    if citations == "drop":
        text = drop_citations(text)
    return squash_whitespace(text)


def is_references_heading(text: str) -> bool:
    return bool(_REFERENCES_HEADING.match(text))


# A "how to cite this" block: a heading or a lead-in line ("Cited as:", "Please cite this work as:") followed by
# the document's own reference and BibTeX. Nothing in it is worth a question.
_CITE_THIS = re.compile(r"^\s*(?:(?:[0-9]+\.?\s*)?citation|cited as|how to cite(?: this(?: \w+)?)?|"
                        r"please cite(?: this(?: \w+)?| us)?(?: as)?|to cite this(?: \w+)?|citing this(?: \w+)?|"
                        r"bibtex(?: citation)?)\s*:?\s*$", re.IGNORECASE)


def is_cite_this(text: str) -> bool:
    """Whether a heading or a line opens a "how to cite this document" block."""
    return bool(_CITE_THIS.match(text))


# Characters a broken text layer is made of: replacement characters, private-use code points, controls.
_UNPRINTABLE = re.compile("[\ufffd\ue000-\uf8ff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable_ratio(text: str) -> float:
    """Share of non-space characters that are real text rather than replacement, private-use or control codes.

    A text layer from a font without a Unicode map comes out as such characters; a low ratio means the
    page must be OCRed instead.
    """
    total = len("".join(text.split()))
    if not total:
        return 0.0
    return 1.0 - len(_UNPRINTABLE.findall(text)) / total

"""Chunks that hold no content worth asking about, found before any generator sees them.

A reference list, acknowledgments, an author and affiliation list, front matter (arXiv stamps, copyright
lines), a list of links or a table of bare numbers gives no question a researcher would ask.
:func:`non_content_reason` names which of :data:`SKIP_REASONS` a chunk is, or None for a chunk with
prose; the generate stage skips those chunks and counts them as ``skipped_non_content``. Prose that
merely contains numbers, a link or a citation is content.
"""

from __future__ import annotations

import re

from papertune.generate.base import STOPWORDS
from papertune.ingest.segment import split_sentences
from papertune.text import MATH, without_math

SKIP_REASONS = ("references", "acknowledgments", "authors", "front_matter", "links", "numbers_table", "formulas",
                "no_prose")

# Below this share of its words in prose sentences, a chunk is a list, a table, formulas or front matter.
MIN_PROSE_SHARE = 0.3
# A prose sentence has at least this many words, most of them in lower case (titles and names are
# capitalised), and some function words ("the", "of", "is").
PROSE_MIN_WORDS = 5
PROSE_MIN_LOWERCASE = 0.5
PROSE_MIN_FUNCTION_WORDS = 0.1

_WORD = re.compile(r"\S+")
_HEADING_REASONS = (
    ("references", re.compile(r"^(?:[0-9]+\.?|[IVX]+\.)?\s*(?:references?|bibliography|works cited|citations?|"
                              r"literature cited|reference list)\s*:?$", re.I)),
    ("acknowledgments", re.compile(r"^(?:[0-9]+\.?|[IVX]+\.)?\s*acknowledge?ments?\s*:?$", re.I)),
    ("authors", re.compile(r"^(?:[0-9]+\.?|[IVX]+\.)?\s*(?:authors?|affiliations?|author contributions?|"
                           r"contributors?)\s*:?$", re.I)),
)
# One entry of a reference list: "[12] A...", "12. Surname, A.", or a year closing an entry ("..., 2019. Next",
# "(2009). 23.").
_REFERENCE_ENTRY = re.compile(r"(?:^|\s)\[\d{1,3}\]\s+[A-Z]|(?:^|\s)\d{1,3}\.\s+[A-Z][\w’'-]+,\s(?:[A-Z]\.\s?)+"
                              r"|\b(?:19|20)\d{2}[a-z]?\)?\.\s+(?:[A-Z“\"]|\d{1,3}\.\s|$)")
# Author names as reference lists write them: "Surname, A. B." or "A. B. Surname".
_AUTHOR_NAME = re.compile(r"\b[A-Z][\w’'-]+,\s(?:[A-Z]\.\s?)+|\b(?:[A-Z]\.\s?)+[A-Z][a-z][\w’'-]+")
_VENUE = re.compile(r"\b(?:In Proceedings|Proceedings of|Proc\.|arXiv preprint|arXiv:\d{4}\.\d{4,5}|preprint|"
                    r"Conference on|Conf\.|Journal of|Transactions on|Advances in Neural|NeurIPS|NIPS|ICML|ICLR|ACL|"
                    r"EMNLP|NAACL|CVPR|ICCV|ECCV|AAAI|IJCAI|KDD|WWW|Phys\. Rev\.|Nature|Science|PLoS|pp\.|pages|vol\.|"
                    r"doi:|et al\.)")
_THANKS = re.compile(r"\b(?:we|I|authors?)(?: \w+){0,3} (?:thank|acknowledge)\b|\bgrateful\b|\bgratitude\b|"
                     r"\b(?:supported|funded|sponsored) (?:in part )?by\b.*\b(?:grants?|foundation|fellowship|"
                     r"award|council|agency|program)\b|\bgrants? (?:no\.|number|[A-Z]{2,})", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+|\{[\w.,\s-]+\}@")
_AFFILIATION = re.compile(r"\b(?:University|Universität|Université|Institute|Institut|College|Department|School of|"
                          r"Laborator(?:y|ies)|Labs?|Inc\.|Research|Google|Microsoft|Meta|DeepMind|OpenAI|"
                          r"Anthropic|NVIDIA|Equal contribution|Corresponding author)\b")
_FRONT_MATTER = re.compile(r"\barXiv:\s*\d{4}\.\d{4,5}|\bPreprint\b|\bUnder review\b|\bCopyright\b|©|"
                           r"\bAll rights reserved\b|\bLicensed under\b|\bPermission to make\b|\bProceedings of\b", re.I)
_LABELLED_FIELD = re.compile(r"(?:^|[;.]\s)[A-Z][\w /()-]{1,40}: [^;]{1,80};")
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+")
_NUMBER = re.compile(r"^[-+±(]?[$€]?\d[\d.,:/x×%±()-]*[%)]?[,;]?$")


def _is_prose(sentence: str) -> bool:
    words = [w.strip(".,;:!?()[]{}\"'“”‘’") for w in _WORD.findall(_URL.sub(" ", sentence))]
    words = [w for w in words if w]
    if len(words) < PROSE_MIN_WORDS or _FRONT_MATTER.search(sentence):
        return False
    lowercase = sum(w[0].islower() for w in words)
    function_words = sum(w.lower() in STOPWORDS for w in words)
    return lowercase / len(words) >= PROSE_MIN_LOWERCASE and function_words / len(words) >= PROSE_MIN_FUNCTION_WORDS


def prose_sentences(text: str, segmenter: str = "nupunkt") -> list[str]:
    """The chunk's prose sentences (formulas shortened to "FORMULA"): what questions can be asked about."""
    return [s for s in split_sentences(without_math(text), segmenter) if _is_prose(s)]


def prose_share(text: str, segmenter: str = "nupunkt") -> float:
    """Share of the chunk's words (a formula counts as one) that sit in prose sentences."""
    total = len(_WORD.findall(without_math(text)))
    if not total:
        return 0.0
    return sum(len(_WORD.findall(s)) for s in prose_sentences(text, segmenter)) / total


def non_content_reason(text: str, section: str | None = None, segmenter: str = "nupunkt") -> str | None:
    """Which of :data:`SKIP_REASONS` the chunk is, or None when it holds prose worth asking about.

    ``section`` is the chunk's heading path ("Paper > Acknowledgments"); its last heading decides for
    reference, acknowledgment and author sections whatever their text looks like."""
    heading = (section or "").split(">")[-1].strip()
    for reason, pattern in _HEADING_REASONS:
        if pattern.match(heading):
            return reason
    words = _WORD.findall(text)
    if not words:
        return "no_prose"
    sentences = split_sentences(text, segmenter)
    markers = len(_REFERENCE_ENTRY.findall(text)) + len(_VENUE.findall(text))
    names = len(_AUTHOR_NAME.findall(text))
    if markers >= 3 and names >= 3 and (markers + names) * 100 / len(words) >= 8:
        in_entries = sum(len(_WORD.findall(s)) for s in sentences
                         if _REFERENCE_ENTRY.search(s) or _VENUE.search(s) or _AUTHOR_NAME.search(s))
        if in_entries >= 0.6 * len(words):
            return "references"
    thanks = sum(bool(_THANKS.search(s)) for s in sentences)
    if re.match(r"\s*acknowledge?ments?\b", text, re.I) or (thanks >= 1 and thanks * 2 >= len(sentences)):
        return "acknowledgments"
    if prose_share(text, segmenter) >= MIN_PROSE_SHARE or len(_LABELLED_FIELD.findall(text)) >= 3:
        return None  # prose, or a table with labelled fields ("Model: Mixtral 8x7B; Experts: 8; ...")
    if len(_EMAIL.findall(text)) >= 1 or len(_AFFILIATION.findall(text)) >= 2:
        return "authors"
    if _FRONT_MATTER.search(text):
        return "front_matter"
    if len(_URL.findall(text)) >= 2:
        return "links"
    formulas = sum(len(m.group(0)) for m in MATH.finditer(text))
    if formulas * 2 >= len(text):
        return "formulas"
    if sum(bool(_NUMBER.match(w)) for w in words) / len(words) >= 0.3:
        return "numbers_table"
    return "no_prose"

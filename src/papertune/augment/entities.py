"""The AI-terms lexicon (``papertune/data/ai_terms.yaml``) and entity replacement.

The lexicon groups analogous terms ("LoRA", "QLoRA", "adapters" ...), gives generic stand-ins per kind of
term (used by adversarial phrasings) and the words a rewording must never touch. Entity replacement swaps
one term of a question for another of its group, consistently in question and answer.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from papertune.errors import PapertuneError
from papertune.text import indefinite_article, match_case


@dataclass(frozen=True)
class TermGroup:
    kind: str
    terms: tuple[str, ...]


@dataclass(frozen=True)
class TermMatch:
    start: int
    end: int
    group: int
    term: str  # the lexicon's spelling of the term found
    text: str  # as written in the text


class Lexicon:
    """AI-research term groups (entity replacement), generic stand-ins and protected words."""

    def __init__(self, groups: list[TermGroup], generic: dict[str, dict[str, list[str]]], protected: set[str]):
        self.groups = groups
        self.generic = generic
        self.protected = protected
        self._exact: dict[str, tuple[int, str]] = {}
        self._folded: dict[str, tuple[int, str]] = {}
        alternatives = []
        for gi, group in enumerate(groups):
            for term in group.terms:
                if is_case_sensitive(term):
                    self._exact[term] = (gi, term)
                    alternatives.append((term, re.escape(term)))
                else:
                    self._folded[term.lower()] = (gi, term)
                    alternatives.append((term, f"(?i:{re.escape(term)})"))
        alternatives.sort(key=lambda a: (-len(a[0]), a[0]))  # longest first: "LoRA adapters" before "LoRA"
        self._pattern = re.compile(r"(?<![\w-])(?:" + "|".join(a[1] for a in alternatives) + r")(?![\w-])")

    def find(self, text: str) -> list[TermMatch]:
        """Non-overlapping whole-word occurrences of lexicon terms, left to right, longest first."""
        found = []
        for m in self._pattern.finditer(text):
            hit = self._exact.get(m.group()) or self._folded.get(m.group().lower())
            if hit is not None:
                found.append(TermMatch(m.start(), m.end(), hit[0], hit[1], m.group()))
        return found

    def is_protected(self, word: str) -> bool:
        return word.lower() in self.protected


def is_case_sensitive(term: str) -> bool:
    """Acronym-like terms (a capital after the first letter: LoRA, LLMs, GPT-2) match only as written."""
    return any(c.isupper() for c in term[1:])


@functools.cache
def load_lexicon(path: str | None = None) -> Lexicon:
    """The lexicon at ``path``, or the packaged ``papertune/data/ai_terms.yaml``."""
    if path is None:
        text = importlib.resources.files("papertune").joinpath("data/ai_terms.yaml").read_text(encoding="utf-8")
        where = "papertune/data/ai_terms.yaml"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), path
    try:
        data = yaml.safe_load(text) or {}
        groups = [TermGroup(str(g["kind"]), tuple(str(t) for t in g["terms"])) for g in data["groups"]]
        generic = {str(k): {"singular": list(v["singular"]), "plural": list(v["plural"])}
                   for k, v in data["generic"].items()}
        protected = {str(w).lower() for w in data.get("protected", [])}
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise PapertuneError(f"{where}: not a valid term lexicon ({exc!r}); it needs groups, generic, protected") from exc
    seen: dict[str, int] = {}
    for gi, group in enumerate(groups):
        if len(group.terms) < 2:
            raise PapertuneError(f"{where}: group {group.terms} needs at least two terms")
        if group.kind not in generic:
            raise PapertuneError(f"{where}: group {group.terms} has kind {group.kind!r} without generic phrases")
        for term in group.terms:
            key = term if is_case_sensitive(term) else term.lower()
            if key in seen:
                raise PapertuneError(f"{where}: term {term!r} is in two groups")
            seen[key] = gi
    for group in groups:
        protected.update(w.lower() for term in group.terms for w in re.findall(r"[A-Za-z]+", term) if len(w) > 1)
    return Lexicon(groups, generic, protected)


def is_plural_term(term: str) -> bool:
    """Whether a lexicon term is plural ("LLMs", "adapters"; not "mixture of experts")."""
    if " of " in term or " with " in term:  # "mixture of experts": the head noun comes first
        return False
    last = term.split()[-1]
    if re.fullmatch(r"[A-Z0-9-]+s", last):  # LLMs, CNNs
        return True
    return last.endswith("s") and not last.endswith(("ss", "us", "is"))


def key_terms(text: str, lexicon: Lexicon) -> set[str]:
    """AI terms, acronyms and numbers of ``text`` (lower case): what a rewording must keep."""
    terms = {m.text.lower() for m in lexicon.find(text)}
    terms |= {t.lower().strip(".,;:!?") for t in re.findall(r"\S*\d\S*|\b\w*[A-Z]\w*[A-Z]\w*\b", text)}
    return {t for t in terms if t}


def keeps_terms(original: str, text: str, lexicon: Lexicon) -> bool:
    """Whether ``text`` still holds every key term of ``original`` (an LLM rewording must)."""
    lowered = text.lower()
    return all(term in lowered for term in key_terms(original, lexicon))


# ---------------------------------------------------------------------------------------------
# entity replacement


def _replace_spans(text: str, replacements: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(replacements, reverse=True):
        # Keep "a"/"an" in front of the new term right: "a large language model" -> "an LLM".
        art = re.search(r"\b(a|an|A|An)\s+$", text[:start])
        text = text[:start] + new + text[end:]
        if art:
            fixed = indefinite_article(new)
            fixed = match_case(fixed, art[1]) if art[1][0].isupper() else fixed
            text = text[:art.start(1)] + fixed + text[art.end(1):]
    return text


def replace_entities(question: str, answer: str, lexicon: Lexicon, rng: random.Random
                     ) -> tuple[str, str, str] | None:
    """Swap one AI term of the question for another of its group, in question and answer alike.

    Returns (question, answer, "old -> new"), or None when the question holds no lexicon term.
    """
    in_question = lexicon.find(question)
    groups = sorted({m.group for m in in_question}, key=lambda g: min(m.start for m in in_question if m.group == g))
    if not groups:
        return None
    gi = rng.choice(groups)
    group = lexicon.groups[gi]
    source = next(m.term for m in in_question if m.group == gi)
    target = rng.choice([t for t in group.terms if t != source])

    def swap(text: str) -> str:
        return _replace_spans(text, [
            (m.start, m.end, _cased(m, target, _sentence_start(text, m.start)))
            for m in lexicon.find(text) if m.group == gi and m.term != target
        ])

    return swap(question), swap(answer), f"{source} -> {target}"


def _sentence_start(text: str, position: int) -> bool:
    return not text[:position].strip() or bool(re.search(r"[.!?:]\s+$", text[:position]))


def _cased(match: TermMatch, target: str, sentence_start: bool) -> str:
    """``target`` written the way the found text was: all capitals, or a capital at a sentence start."""
    if match.text.isupper() and len(match.text) > 1 and not match.term.isupper():
        return target.upper()
    if target[:1].islower() and (sentence_start or (match.text[:1].isupper() and not match.term[:1].isupper())):
        return target[:1].upper() + target[1:]
    return target

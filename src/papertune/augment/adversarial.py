"""Ambiguous and adversarial phrasings of a question that keep its reference answer.

A generic stand-in for the specific term ("LoRA" -> "this method"), a bare pronoun ("What does it
reduce?"), a leading preface ("Correct me if I'm wrong, but ..."), or "Is it true that ...?".
"""

from __future__ import annotations

import random
import re

from papertune.augment.entities import Lexicon, is_case_sensitive, is_plural_term
from papertune.augment.grammar import AUXILIARIES, PREDICATE_FOLLOWERS, WH_WORDS, Grammar
from papertune.text import STOPWORDS, normalize, upper_first

_LEADING = (
    "Correct me if I'm wrong, but {q}",
    "This is probably a basic question, but {q}",
    "I've read conflicting explanations of this. {Q}",
    "Assuming the usual explanation is right, {q}",
    "Everyone says this is obvious, but {q}",
)
_LEADING_ENTITY = (
    "Given that {e} {be} so widely used, {q}",
    "Since {e} {be} often misunderstood, {q}",
    "People keep overhyping {e}, so: {q}",
)
_IS_IT_TRUE = (
    "Is it true that nobody really knows {e}?",
    "Is it true that the literature never explains {e}?",
    "Is it true that it is still unclear {e}?",
)
ADVERSARIAL_KINDS = ("vague_scope", "pronoun", "leading", "is_it_true")


def lower_first(text: str, lexicon: Lexicon) -> str:
    """The text with its first letter lower-cased, unless the first word is a name or an acronym."""
    first = text.split(" ", 1)[0]
    if not first or not first[0].isupper() or any(c.isupper() for c in first[1:]):
        return text
    for m in lexicon.find(text):
        if m.start == 0 and m.term[:1].isupper():
            return text  # "Transformer models are ..."
        break
    return text[0].lower() + text[1:]


class Adversary:
    """Ambiguous and adversarial phrasings of a question that keep its reference answer."""

    def __init__(self, lexicon: Lexicon, grammar: Grammar):
        self.lexicon = lexicon
        self.grammar = grammar

    def entity(self, question: str) -> tuple[int, int, str, bool] | None:
        """The question's main specific term: (start, end, kind, plural); a lexicon term or an acronym.

        Only a term that stands as a noun phrase of its own can be swapped for a pronoun or a generic
        phrase: not one after "which"/"what" ("Which optimizer ...") nor one modifying a noun
        ("the benchmark results").
        """
        found = [(m.start, m.end, self.lexicon.groups[m.group].kind, is_plural_term(m.term))
                 for m in self.lexicon.find(question)]
        found += [(m.start(), m.end(), "other", bool(re.fullmatch(r"[A-Z0-9-]+s", m.group())))
                  for m in re.finditer(r"(?<![\w-])[A-Z][A-Za-z0-9]*[A-Z][A-Za-z0-9-]*(?![\w-])", question)]
        for start, end, kind, plural in sorted(found):
            before = re.findall(r"[\w']+", question[:start].lower())
            if before and before[-1] in ("which", "what", "whose", "many", "much"):
                continue
            following = re.match(r"\s+([a-z]+)\b", question[end:])
            if following and self._noun_like(following[1]):
                continue
            return start, end, kind, plural
        return None

    def _noun_like(self, word: str) -> bool:
        if word in STOPWORDS or word in PREDICATE_FOLLOWERS:
            return False
        counts = self.grammar.pos_counts(word)
        if not counts:
            return word.endswith(("s", "tion", "ment", "ness", "ity"))
        return counts.get("n", 0) / sum(counts.values()) > 0.5 and not self.grammar.is_base_verb(word)

    def _swap_entity(self, question: str, new: str, plural_new: bool) -> str | None:
        ent = self.entity(question)
        if ent is None:
            return None
        start, end, _, _ = ent
        before = question[:start]
        det = re.search(r"\b(the|a|an|this|these|that|those)\s+$", before, re.I)
        if det:
            start = det.start()
            before = question[:start]
        after = question[end:]
        if after.startswith("'s") and new in ("it", "they"):
            new, after = ("its" if new == "it" else "their"), after[2:]
        elif new == "they":
            prev = re.findall(r"[\w']+", before.lower())
            if prev and prev[-1] not in AUXILIARIES | WH_WORDS | {"and", "or", "that", "when", "if", "because"}:
                new = "them"  # object: "propose for them"
        if start == 0:
            new = upper_first(new)
        return before + new + after

    def vague_scope(self, question: str, rng: random.Random) -> str | None:
        ent = self.entity(question)
        if ent is None:
            return None
        _, _, kind, plural = ent
        phrases = self.lexicon.generic.get(kind) or self.lexicon.generic["other"]
        return self._swap_entity(question, rng.choice(phrases["plural" if plural else "singular"]), plural)

    def pronoun(self, question: str, rng: random.Random) -> str | None:
        ent = self.entity(question)
        if ent is None:
            return None
        text = self._swap_entity(question, "they" if ent[3] else "it", ent[3])
        if text is None:
            return None
        content = [w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS and w not in ("it", "they")]
        if not content:
            return None  # "What is it?" says nothing at all
        lead = rng.choice(("", "And ", "So "))
        return lead + lower_first(text, self.lexicon) if lead else text

    def leading(self, question: str, rng: random.Random) -> str:
        q = lower_first(question, self.lexicon)
        # Only terms that need no article: names and acronyms, plurals, methods and fields ("LoRA",
        # "LLMs", "quantization"); "Given that optimizer is ..." would not be English.
        found = [m for m in self.lexicon.find(question)
                 if is_case_sensitive(m.term) or is_plural_term(m.term) or m.term[:1].isupper()
                 or self.lexicon.groups[m.group].kind in ("method", "field")]
        if found and rng.random() < 0.5:
            m = found[0]
            template = rng.choice(_LEADING_ENTITY)
            return template.format(e=m.text if not m.text[:1].isupper() or m.term[:1].isupper() else m.term,
                                   be="are" if is_plural_term(m.term) else "is", q=q, Q=question)
        return rng.choice(_LEADING).format(q=q, Q=question)

    def is_it_true(self, question: str, rng: random.Random) -> str | None:
        embedded = self.grammar.embed(question)
        if embedded is None:
            return None
        return rng.choice(_IS_IT_TRUE).format(e=embedded)

    def phrase(self, question: str, rng: random.Random) -> tuple[str, str] | None:
        """One adversarial phrasing, chosen at random among those that apply: (text, kind)."""
        kinds = list(ADVERSARIAL_KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            text = getattr(self, kind)(question, rng)
            if text and normalize(text) != normalize(question):
                return text, kind
        return None


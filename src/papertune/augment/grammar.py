"""Just enough English grammar for rewording questions: embedded (indirect) questions and main verbs.

Used by WordNet paraphrases ("How does LoRA reduce memory?" -> "Can you tell me how LoRA reduces
memory?") and adversarial phrasings ("Is it true that nobody really knows how LoRA reduces memory?").
"""

from __future__ import annotations

import functools
import re
from typing import Any

from papertune.text import STOPWORDS, third_person

DETERMINERS = frozenset("a an the this that these those its their our your his her each every any some no such".split())
BE_FORMS = frozenset("is are was were".split())
DO_FORMS = frozenset("does do did".split())
MODALS = frozenset("can could should would will may might must".split())
AUXILIARIES = BE_FORMS | DO_FORMS | MODALS
WH_WORDS = frozenset("what how why when where who which".split())
# Words that may follow a predicate ("used for", "important in", "computed during training").
PREDICATE_FOLLOWERS = frozenset(
    "for in on at to by with from during when because than as into over under within without after before "
    "while if".split()
)


class Grammar:
    """Just enough English to turn "How does LoRA reduce memory?" into "how LoRA reduces memory".

    Part-of-speech guesses come from WordNet sense counts when WordNet is available; without it only
    question shapes that need no guess are handled. Anything unsure gives ``None``.
    """

    def __init__(self, wn: Any | None):
        self.wn = wn

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one Grammar per run
    def pos_counts(self, word: str) -> dict[str, int]:
        """How often ``word`` (as written: base form) is used as n/v/a/r, from WordNet's tagged counts."""
        if self.wn is None:
            return {}
        counts: dict[str, int] = {}
        for pos in "nvar":
            total = 0
            for synset in self.wn.synsets(word, pos):
                for lemma in synset.lemmas():
                    if lemma.name().lower() == word:
                        total += lemma.count() + 1
            if total:
                counts[pos] = counts.get(pos, 0) + total
        return counts

    def is_base_verb(self, word: str) -> bool:
        return self.wn is not None and word.isalpha() and word.islower() and self.wn.morphy(word, "v") == word

    def verb_share(self, word: str) -> float:
        counts = self.pos_counts(word)
        return counts.get("v", 0) / sum(counts.values()) if counts else 0.0

    def is_predicate(self, word: str) -> bool:
        """A participle or adjective that can follow "is": "used", "computed", "important"."""
        w = word.lower()
        if not w.isalpha() or w in STOPWORDS:
            return False
        if len(w) > 4 and w.endswith("ed"):
            return True
        if self.wn is not None and self.wn.morphy(w, "a") not in (None, w):
            return True  # comparative or superlative: "faster", "largest"
        counts = self.pos_counts(w)
        return bool(counts) and counts.get("a", 0) / sum(counts.values()) > 0.5

    def _verb_index(self, rest: list[str]) -> int | None:
        """Where the main verb starts in "LoRA reduce memory" (subject, then verb): 1 here."""
        candidates = []
        for i in range(1, len(rest)):
            w, prev = rest[i], rest[i - 1].lower()
            if prev in DETERMINERS or prev.endswith("'s") or not self.is_base_verb(w) or (
                    w in STOPWORDS and w not in ("have", "do")):
                continue
            candidates.append(i)
        for i in candidates:
            if self.verb_share(rest[i]) >= 0.5:
                return i
        if candidates and candidates[-1] == len(rest) - 1:  # "Why does the learning rate matter"
            return candidates[-1]
        return None

    def _predicate_index(self, rest: list[str]) -> int | None:
        for i, w in enumerate(rest):
            following = rest[i + 1].lower() if i + 1 < len(rest) else None
            prev = rest[i - 1].lower() if i else ""
            if prev in DETERMINERS or prev.endswith("'s"):
                continue
            if self.is_predicate(w) and (following is None or following in PREDICATE_FOLLOWERS):
                return i
        return None

    def main_verb(self, question: str) -> int | None:
        """Character offset of the main verb of a do/modal question ("How does LoRA *reduce* memory?")."""
        spans = [(m.start(), m.group()) for m in re.finditer(r"\S+", question.strip().rstrip("?"))]
        words = [w for _, w in spans]
        k = next((i for i in range(min(4, len(words))) if words[i].lower() in DO_FORMS | MODALS), None)
        if k is None:
            return None
        v = self._verb_index(words[k + 1:])
        return None if v is None else spans[k + 1 + v][0]

    def embed(self, question: str) -> str | None:
        """The question as an indirect question ("what LoRA is", "whether LoRA can ..."), or None."""
        body = question.strip()
        if not body.endswith("?"):
            return None
        body = body[:-1].strip()
        if re.search(r"[,;:\"()\[\]]", body):
            return None
        words = body.split()
        if len(words) < 2:
            return None
        first = words[0].lower()
        if first in WH_WORDS:
            k = next((i for i in range(1, min(4, len(words))) if words[i].lower() in AUXILIARIES), None)
            if k is None:
                # Subject questions keep their order: "Which method reduces memory" -> "which method reduces memory".
                return " ".join([first] + words[1:]) if first in ("what", "which", "who") else None
            if any(w.lower() in AUXILIARIES for w in words[1:k]):
                return None
            wh = " ".join([first] + words[1:k])
        elif first in AUXILIARIES:
            k, wh = 0, "whether"
        else:
            return None
        aux, rest = words[k].lower(), words[k + 1:]
        if not rest:
            return None
        if aux in BE_FORMS:
            if wh != "whether" and self.is_predicate(rest[0]) and (
                    len(rest) == 1 or rest[1].lower() in PREDICATE_FOLLOWERS):
                return f"{wh} {aux} {' '.join(rest)}"  # "what is responsible for X"
            p = self._predicate_index(rest)
            if p is not None and p >= 1:
                return f"{wh} {' '.join(rest[:p])} {aux} {' '.join(rest[p:])}"
            if wh in ("what", "who") or wh.startswith(("which ", "what ")):
                return f"{wh} {' '.join(rest)} {aux}"  # "what LoRA is"
            return None
        v = self._verb_index(rest)
        if v is None:
            return None
        if aux in DO_FORMS:
            if aux == "did":
                return None  # the past tense of an arbitrary verb is beyond these rules
            verb = third_person(rest[v]) if aux == "does" else rest[v]
            return " ".join([wh, *rest[:v], verb, *rest[v + 1:]])
        return " ".join([wh, *rest[:v], aux, *rest[v:]])  # modal


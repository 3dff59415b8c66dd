"""Paraphrased questions: offline from WordNet (synonyms, syntactic rewrites) or written by an instruct model.

WordNet paraphrases substitute common synonyms for a few content words (never AI terms, acronyms or
numbers) and may reword the question ("What is X?" -> "Could you explain what X is?"). The LLM backend
asks the instruct model with :func:`paraphrase_prompt`; its reply is checked by the stage.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable

from papertune.augment.entities import Lexicon
from papertune.augment.grammar import DETERMINERS, DO_FORMS, MODALS, Grammar
from papertune.text import STOPWORDS, match_case, normalize, pluralize

# Synonyms that are technically right but read badly in a question.
BAD_SYNONYMS = frozenset("let get make do have take go set put give hold keep bring come".split())
_WORD_SPAN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_REWRITES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^What is the (purpose|function) of (.+)\?$", re.I), lambda m: f"What {m[1].lower()} does {m[2]} serve?"),
    (re.compile(r"^What is the role of (.+)\?$", re.I), lambda m: f"What role does {m[1]} play?"),
    (re.compile(r"^What is the (goal|aim) of (.+)\?$", re.I), lambda m: f"What does {m[2]} aim to achieve?"),
    (re.compile(r"^What are the (advantages|benefits) of (.+)\?$", re.I), lambda m: f"What {m[1].lower()} does {m[2]} offer?"),
    (re.compile(r"^What are the (disadvantages|drawbacks|limitations) of (.+)\?$", re.I),
     lambda m: f"What {m[1].lower()} does {m[2]} have?"),
    (re.compile(r"^What is the difference between (.+) and (.+)\?$", re.I), lambda m: f"How does {m[1]} differ from {m[2]}?"),
    (re.compile(r"^What is meant by (.+)\?$", re.I), lambda m: f"What does {m[1]} mean?"),
    (re.compile(r"^What does (.+) mean\?$", re.I), lambda m: f"What is meant by {m[1]}?"),
    (re.compile(r"^What does (.+) stand for\?$", re.I), lambda m: f"What is the full form of {m[1]}?"),
    (re.compile(r"^How (does|do|can|could|is|are|should|would) (.+)\?$", re.I), lambda m: f"In what way {m[1].lower()} {m[2]}?"),
    (re.compile(r"^Why (does|do|is|are|can|should|would|did) (.+)\?$", re.I), lambda m: f"For what reason {m[1].lower()} {m[2]}?"),
    (re.compile(r"^Which (.+)\?$", re.I), lambda m: f"What {m[1]}?"),
    (re.compile(r"^(?:Describe|Explain) (.+)\.$", re.I), lambda m: f"Could you {m[0].split()[0].lower()} {m[1]}?"),
]
_EMBED_TEMPLATES = ("Could you explain {e}?", "Can you tell me {e}?", "I would like to know {e}.", "Do you know {e}?")
_EMBED_WHETHER_TEMPLATES = ("Can you tell me {e}?", "I would like to know {e}.", "Do you know {e}?")


class Paraphraser:
    """Offline question paraphrases: WordNet synonyms for a few content words, then a syntactic rewrite."""

    def __init__(self, lexicon: Lexicon, grammar: Grammar):
        if grammar.wn is None:
            raise ValueError("Paraphraser needs WordNet")
        self.lexicon = lexicon
        self.grammar = grammar
        self.wn = grammar.wn

    def protected_spans(self, text: str) -> list[tuple[int, int]]:
        spans = [(m.start, m.end) for m in self.lexicon.find(text)]
        # Acronyms, words with digits, and anything in quotes or backticks.
        spans += [(m.start(), m.end()) for m in re.finditer(r"\S*[0-9]\S*|\b\w*[A-Z]\w*[A-Z]\w*\b", text)]
        spans += [(m.start(), m.end()) for m in re.finditer(r"`[^`]*`|\"[^\"]*\"|'[^']*'", text)]
        return spans

    @functools.lru_cache(maxsize=65536)  # noqa: B019
    def synonym(self, word: str, prev: str, verb: bool = False) -> str | None:
        """A common synonym of ``word`` (lower case) in its most frequent sense, inflected like it.

        ``verb``: the word is known to be the question's main verb, so only a verb sense will do.
        """
        g = self.grammar
        best: tuple[str, str, str] | None = None  # (pos, base, form)
        counts = {}
        for pos in ("v" if verb else "nvar"):
            base = self.wn.morphy(word, pos)
            if base is None:
                continue
            if base == word:
                form = "base"
            elif pos in "nv" and pluralize(base) == word:
                form = "s"
            else:
                continue
            c = g.pos_counts(base).get(pos, 0)
            counts[pos] = c
            if best is None or c > counts[best[0]]:
                best = (pos, base, form)
        if best is None:
            return None
        pos, base, form = best
        total = sum(g.pos_counts(base).values())
        if total < 3 or (counts[pos] / total < 0.7 and not verb):
            return None  # rare, or ambiguous between noun and verb: no safe substitute
        if prev in DETERMINERS and pos == "v":
            return None
        if pos != "v" and prev not in DETERMINERS and g.verb_share(base) >= 0.1:
            return None  # "networks process sequences": could be the verb, whatever WordNet's majority
        if prev in DO_FORMS | MODALS | {"to"} and pos != "v":
            return None
        # Only the word's most frequent sense: rarer ones give synonyms that change the meaning.
        senses = sorted(
            (s for s in self.wn.synsets(base, pos)),
            key=lambda s: -max((lem.count() for lem in s.lemmas() if lem.name().lower() == base), default=0),
        )[:1]
        options: list[tuple[int, str]] = []
        for synset in senses:
            for lemma in synset.lemmas():
                name = lemma.name()
                if (name.lower() == base or not name.isalpha() or not name.islower() or lemma.count() < 1
                        or name in BAD_SYNONYMS or name in STOPWORDS or self.lexicon.is_protected(name)):
                    continue
                own = self.wn.synsets(name, pos)
                if not own or own[0] != synset:  # the synonym's own main sense must be this one
                    continue
                options.append((lemma.count(), name))
        if not options:
            return None
        _, choice = max(options)
        return pluralize(choice) if form == "s" else choice

    def substitute(self, text: str, rng: random.Random, max_words: int) -> tuple[str, int]:
        protected = self.protected_spans(text)
        verb_at = self.grammar.main_verb(text)
        candidates = []
        tokens = list(_WORD_SPAN.finditer(text))
        for index, m in enumerate(tokens):
            word = m.group()
            lower = word.lower()
            if (len(word) < 4 or "'" in word or lower in STOPWORDS or self.lexicon.is_protected(lower)
                    or any(s < m.end() and m.start() < e for s, e in protected)):
                continue
            if any(c.isupper() for c in word[1:]) or (word[0].isupper() and m.start() > 0):
                continue  # names and acronyms
            before, after = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]
            if before in "-_/" and before or after in "-_/" and after:
                continue  # part of a compound ("low-rank")
            prev = tokens[index - 1].group().lower() if index else ""
            synonym = self.synonym(lower, prev, verb=m.start() == verb_at)
            if synonym:
                candidates.append((m.start(), m.end(), match_case(synonym, word)))
        if not candidates:
            return text, 0
        chosen = sorted(rng.sample(candidates, min(max_words, len(candidates))), reverse=True)
        for start, end, new in chosen:
            text = text[:start] + new + text[end:]
        return text, len(chosen)

    def rewrites(self, question: str) -> list[str]:
        out = [fn(m) for pattern, fn in _REWRITES if (m := pattern.match(question.strip()))]
        embedded = self.grammar.embed(question)
        if embedded:
            templates = _EMBED_WHETHER_TEMPLATES if embedded.startswith("whether") else _EMBED_TEMPLATES
            out += [t.format(e=embedded) for t in templates]
        return out

    def paraphrase(self, question: str, rng: random.Random) -> tuple[str, list[str]] | None:
        """A reworded question and what was done ("synonyms", "rewrite"), or None if nothing applies."""
        done = []
        text, n = self.substitute(question, rng, max_words=rng.choice((1, 2)))
        if n:
            done.append("synonyms")
        options = self.rewrites(text) or ([] if n else self.rewrites(question))
        if options and (not n or rng.random() < 0.7):
            text = rng.choice(options)
            done.append("rewrite")
        if normalize(text) == normalize(question):
            return None
        return text, done


# ---------------------------------------------------------------------------------------------
# written by the instruct model

PARAPHRASE_SYSTEM = (
    "You paraphrase questions about machine-learning research. Keep the meaning and every technical term, "
    "name and number; change the wording. Reply with the paraphrased question only."
)

# One worked example per prompt: small instruct models otherwise tend to answer instead of rewording.
_PARAPHRASE_EXAMPLE = ("What is dropout used for?", "What purpose does dropout serve during training?")


def paraphrase_prompt(question: str) -> list[dict[str, str]]:
    """The conversation asking the instruct model to paraphrase ``question`` (one worked example first)."""
    q, p = _PARAPHRASE_EXAMPLE
    return [{"role": "system", "content": PARAPHRASE_SYSTEM},
            {"role": "user", "content": f"Question: {q}\nParaphrase:"},
            {"role": "assistant", "content": p},
            {"role": "user", "content": f"Question: {question}\nParaphrase:"}]

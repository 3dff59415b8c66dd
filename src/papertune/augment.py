"""The augment stage: curated pairs -> ``RUN/qa_augmented.jsonl`` (originals and their variants).

One technique per kind of augmentation in the training report (section 3.3), each switched by its rate
in the ``augment`` section (the share of original pairs that get one variant of that kind; 0 = off):

- ``paraphrase`` (3.3.1): the question reworded. ``wordnet``: offline synonym substitution from WordNet
  (content words only; never AI terms, acronyms or numbers) and light syntactic rewrites ("What is X?" ->
  "Could you explain what X is?"). ``llm``: the instruct model in ``augment.llm`` writes it.
- ``alternative_answer`` (3.3.2): the answer reworded by the instruct model; the question is kept.
- ``noise`` (3.3.3): typos (keyboard neighbour, dropped, doubled, swapped letters) at
  ``augment.noise_char_prob`` per letter, punctuation and casing variation, small grammatical slips.
  Only the question: the reference answer stays clean.
- ``entity_replacement`` (3.3.4): an AI term swapped for an analogous one from ``data/ai_terms.yaml``
  ("Transformer models" -> "sequence models"), consistently in question and answer.
- ``adversarial`` (3.3.5): the same question phrased vaguely or adversarially (a generic stand-in for the
  specific term, a bare pronoun, a leading preface, "Is it true that ...?"), with the same answer.

Every variant copies its original's fields (chunk, source, pages ...), gets a stable new ``id``
(``<original id>~<technique>``), ``parent_id`` = the original's id and ``augmentation`` = the technique.
Which pairs get a variant, and every random choice inside one, follow from ``augment.seed`` and the
pair's id alone: the same inputs and settings give byte-identical output.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import random
import re
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from papertune.config import AugmentConfig, PapertuneConfig
from papertune.errors import ConfigError, InputError, PapertuneError
from papertune.rundir import read_pairs, record_stage, write_json_atomic, write_jsonl_atomic
from papertune.text import STOPWORDS

log = logging.getLogger(__name__)

INPUT_FILE = "qa_curated.jsonl"
OUTPUT_FILE = "qa_augmented.jsonl"
REPORT_FILE = "augment/report.json"

TECHNIQUES = ("paraphrase", "alternative_answer", "noise", "entity_replacement", "adversarial")
_RATE_SETTING = {t: f"{t}_rate" for t in TECHNIQUES}
_MAX_PROBLEMS_IN_REPORT = 100

# ---------------------------------------------------------------------------------------------
# small word lists

DETERMINERS = frozenset("a an the this that these those its their our your his her each every any some no such".split())
BE = frozenset("is are was were".split())
DO = frozenset("does do did".split())
MODALS = frozenset("can could should would will may might must".split())
AUXILIARIES = BE | DO | MODALS
WH_WORDS = frozenset("what how why when where who which".split())
# Words that may follow a predicate ("used for", "important in", "computed during training").
PREDICATE_FOLLOWERS = frozenset(
    "for in on at to by with from during when because than as into over under within without after before "
    "while if".split()
)
# Synonyms that are technically right but read badly in a question.
BAD_SYNONYMS = frozenset("let get make do have take go set put give hold keep bring come".split())

# ---------------------------------------------------------------------------------------------
# the AI-terms lexicon


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
                if _case_sensitive(term):
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


def _case_sensitive(term: str) -> bool:
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
            key = term if _case_sensitive(term) else term.lower()
            if key in seen:
                raise PapertuneError(f"{where}: term {term!r} is in two groups")
            seen[key] = gi
    for group in groups:
        protected.update(w.lower() for term in group.terms for w in re.findall(r"[A-Za-z]+", term) if len(w) > 1)
    return Lexicon(groups, generic, protected)


# ---------------------------------------------------------------------------------------------
# WordNet (Debian's WordNet 3.0 files, read with NLTK's reader; no download)

WORDNET_SYSTEM_DIR = Path("/usr/share/wordnet")
_WORDNET_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")) + (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)
_WORDNET_OPTIONAL = ("index.sense", "cntlist.rev")
# WordNet 3.0's lexicographer file names (lexnames), which Debian's packages leave out.
_LEXNAMES = (
    "adj.all 3|adj.pert 3|adv.all 4|noun.Tops 1|noun.act 1|noun.animal 1|noun.artifact 1|noun.attribute 1|"
    "noun.body 1|noun.cognition 1|noun.communication 1|noun.event 1|noun.feeling 1|noun.food 1|noun.group 1|"
    "noun.location 1|noun.motive 1|noun.object 1|noun.person 1|noun.phenomenon 1|noun.plant 1|noun.possession 1|"
    "noun.process 1|noun.quantity 1|noun.relation 1|noun.shape 1|noun.state 1|noun.substance 1|noun.time 1|"
    "verb.body 2|verb.change 2|verb.cognition 2|verb.communication 2|verb.competition 2|verb.consumption 2|"
    "verb.contact 2|verb.creation 2|verb.emotion 2|verb.motion 2|verb.perception 2|verb.possession 2|"
    "verb.social 2|verb.stative 2|verb.weather 2|adj.ppl 3"
)


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in
                   enumerate(entry.split() for entry in _LEXNAMES.split("|")))


def wordnet_data_dir(source: Path | None = None) -> Path:
    """An NLTK data folder holding ``corpora/wordnet`` (a copy of ``source`` plus lexnames), made once.

    It lives under the papertune cache (``$PAPERTUNE_CACHE``, else ``~/.cache/papertune``).
    """
    from papertune.models import cache_dir

    source = WORDNET_SYSTEM_DIR if source is None else source
    root = cache_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return root
    missing = [name for name in _WORDNET_REQUIRED if not (source / name).is_file()]
    if missing:
        raise ConfigError(
            f"WordNet 3.0 is not installed at {source} (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); augment.paraphrase_backend=wordnet needs it: "
            "apt-get install wordnet-base wordnet-sense-index (or set augment.paraphrase_backend=llm, "
            "or augment.paraphrase_rate=0)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".wordnet.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in _WORDNET_REQUIRED + _WORDNET_OPTIONAL:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)
    (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
    try:
        os.replace(tmp, target)
        log.info("WordNet: copied %s to %s (once)", source, target)
    except OSError:  # another process put it there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "lexnames").is_file():
            raise
    return root


@functools.cache
def _load_wordnet(source: str, cache: str) -> Any:
    """The reader for ``source``, once per (source, cache folder): tests may point either elsewhere."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_data_dir(Path(source))
    if str(root) not in nltk.data.path:  # NLTK only reads corpora under its data path
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed here
        return WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)


def wordnet() -> Any:
    """NLTK's WordNet reader over the system WordNet 3.0 (loaded once per process, about 5 s)."""
    from papertune.models import cache_dir

    return _load_wordnet(str(WORDNET_SYSTEM_DIR), str(cache_dir()))


def _optional_wordnet() -> Any | None:
    try:
        return wordnet()
    except ConfigError as exc:
        log.info("WordNet not available (%s); adversarial phrasings use simpler rules", exc)
        return None


# ---------------------------------------------------------------------------------------------
# text helpers

_WORD_SPAN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1 and not new.isupper():
        return new.upper()
    if old[:1].isupper() and new[:1].islower():
        return new[:1].upper() + new[1:]
    return new


def _lower_first(text: str, lexicon: Lexicon) -> str:
    """The text with its first letter lower-cased, unless the first word is a name or an acronym."""
    first = text.split(" ", 1)[0]
    if not first or not first[0].isupper() or any(c.isupper() for c in first[1:]):
        return text
    for m in lexicon.find(text):
        if m.start == 0 and m.term[:1].isupper():
            return text  # "Transformer models are ..."
        break
    return text[0].lower() + text[1:]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pluralize(word: str) -> str:
    if re.search(r"(s|sh|ch|x|z)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def _third_person(verb: str) -> str:
    return {"have": "has", "be": "is", "do": "does", "go": "goes"}.get(verb, _pluralize(verb))


def _article_for(word: str) -> str:
    """'an' before a vowel sound ("an LLM", "an adapter"), else 'a'."""
    if not word:
        return "a"
    first_token = re.split(r"[\s-]", word, 1)[0]
    if len(first_token) > 1 and first_token.isupper():  # read letter by letter
        return "an" if first_token[0] in "AEFHILMNORSX" else "a"
    return "an" if word[0].lower() in "aeiou" else "a"


def _is_plural(term: str) -> bool:
    if " of " in term or " with " in term:  # "mixture of experts": the head noun comes first
        return False
    last = term.split()[-1]
    if re.fullmatch(r"[A-Z0-9-]+s", last):  # LLMs, CNNs
        return True
    return last.endswith("s") and not last.endswith(("ss", "us", "is"))


def _ends_question(text: str) -> str:
    text = text.strip()
    return text if text.endswith("?") else text.rstrip(".!") + "?"


# ---------------------------------------------------------------------------------------------
# grammar: embedded (indirect) questions, used by paraphrases and adversarial phrasings


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
        k = next((i for i in range(min(4, len(words))) if words[i].lower() in DO | MODALS), None)
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
        if aux in BE:
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
        if aux in DO:
            if aux == "did":
                return None  # the past tense of an arbitrary verb is beyond these rules
            verb = _third_person(rest[v]) if aux == "does" else rest[v]
            return " ".join([wh, *rest[:v], verb, *rest[v + 1:]])
        return " ".join([wh, *rest[:v], aux, *rest[v:]])  # modal


# ---------------------------------------------------------------------------------------------
# paraphrase (WordNet synonyms + syntactic rewrites)

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
            elif pos in "nv" and _pluralize(base) == word:
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
        if prev in DO | MODALS | {"to"} and pos != "v":
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
        return _pluralize(choice) if form == "s" else choice

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
                candidates.append((m.start(), m.end(), _match_case(synonym, word)))
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
        if _normalized(text) == _normalized(question):
            return None
        return text, done


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


# ---------------------------------------------------------------------------------------------
# noise

_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_KEYBOARD):
    for _c, _ch in enumerate(_row):
        near = []
        for dr, dc in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, -1), (1, 0)):
            rr, cc = _r + dr, _c + dc
            if 0 <= rr < 3 and 0 <= cc < len(_KEYBOARD[rr]):
                near.append(_KEYBOARD[rr][cc])
        _NEIGHBOURS[_ch] = "".join(near)

TYPO_KINDS = ("neighbour", "drop", "double", "swap")


def add_typos(text: str, prob: float, rng: random.Random) -> tuple[str, int]:
    """Each ASCII letter, with probability ``prob``, gets one typo: a keyboard neighbour, dropped, doubled,
    or swapped with the next letter. Digits and everything else are left alone. Returns (text, typos)."""
    out: list[str] = []
    typos, i = 0, 0
    while i < len(text):
        c = text[i]
        if c.isascii() and c.isalpha() and rng.random() < prob:
            kind = rng.choice(TYPO_KINDS)
            if kind == "swap":
                if i + 1 < len(text) and text[i + 1].isalpha() and text[i + 1].lower() != c.lower():
                    out += [text[i + 1], c]
                    typos += 1
                    i += 2
                    continue
                kind = "neighbour"
            if kind == "neighbour":
                out.append(_match_case(rng.choice(_NEIGHBOURS[c.lower()]), c))
            elif kind == "double":
                out += [c, c]
            typos += 1  # "drop" appends nothing
        else:
            out.append(c)
        i += 1
    return "".join(out), typos


_SLIPS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    ("drop_article", re.compile(r"(?<=\s)(the|a|an) (?=\w)"), lambda m: ""),
    ("agreement", re.compile(r"(?<=\s)(is|are|does|do|has|have)(?= )"),
     lambda m: {"is": "are", "are": "is", "does": "do", "do": "does", "has": "have", "have": "has"}[m[1]]),
    ("article", re.compile(r"(?<=\s)(an|a)(?= \w)"), lambda m: {"a": "an", "an": "a"}[m[1]]),
]


def grammatical_slip(text: str, rng: random.Random) -> tuple[str, str | None]:
    """One small slip a hurried user makes: a dropped article, "is" for "are", "a" for "an"."""
    options = [(name, m, fn) for name, pattern, fn in _SLIPS for m in pattern.finditer(text)]
    if not options:
        return text, None
    name, m, fn = rng.choice(options)
    return text[:m.start()] + fn(m) + text[m.end():], name


def vary_punctuation(text: str, rng: random.Random) -> str:
    stripped = text.rstrip()
    end = stripped[-1:] if stripped[-1:] in "?.!" else ""
    core = stripped[:-1] if end else stripped
    choice = rng.choice(("none", "double", "space", "bang", "commas"))
    if choice == "none":
        return core
    if choice == "double":
        return core + (end or "?") * 2
    if choice == "space":
        return core + " " + (end or "?")
    if choice == "bang":
        return core + "?!"
    return core.replace(",", "") + end if "," in core else core


def vary_casing(text: str, rng: random.Random) -> str:
    return text.lower() if rng.random() < 0.5 else text[:1].lower() + text[1:]


def noisy_question(question: str, char_prob: float, rng: random.Random) -> tuple[str, list[str]]:
    """The question as a hurried user might type it, and the kinds of noise applied (never unchanged)."""
    done = []
    text = question
    if rng.random() < 0.4:
        text, slip = grammatical_slip(text, rng)
        if slip:
            done.append(slip)
    if rng.random() < 0.4:
        varied = vary_punctuation(text, rng)
        if varied != text:
            text = varied
            done.append("punctuation")
    if rng.random() < 0.25:
        varied = vary_casing(text, rng)
        if varied != text:
            text = varied
            done.append("casing")
    text, typos = add_typos(text, char_prob, rng)
    if typos:
        done.append("typos")
    if text == question:  # at least one typo, so the variant always differs
        letters = [i for i, c in enumerate(text) if c.isascii() and c.isalpha()]
        if letters:
            i = rng.choice(letters)
            text = text[:i] + _match_case(rng.choice(_NEIGHBOURS[text[i].lower()]), text[i]) + text[i + 1:]
            done.append("typos")
    return text, done


# ---------------------------------------------------------------------------------------------
# entity replacement


def _replace_spans(text: str, replacements: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(replacements, reverse=True):
        # Keep "a"/"an" in front of the new term right: "a large language model" -> "an LLM".
        art = re.search(r"\b(a|an|A|An)\s+$", text[:start])
        text = text[:start] + new + text[end:]
        if art:
            fixed = _article_for(new)
            fixed = _match_case(fixed, art[1]) if art[1][0].isupper() else fixed
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


# ---------------------------------------------------------------------------------------------
# adversarial phrasings

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
        found = [(m.start, m.end, self.lexicon.groups[m.group].kind, _is_plural(m.term))
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
            new = _upper_first(new)
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
        return lead + _lower_first(text, self.lexicon) if lead else text

    def leading(self, question: str, rng: random.Random) -> str:
        q = _lower_first(question, self.lexicon)
        # Only terms that need no article: names and acronyms, plurals, methods and fields ("LoRA",
        # "LLMs", "quantization"); "Given that optimizer is ..." would not be English.
        found = [m for m in self.lexicon.find(question)
                 if _case_sensitive(m.term) or _is_plural(m.term) or m.term[:1].isupper()
                 or self.lexicon.groups[m.group].kind in ("method", "field")]
        if found and rng.random() < 0.5:
            m = found[0]
            template = rng.choice(_LEADING_ENTITY)
            return template.format(e=m.text if not m.text[:1].isupper() or m.term[:1].isupper() else m.term,
                                   be="are" if _is_plural(m.term) else "is", q=q, Q=question)
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
            if text and _normalized(text) != _normalized(question):
                return text, kind
        return None


# ---------------------------------------------------------------------------------------------
# LLM-written variants (thin: prompts in, cleaned replies out)

PARAPHRASE_SYSTEM = (
    "You paraphrase questions about machine-learning research. Keep the meaning and every technical term, "
    "name and number; change the wording. Reply with the paraphrased question only."
)
ANSWER_SYSTEM = (
    "You rewrite answers to questions about machine-learning research. Keep every fact, number and "
    "technical term; change the wording and sentence structure. Reply with the rewritten answer only."
)


# One worked example per prompt: small instruct models otherwise tend to answer instead of rewording.
_PARAPHRASE_EXAMPLE = ("What is dropout used for?", "What purpose does dropout serve during training?")
_ANSWER_EXAMPLE = ("What is dropout used for?", "It randomly zeroes activations during training to reduce overfitting.",
                   "During training it sets random activations to zero, which makes overfitting less likely.")


def paraphrase_prompt(question: str) -> list[dict[str, str]]:
    q, p = _PARAPHRASE_EXAMPLE
    return [{"role": "system", "content": PARAPHRASE_SYSTEM},
            {"role": "user", "content": f"Question: {q}\nParaphrase:"},
            {"role": "assistant", "content": p},
            {"role": "user", "content": f"Question: {question}\nParaphrase:"}]


def alternative_answer_prompt(question: str, answer: str) -> list[dict[str, str]]:
    q, a, r = _ANSWER_EXAMPLE
    return [{"role": "system", "content": ANSWER_SYSTEM},
            {"role": "user", "content": f"Question: {q}\nAnswer: {a}\nRewritten answer:"},
            {"role": "assistant", "content": r},
            {"role": "user", "content": f"Question: {question}\nAnswer: {answer}\nRewritten answer:"}]


def clean_reply(reply: str | None, original: str, *, question: bool, other: str = "") -> str | None:
    """The first usable line of a model reply, without labels or quotes; None if unusable.

    A paraphrase must itself be a question (a reply that answers it is not a paraphrase); an
    alternative answer must not be a question, nor repeat ``other`` (the question).
    """
    if not reply:
        return None
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    text = re.sub(r"^(paraphrased question|paraphrase|question|rewritten answer|answer)\s*:\s*", "", lines[0], flags=re.I)
    text = text.strip().strip('"“”\'').strip()
    if not text or _normalized(text) == _normalized(original) or len(text) > 4 * len(original) + 40:
        return None
    if question and (not text.endswith("?") or re.match(r"(yes|no)\b", text, re.I)):
        return None
    if not question and (text.endswith("?") or (other and _normalized(text) == _normalized(other))):
        return None
    return text


def key_terms(text: str, lexicon: Lexicon) -> set[str]:
    """AI terms, acronyms and numbers of ``text`` (lower case): what a rewording must keep."""
    terms = {m.text.lower() for m in lexicon.find(text)}
    terms |= {t.lower().strip(".,;:!?") for t in re.findall(r"\S*\d\S*|\b\w*[A-Z]\w*[A-Z]\w*\b", text)}
    return {t for t in terms if t}


def _keeps_terms(original: str, text: str, lexicon: Lexicon) -> bool:
    lowered = text.lower()
    return all(term in lowered for term in key_terms(original, lexicon))


def _build_chat_model(cfg: AugmentConfig, why: str) -> Any:
    from papertune.llm import make_chat_model

    try:
        return make_chat_model(cfg.llm, "augment.llm")
    except Exception as exc:  # noqa: BLE001 - any failure to set up the model becomes one clear message
        raise ConfigError(
            f"{why} needs an instruct model, but augment.llm (backend={cfg.llm.backend}, model={cfg.llm.model!r}) "
            f"could not be set up: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# the stage


def _rank(rows: list[dict[str, Any]], seed: int, technique: str) -> list[int]:
    """Row positions in a seeded order that depends on each row's id only (stable across runs)."""
    def key(i: int) -> str:
        return hashlib.sha256(f"{seed}:{technique}:{rows[i]['id']}".encode()).hexdigest()

    return sorted(range(len(rows)), key=key)


def _rng(seed: int, technique: str, row_id: str) -> random.Random:
    return random.Random(f"{seed}:{technique}:{row_id}")


def _variant(row: dict[str, Any], technique: str, **changes: str) -> dict[str, Any]:
    return {**row, **changes, "id": f"{row['id']}~{technique}", "parent_id": row["id"], "augmentation": technique}


@dataclass
class _Tally:
    rate: float
    target: int
    made: int = 0
    skipped: Counter = field(default_factory=Counter)
    details: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "target": self.target, "made": self.made,
                "skipped": dict(sorted(self.skipped.items())), "details": dict(sorted(self.details.items()))}


def _rule_based(rows, technique, cfg, tally, make) -> dict[str, dict[str, Any]]:
    """Walk the seeded order, making variants until the rate's share is reached; returns id -> variant."""
    out: dict[str, dict[str, Any]] = {}
    if tally.target == 0:
        return out
    for i in _rank(rows, cfg.seed, technique):
        row = rows[i]
        result = make(row, _rng(cfg.seed, technique, row["id"]))
        if isinstance(result, str):
            tally.skipped[result] += 1
            continue
        variant, detail = result
        for d in detail:
            tally.details[d] += 1
        out[row["id"]] = variant
        tally.made += 1
        if tally.made == tally.target:
            break
    if tally.made < tally.target:
        tally.skipped["not_enough_applicable_pairs"] = tally.target - tally.made
    return out


def _llm_based(rows, technique, cfg, tally, chat_model, prompt, apply) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if tally.target == 0:
        return out
    chosen = [rows[i] for i in _rank(rows, cfg.seed, technique)[:tally.target]]
    log.info("augment: %s for %d pairs with %s", technique, len(chosen), getattr(chat_model, "name", "the LLM"))
    replies = chat_model.chat([prompt(r) for r in chosen], max_new_tokens=cfg.llm.max_new_tokens)
    if len(replies) != len(chosen):
        raise PapertuneError(f"augment.llm returned {len(replies)} replies for {len(chosen)} prompts")
    for row, reply in zip(chosen, replies):
        variant = apply(row, reply)
        if isinstance(variant, str):
            tally.skipped[variant] += 1
            continue
        out[row["id"]] = variant
        tally.made += 1
    return out


def augment_rows(rows: list[dict[str, Any]], cfg: AugmentConfig, *, chat_model: Any = None,
                 lexicon: Lexicon | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Originals followed each by its variants (in technique order), and per-technique tallies."""
    lexicon = lexicon or load_lexicon()
    n = len(rows)
    tallies = {t: _Tally(getattr(cfg, _RATE_SETTING[t]), int(getattr(cfg, _RATE_SETTING[t]) * n + 0.5))
               for t in TECHNIQUES}
    needs_llm = (cfg.paraphrase_backend == "llm" and tallies["paraphrase"].target > 0) or tallies[
        "alternative_answer"].target > 0
    if needs_llm and chat_model is None:
        why = ("augment.alternative_answer_rate" if tallies["alternative_answer"].target > 0
               else "augment.paraphrase_backend=llm")
        chat_model = _build_chat_model(cfg, why)
    wn = None
    if cfg.paraphrase_backend == "wordnet" and tallies["paraphrase"].target > 0:
        wn = wordnet()  # required: a clear error if it is missing
    elif tallies["adversarial"].target > 0:
        wn = _optional_wordnet()
    grammar = Grammar(wn)
    variants: dict[str, dict[str, dict[str, Any]]] = {}

    # paraphrase
    tally = tallies["paraphrase"]
    if cfg.paraphrase_backend == "wordnet":
        para = Paraphraser(lexicon, grammar) if tally.target else None

        def make_paraphrase(row, rng):
            result = para.paraphrase(row["question"], rng)
            if result is None:
                return "no_synonym_or_rewrite"
            return _variant(row, "paraphrase", question=result[0]), result[1]

        variants["paraphrase"] = _rule_based(rows, "paraphrase", cfg, tally, make_paraphrase)
    else:
        def apply_paraphrase(row, reply):
            text = clean_reply(reply, row["question"], question=True)
            if text is None:
                return "llm_reply_unusable"
            if not _keeps_terms(row["question"], text, lexicon):
                return "llm_reply_lost_terms"
            return _variant(row, "paraphrase", question=text)

        variants["paraphrase"] = _llm_based(rows, "paraphrase", cfg, tally, chat_model,
                                            lambda r: paraphrase_prompt(r["question"]), apply_paraphrase)

    # alternative answers
    def apply_answer(row, reply):
        text = clean_reply(reply, row["answer"], question=False, other=row["question"])
        if text is None:
            return "llm_reply_unusable"
        if not _keeps_terms(row["answer"], text, lexicon):
            return "llm_reply_lost_terms"
        return _variant(row, "alternative_answer", answer=text)

    variants["alternative_answer"] = _llm_based(
        rows, "alternative_answer", cfg, tallies["alternative_answer"], chat_model,
        lambda r: alternative_answer_prompt(r["question"], r["answer"]), apply_answer)

    # noise
    def make_noise(row, rng):
        text, done = noisy_question(row["question"], cfg.noise_char_prob, rng)
        return _variant(row, "noise", question=text), done

    variants["noise"] = _rule_based(rows, "noise", cfg, tallies["noise"], make_noise)

    # entity replacement
    def make_entity(row, rng):
        result = replace_entities(row["question"], row["answer"], lexicon, rng)
        if result is None:
            return "no_lexicon_term_in_question"
        return _variant(row, "entity_replacement", question=result[0], answer=result[1]), [result[2]]

    variants["entity_replacement"] = _rule_based(rows, "entity_replacement", cfg, tallies["entity_replacement"],
                                                 make_entity)

    # adversarial
    adversary = Adversary(lexicon, grammar)

    def make_adversarial(row, rng):
        result = adversary.phrase(row["question"], rng)
        if result is None:
            return "no_phrasing_applies"
        return _variant(row, "adversarial", question=result[0]), [result[1]]

    variants["adversarial"] = _rule_based(rows, "adversarial", cfg, tallies["adversarial"], make_adversarial)

    out = []
    for row in rows:
        out.append({**row, "parent_id": row.get("parent_id"), "augmentation": row.get("augmentation")})
        out += [variants[t][row["id"]] for t in TECHNIQUES if row["id"] in variants[t]]
    return out, {t: tallies[t].as_dict() for t in TECHNIQUES}


def run(config: PapertuneConfig, *, chat_model: Any = None) -> Path:
    """Write ``RUN/qa_augmented.jsonl`` (originals and variants) from ``RUN/qa_curated.jsonl``; returns its path.

    ``chat_model`` (anything with ``.chat(conversations) -> replies``) replaces the model ``augment.llm``
    would build; it is only used by the ``llm`` paraphrase backend and alternative answers.
    """
    cfg = config.augment
    run_dir = Path(config.run_dir)
    source = run_dir / INPUT_FILE
    if not source.is_file():
        raise InputError(f"{source} not found: run `papertune curate --run-dir {run_dir}` first")
    started = time.perf_counter()
    unique, problems, duplicates = read_pairs(source)
    problems += duplicates
    record_stage(run_dir, "augment", config)
    out_rows, tallies = augment_rows(unique, cfg, chat_model=chat_model)

    out = run_dir / OUTPUT_FILE
    write_jsonl_atomic(out, out_rows)
    report = {
        "input": len(unique),
        "malformed_lines": len(problems),
        "malformed": problems[:_MAX_PROBLEMS_IN_REPORT],
        "variants": len(out_rows) - len(unique),
        "output": len(out_rows),
        "seed": cfg.seed,
        "paraphrase_backend": cfg.paraphrase_backend,
        "techniques": tallies,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(run_dir / REPORT_FILE, report)
    log.info("augment: %d originals + %d variants (%s) -> %s", len(unique), report["variants"],
             ", ".join(f"{t} {v['made']}" for t, v in tallies.items()), out)
    return out


__all__ = [
    "Adversary", "Grammar", "Lexicon", "Paraphraser", "TECHNIQUES", "add_typos", "augment_rows", "load_lexicon",
    "noisy_question", "replace_entities", "run", "wordnet", "wordnet_data_dir",
]


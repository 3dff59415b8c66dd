"""Sentence and phrase checks shared by the ``rules`` and ``seq2seq`` generators.

Whether a phrase can stand as the subject of a question, whether a sentence is math or flattened table
cells rather than prose, the verbs the rules know (with their inflected forms), and acronyms defined in
a sentence ("Low-Rank Adaptation (LoRA)").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from papertune.text import past_tense, third_person

# Words that make a sentence-initial phrase a poor question subject: pronouns, references to
# earlier text, quantifiers, prepositions and connectives.
BAD_SUBJECT_START = frozenset(
    """it its it's this that these those they their them he she his her we our us you your i there here such
    which what who whom whose one another other others both either neither some many most several all
    none any few first second third finally however then thus therefore hence also instead in on at for
    with without by from to as if when whenever while because since after before during unlike like
    although though so and but or nor note see now only even still yet moreover furthermore similarly
    overall again according given using following above below same former latter often usually sometimes
    typically generally always never two three four five six seven eight nine ten""".split()
)
# A subject never contains these (it would be a clause, not a noun phrase).
NOT_IN_SUBJECT = frozenset(
    """is are was were be been being has have had do does did can could may might must should will would
    that which who whom whose if when where while because than so but then not therefore thus also still
    often only instead usually typically generally always never now however it this these those they them
    gives takes makes shows says means seems becomes provides describes explains finds reports lets""".split()
)
# A subject that is only "the" and one of these says nothing on its own ("What is the loss?").
VAGUE_WORDS = frozenset(
    """paper papers author authors table figure section chapter example result results method methods approach
    model models loss cache following above below latter former work study output outputs input inputs
    number numbers value values first second idea answer question problem case reason way""".split()
)
VAGUE_MODIFIERS = frozenset("original above following previous proposed new first second third last final".split())
BAD_SUBJECT_END = frozenset("of the a an and or to in on for with by from as at its their this that".split())
MATH_CHARS = set("$\\^_{}=<>⊤√∑∞≈×·∈∀∃∂∫≤≥±πσβθφ∼‖")

# Verbs whose object is worth asking about ("What does X reduce?"), and verbs describing what a
# thing does ("What does X do?"). Base forms; the third person and past are derived.
OBJECT_VERBS = (
    "reduce improve increase decrease remove replace require need prevent avoid use introduce combine add "
    "store penalize reward measure share cut lower raise shrink save follow simplify"
).split()
ACTION_VERBS = (
    "map apply run treat send split divide score route quantize encode decode predict generate select "
    "assign estimate approximate minimize maximize normalize restore skip break process solve turn build "
    "train fit match outperform beat rely grow work perform compare keep make produce learn enable compute "
    "allow count contain multiply scale return merge move update sample rank mask average project let "
    "handle implement overfit tolerate converge generalize underfit dominate drop fall rise"
).split()


def _verb_forms(bases: list[str]) -> dict[str, tuple[str, str]]:
    """surface form -> (base form, tense): "s" (does), "base" (do), "past" (did); inflected forms win."""
    forms: dict[str, tuple[str, str]] = {}
    for base in bases:
        forms.setdefault(third_person(base), (base, "s"))
        forms.setdefault(past_tense(base), (base, "past"))
    for base in bases:
        forms.setdefault(base, (base, "base"))
    return forms


VERB_FORMS = _verb_forms(OBJECT_VERBS + ACTION_VERBS)


# ---------------------------------------------------------------------------------------------
# sentences and subjects


def is_math_heavy(text: str) -> bool:
    """Display math, or more than a few math symbols."""
    return "$$" in text or sum(ch in MATH_CHARS for ch in text) > 6


def is_table_debris(text: str) -> bool:
    """Flattened table cells or code: many numbers, few ordinary words."""
    words = text.split()
    if not words:
        return True
    numeric = sum(bool(re.search(r"\d", w)) for w in words)
    return numeric / len(words) > 0.4 or sum(w[:1].isupper() for w in words) / len(words) > 0.5 and len(words) > 8


def good_subject(subject: str) -> bool:
    """A short noun phrase a question can be about: not a pronoun, a clause, math or a vague "the loss"."""
    words = subject.split()
    if not 1 <= len(words) <= 7:
        return False
    lowered = [w.lower().strip(",;:()\"'") for w in words]
    if lowered[0] in BAD_SUBJECT_START or lowered[-1] in BAD_SUBJECT_END:
        return False
    if lowered[0] in ("a", "an") and len(lowered) > 1 and lowered[1] in ("few", "number", "lot", "couple", "handful"):
        return False
    if any(w in NOT_IN_SUBJECT for w in lowered):
        return False
    if any(VERB_FORMS.get(w, ("", ""))[1] in ("s", "past") for w in lowered[:-1]):
        return False  # "The table below gives rough memory" is a clause
    if lowered[0] in ("the", "a", "an") and (
        (len(lowered) == 2 and words[1].islower())
        or (lowered[-1] in VAGUE_WORDS and any(w in VAGUE_MODIFIERS for w in lowered[1:-1]))
    ):
        return False  # "the loss", "the original paper": which one?
    if lowered[0] in ("each", "every") and len(lowered) < 2:
        return False
    if any(w in ("same", "other", "such", "former", "latter", "above", "below", "following") for w in lowered):
        return False
    if any(ch in MATH_CHARS for ch in subject) or any(ch in subject for ch in ",;:\"“”"):
        return False
    if not re.search(r"[A-Za-z]{2,}", subject) or not (words[0][0].isalpha() or words[0][0].isdigit()):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# acronyms

SHORT_FORM = r"[A-Za-z][A-Za-z0-9-]{0,9}"
SKIPPABLE_WORDS = frozenset("of and the for from to in on a an with by".split())


def is_short_form(text: str) -> bool:
    """An acronym-like short form: one word, at least two capitals ("LoRA", "GPT-3")."""
    return (
        re.fullmatch(SHORT_FORM, text) is not None
        and sum(ch.isupper() for ch in text) >= 2
        and sum(ch.isalpha() for ch in text) >= 2
    )


def long_form_for(short: str, before: str) -> str | None:
    """The shortest end of ``before`` whose words spell ``short``: each word gives the next letters of
    the short form from its own start ("Low-Rank Adaptation" -> Lo+R+A), small words may give none."""
    letters = [ch.lower() for ch in short if ch.isalnum()]
    tokens = [(m.start(), m.group(0).lower()) for m in re.finditer(r"[A-Za-z0-9]+", before)]
    for first in range(len(tokens) - 1, max(-1, len(tokens) - len(letters) - 5), -1):
        if not _spells_from(letters, [t[1] for t in tokens[first:]]):
            continue
        start = tokens[first][0]
        while start > 0 and before[start - 1] not in " \t\n(\"“":  # the whole word: "Activation-aware"
            start -= 1
        long_form = before[start:].strip(" ,;:")
        if short.lower() in long_form.lower() or len(long_form) <= len(short):
            return None
        return long_form
    return None


def _spells_from(letters: list[str], words: list[str]) -> bool:
    """``words`` (all of them, first one contributing) spell ``letters`` exactly, in order."""

    @functools.cache
    def go(i: int, w: int, first: bool) -> bool:
        if w == len(words):
            return i == len(letters)
        word = words[w]
        for take in range(min(len(word), len(letters) - i), 0, -1):
            if word[:take] == "".join(letters[i : i + take]) and go(i + take, w + 1, False):
                return True
        return not first and word in SKIPPABLE_WORDS and go(i, w + 1, False)

    return go(0, 0, True)


def acronyms(sentence: str) -> Iterator[tuple[str, str]]:
    """(short form, long form) pairs defined in the sentence."""
    for match in re.finditer(r"\(([^()]{2,10})\)", sentence):
        short = match.group(1).strip()
        if not is_short_form(short):
            continue
        before = re.split(r"[,;:()\[\]]", sentence[: match.start()])[-1]
        long_form = long_form_for(short, before)
        if long_form:
            yield short, long_form
    for match in re.finditer(rf"([A-Za-z][\w-]*(?:\s+[\w-]+){{0,6}}),\s+or\s+({SHORT_FORM})\s*[,)]", sentence):
        short = match.group(2)
        if is_short_form(short):
            long_form = long_form_for(short, match.group(1))
            if long_form:
                yield short, long_form


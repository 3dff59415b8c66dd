"""English and text helpers shared by the dataset stages (generate, curate, augment, build, evaluate).

Words, content-word stems and normalised text, quotes found in a text, word shingles and their Jaccard
similarity (near-duplicate questions), formulas found and set aside, what a model held to JSON does to text
(LaTeX backslashes left out, formulas changed, strings ended at a straight quote, sentences cut off), and
just enough English morphology for the rule-based writers: articles, plurals, verb forms, capitals.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

# English function words: they carry no content, so overlap and support are measured on the other words.
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing done down during each either few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just may
    me might more most must my myself neither no nor not now of off on once only or other our ours
    ourselves out over own same shall she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up upon us very was we were what when
    where whether which while who whom whose why will with within without would yes you your yours
    yourself yourselves
    """.split()
)

# ---------------------------------------------------------------------------------------------
# words, normalised text, shingles

_WORD_RE = re.compile(r"\w+(?:[-'’.]\w+)*")


def words(text: str) -> list[str]:
    """The words of ``text`` (letters/digits, with inner hyphens, apostrophes and dots: "fine-tuning", "3.5")."""
    return _WORD_RE.findall(text)


def content_words(text: str) -> set[str]:
    """The lower-cased words of ``text`` that are not English function words (:data:`STOPWORDS`)."""
    return {w.lower() for w in words(text)} - STOPWORDS


@functools.cache
def stemmer() -> Callable[[str], str]:
    """NLTK's Porter stemmer, memoised per word."""
    from nltk.stem.porter import PorterStemmer

    return functools.lru_cache(maxsize=65536)(PorterStemmer().stem)


def content_stems(text: str) -> list[str]:
    """Stems of the content words of ``text`` (stopwords left out; numbers kept)."""
    stem = stemmer()
    return [stem(w) for w in (w.lower() for w in words(text)) if w not in STOPWORDS]


def numbers(text: str) -> set[str]:
    """The lower-cased words of ``text`` that hold a digit ("3e-5", "gpt-3", "2")."""
    return {w.lower() for w in words(text) if any(ch.isdigit() for ch in w)}


def carried_share(answer: str, text: str) -> float:
    """Share of the answer's content words (stemmed) found in ``text``; 0.0 if a number of the answer is not
    in it (a wrong number is the commonest fluent error)."""
    return carried(answer_words(answer), held_words(text))


def answer_words(answer: str) -> tuple[list[str], set[str]]:
    """What :func:`carried_share` looks for: the answer's content stems (repeats kept) and its numbers."""
    return content_stems(answer), numbers(answer)


def added_words(answer: str, question: str) -> tuple[list[str], set[str]]:
    """:func:`answer_words` of ``answer`` less those its ``question`` already says: what the answer adds."""
    asked = set(content_stems(question))
    return [t for t in content_stems(answer) if t not in asked], numbers(answer) - numbers(question)


def held_words(text: str) -> tuple[set[str], set[str]]:
    """What :func:`carried_share` looks in: a text's content stems and its numbers."""
    return set(content_stems(text)), numbers(text)


def carried(wanted: tuple[list[str], set[str]], held: tuple[set[str], set[str]]) -> float:
    """:func:`carried_share` of an answer's :func:`answer_words` in a text's :func:`held_words` (each worked out
    once where many answers meet many texts)."""
    (tokens, wanted_numbers), (stems, held_numbers) = wanted, held
    if wanted_numbers - held_numbers or not tokens:
        return 0.0
    return sum(t in stems for t in tokens) / len(tokens)


def counts_f1(a: Counter[str], b: Counter[str]) -> float:
    """F1 of two multisets of tokens (0.0 when they share none)."""
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def content_f1(a: str, b: str) -> float:
    """F1 of the content words (stemmed, as multisets) of two texts."""
    return counts_f1(Counter(content_stems(a)), Counter(content_stems(b)))


def normalize(text: str) -> str:
    """Lower-cased words joined by single spaces: punctuation, case and spacing do not matter."""
    return " ".join(w.lower() for w in words(text))


# A formula: $$...$$, $...$, \[...\], \(...\) or \begin{env}...\end{env} (a chunk may be cut inside one).
MATH = re.compile(r"\$\$.+?(?:\$\$|$)|\$[^$\n]+\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{(\w+\*?)\}.+?(?:\\end\{\1\}|$)", re.S)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


def without_math(text: str, placeholder: str = " FORMULA ") -> str:
    """The text with each formula (:data:`MATH`) replaced by ``placeholder``.

    A chunk cut inside a display formula starts with its end ("... \\end{aligned}$$ It follows ...")."""
    first = text.find("$$")
    if text.count("$$") % 2 and (r"\end{" in text[:first] or len(_LATEX_COMMAND.findall(text[:first])) >= 3):
        text = "$$" + text
    return MATH.sub(placeholder, text)


QUOTE_RUN_WORDS = 3


def quote_match(quote: str, chunk: str) -> float:
    """Share of the quote's words that lie in runs of :data:`QUOTE_RUN_WORDS` words found in the chunk
    (a quote shorter than that must appear whole); 0.0 for an empty quote. Case, punctuation, spacing and
    word endings do not matter (words are compared by their stems: a judge that writes "intends" where the
    chunk says "intend" still quotes it), and a quote may join sentences of the chunk in any order. Formulas
    are set aside on both sides (a judge whose reply is held to JSON writes ``\\int_x`` as ``int_x``,
    ``\\gamma`` as ``γ``): a quote is matched by its words, unless it is nothing but a formula."""
    q, c = normalize(without_math(quote, " ")).split(), normalize(without_math(chunk, " ")).split()
    if not q:
        q, c = normalize(quote).split(), normalize(chunk).split()
    if not q:
        return 0.0
    stem = stemmer()
    q, c = [stem(w) for w in q], [stem(w) for w in c]
    n = min(QUOTE_RUN_WORDS, len(q))
    grams = {tuple(c[i:i + n]) for i in range(len(c) - n + 1)}
    covered = [False] * len(q)
    for i in range(len(q) - n + 1):
        if tuple(q[i:i + n]) in grams:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(q)


_QUOTED = re.compile(r'"([^"\n]*)"')


def curly_quotes(text: str) -> str:
    """``text`` with each pair of straight double quotes on a line written as curly ones ("x" -> “x”). A model
    whose reply is held to JSON and copies a straight quote ends its string there ('also known as "meta
    learning"' becomes 'also known as'); a curly quote it copies is plain text."""
    return _QUOTED.sub("\u201c\\1\u201d", text)


_BARE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


_DELIMITERS = re.compile(r"^(\$\$|\$|\\\[|\\\()(.*?)(\$\$|\$|\\\]|\\\))?$", re.S)


def _split_formula(formula: str) -> tuple[str, str, str]:
    """A formula of :data:`MATH` as (opening delimiter, inside, closing delimiter); an environment
    (``\\begin{aligned} ... \\end{aligned}``) has none."""
    match = _DELIMITERS.match(formula)
    return (match.group(1), match.group(2), match.group(3) or "") if match else ("", formula, "")


def _formula_skeleton(formula: str) -> str:
    """A formula without its delimiters, commands, braces and spaces: what a model that had to change its
    commands still copied (``$R_{t+1} + \\beta V$`` and ``$R_{t+1} + \\gamma V$`` share ``R_t+1+V``)."""
    return re.sub(r"[\s{}]+", "", _LATEX_COMMAND.sub("", _split_formula(formula)[1]))


def restore_latex(text: str, source: str) -> str:
    """``text`` with the LaTeX of its formulas put back as ``source`` writes it. A model whose reply is held to
    JSON cannot write ``\\m`` or ``\\g`` (no such JSON escape), so it either leaves the backslash out
    (``$mathbf{x}$``; llama.cpp and vLLM) or writes a letter JSON allows there instead (llama.cpp: ``\\beta``
    for ``\\gamma``, ``\\rho`` for ``\\pi``, ``\\text{S}`` for ``\\mathcal{S}``). So:

    - a word inside a formula gets its backslash back where ``source`` writes that command;
    - a formula found nowhere in ``source`` but for its commands, braces and spacing (one source formula
      with the same :func:`_formula_skeleton`) becomes that source formula, in the text's delimiters."""
    commands = set(_LATEX_COMMAND.findall(source))
    if not commands:
        return text
    by_skeleton: dict[str, set[str]] = {}
    for found in MATH.finditer(source):
        by_skeleton.setdefault(_formula_skeleton(found.group(0)), set()).add(_split_formula(found.group(0))[1])

    def mend(match: re.Match[str]) -> str:
        formula = _BARE_WORD.sub(lambda w: "\\" + w.group(0) if "\\" + w.group(0) in commands else w.group(0),
                                 match.group(0))
        opening, inner, closing = _split_formula(formula)
        skeleton = _formula_skeleton(formula)
        same = by_skeleton.get(skeleton, set())
        if skeleton and inner not in same and len(same) == 1:
            return opening + next(iter(same)) + closing
        return formula

    return MATH.sub(mend, text)


# How a formula is read when compared with its source: LaTeX that writes the same symbols another way.
_SAME_SYMBOLS = (
    (re.compile(r"\\arg\s*\\?(max|min)(?![A-Za-z])"), r"arg\1"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"), (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\(?:[lr]?vert|mid|[lr]?Vert)(?![A-Za-z])|\\\|"), "|"),
    (re.compile(r"\\top(?![A-Za-z])"), "T"),
    (re.compile(r"\\[lc]?dots(?![A-Za-z])"), "..."),
)


@functools.cache
def _latex_reader() -> Any:
    from pylatexenc.latex2text import LatexNodes2Text

    return LatexNodes2Text()


def _formula_text(latex: str) -> str:
    """A formula as the symbols it shows (pylatexenc's reading, :func:`_folded`): ``\\mathbf{z}\\vert\\mathbf{x}``
    and ``z|x``, ``\\frac{a}{b}`` and ``a/b``, ``-\\log`` and a PDF's ``−log`` read alike."""
    for pattern, same in _SAME_SYMBOLS:
        latex = pattern.sub(same, latex)
    try:
        shown = _latex_reader().latex_to_text(latex)
    except Exception:  # pylatexenc reads any text; a formula it cannot parse is compared as written
        shown = latex
    return _folded(shown)


# Characters that a PDF's text layer and a LaTeX reading write differently for the same symbol.
_SAME_CHARACTERS = str.maketrans({"−": "-", "–": "-", "∗": "*", "⋅": "·", "∙": "·", "‖": "|", "∣": "|"})


def _folded(text: str) -> str:
    """``text`` with Unicode compatibility forms folded (… is ...), one character for each symbol, no spaces, a
    run of bars as one and a run of dots as three: how a formula and a source are compared."""
    folded = re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).translate(_SAME_CHARACTERS))
    return re.sub(r"\.{2,}", "...", re.sub(r"\|+", "|", folded))


@functools.lru_cache(maxsize=64)
def _source_symbols(source: str) -> tuple[str, str]:
    """The symbols ``source`` shows (its formulas read by :func:`_formula_text`, then its whole text folded),
    with and without the marks of sub- and superscripts; kept for the next pair of the same chunk."""
    shown = "\x00".join([*(_formula_text(_split_formula(m.group(0))[1]) for m in MATH.finditer(source)),
                          _folded(source)])
    return shown, re.sub(r"[_^]", "", shown)


def changed_formula(text: str, source: str) -> str | None:
    """The first formula of ``text`` that ``source`` does not hold, or None: a formula a model was asked to copy
    and changed (``R_{t+1} + 4V(S_{t+1})`` for ``R_{t+1} + \\gamma V(S_{t+1})``, ``\\langle S, A, Prangle``). A
    formula counts as held when the symbols it shows (:func:`_formula_text`, with or without the marks of its
    sub- and superscripts) occur in one of the source's formulas or in its text; a part of a formula is held
    too. A command changed for another (``\\beta`` for ``\\gamma``) is a change: :func:`restore_latex` puts back
    what it can first."""
    if not MATH.search(text):
        return None
    # A PDF's text layer writes x_i as "xi" and x^2 as "x2": without their marks, sub- and superscripts match it.
    shown, flat = _source_symbols(source)
    for formula in MATH.finditer(text):
        mine = _formula_text(_split_formula(formula.group(0))[1])
        if mine and mine not in shown and re.sub(r"[_^]", "", mine) not in flat:
            return formula.group(0)
    return None


# A text ending on one of these, or on a word that does not end an English sentence (an article, a conjunction,
# a word announcing a name; prepositions may: "easy to sample from"), stops mid-sentence: a JSON-constrained
# reply ends its string at the first '"' the model copies ('also known as "learning to learn"' becomes 'also
# known as').
_OPEN_ENDINGS = ("(", "[", "{", ":", ",", ";", "-", "—", "=")
_DANGLING_WORDS = frozenset(
    """
    a an the of as than and or but nor whose which such its their our your my because although whereas while
    if called named termed denoted dubbed
    """.split()
)


# A sentence that announces what comes next ("... according to the following equation.", "... defined as
# follows.", "... as shown below.") is unfinished when nothing follows it.
_ANNOUNCES = re.compile(r"(?:\bthe following(?:\s+[\w-]+){0,2}|\bas follows|\b(?:shown|given|listed|described|"
                        r"defined|illustrated|written|formulated) below)$", re.I)


def unfinished(text: str) -> bool:
    """Whether ``text`` stops mid-sentence (a full stop added after the cut does not finish it), or ends
    announcing what follows it ("... according to the following equation.")."""
    text = text.rstrip().removesuffix(".").rstrip()
    if not text:
        return False
    if text.endswith(_OPEN_ENDINGS) or _ANNOUNCES.search(text):
        return True
    last = words(text)[-1:] or [""]
    return text[-1].isalnum() and last[0].lower() in _DANGLING_WORDS


def shingles(text: str, size: int) -> set[str]:
    """Word ``size``-grams of the normalised text; a text shorter than ``size`` is one shingle, one
    without any word has none."""
    tokens = normalize(text).split()
    if not tokens:
        return set()
    if len(tokens) <= size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; 0.0 when both are empty.

    Two empty sets come from two texts without a single word. Nothing shared is no evidence that they
    say the same thing, so they are not near-duplicates of each other (nor of anything else); texts that
    are equal once normalised are caught as exact duplicates, before this is asked.
    """
    union = a | b
    return len(a & b) / len(union) if union else 0.0


# ---------------------------------------------------------------------------------------------
# capitals


def upper_first(text: str) -> str:
    """The text with its first character upper-cased ("" stays "")."""
    return text[:1].upper() + text[1:]


def match_case(new: str, old: str) -> str:
    """``new`` written in the case of ``old``: all capitals ("LLM"), or a capital first letter."""
    if old.isupper() and len(old) > 1 and not new.isupper():
        return new.upper()
    if old[:1].isupper() and new[:1].islower():
        return new[:1].upper() + new[1:]
    return new


# ---------------------------------------------------------------------------------------------
# articles, plurals, verb forms

_IRREGULAR_THIRD_PERSON = {"have": "has", "be": "is", "do": "does", "go": "goes"}
_IRREGULAR_PAST = {"map": "mapped", "skip": "skipped", "cut": "cut", "run": "ran", "beat": "beat", "build": "built",
                   "keep": "kept", "make": "made", "send": "sent", "split": "split", "break": "broke", "grow": "grew",
                   "fit": "fit", "let": "let", "shrink": "shrank", "fall": "fell", "rise": "rose", "drop": "dropped"}


def indefinite_article(word: str) -> str:
    """'an' before a vowel sound ("an LLM", "an adapter"), else 'a'."""
    if not word:
        return "a"
    first_token = re.split(r"[\s-]", word, maxsplit=1)[0]
    if len(first_token) > 1 and first_token.isupper():  # read letter by letter
        return "an" if first_token[0] in "AEFHILMNORSX" else "a"
    return "an" if word[0].lower() in "aeiou" else "a"


def pluralize(noun: str) -> str:
    """The regular plural of a noun: "layer" -> "layers", "batch" -> "batches", "query" -> "queries"."""
    if re.search(r"(s|sh|ch|x|z)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    """The third person singular of a base-form verb: "reduce" -> "reduces", "do" -> "does"."""
    return _IRREGULAR_THIRD_PERSON.get(verb, pluralize(verb))


def past_tense(verb: str) -> str:
    """The simple past of a base-form verb: "reduce" -> "reduced", "apply" -> "applied", "run" -> "ran"."""
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ied"
    return verb + "ed"

"""What makes a good study question: its kind, and whether it stands on its own.

Every generated pair carries one of :data:`KINDS`. :func:`normalise_kind` turns a model's tag into one of
them (synonyms such as "how-to" or "quantitative result" are accepted; a missing tag is guessed from the
question with :func:`guess_kind`). :func:`context_dependence` says why a question cannot be understood
without the text it was written from ("the passage", "Fig. 6", a leading "it" with nothing to point to, a
question that names nothing specific); every generator and the curate stage can use it.
"""

from __future__ import annotations

import hashlib
import re

from papertune.generate.base import STOPWORDS, content_words

KINDS = ("definition", "mechanism", "how_to", "comparison", "quantitative", "limitation", "application")

# Tags a model may write for a kind, lower-cased, with spaces, hyphens and underscores removed.
_SYNONYMS = {
    "definition": "definition", "define": "definition", "concept": "definition", "what": "definition",
    "mechanism": "mechanism", "mechanismwhy": "mechanism", "why": "mechanism", "explanation": "mechanism",
    "reason": "mechanism", "howitworks": "mechanism",
    "howto": "how_to", "procedure": "how_to", "method": "how_to", "usage": "how_to", "practical": "how_to",
    "comparison": "comparison", "compare": "comparison", "contrast": "comparison", "difference": "comparison",
    "quantitative": "quantitative", "quantitativeresult": "quantitative", "result": "quantitative",
    "number": "quantitative", "numeric": "quantitative", "numerical": "quantitative", "metric": "quantitative",
    "limitation": "limitation", "limitationassumption": "limitation", "assumption": "limitation",
    "drawback": "limitation", "weakness": "limitation", "failure": "limitation",
    "application": "application", "applications": "application", "use": "application", "usecase": "application",
}


_NUMBER = re.compile(r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twice|half|double|hundred|"
                     r"thousand|million|billion)\b", re.I)


def normalise_kind(tag: object, question: str, answer: str | None = None) -> str | None:
    """One of :data:`KINDS` for a model's tag; guessed from the question when the tag is missing or blank, or
    when it says quantitative and the ``answer`` (if given) holds no number; None for a tag that names no
    kind (the pair is dropped as ``bad_kind``)."""
    if tag is None or (isinstance(tag, str) and not tag.strip()):
        return guess_kind(question)
    if not isinstance(tag, str):
        return None
    key = re.sub(r"[\s_/&-]+", "", tag.lower())
    kind = _SYNONYMS.get(key, _SYNONYMS.get(key.rstrip("s")))
    if kind == "quantitative" and answer is not None and not _NUMBER.search(answer):
        return guess_kind(question)
    return kind


_GUESSES = (
    ("limitation", re.compile(r"\b(?:limitations?|drawbacks?|weakness(?:es)?|assum\w*|fail\w*|downsides?|"
                              r"shortcomings?|challenges?|risks?|cannot|can't|struggles?|break(?:s|down)?)\b", re.I)),
    ("comparison", re.compile(r"\b(?:compare[sd]?|comparison|differ\w*|versus|vs\.?|than|better|worse|faster|"
                              r"slower|instead of|unlike|rather than)\b|^which\b.*\bor\b", re.I)),
    ("quantitative", re.compile(r"^how (?:many|much|large|long|big|small|fast|often)\b|\b(?:accuracy|score|"
                                r"percent\w*|rate|number of|speed-?up|by how much|what (?:value|size))\b", re.I)),
    ("how_to", re.compile(r"^how (?:can|do|does|should|would|could) (?:one|you|we|a user|practitioners?)\b|"
                          r"^how to\b|\b(?:steps? to|implement\w*|set up|choose|tune|train (?:a|an)\b)", re.I)),
    ("application", re.compile(r"\b(?:used for|use[sd]? in|appli\w+|applied|useful for|use cases?|deploy\w*|"
                               r"in practice|real-world)\b", re.I)),
    ("mechanism", re.compile(r"^(?:why|how)\b|\b(?:mechanism|works?|cause[sd]?|leads? to|achieve[sd]?|"
                             r"ensure[sd]?|allows?|enables?|prevents?|reduces?|helps?)\b", re.I)),
)


def guess_kind(question: str) -> str:
    """The kind a question reads as, from its wording; "definition" when nothing more specific fits."""
    for kind, pattern in _GUESSES:
        if pattern.search(question.strip()):
            return kind
    return "definition"


# What in a passage invites a kind of question; kinds without a cue can be asked of any explanatory passage.
_CUES = (
    ("quantitative", re.compile(r"\d+(?:\.\d+)?\s*(?:%|x\b|×|times\b|points?\b|[kMB]\b)|\b\d{2,}\b")),
    ("comparison", re.compile(r"\b(?:than|compared (?:with|to)|versus|vs\.?|unlike|outperform\w*|whereas|"
                              r"in contrast|instead of|better|worse)\b", re.I)),
    ("limitation", re.compile(r"\b(?:however|limitation\w*|drawbacks?|fails?|failure|cannot|expensive|costly|"
                              r"unstable|struggles?|assum\w+|only works|suffers?|bottleneck)\b", re.I)),
    ("application", re.compile(r"\b(?:used (?:for|in|to)|applied to|applications?|in practice|deploy\w*|"
                               r"real-world|use cases?)\b", re.I)),
    ("how_to", re.compile(r"\b(?:steps?|procedure|algorithm|recipe|implement\w*|set (?:to|up)|choose|tune|"
                          r"first,|then|finally)\b", re.I)),
    # a sentence that says what something is: "is defined as", "refers to", "is called", "stands for",
    # "X, a kind of Y,", "is a family of"
    ("definition", re.compile(r"\b(?:defin(?:e[sd]?|ition)|refers? to|(?:is|are) (?:called|known as|termed)|"
                              r"so-called|stands? for|denot\w+|we call|(?:a|the) (?:kind|type|class|family|form|"
                              r"variant|special case) of)\b", re.I)),
)
_WITHOUT_CUE = ("mechanism",)
# Offered without its cue when the passage suits fewer kinds than this: a passage that only explains suits a
# definition too.
_DEFINITION_BELOW = 3


def suggest_kinds(text: str, n: int) -> list[str]:
    """Up to ``n`` different kinds to ask of a passage: those it has cues for (numbers for quantitative,
    "than" for comparison, "however" for limitation, "refers to" for definition, ...) and mechanism, which any
    explanatory passage suits, taken in turn from a place drawn from the passage's text; definition also where
    the passage suits fewer than three kinds. Models ask the first kind offered: with mechanism always first,
    the 1.5B teacher asked 49% mechanism questions of 376 real chunks; with definition offered everywhere, it
    wrote 40% definitions, and the most common wrong answer was a definition answered with what a thing is
    related to."""
    suitable = [*(kind for kind, cue in _CUES if cue.search(text)), *_WITHOUT_CUE]
    if "definition" not in suitable and len(suitable) < _DEFINITION_BELOW:
        suitable.append("definition")
    start = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % len(suitable)
    return (suitable[start:] + suitable[:start])[: max(n, 1)]


# ---------------------------------------------------------------------------------------------
# self-contained questions

_CONTEXT_NOUNS = (
    r"passages?|texts?|documents?|papers?|articles?|excerpts?|context|chunks?|snippets?|sections?|chapters?|posts?|"
    r"blogs?|reports?|studies|study|works?|tables?|figures?|fig|diagrams?|images?|plots?|graphs?|charts?|"
    r"equations?|formulas?|paragraphs?|sentences?|authors?|writers?|researchers|lists?|examples?|results?|"
    r"experiments?|methods?|approach(?:es)?|models?|techniques?|frameworks?|algorithms?|architectures?|"
    r"datasets?|setups?|settings?|systems?|process(?:es)?|steps?|problems?|tasks?|proposals?|contributions?"
)
# Nouns that point to the source when "the" comes before them (the model, the method are often fine).
_SOURCE_NOUNS = (
    r"passage|text(?! of)|document|paper|article|excerpt|chunk|snippet|post|blog|blog post|report|study|"
    r"authors?|writers?|researchers|table|figure|diagram|plot|chart|paragraph|"
    r"(?:above|following|previous|preceding|given|provided|proposed|presented|described|mentioned) \w+"
)
_REFERS_BACK = re.compile(
    rf"\b(?:the|this|that|above|following|given|provided) (?:{_SOURCE_NOUNS})\b"
    rf"|\b(?:this|these|those) (?:{_CONTEXT_NOUNS})\b"
    r"|\b(?:fig(?:ure)?s?|tables?|tab|sections?|sec|eqs?|equations?|algorithms?|appendix|appendices|chapters?|"
    r"listings?)\.?\s*\(?(?:[0-9]+(?:\.[0-9]+)*[a-z]?|(?-i:[IVX]+))\b"
    r"|\b(?:above|below|aforementioned|herein)\b"
    # a figure's colours and marks ("the green part", "the dashed line"); "black box" names a kind of model
    r"|\bthe (?:red|green|blue|yellow|orange|purple|pink|gr[ae]y|dashed|dotted|shaded|highlighted) "
    r"(?:parts?|terms?|box(?:es)?|regions?|areas?|lines?|curves?|arrows?|dots?|points?|bars?|nodes?|blocks?|circles?)\b"
    r"|\b(?:mentioned|described|discussed|listed|presented|shown|given|provided|proposed|introduced)"
    r"(?: here| earlier| previously| in (?:the|this) \w+)?\s*\??$"
    r"|\bour\b|\bwe (?:propose|proposed|present|introduce|find|found|show|observe|report|describe|study|"
    r"evaluate)\b",
    re.IGNORECASE,
)
# Pronouns that, before any content word of the question, have nothing to point to.
_PRONOUNS = frozenset("it its it's they them their theirs this these that those he she his her".split())
# Words that do not name anything before a pronoun ("In what way does it ...").
_FILLER = STOPWORDS | frozenset("way ways kind kinds type types sort extent sense main".split())
# Content words that name nothing on their own: a question made only of them asks about nothing specific.
_GENERIC = frozenset(
    """model method approach technique result process training data dataset paper study work experiment
    performance system algorithm task value number main key idea purpose goal role problem solution step way
    difference advantage disadvantage benefit limitation issue use output input example type kind thing
    information concept term show mean describe propose discuss mention find finding conclusion contribution
    important significance figure table section author purpose reason overall general primary new proposed
    describe explain used use based different specific particular given two three first second setup called
    name named framework architecture objective loss function strategy component factor effect impact metric
    measure score parameter setting stage phase feature property mechanism principle condition case scenario
    level amount size rate""".split()
)


def context_dependence(question: str) -> str | None:
    """Why ``question`` cannot be understood without the text it was written from, or None if it stands alone.

    Flags references to the source ("the passage", "this paper", "the authors", "Fig. 6", "Section 3",
    "this method", "mentioned above", "the green part", "our", "we propose"), a pronoun ("it", "they", "this", "their", ...)
    before anything the question names, and questions made only of generic words ("What is the training
    process?")."""
    text = " ".join(question.split())
    match = _REFERS_BACK.search(text)
    if match:
        return f"refers to its source: {match.group(0).strip()!r}"
    for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9'’-]*", text):
        lowered = word.lower().replace("’", "'")
        if lowered in _PRONOUNS:
            return f"{word!r} points to nothing the question names"
        if lowered not in _FILLER:
            break
    words = content_words(text)
    if not any(w not in _GENERIC for w in words):
        return "names nothing specific"
    return None


def is_self_contained(question: str) -> bool:
    """Whether ``question`` can be understood without the text it was written from."""
    return context_dependence(question) is None


# An answer may say "the text encoder", "above a threshold", "our intent": only these point its reader at a
# source they will not see ("In the paper, they adopted ...", "the above process", "both the methods above", "My
# previous post", "the blue part").
_ANSWER_REFERS_BACK = re.compile(
    r"\b(?:the|this) (?:paper|post|blog post|blog|article|passage|excerpt|paragraph)\b"
    r"|\bthe above\b|\b(?:shown|mentioned|described|listed|defined|discussed) above\b"
    r"|\b(?:the|these|those|both|all|two|three)(?: the)? (?:works?|methods?|approach(?:es)?|papers?|studies|"
    r"experiments?|examples?|steps?) (?:above|below)\b"
    r"|\bmy (?:\w+ )?(?:posts?|blog|papers?|articles?|tutorials?)\b"
    r"|\b(?:equation|formula|figure|table|image|diagram|plot) (?:above|below)\b"
    r"|\bthe (?:red|green|blue|yellow|orange|purple|pink|gr[ae]y|dashed|dotted|shaded|highlighted) "
    r"(?:parts?|terms?|box(?:es)?|regions?|areas?|lines?|curves?|arrows?|dots?|points?|bars?|nodes?|blocks?|circles?)\b",
    re.IGNORECASE,
)


def answer_source_reference(answer: str) -> str | None:
    """The words by which ``answer`` points at the text it was written from ("the paper", "the above
    process", "the blue part"), or None: a reader of the answer alone cannot tell which paper or part."""
    match = _ANSWER_REFERS_BACK.search(answer)
    return match.group(0) if match else None

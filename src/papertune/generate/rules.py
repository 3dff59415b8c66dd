"""The ``rules`` generator: grounded question-answer pairs from sentence patterns, no model.

Each answer is a sentence, clause or span of the chunk, so every pair is grounded by construction.
Patterns, best first:

- acronyms: "Low-Rank Adaptation (LoRA)", "Low-Rank Adaptation, or LoRA," -> "What does LoRA stand for?"
  (only when the words before spell the short form);
- definitions: "X is a/an/the ..." -> "What is X?"; "..., which is called Y" -> "What is Y?";
  "X is based on Y" -> "What is X based on?";
- comparisons: "X is slower per step than Y" -> "Which is slower per step, X or Y?", "X learn faster
  than Y" -> "Which learn faster, X or Y?";
- numbers: "X has 8 experts" -> "How many experts does X have?", "X reduced Y by 3 times" -> "By how
  much did X reduce Y?", "X trained for 100,000 steps", "X was set to 0.1";
- table rows ("Model: Mixtral 8x7B; Experts per MoE layer: 8; ...") -> "How many experts per MoE layer
  does Mixtral 8x7B have?";
- actions of a subject: "X reduces Y" -> "What does X reduce?", "X maps ..." -> "What does X do?",
  "X does not change Y" -> "Does X change Y?", "X, which scores ..." -> "What is X?".

Each pair is tagged with its kind of question (:data:`QUESTION_KINDS` maps each pattern to one of
:data:`papertune.generate.questions.KINDS`).

Sentences whose subject is a pronoun or points back to earlier text ("It is ...", "This is ...", "The
paper ..."), fragments, table debris and sentences heavy with math are not used, nor are sentences that
carry instructions planted for the model (see :mod:`papertune.injection`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from papertune.generate.base import Chunk, ChunkResult, Grounding, drop_injected, finish_question, take_pairs, tidy
from papertune.generate.phrases import (
    BAD_SUBJECT_START,
    MATH_CHARS,
    OBJECT_VERBS,
    SHORT_FORM,
    SKIPPABLE_WORDS,
    VERB_FORMS,
    acronyms,
    good_subject,
    is_math_heavy,
    is_table_debris,
)
from papertune.ingest.segment import split_sentences
from papertune.text import upper_first

PRONOUN_OBJECT = frozenset("it them this these that those him her us one itself themselves".split())
_PREPOSITIONS = frozenset("of to in on for from with by into through across over under about at".split())

# A single capitalised word with one of these endings is a common noun at a sentence start ("Precision").
_COMMON_SUFFIXES = ("tion", "sion", "ity", "ment", "ness", "ing", "ance", "ence", "ism", "ure", "ogy", "ics")
MAX_ANSWER_WORDS = 60
MIN_SENTENCE_WORDS = 4
AUX = {"s": "does", "base": "do", "past": "did"}

NUMBER_WORDS = "two three four five six seven eight nine ten eleven twelve sixteen twenty hundred thousand".split()
_COMPARATIVE_STOP = frozenset(
    "other rather under over after never either neither whether layer order number paper user computer "
    "parameter matter cluster filter register transformer encoder decoder adapter later together tower "
    "power water letter ever however whenever former latter inner outer upper answer cover per".split()
)
_CLAUSE_CUT = re.compile(r"\s+\b(?:because|when|while|since|which|whereas|although|though|if|so that|but|despite)\b")
# Openers that can be cut from a sentence without changing what its main clause says.
_LEAD_IN = re.compile(
    r"^(?:(?:First|Second|Third|Finally|However|Moreover|Furthermore|In practice|In addition|Additionally|Also|"
    r"Thus|Therefore|Hence|Instead|Similarly|Overall|In contrast|By contrast|In short|In general|In particular|"
    r"For example|For instance|As a rule of thumb|Empirically|In the original paper|In the paper|In this case|"
    r"(?:With|In|On|At|For|Across|Over|Under|According to|Compared with|Using)\s[^,]{2,60}),\s+"
    r"|(?:[A-Z][\w.'-]*(?:\s[\w.'()-]+){0,5})\s(?:reports?|reported|found|finds|shows?|showed|notes?|noted|argues?|argued) that\s+)"
)


# Each pattern's pairs as one of the kinds every generator tags its pairs with (papertune.generate.questions).
QUESTION_KINDS = {"acronym": "definition", "definition": "definition", "called": "definition", "which": "definition",
                  "comparison": "comparison", "number": "quantitative", "table": "quantitative", "action": "mechanism"}


@dataclass
class Candidate:
    kind: str
    priority: int
    sentence: int
    question: str
    answer: str
    subject: str = ""  # pairs about the same subject are not repeated
    uses_sentence: bool = True  # an acronym pair does not use up its sentence for other patterns


# ---------------------------------------------------------------------------------------------
# helpers


def _strip_quotes(text: str) -> str:
    return text.strip().strip("\"'“”‘’`").strip()


def _strip_lead_in(text: str) -> str:
    """ "Second, QLoRA is ..." -> "QLoRA is ..."; "With the same compute, sparse models ..." -> "sparse models ..." """
    for _ in range(3):
        match = _LEAD_IN.match(text)
        if not match or len(text) - match.end() < 10:
            break
        text = text[match.end():]
    return text


def _subject_in_question(subject: str, chunk_text: str) -> str:
    """The subject as it reads inside a question: "Perplexity" -> "perplexity", "LoRA" stays."""
    words = subject.split()
    first = words[0]
    if first in ("The", "A", "An"):
        words[0] = first.lower()
        return " ".join(words)
    titlecase = first[:1].isupper() and first[1:].replace("-", "").isalpha() and first[1:].islower()
    if titlecase and "et al" not in subject:
        others = [w for w in words[1:] if not w.startswith("(")]
        if (
            re.search(rf"\b{re.escape(first.lower())}\b", chunk_text)  # also written in lower case
            or (others and all(w.islower() for w in others))  # "Double quantization", "Paged optimizers"
            or (not others and first.lower().endswith(_COMMON_SUFFIXES))  # "Precision", "Attention"
        ):
            words[0] = first.lower()
    return " ".join(words)


def _object_ok(obj: str) -> bool:
    """The object is worth asking for: not a pronoun, a prepositional phrase or math."""
    words = [w.lower().strip(",.;:") for w in obj.split()]
    return (
        bool(words)
        and words[0] not in PRONOUN_OBJECT
        and words[0] not in _PREPOSITIONS
        and not any(ch in MATH_CHARS for ch in " ".join(obj.split()[:6]))
    )


def _plural(subject: str) -> bool:
    if " and " in subject:
        return True
    head = subject.split()[-1].strip("()")
    if re.search(r"[A-Z]", head):
        return head.endswith("s") and head[:-1].isupper() and len(head) > 2  # "LLMs", "MoEs"
    return head.endswith("s") and not head.endswith(("ss", "us", "is"))


def _sentence_answer(sentence: str) -> str | None:
    """The sentence as an answer, cut before display math; None if it is not fit to be one."""
    sentence = tidy(sentence)
    if "$$" in sentence:
        sentence = sentence[: sentence.index("$$")].rstrip(" :,;") + "."
    sentence = re.sub(r"\s*[*•]+$", "", sentence)
    if len(sentence.split()) > MAX_ANSWER_WORDS or len(sentence.split()) < MIN_SENTENCE_WORDS:
        return None
    if is_math_heavy(sentence) or is_table_debris(sentence) or sentence.endswith(":") or "as follows" in sentence:
        return None
    if re.search(r"\s\d{1,2}\.$", sentence):  # "... works as follows: 1." (a list starts)
        return None
    return sentence


# ---------------------------------------------------------------------------------------------
# patterns: each gives the candidates of one sentence


def _p_acronym(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    for short, long_form in acronyms(sentence):
        yield Candidate("acronym", 0, i, f"What does {short} stand for?", long_form, subject=short.lower(),
                        uses_sentence=False)


_COPULA = re.compile(r"^(?P<subj>.+?)\s+(?P<cop>is|are)\s+(?P<comp>.+)$")
_DEF_COMPLEMENT = re.compile(r"^(?:a|an|the|one of|defined as|a kind of|a type of)\s+\S")


def _p_definition(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    body = _strip_lead_in(sentence.rstrip("."))
    # "Low-Rank Adaptation, or LoRA, is ..." -> the subject is LoRA
    alias = re.match(rf"^(?P<long>[^,]+),\s+or\s+(?P<short>{SHORT_FORM}),\s+(?P<cop>is|are)\s+(?P<comp>.+)$", body)
    if alias:
        subject, cop, comp = alias.group("short"), alias.group("cop"), alias.group("comp")
    else:
        match = _COPULA.match(body)
        if not match:
            return
        subject, cop, comp = match.group("subj"), match.group("cop"), match.group("comp")
    if not good_subject(subject):
        return
    answer = _sentence_answer(sentence)
    if answer is None:
        return
    in_question = _subject_in_question(subject, text)
    if comp.startswith("based on "):
        yield Candidate("definition", 1, i, f"What {cop} {in_question} based on?", answer, subject=subject.lower())
        return
    used = re.match(r"^(?:mainly |mostly |often |commonly |widely )?used (?:for|to) ", comp)
    if used:
        yield Candidate("definition", 1, i, f"What {cop} {in_question} used for?", answer, subject=subject.lower())
        return
    if not _DEF_COMPLEMENT.match(comp) or comp.startswith(("the same", "the case", "the reason", "the result", "a trade-off")):
        return
    what = "What are" if cop == "are" else "What is"
    yield Candidate("definition", 1, i, f"{what} {in_question}?", answer, subject=subject.lower())


_CALLED = re.compile(
    r"(?P<pre>^|,\s*which\s+|\s)(?:is|are)\s+(?:called|known as|referred to as|termed|named)\s+"
    r"(?P<term>\"[^\"]{2,60}\"|“[^”]{2,60}”|[^,.;:()\"]{2,60}?)\s*(?=[,.;:()]|$)"
)


def _p_called(i: int, sentence: str, text: str, previous: str | None) -> Iterator[Candidate]:
    match = _CALLED.search(sentence)
    if not match:
        return
    term = _strip_quotes(match.group("term"))
    if not 1 <= len(term.split()) <= 6 or any(ch in MATH_CHARS for ch in term):
        return
    if term.split()[0].lower() in BAD_SUBJECT_START:
        return
    head = sentence[: match.start()].strip()
    first = head.split()[0].lower() if head else ""
    if "which" in match.group("pre"):
        answer = _sentence_answer(sentence)
    elif first in ("this", "these", "that", "those", "it", "they", "such") or not head:
        # "This property is called X." needs the sentence before it to say what X is.
        if previous is None:
            return
        answer = _sentence_answer(f"{previous} {sentence}")
    else:
        answer = _sentence_answer(sentence)
    if answer is None:
        return
    yield Candidate("called", 2, i, f"What is {term}?", answer, subject=term.lower())


def _is_comparative(words: list[str]) -> bool:
    for k, word in enumerate(w.lower().strip(",") for w in words):
        if word in ("better", "worse") or (word in ("more", "less", "fewer") and k + 1 <= len(words)):
            return True
        if word.endswith("er") and len(word) > 4 and word not in _COMPARATIVE_STOP and word.isalpha():
            return True
    return False


def _than_other(rest: str) -> str | None:
    other = _CLAUSE_CUT.split(rest)[0]
    other = re.split(r"[,;:(]", other)[0].strip()
    words = other.split()
    if not 1 <= len(words) <= 8 or any(ch in MATH_CHARS for ch in other):
        return None
    if words[0].lower() in ("it", "they", "that", "those", "this", "expected", "before", "usual", "with", "in", "on",
                            "at", "for", "when", "if", "the") and len(words) == 1:
        return None
    if words[0].lower() in ("it", "they", "with", "in", "on", "at", "for", "when", "if", "expected", "usual", "before"):
        return None
    return other


def _p_comparison(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    body = _strip_lead_in(sentence.rstrip("."))
    than = re.search(r"\bthan\s+", body)
    if not than:
        return
    answer = _sentence_answer(sentence)
    if answer is None:
        return
    head = body[: than.start()].split()
    other = _than_other(body[than.end():])
    if other is None:
        return
    # "X is/are [much] slower per step than Y"
    for k in range(1, min(len(head), 8)):
        if head[k] in ("is", "are"):
            subject, cmp_words = " ".join(head[:k]), head[k + 1 :]
            while cmp_words and cmp_words[0].lower() in ("much", "far", "slightly", "significantly", "considerably",
                                                         "roughly", "about", "substantially", "generally", "often",
                                                         "usually", "typically", "also", "still", "even", "therefore"):
                cmp_words = cmp_words[1:]
            if good_subject(subject) and 1 <= len(cmp_words) <= 5 and _is_comparative(cmp_words[:2]):
                which = "Which are" if head[k] == "are" else "Which is"
                yield Candidate("comparison", 3, i,
                                f"{which} {' '.join(cmp_words)}, {_subject_in_question(subject, text)} or {other}?",
                                answer, subject=subject.lower())
            return
    # "Sparse models overfit small datasets more easily than dense models"
    for k in range(1, min(len(head), 6)):
        subject, verb, middle = " ".join(head[:k]), head[k], head[k + 1 :]
        if verb not in VERB_FORMS or VERB_FORMS[verb][1] == "past":
            continue
        plural = _plural(subject)
        third = verb.endswith("s") and not verb.endswith("ss")
        if not good_subject(subject) or plural == third or len(middle) > 5 or not _is_comparative(middle[-3:]):
            continue
        yield Candidate("comparison", 3, i,
                        f"Which {verb} {' '.join(middle)}, {_subject_in_question(subject, text)} or {other}?",
                        answer, subject=subject.lower())
        return


def _p_number(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    if _sentence_answer(sentence) is None or not re.search(r"\d", sentence):
        return
    clauses = re.split(r";\s+", sentence.rstrip("."))
    for clause in clauses:
        clause = _strip_lead_in(clause.strip())
        answer = _sentence_answer(sentence if len(clauses) == 1 else upper_first(clause) + ".")
        if answer is None:
            continue
        # "Each layer has 8 experts" -> "How many experts does each layer have?"
        m = re.match(
            rf"^(?P<subj>.+?)\s+(?P<verb>has|have|had|contains|contain|contained)\s+"
            rf"(?:about |over |around |roughly )?(?P<num>\d[\d,.]*|{'|'.join(NUMBER_WORDS)})\s+(?P<noun>[a-z][\w-]*(?:\s+[a-z][\w-]*){{0,2}})",
            clause,
        )
        if m and good_subject(m.group("subj")):
            noun_words = []
            for word in m.group("noun").split():
                if word in ("of", "in", "per", "and", "with", "that", "which", "for", "to", "at", "on", "each", "or",
                            "more", "than", "from"):
                    break
                noun_words.append(word)
            if noun_words:
                verb = m.group("verb")
                aux = AUX[{"has": "s", "have": "base", "had": "past", "contains": "s", "contain": "base",
                           "contained": "past"}[verb]]
                base = "have" if verb.startswith("ha") else "contain"
                subj = _subject_in_question(m.group("subj"), text)
                yield Candidate("number", 4, i, f"How many {' '.join(noun_words)} {aux} {subj} {base}?", answer,
                                subject=m.group("subj").lower())
                continue
        # "Applying LoRA reduced the trainable parameters by 10,000 times" -> "By how much did ... reduce ...?"
        by = re.search(r"\s+by\s+(?:a factor of\s+|about\s+|roughly\s+|up to\s+)?\d[\d,.]*\s*(?:times|x|×|%|percent)", clause)
        if by:
            words = clause[: by.start()].split()
            for k in range(1, min(len(words) - 1, 8)):
                if words[k] not in VERB_FORMS:
                    continue
                base, tense = VERB_FORMS[words[k]]
                subj_text, obj = " ".join(words[:k]), " ".join(words[k + 1 :])
                gerund = words[0].lower().endswith("ing") and len(words[0]) > 4
                ok = (gerund and not any(w.lower() in PRONOUN_OBJECT for w in words[:k])) or good_subject(subj_text)
                if ok and _object_ok(obj) and len(obj.split()) <= 10:
                    subj = subj_text[0].lower() + subj_text[1:] if gerund else _subject_in_question(subj_text, text)
                    yield Candidate("number", 4, i, f"By how much {AUX[tense]} {subj} {base} {obj}?", answer,
                                    subject=subj_text.lower())
                break
        # "The checkpoint shrank from 350 GB to about 35 MB" -> "How much did the checkpoint shrink?"
        m = re.match(r"^(?P<subj>.+?)\s+(?P<verb>[a-z]+)\s+from\s+(?:about |more than |less than |over |under )?\d[^,;]*?"
                     r"\s+to\s+(?:about |more than |less than |over |under )?\d", clause)
        if m and m.group("verb") in VERB_FORMS and good_subject(m.group("subj")):
            base, tense = VERB_FORMS[m.group("verb")]
            subj = _subject_in_question(m.group("subj"), text)
            yield Candidate("number", 4, i, f"How much {AUX[tense]} {subj} {base}?", answer,
                            subject=m.group("subj").lower())
            continue
        # "The base model trained for 100,000 steps" -> "For how many steps did the base model train?"
        m = re.match(r"^(?P<subj>.+?)\s+(?:was |were )?(?P<verb>trained|ran|fine-tuned|pretrained)\s+for\s+"
                     r"(?:about |roughly |over )?\d[\d,.]*\s+(?P<unit>steps|epochs|hours|days|iterations|tokens|minutes|weeks)\b",
                     clause)
        if m and good_subject(m.group("subj")):
            verb = {"trained": "train", "ran": "run", "fine-tuned": "fine-tune", "pretrained": "pretrain"}[m.group("verb")]
            subj = _subject_in_question(m.group("subj"), text)
            yield Candidate("number", 4, i, f"For how many {m.group('unit')} did {subj} {verb}?", answer,
                            subject=m.group("subj").lower())
            continue
        # "The coefficient was set to 0.01" -> "What was the coefficient set to?"
        m = re.match(r"^(?P<subj>.+?)\s+(?P<cop>was|is|were|are)\s+set\s+to\s+(?P<val>[^,;]+)", clause)
        if m and good_subject(m.group("subj")) and re.search(r"\d", m.group("val")):
            subj = _subject_in_question(m.group("subj"), text)
            yield Candidate("number", 4, i, f"What {m.group('cop')} {subj} set to?", answer,
                            subject=m.group("subj").lower())


_TABLE_CELL = re.compile(r"^(?P<key>[^:]{1,40}):\s*(?P<value>.+)$")
_PLAIN_COUNT = re.compile(r"^[~≈]?\d[\d,.]*\s*[KMBT]?$")


def _p_table(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    cells = [c.strip() for c in sentence.rstrip(".").split(";")]
    if len(cells) < 3:
        return
    parsed = []
    for cell in cells:
        m = _TABLE_CELL.match(cell)
        if not m:
            return
        parsed.append((m.group("key").strip(), m.group("value").strip()))
    entity = parsed[0][1]
    if any(ch in MATH_CHARS for ch in entity.replace("=", "")) or len(entity.split()) > 8:
        return
    usable = []
    for key, value in parsed[1:]:
        if any(ch in MATH_CHARS for ch in key + value) or len(value.split()) > 8 or len(key.split()) > 5:
            continue
        if value.lower() in ("n/a", "na", "-", "—", "none", "") or key.split()[-1].lower() in SKIPPABLE_WORDS:
            continue  # "Based on: ..." is not a property name
        key = re.sub(r"^(?:Approx\.|Approximate|Approximately)\s+", "", key, flags=re.I)
        usable.append((key, value))
    if not usable:
        return
    # One question per row, rotating over the columns so the rows of a table ask different things.
    key, value = usable[i % len(usable)]
    first = key.split()[0]
    if first[:1].isupper() and first[1:].islower():
        key = first.lower() + key[len(first):]
    head = re.split(r"\s(?:per|of|in|for)\s", key)[0].split()[-1]
    plural = head.endswith("s") and not head.endswith("ss")
    if plural and _PLAIN_COUNT.match(value):
        question = f"How many {key} does {entity} have?"
    else:
        question = f"What {'are' if plural else 'is'} the {key} of {entity}?"
    yield Candidate("table", 5, i, question, value, subject=f"{entity}|{key}".lower())


def _p_action(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    answer = _sentence_answer(sentence)
    if answer is None:
        return
    body = _strip_lead_in(sentence.rstrip("."))
    # "X does not change Y" -> "Does X change Y?"
    m = re.match(r"^(?P<subj>.+?)\s+(?P<aux>does|do)\s+not\s+(?P<verb>[a-z]+)\s+(?P<obj>[^,;:]+)$", body)
    if m and good_subject(m.group("subj")) and _object_ok(m.group("obj")) and len(m.group("obj").split()) <= 10:
        subj = _subject_in_question(m.group("subj"), text)
        yield Candidate("action", 6, i, f"{m.group('aux').capitalize()} {subj} {m.group('verb')} {m.group('obj')}?",
                        answer, subject=m.group("subj").lower())
        return
    words = body.split()
    for k in range(1, min(len(words), 6)):
        form = words[k]
        if form not in VERB_FORMS:
            continue
        base, tense = VERB_FORMS[form]
        subject = " ".join(words[:k])
        if not good_subject(subject):
            return
        plural = _plural(subject)
        if (tense == "s" and plural) or (tense == "base" and not plural):
            return
        obj = " ".join(words[k + 1 :])
        if not obj:
            return
        aux = "did" if tense == "past" else "do" if plural else "does"
        subj = _subject_in_question(subject, text)
        if base in OBJECT_VERBS and _object_ok(obj):
            question = f"What {aux} {subj} {base}?"
        else:
            question = f"What {aux} {subj} do?"
        yield Candidate("action", 6, i, question, answer, subject=subject.lower())
        return


def _p_which(i: int, sentence: str, text: str) -> Iterator[Candidate]:
    # "Additive attention, which scores a query ..., performs ..." -> "What is additive attention?"
    m = re.match(r"^(?P<x>[^,]{3,60}),\s+which\s+(?P<clause>[a-z][^,;:]{5,})[,;:]", sentence)
    if not m or not good_subject(m.group("x")):
        return
    if m.group("clause").split()[0] in ("the", "a", "an", "we", "it", "they", "is", "are", "was", "were"):
        return  # "X, which the model ..." is not about what X is; "X, which is ..." is a definition elsewhere
    answer = f"{m.group('x')}, which {m.group('clause')}."
    if is_math_heavy(answer):
        return
    subject = m.group("x")
    yield Candidate("which", 7, i, f"What is {_subject_in_question(subject, text)}?", answer, subject=subject.lower())


# ---------------------------------------------------------------------------------------------
# selection


def candidates_for(text: str, segmenter: str = "nupunkt") -> list[Candidate]:
    """Every candidate pair the patterns find in ``text``, in pattern priority then sentence order."""
    sentences = [tidy(s) for s in split_sentences(text, segmenter)]
    found: list[Candidate] = []
    for i, sentence in enumerate(sentences):
        if len(sentence.split()) < MIN_SENTENCE_WORDS and ":" not in sentence:
            continue
        if not (sentence[0].isupper() or sentence[0].isdigit() or sentence[0] in "\"“"):
            continue  # a fragment (the chunk or the segmenter cut a sentence)
        previous = sentences[i - 1] if i > 0 else None
        found.extend(_p_acronym(i, sentence, text))
        found.extend(_p_definition(i, sentence, text))
        found.extend(_p_called(i, sentence, text, previous))
        found.extend(_p_comparison(i, sentence, text))
        found.extend(_p_number(i, sentence, text))
        found.extend(_p_table(i, sentence, text))
        found.extend(_p_action(i, sentence, text))
        found.extend(_p_which(i, sentence, text))
    good = []
    for cand in found:
        question = finish_question(cand.question)
        if not 3 <= len(question.split()) <= 30 or any(ch in question for ch in "$\\"):
            continue
        if not cand.answer.strip():
            continue
        cand.question = question
        cand.answer = cand.answer.strip()
        good.append(cand)
    good.sort(key=lambda c: (c.priority, c.sentence))
    return good


def select(candidates: list[Candidate], limit: int, per_kind: int = 2) -> list[Candidate]:
    """The best ``limit`` candidates: one per sentence and subject, at most ``per_kind`` of a kind at first."""
    chosen: list[Candidate] = []
    used_sentences: set[int] = set()
    subjects: set[str] = set()
    questions: set[str] = set()
    for cap in (per_kind, limit):
        kinds: Counter[str] = Counter(c.kind for c in chosen)
        for cand in candidates:
            if len(chosen) >= limit:
                return chosen
            if any(cand is c for c in chosen) or kinds[cand.kind] >= cap or cand.question.lower() in questions:
                continue
            if cand.uses_sentence and cand.sentence in used_sentences:
                continue
            if cand.subject and cand.subject in subjects:
                continue
            chosen.append(cand)
            kinds[cand.kind] += 1
            questions.add(cand.question.lower())
            if cand.kind != "acronym":
                subjects.add(cand.subject)
            if cand.uses_sentence:
                used_sentences.add(cand.sentence)
    return chosen


class RulesGenerator:
    """Offline pattern-based pairs; fast, so many chunks go in one call."""

    name = "rules"
    model = None
    batch_size = 64

    def __init__(self, pairs_per_chunk: int, segmenter: str = "nupunkt") -> None:
        self.pairs_per_chunk = pairs_per_chunk
        self.segmenter = segmenter

    def pairs_for(self, text: str) -> list[tuple[str, str]]:
        return [(question, answer) for question, answer, _ in self.tagged_pairs_for(text)]

    def tagged_pairs_for(self, text: str) -> list[tuple[str, str, str]]:
        """``(question, answer, kind)`` for the chosen candidates, the kind one of the generate kinds."""
        chosen = select(candidates_for(text, self.segmenter), self.pairs_per_chunk)
        return [(c.question, c.answer, QUESTION_KINDS[c.kind]) for c in chosen]

    def generate(self, chunks: list[Chunk]) -> Iterator[tuple[str, ChunkResult]]:
        for chunk in chunks:
            result = ChunkResult()
            grounding = Grounding(chunk["text"], self.segmenter)
            # Injected sentences are skipped; each that a pattern would have asked about counts as a drop.
            skipped = sum(bool(candidates_for(s, self.segmenter)) for s in grounding.injected_sentences)
            if skipped:
                result.dropped["injection"] += skipped
            pairs = drop_injected(self.tagged_pairs_for(grounding.clean_text), grounding, result)
            take_pairs(pairs, self.pairs_per_chunk, result)
            yield chunk["id"], result

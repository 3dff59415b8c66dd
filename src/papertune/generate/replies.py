"""Reading question-answer pairs from a model's reply, however it is broken.

:func:`parse_pairs` reads the JSON values of a reply as :mod:`papertune.jsonreply` repairs them (code
fences, trailing commas, single quotes, a list cut off by the token limit, LaTeX backslashes). Replies that
are no JSON at all are read field by field or as "Question: ... / Answer: ..." lines.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from papertune.generate.base import tidy
from papertune.jsonreply import json_values, keep_latex_backslashes



class ParsedPair(NamedTuple):
    """A pair as read from a reply: text fields ("" where missing) and the kind as the model wrote it."""

    question: str
    answer: str
    kind: Any = None  # None when the reply gave no kind
    evidence: str = ""  # the passage's sentence(s) the pair rests on, in the evidence-first form


def _pair_from(obj: Any) -> ParsedPair | None:
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    question = next((lowered[k] for k in ("question", "q", "query") if k in lowered), None)
    answer = next((lowered[k] for k in ("answer", "a", "response") if k in lowered), None)
    if question is None and answer is None:
        return None
    kind = next((lowered[k] for k in ("kind", "type", "category") if k in lowered), None)
    evidence = next((lowered[k] for k in ("evidence", "quote") if k in lowered), None)
    return ParsedPair(_as_text(question), _as_text(answer), kind, _as_text(evidence))


_QA_LINES = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?\**Q(?:uestion)?\s*\d*\**\s*[:.]\s*(.+?)\s*\n\s*\**A(?:nswer)?\s*\d*\**\s*[:.]\s*(.+?)"
    r"(?=\n\s*(?:\d+[.)]\s*)?\**Q(?:uestion)?\s*\d*\**\s*[:.]|\Z)",
    re.S | re.I,
)


def parse_pairs(reply: str) -> list[ParsedPair] | None:
    """The pairs in a model reply; None when nothing in it can be read as pairs.

    Accepts a JSON list of objects, one object, an object wrapping a list ({"pairs": [...]}), several
    objects one after another, and "Question: ... / Answer: ..." lines. Missing or non-text fields
    come back as empty strings (the caller counts them); a missing kind as None.
    """
    pairs: list[ParsedPair] = []
    found = False
    for value in json_values(reply):
        single = isinstance(value, dict) and _pair_from(value) is not None
        if single:
            items: list[Any] = [value]
        elif isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            items = lists[0] if lists else []
        else:
            items = value if isinstance(value, list) else []
        from_list = [p for p in map(_pair_from, items) if p is not None]
        if from_list:
            found = True
            pairs.extend(from_list)
            if not single:
                break  # the list is the answer; anything after it is chatter
    if not found:
        salvaged = _salvage(reply)
        if salvaged:
            return salvaged
        for match in _QA_LINES.finditer(reply):
            found = True
            pairs.append(ParsedPair(tidy(match.group(1)), tidy(match.group(2))))
    return pairs if found else None


_FIELD = re.compile(
    r"[\"']?(?P<key>question|answer|kind)[\"']?\s*:\s*"
    r"(?:\"(?P<dq>(?:[^\"\\\n]|\\.)*)\"|'(?P<sq>(?:[^'\\\n]|\\.)*)'|\"(?P<cut>(?:[^\"\\\n]|\\.)*)$)",
    re.IGNORECASE,
)


def _complete_sentences(text: str) -> str:
    """The text up to its last sentence end; "" if it has none (a value cut off mid-sentence)."""
    match = re.match(r"^(.*[.!?])(?:\s|$)", text, flags=re.S)
    return match.group(1) if match else ""


def _salvage(reply: str) -> list[ParsedPair]:
    """Fields read one by one, for JSON too broken to parse (e.g. the first object cut off by the token
    limit): each complete "question" string pairs with the next "answer" string and the last "kind" seen
    since the previous pair; an answer cut off by the end of the reply keeps its complete sentences."""
    pairs = []
    question: str | None = None
    kind: str | None = None
    for match in _FIELD.finditer(reply):
        if match.group("dq") is not None:
            raw, quoted = match.group("dq"), True
        elif match.group("sq") is not None:
            raw, quoted = match.group("sq"), False
        else:
            raw, quoted = _complete_sentences(match.group("cut")), True
        try:
            value = json.loads(f'"{keep_latex_backslashes(raw)}"') if quoted else raw
        except ValueError:
            value = raw
        key = match.group("key").lower()
        if key == "kind":
            kind = value
        elif key == "question":
            question = value if match.group("cut") is None else None
        elif question is not None:
            if value.strip():
                pairs.append(ParsedPair(tidy(question), tidy(value), kind))
            question = kind = None
    return pairs


def without_repeats(text: str) -> str:
    """Drop sentences that repeat an earlier one (small models loop: "It is X. It is X. It is X.")."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    seen: set[str] = set()
    kept = []
    for sentence in sentences:
        key = sentence.strip().lower()
        if key and key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return tidy(" ".join(_as_text(v) for v in value))
    if isinstance(value, dict):
        return ""
    return tidy(str(value))

"""Reading question-answer pairs from a model's reply, however it is broken.

:func:`parse_pairs` takes the first JSON array or object in a reply and repairs what small models break:
code fences, trailing commas, single quotes, Python literals, a list cut off by the token limit, and
backslashes: one that starts a LaTeX command (``\\text``, ``\\frac``, ``\\nabla``) is kept as written
rather than read as a JSON escape (:func:`keep_latex_backslashes`). Replies that are no JSON at all are
read field by field or as "Question: ... / Answer: ..." lines.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from papertune.generate.base import tidy



def _strip_fences(text: str) -> str:
    """The inside of the first ``` fence, or the text without stray fence lines."""
    fenced = re.search(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", text, flags=re.S)
    if fenced and fenced.group(1).strip():
        return fenced.group(1)
    return text.replace("```", "")


def _balanced_end(text: str) -> tuple[int | None, int | None]:
    """Scanning a JSON-ish value from text[0]: (end of the whole value, end of the last complete element
    of a top-level list). Strings in single or double quotes are skipped."""
    stack: list[str] = []
    quote: str | None = None
    escape = False
    last_element: int | None = None
    for i, ch in enumerate(text):
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            # A single quote inside a word (don't) is an apostrophe, not a string.
            if ch == "'" and i > 0 and text[i - 1].isalnum():
                continue
            quote = ch
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}":
            if not stack:
                return None, last_element
            stack.pop()
            if not stack:
                return i + 1, last_element
            if len(stack) == 1 and stack[0] == "[":
                last_element = i + 1
    return None, last_element


# LaTeX commands that begin like a JSON escape: "\nabla" is not a newline and "abla". (\b, \f, \r and \t
# followed by a letter are always read as LaTeX: answers do not hold backspaces, form feeds, carriage
# returns or tabs, while formulas hold \beta, \frac, \rho and \text.)
_LATEX_N_COMMANDS = frozenset(
    """nabla ne neq neg nu not notin ni nmid nleq ngeq nless ngtr nsim nparallel nsubseteq nsupseteq nexists
    newline noindent nonumber nolimits natural nearrow nwarrow newcommand normalsize""".split()
)
_ESCAPE = re.compile(r'\\(?:(["\\/])|(u[0-9a-fA-F]{4})|([A-Za-z]+)|(.?))', re.S)


def keep_latex_backslashes(text: str) -> str:
    r"""JSON text in which every backslash that starts a LaTeX command or escapes nothing JSON knows is doubled,
    so that decoding keeps it: ``"\text{KL}"`` -> ``\text{KL}`` (not a tab and "ext"), ``"\frac"``,
    ``"\nabla"``, ``"\alpha"`` and ``"\{"`` stay as written. Real escapes still decode: ``\n`` between
    sentences, ``\"``, ``\\``, ``\/`` and ``\u00e9``."""

    def fix(match: re.Match[str]) -> str:
        if match.group(1) or match.group(2):
            return match.group(0)  # \" \\ \/ \uXXXX
        word = match.group(3)
        if word is not None:
            if word[0] == "n" and word not in _LATEX_N_COMMANDS:
                return match.group(0)  # a newline before a word
            return "\\\\" + word
        return "\\\\" + match.group(4)  # \{ \_ \( \, ... or a backslash at the very end

    return _ESCAPE.sub(fix, text)


def _loads(candidate: str) -> Any:
    """json, then json after light repair, then a Python literal; raises ValueError."""
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):  # RecursionError: brackets nested past Python's limit
        pass
    repaired = candidate.replace("“", '"').replace("”", '"')
    repaired = re.sub(r",\s*([\]}])", r"\1", repaired)  # trailing commas
    try:
        return json.loads(repaired)
    except (ValueError, RecursionError):
        pass
    pythonish = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", repaired)))
    try:
        return ast.literal_eval(pythonish)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError("not JSON") from None


def _values(text: str) -> Iterator[Any]:
    """Every JSON-ish value that can be read from the text, repaired where needed, in order."""
    text = keep_latex_backslashes(_strip_fences(text))
    pos = 0
    while True:
        starts = [i for i in (text.find("[", pos), text.find("{", pos)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        end, last_element = _balanced_end(text[start:])
        if end is not None:
            try:
                yield _loads(text[start : start + end])
                pos = start + end
                continue
            except ValueError:
                pass
        elif text[start] == "[" and last_element is not None:
            # A list cut off by the token limit: keep its complete elements.
            try:
                yield _loads(text[start : start + last_element] + "]")
                return
            except ValueError:
                pass
        pos = start + 1


class ParsedPair(NamedTuple):
    """A pair as read from a reply: text fields ("" where missing) and the kind as the model wrote it."""

    question: str
    answer: str
    kind: Any = None  # None when the reply gave no kind


def _pair_from(obj: Any) -> ParsedPair | None:
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    question = next((lowered[k] for k in ("question", "q", "query") if k in lowered), None)
    answer = next((lowered[k] for k in ("answer", "a", "response") if k in lowered), None)
    if question is None and answer is None:
        return None
    kind = next((lowered[k] for k in ("kind", "type", "category") if k in lowered), None)
    return ParsedPair(_as_text(question), _as_text(answer), kind)


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
    for value in _values(reply):
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

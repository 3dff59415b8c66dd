"""Reading JSON a model wrote, however it is broken: code fences, prose around it, trailing commas, single
quotes, Python literals, a list cut off by the token limit, and backslashes: one that starts a LaTeX command
(``\\text``, ``\\frac``, ``\\nabla``) is kept as written rather than read as a JSON escape
(:func:`keep_latex_backslashes`). Used wherever a reply was not constrained to its schema: the teacher's pairs
(papertune.generate.replies) and the judges' verdicts.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any


def strip_fences(text: str) -> str:
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
# Control characters no answer holds, written as \uXXXX where a LaTeX backslash was meant (seen from a 1.5B
# teacher under vLLM's JSON grammar: "$p(\u0008mathbf{z})$"): read as a backslash.
_CONTROL_FOR_BACKSLASH = frozenset({"u0008", "u000c"})
_ESCAPE = re.compile(r'\\(?:(["\\/])|(u[0-9a-fA-F]{4})|([A-Za-z]+)|(.?))', re.S)


def keep_latex_backslashes(text: str) -> str:
    r"""JSON text in which every backslash that starts a LaTeX command or escapes nothing JSON knows is doubled,
    so that decoding keeps it: ``"\text{KL}"`` -> ``\text{KL}`` (not a tab and "ext"), ``"\frac"``,
    ``"\nabla"``, ``"\alpha"`` and ``"\{"`` stay as written. Real escapes still decode: ``\n`` between
    sentences, ``\"``, ``\\``, ``\/`` and ``\u00e9``."""

    def fix(match: re.Match[str]) -> str:
        if match.group(2) and match.group(2).lower() in _CONTROL_FOR_BACKSLASH:
            return "\\\\"  # \u0008mathbf: a teacher held to JSON wrote a backspace for the backslash
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


def json_values(text: str) -> Iterator[Any]:
    """Every JSON-ish value that can be read from the text, repaired where needed, in order."""
    text = keep_latex_backslashes(strip_fences(text))
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


def first_object(text: str | None, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (read as :func:`json_values` reads) that has every key of ``required``."""
    if not text:
        return None
    for value in json_values(text):
        if isinstance(value, dict) and all(key in value for key in required):
            return value
    return None

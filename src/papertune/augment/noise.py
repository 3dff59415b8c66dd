"""Noisy questions, as a hurried user types them: typos, a grammatical slip, punctuation and casing.

Only the question gets noise; the reference answer stays clean.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from papertune.text import match_case

_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Each letter -> the letters next to it on a QWERTY keyboard."""
    neighbours: dict[str, str] = {}
    for row_index, row in enumerate(_KEYBOARD):
        for column, letter in enumerate(row):
            near = []
            for dr, dc in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, -1), (1, 0)):
                r, c = row_index + dr, column + dc
                if 0 <= r < 3 and 0 <= c < len(_KEYBOARD[r]):
                    near.append(_KEYBOARD[r][c])
            neighbours[letter] = "".join(near)
    return neighbours


_NEIGHBOURS = _keyboard_neighbours()

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
                out.append(match_case(rng.choice(_NEIGHBOURS[c.lower()]), c))
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
            text = text[:i] + match_case(rng.choice(_NEIGHBOURS[text[i].lower()]), text[i]) + text[i + 1:]
            done.append("typos")
    return text, done


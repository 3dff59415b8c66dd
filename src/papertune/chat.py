"""One place that turns a question (and answer) into model text, for training and inference alike.

Training examples and inference prompts are both rendered here with the model's own chat template,
so the prompt a tuned model sees when asked is byte-identical to the prompt it was trained on.

A grounded question carries numbered passages (retrieved chunks) before it and asks for an answer that
cites them as [n], or :data:`ABSTAIN` when they do not hold the answer; a closed-book question is the
question alone. A model trained on quoting targets (``build.raft_quote``) first quotes the sentence of its
passage that carries the answer, then answers (:func:`quoted_answer`; read back by :func:`split_quote`). A
verification question (:func:`verify_turn`) shows one passage and asks whether it contains the answer: "yes"
or "no". Build (RAFT and verification examples), evaluate, ask and serve all render through these functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Message = dict[str, str]

# The reply a grounded answer gives when its passages do not contain the answer.
ABSTAIN = "The passages do not contain the answer."
GROUNDED_INSTRUCTION = (
    "Answer the question from the numbered passages below and cite the passages you use as [1], [2], ... "
    f'If the passages do not contain the answer, reply exactly: "{ABSTAIN}"'
)
VERIFY_INSTRUCTION = "Does the passage contain the answer to the question? Reply yes or no."
VERIFY_YES, VERIFY_NO = "yes", "no"
VERIFY_TOKENS = 2  # tokens generated for a verification reply (its first word is what counts)
_CITATION = re.compile(r"\[(\d{1,2})\]")  # a citation marker, "[n]"
_CITATION_WITH_SPACE = re.compile(r"\s*" + _CITATION.pattern)
# A quoting reply: 'Quote [n]: "..."', a line break (or none before 'Answer:'), then 'Answer: ...' (cut off
# before it: the quote alone).
_QUOTED = re.compile(r'\s*Quote \[(\d{1,2})\]:\s*"(.*?)"[ \t]*(?:(?:\n\s*|(?=Answer:))(?:Answer:\s*)?(.*))?\Z',
                     re.S)


def passage_label(chunk: dict) -> str:
    """Where a chunk comes from, for people: ``paper.pdf, page 7-8 [Section]``."""
    pages = ""
    if chunk.get("page_start") is not None:
        end = chunk.get("page_end")
        pages = f", page {chunk['page_start']}" + (f"-{end}" if end not in (None, chunk["page_start"]) else "")
    section = f" [{chunk['section']}]" if chunk.get("section") else ""
    return f"{chunk.get('source')}{pages}{section}"


def grounded_question(question: str, passages: Sequence[dict]) -> str:
    """The user turn of a grounded question: the instruction, the passages numbered from 1 (each with its
    document, page and section), then the question. ``passages`` are chunk dicts (``text``, ``source``, ...)."""
    blocks = [f"[{n}] {passage_label(chunk)}\n{chunk['text'].strip()}" for n, chunk in enumerate(passages, 1)]
    return GROUNDED_INSTRUCTION + "\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"


def verify_turn(question: str, passage: dict) -> str:
    """The user turn asking whether one passage (a chunk dict) contains the answer to ``question``; the reply
    a model is trained to give is :data:`VERIFY_YES` or :data:`VERIFY_NO`."""
    return (f"Passage: {passage_label(passage)}\n{passage['text'].strip()}\n\n"
            f"Question: {question}\n\n{VERIFY_INSTRUCTION}")


def verify_says_no(reply: str) -> bool:
    """Whether a reply to :func:`verify_turn` says the passage does not contain the answer (its first word is
    "no"); any other reply lets the answer stand."""
    first = re.match(r"\W*(\w+)", reply)
    return bool(first) and first.group(1).lower() == VERIFY_NO


def verified_answer(checked: str, reply: str | None) -> str:
    """A checked grounded answer as shown after verification: :data:`ABSTAIN` when the model's ``reply`` to
    :func:`verify_turn` says no (:func:`verify_says_no`), else ``checked`` (also when it was not asked)."""
    return ABSTAIN if reply is not None and verify_says_no(reply) else checked


def passage_to_verify(answer: str, passages: int) -> int | None:
    """Which of ``passages`` (numbered from 1) a grounded answer is verified against: the first one it cites,
    else the first; None when it declines or there are none."""
    if not passages or abstains(answer):
        return None
    return next((n for n in cited_numbers(answer) if 1 <= n <= passages), 1)


def user_turn(question: str, passages: Sequence[dict] | None) -> str:
    """What the user turn says: the question alone (closed book) or :func:`grounded_question`."""
    return question if passages is None else grounded_question(question, passages)


def cited_answer(answer: str, n: int) -> str:
    """``answer`` citing passage ``n``: the marker before the final full stop (``... NF4 [2].``) or at the end."""
    answer = answer.rstrip()
    if answer.endswith((".", "!", "?")):
        return f"{answer[:-1]} [{n}]{answer[-1]}"
    return f"{answer} [{n}]"


def quoted_answer(quote: str, n: int, answer: str) -> str:
    """A quoting target: the sentence of passage ``n`` that carries the answer, quoted on one line, then the
    answer citing passage ``n`` (``Quote [2]: "..."`` / ``Answer: ... [2].``)."""
    return f'Quote [{n}]: "{" ".join(quote.split())}"\nAnswer: {cited_answer(answer, n)}'


def split_quote(reply: str) -> tuple[str | None, int | None, str]:
    """A reply read as :func:`quoted_answer` writes it: (the quote, the passage it names, the answer). A reply
    without a quote: (None, None, the reply). A quote cut off before its answer is the answer, citing its
    passage."""
    match = _QUOTED.match(reply)
    if match is None:
        return None, None, reply
    n, quote, answer = int(match.group(1)), match.group(2).strip(), (match.group(3) or "").strip()
    return quote, n, answer or cited_answer(quote, n)


def cited_numbers(answer: str) -> list[int]:
    """The passage numbers an answer cites ([n]), in order of first mention."""
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        n = int(match.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def renumber_citations(answer: str, numbers: dict[int, int]) -> str:
    """``answer`` with each citation [n] in ``numbers`` made [numbers[n]] (others as they are)."""
    return _CITATION.sub(lambda m: f"[{numbers.get(int(m.group(1)), int(m.group(1)))}]", answer)


def strip_citations(answer: str) -> str:
    """The answer without its "[n]" citation markers ("NF4 [2]." -> "NF4.")."""
    return _CITATION_WITH_SPACE.sub("", answer).strip()


# Ways a small model says :data:`ABSTAIN` in its own words (matched on lower-case text without apostrophes):
# the passages (context, documents, ...) "do not contain/mention/..." it, or it is "not mentioned", ... A
# real answer that says what something does not do ("LoRA does not update the weights") is not one.
_DECLINES = re.compile(
    r"\b(?:(?:passages?|context|texts?|documents?|sources?|excerpts?)\b[^.;]*?\b(?:do|does|did)(?: not|nt) "
    r"(?:contain|mention|say|provide|include|specify|state|give|answer|discuss|cover)"
    r"|none of the (?:passages|documents|sources)|no information (?:about|on|in|regarding|is given|is provided)"
    r"|not enough information|cannot be answered|(?:is|are|was|were) not mentioned)\b")


def abstains(answer: str) -> bool:
    """Whether an answer declines: it says the passages do not contain the answer (:data:`ABSTAIN`, or one of a
    few common rewordings such as "the passages don't mention ...")."""
    return bool(_DECLINES.search(re.sub(r"\s+", " ", answer.lower().replace("'", "").replace("’", ""))))


def to_messages(question: str, answer: str | None, system_prompt: str | None,
                passages: Sequence[dict] | None = None, *, user: str | None = None) -> list[Message]:
    """The conversation: system prompt, the user turn (``user`` as given, else :func:`user_turn`), answer."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user if user is not None else user_turn(question, passages)})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_prompt(tokenizer: Any, question: str, system_prompt: str | None,
                  passages: Sequence[dict] | None = None, *, user: str | None = None) -> str:
    """The text a model is given when asked ``question`` (with ``passages``: grounded; with ``user``: that
    user turn, e.g. :func:`verify_turn`): everything up to the assistant's first token."""
    return tokenizer.apply_chat_template(
        to_messages(question, None, system_prompt, passages, user=user), tokenize=False, add_generation_prompt=True
    )


def render_verify_prompt(tokenizer: Any, question: str, passage: dict, system_prompt: str | None) -> str:
    """The prompt asking whether ``passage`` contains the answer to ``question`` (:func:`verify_turn`), as
    build renders a verification row's."""
    return render_prompt(tokenizer, question, system_prompt, user=verify_turn(question, passage))


def render_example(tokenizer: Any, question: str, answer: str, system_prompt: str | None,
                   passages: Sequence[dict] | None = None, *, user: str | None = None) -> dict[str, str]:
    """A training example as ``prompt`` + ``completion`` (= the full ``text``).

    The completion is the answer and the end-of-turn token; whatever the template puts after that
    (Qwen and ChatML add a newline) is left out, so no loss is spent on it.
    """
    prompt = render_prompt(tokenizer, question, system_prompt, passages, user=user)
    text = tokenizer.apply_chat_template(to_messages(question, answer, system_prompt, passages, user=user),
                                         tokenize=False)
    if not text.startswith(prompt):
        raise ValueError(
            "the chat template renders the conversation differently from its prompt; cannot split prompt "
            "and completion for this model"
        )
    completion = text[len(prompt):].rstrip("\n")
    return {"prompt": prompt, "completion": completion, "text": prompt + completion}

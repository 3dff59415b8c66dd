"""A grounded answer as papertune shows it: checked against its passages, then verified by the model itself.

The one policy ``ask``, ``chat``, ``serve`` and ``evaluate`` apply to the model's grounded answers (each brings
its own way to generate; :func:`settle_answers` does the rest, for one question or a whole evaluation):

0. a quoting reply (``build.raft_quote``) is split into its quote and its answer (:func:`placed_quote`): the
   answer cites the passage the quote is found in; a quote found in none is not shown;
1. the answer check (``Retriever.check_answer``): unsupported answers become the decline, citations fixed;
2. with ``retrieval.verify``, the tuned model is asked whether the passage the checked answer cites contains
   the answer (``chat.verify_turn``); a "no" makes it the decline. A base model is not asked: it was never
   trained to judge (``build.raft_verify_rows``), and untrained its yes/no is about chance;
3. with ``retrieval.verify_retry``, a "no" first asks the same of the other passages: the first one the model
   says holds the answer moves to [1] and the question is answered once more, checked and verified again
   (its citations numbered back as the passages were shown); no "yes", or a second "no": the decline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from papertune.chat import (VERIFY_TOKENS, abstains, cited_answer, cited_numbers, passage_to_verify, render_prompt,
                            render_verify_prompt, renumber_citations, split_quote, verified_answer, verify_says_no)
from papertune.config import PapertuneConfig
from papertune.inference import Decoding
from papertune.retrieval import Passage, Retriever
from papertune.text import normalize

log = logging.getLogger(__name__)

QUOTE_MIN_WORDS = 3  # a shorter quote (once case, spacing and symbols are set aside) places nothing

# Greedy texts for rendered prompts (chat template applied, no added special tokens), in order.
Generate = Callable[[list[str], Decoding], list[str]]


@dataclass
class Settled:
    """One grounded answer settled: ``answer`` as shown; the model's ``verify_reply`` about ``verified``, the
    passage the checked answer cites (None: not asked); with a retry, ``retry`` = {"passage": the passage
    moved to [1] (numbered as shown), "answer": the model's second answer (numbered as shown),
    "verify_reply": its reply about the passage that one cites}; ``quote``: {"n": the passage it is found in,
    "text": the words the model quoted} (:func:`placed_quote`), None without one or when it declined."""

    answer: str
    verify_reply: str | None = None
    verified: int | None = None
    retry: dict[str, Any] | None = None
    quote: dict[str, Any] | None = None

    @property
    def said_no(self) -> bool:
        """Whether the model said the passage the checked answer cites does not hold the answer."""
        return self.verify_reply is not None and verify_says_no(self.verify_reply)


def verifies(config: PapertuneConfig, *, tuned: bool) -> bool:
    """Whether the model answering checks its own answers: with ``retrieval.verify``, the tuned model only."""
    return config.retrieval.verify and tuned


def note_base_model(config: PapertuneConfig, *, tuned: bool) -> None:
    """Say in the log, when a model is loaded to answer, that a base model's answers will not be verified."""
    if config.retrieval.verify and not tuned:
        log.info("retrieval.verify: the base model's answers get the answer check only (it was not trained to "
                 "verify them)")


def moved_first(passages: Sequence[Passage], n: int) -> tuple[list[Passage], dict[int, int]]:
    """``passages`` with passage ``n`` first and the others in their order, numbered again from 1, and each
    new number's number as shown before."""
    order = [p for p in passages if p.n == n] + [p for p in passages if p.n != n]
    return [Passage(i, p.chunk, p.score) for i, p in enumerate(order, 1)], {i: p.n for i, p in enumerate(order, 1)}


def placed_quote(reply: str, passages: Sequence[Passage]) -> tuple[str, dict[str, Any] | None]:
    """A reply's answer and its quote (``chat.split_quote``), the quote placed: the first passage whose words
    hold the quote's words in order (``text.normalize``), and the answer's citations of the number the quote
    named, or none, made that passage's. A quote found in no passage is dropped (None) and the answer left as
    written: the answer check judges it."""
    quote, named, answer = split_quote(reply)
    wanted = normalize(quote) if quote else ""
    if len(wanted.split()) < QUOTE_MIN_WORDS:  # a formula's few letters would be found almost anywhere
        wanted = ""
    found = next((p.n for p in passages if wanted and wanted in normalize(p.chunk["text"])), None)
    if found is None:
        return answer, None
    answer = renumber_citations(answer, {named: found}) if cited_numbers(answer) else cited_answer(answer, found)
    return answer, {"n": found, "text": quote}


def settle_answers(questions: Sequence[str], answers: Sequence[str], hits: Sequence[Sequence[Passage]], *,
                   retriever: Retriever, tokenizer: Any, config: PapertuneConfig, generate: Generate,
                   answer_decoding: Decoding, tuned: bool) -> list[Settled]:
    """Each grounded answer (``answers[i]`` to ``questions[i]`` from passages ``hits[i]``) settled as the module
    says, with ``generate`` (the tuned model when ``tuned``) asked at most four times (verification, the other
    passages, the second answers with ``answer_decoding``, their verification), each time for all the questions
    that need it."""
    placed = [placed_quote(a, h) for a, h in zip(answers, hits, strict=True)]
    checked = [retriever.check_answer(q, a, h) for q, (a, _), h in zip(questions, placed, hits, strict=True)]
    settled = [Settled(c, quote=q) for c, (_, q) in zip(checked, placed, strict=True)]
    if verifies(config, tuned=tuned):
        _verify(settled, checked, questions, hits, tokenizer=tokenizer, config=config, generate=generate,
                answer_decoding=answer_decoding, retriever=retriever)
    for s in settled:
        if abstains(s.answer):
            s.quote = None
    return settled


def _verify(settled: list[Settled], checked: list[str], questions: Sequence[str], hits: Sequence[Sequence[Passage]],
            *, tokenizer: Any, config: PapertuneConfig, generate: Generate, answer_decoding: Decoding,
            retriever: Retriever) -> None:
    """Steps 2 and 3 of the module's policy on ``settled`` (the checked answers ``checked``), in place."""
    system = config.build.system_prompt
    verify = Decoding(max_new_tokens=VERIFY_TOKENS)

    def ask(items: list[tuple[int, Passage]]) -> list[str]:
        """The model's replies when asked whether each passage holds the answer to question ``k``."""
        if not items:
            return []
        return generate([render_verify_prompt(tokenizer, questions[k], p.chunk, system) for k, p in items], verify)

    cited = [passage_to_verify(c, len(h)) for c, h in zip(checked, hits, strict=True)]
    asked = [(k, hits[k][n - 1]) for k, n in enumerate(cited) if n is not None]
    for (k, _), reply in zip(asked, ask(asked), strict=True):
        settled[k].verify_reply, settled[k].verified = reply, cited[k]
        settled[k].answer = verified_answer(checked[k], reply)
    if not config.retrieval.verify_retry:
        return

    others = [(k, p) for k, _ in asked if settled[k].said_no for p in hits[k] if p.n != cited[k]]
    chosen: dict[int, int] = {}  # question -> the first other passage the model says holds the answer
    for (k, p), reply in zip(others, ask(others), strict=True):
        if k not in chosen and not verify_says_no(reply):
            chosen[k] = p.n
    retried = sorted(chosen)
    moved, shown = {}, {}
    for k in retried:
        moved[k], shown[k] = moved_first(hits[k], chosen[k])
    texts = generate([render_prompt(tokenizer, questions[k], system, [p.chunk for p in moved[k]]) for k in retried],
                     answer_decoding) if retried else []
    placed = {k: placed_quote(text, moved[k]) for k, text in zip(retried, texts, strict=True)}
    again = {k: retriever.check_answer(questions[k], placed[k][0], moved[k]) for k in retried}
    again_cited = {k: passage_to_verify(again[k], len(moved[k])) for k in retried}
    asked_again = [(k, moved[k][again_cited[k] - 1]) for k in retried if again_cited[k] is not None]
    replies = dict(zip([k for k, _ in asked_again], ask(asked_again), strict=True))
    for k, text in zip(retried, texts, strict=True):
        reply = replies.get(k)
        settled[k].answer = renumber_citations(verified_answer(again[k], reply), shown[k])
        settled[k].retry = {"passage": chosen[k], "answer": renumber_citations(text, shown[k]), "verify_reply": reply}
        quote = placed[k][1]
        settled[k].quote = None if quote is None else {**quote, "n": shown[k][quote["n"]]}

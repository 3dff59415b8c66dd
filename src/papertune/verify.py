"""A grounded answer as papertune shows it: checked against its passages, then verified by the model itself.

The one policy ``ask``, ``chat``, ``serve`` and ``evaluate`` apply to the model's grounded answers (each brings
its own way to generate; :func:`settle_answers` does the rest, for one question or a whole evaluation):

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

from papertune.chat import (VERIFY_TOKENS, passage_to_verify, render_prompt, render_verify_prompt, renumber_citations,
                            verified_answer, verify_says_no)
from papertune.config import PapertuneConfig
from papertune.inference import Decoding
from papertune.retrieval import Passage, Retriever

log = logging.getLogger(__name__)

# Greedy texts for rendered prompts (chat template applied, no added special tokens), in order.
Generate = Callable[[list[str], Decoding], list[str]]


@dataclass
class Settled:
    """One grounded answer settled: ``answer`` as shown; the model's ``verify_reply`` about ``verified``, the
    passage the checked answer cites (None: not asked); with a retry, ``retry`` = {"passage": the passage
    moved to [1] (numbered as shown), "answer": the model's second answer (numbered as shown),
    "verify_reply": its reply about the passage that one cites}."""

    answer: str
    verify_reply: str | None = None
    verified: int | None = None
    retry: dict[str, Any] | None = None

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


def settle_answers(questions: Sequence[str], answers: Sequence[str], hits: Sequence[Sequence[Passage]], *,
                   retriever: Retriever, tokenizer: Any, config: PapertuneConfig, generate: Generate,
                   answer_decoding: Decoding, tuned: bool) -> list[Settled]:
    """Each grounded answer (``answers[i]`` to ``questions[i]`` from passages ``hits[i]``) settled as the module
    says, with ``generate`` (the tuned model when ``tuned``) asked at most four times (verification, the other
    passages, the second answers with ``answer_decoding``, their verification), each time for all the questions
    that need it."""
    system = config.build.system_prompt
    checked = [retriever.check_answer(q, a, h) for q, a, h in zip(questions, answers, hits, strict=True)]
    settled = [Settled(c) for c in checked]
    if not verifies(config, tuned=tuned):
        return settled
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
        return settled

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
    again = {k: retriever.check_answer(questions[k], text, moved[k]) for k, text in zip(retried, texts, strict=True)}
    again_cited = {k: passage_to_verify(again[k], len(moved[k])) for k in retried}
    asked_again = [(k, moved[k][again_cited[k] - 1]) for k in retried if again_cited[k] is not None]
    replies = dict(zip([k for k, _ in asked_again], ask(asked_again), strict=True))
    for k, text in zip(retried, texts, strict=True):
        reply = replies.get(k)
        settled[k].answer = renumber_citations(verified_answer(again[k], reply), shown[k])
        settled[k].retry = {"passage": chosen[k], "answer": renumber_citations(text, shown[k]), "verify_reply": reply}
    return settled

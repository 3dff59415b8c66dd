"""``papertune ask`` and ``papertune chat``: the tuned model answering, tokens streamed to the terminal.

The model is ``train.model`` with the LoRA adapter from ``RUN/train/adapter`` (or a merged folder or GGUF
file, or the base model alone). Questions go through the same chat template and system prompt
(``build.system_prompt``) as the training examples and are tokenized the same way (no added special
tokens), so the model sees exactly the prompt ids it was trained on. Greedy unless
``evaluate.temperature`` > 0.

Grounded (``retrieval.grounded``, the default): the ``retrieval.top_k`` passages of ``RUN/chunks.jsonl``
that :class:`papertune.retrieval.Retriever` ranks first go into the prompt, numbered from 1
(``chat.render_prompt`` with ``passages``: the prompt of RAFT training examples). After the answer come the
sources, numbered as in the prompt, each with its document, page and section, the ones the answer cites
([n]) marked; an answer that says the passages do not hold the answer is reported as declined. The answer
is checked (``Retriever.check_answer``): one its passages do not support is reported as declined, and
where another passage holds clearly more of it than the one cited, it is printed again citing that one.
With ``retrieval.verify`` the model is then asked whether the passage the answer cites contains the answer
(``chat.verify_turn``); a "no" is reported as declined, or with ``retrieval.verify_retry`` the question is
answered again from the passage the model says does (``papertune.verify``). A model trained to quote
(``build.raft_quote``) writes the sentence it answers from first; the answer cites the passage that holds it.

Closed book (``--closed-book``, ``retrieval.grounded: false``): the question alone; ``--cite`` then lists
the passages retrieval finds for the question below the answer (the model did not see them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from papertune.chat import abstains, cited_numbers, render_prompt, split_quote
from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, InputError
from papertune.inference import Decoding, GenerationRequest, generate_batch, load_for_answering
from papertune.retrieval import Passage, Retriever
from papertune.verify import Settled, note_base_model, settle_answers

log = logging.getLogger(__name__)

EXIT_WORDS = {"exit", "quit", ":q"}
DECLINED = "(The model declined: the retrieved passages do not contain the answer.)"
CHECKED_NOTE = "Citations checked: another passage holds more of the answer than the one cited:"
CITED_NOTE = "Source added: the answer cited no passage; this one holds most of it:"
UNSUPPORTED = "(The retrieved passages do not support this answer: most of its words are in none of them.)"
NOT_VERIFIED = "(Asked whether passage [{n}] contains the answer, the model says no: declined.)"
RETRIED = ("(Asked whether passage [{n}] contains the answer, the model says no; it says passage [{m}] does. "
           "Answered again from it: {answer})")
QUOTE_NOT_FOUND = "(The quote is in none of the retrieved passages: it is not evidence for the answer.)"
RETRY_DECLINED = ("(Asked whether passage [{n}] contains the answer, the model says no; it says passage [{m}] "
                  "does, but its answer from it did not hold either: declined.)")


def generate_answer(model: Any, tokenizer: Any, question: str, system_prompt: str | None, *, max_new_tokens: int,
                    temperature: float = 0.0, stream: TextIO | None = None,
                    passages: Sequence[dict] | None = None) -> str:
    """One answer to ``question`` asked with the training prompt (with ``passages``: grounded in them), its
    text written to ``stream`` as it comes (then a newline); returns the whole answer."""
    ids = tokenizer(render_prompt(tokenizer, question, system_prompt, passages),
                    add_special_tokens=False)["input_ids"]

    def write(text: str) -> None:
        if stream is not None:
            stream.write(text)
            stream.flush()

    request = GenerationRequest(list(ids), Decoding(max_new_tokens=max_new_tokens, temperature=temperature),
                                on_text=write if stream is not None else None)
    answer = generate_batch(model, tokenizer, [request])[0].text
    write("\n")
    return answer


def format_sources(passages: Sequence[Passage], cited: Sequence[int], *, grounded: bool) -> str:
    """The passages as a numbered list (numbers as in the prompt) of documents, pages and sections; with
    ``grounded`` the ones the answer cites are marked."""
    if not passages:
        return "Sources: none (no passage was retrieved for the question)"
    if grounded:
        lines = ["Sources (* cited in the answer):"]
        lines += [f"{'*' if p.n in cited else ' '} [{p.n}] {p.label()}" for p in passages]
    else:
        lines = ["Sources (retrieved for the question; the closed-book answer did not use them):"]
        lines += [f"  [{p.n}] {p.label()} (score {p.score:.3f})" for p in passages]
    return "\n".join(lines)


def answer_note(text: str, settled: Settled) -> str | None:
    """What to print below a grounded answer streamed as the model wrote it (``text``): how the check and the
    model's verification changed it (:mod:`papertune.verify`), or that it declined; None: as streamed."""
    shown = settled.answer
    quote, _, text = split_quote(text)
    if quote is not None and settled.quote is None and settled.retry is None and not abstains(shown):
        return QUOTE_NOT_FOUND if shown == text else f"{QUOTE_NOT_FOUND}\n({CHECKED_NOTE} {shown})"
    if settled.retry is not None:
        return (RETRY_DECLINED if abstains(shown) else RETRIED).format(n=settled.verified, m=settled.retry["passage"],
                                                                       answer=shown)
    if settled.said_no:
        return NOT_VERIFIED.format(n=settled.verified)
    if shown != text:
        note = CHECKED_NOTE if cited_numbers(text) else CITED_NOTE
        return UNSUPPORTED if abstains(shown) else f"({note} {shown})"
    return DECLINED if abstains(text) else None


class Assistant:
    """A loaded model (and the retriever, when grounded or with ``cite``) answering one question after another."""

    def __init__(self, config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False,
                 cite: bool = False, max_new_tokens: int | None = None, temperature: float | None = None) -> None:
        self.config = config
        self.grounded = config.retrieval.grounded
        self.max_new_tokens = max_new_tokens or config.evaluate.max_new_tokens
        self.temperature = config.evaluate.temperature if temperature is None else temperature
        if self.max_new_tokens < 1 or self.temperature < 0:
            raise ConfigError("--max-new-tokens must be >= 1 and --temperature >= 0")
        # The retriever first: a missing chunks.jsonl fails before the model is loaded.
        self.retriever = (Retriever.for_run(Path(config.run_dir), config.retrieval)
                          if self.grounded or cite else None)
        loaded = load_for_answering(config, merged=merged, base_only=base_only)
        self.model, self.tokenizer, self.description = loaded.model, loaded.tokenizer, loaded.description
        self.tuned = loaded.tuned  # only the tuned model verifies its answers (papertune.verify)
        note_base_model(config, tuned=self.tuned)
        log.info("answering with %s (%s)", self.description,
                 f"grounded in {config.retrieval.top_k} passages" if self.grounded else "closed book")

    def answer(self, question: str, stream: TextIO | None = None) -> dict[str, Any]:
        """Answer ``question`` (streamed to ``stream``, then the sources); returns the model's answer, grounded
        the answer checked (``checked_answer``), the passages (``Passage.to_json``), the numbers the checked
        answer cites and whether it declined."""
        stream = sys.stdout if stream is None else stream
        passages = self.retriever.search(question) if self.retriever is not None else []
        text = generate_answer(self.model, self.tokenizer, question, self.config.build.system_prompt,
                               max_new_tokens=self.max_new_tokens, temperature=self.temperature, stream=stream,
                               passages=[p.chunk for p in passages] if self.grounded else None)
        record: dict[str, Any] = {"question": question, "answer": text, "grounded": self.grounded}
        checked = text
        if self.grounded:
            settled = settle_answers([question], [text], [passages], retriever=self.retriever,
                                     tokenizer=self.tokenizer, config=self.config, generate=self.generate,
                                     answer_decoding=Decoding(max_new_tokens=self.max_new_tokens,
                                                              temperature=self.temperature), tuned=self.tuned)[0]
            checked = record["checked_answer"] = settled.answer
            record.update({k: v for k, v in (("verify_reply", settled.verify_reply), ("retry", settled.retry),
                                             ("quote", settled.quote)) if v is not None})
            note = answer_note(text, settled)
            if note:
                stream.write(note + "\n")
        cited = [n for n in cited_numbers(checked) if 1 <= n <= len(passages)] if self.grounded else []
        abstained = self.grounded and abstains(checked)
        if self.retriever is not None:
            stream.write(format_sources(passages, cited, grounded=self.grounded) + "\n")
        stream.flush()
        return {**record, "passages": [p.to_json() for p in passages], "cited": cited, "abstained": abstained}

    def generate(self, prompts: list[str], decoding: Decoding) -> list[str]:
        """The model's texts for rendered prompts, in one batch (how :func:`settle_answers` asks it)."""
        requests = [GenerationRequest(list(self.tokenizer(p, add_special_tokens=False)["input_ids"]), decoding)
                    for p in prompts]
        return [c.text for c in generate_batch(self.model, self.tokenizer, requests)]


def ask(config: PapertuneConfig, question: str, *, stream: TextIO | None = None, **options: Any) -> dict[str, Any]:
    """Answer one question (streamed to ``stream``); returns :meth:`Assistant.answer`'s record."""
    if not question.strip():
        raise InputError("the question is empty")
    return Assistant(config, **options).answer(question, stream)


def chat(config: PapertuneConfig, lines: Iterable[str] | None = None, *, stream: TextIO | None = None,
         prompt: str | None = None, **options: Any) -> int:
    """Answer each line of ``lines`` until EOF or ``exit``; returns the number of questions answered.

    Each question is answered on its own (the model was trained on single-turn examples).
    """
    lines = sys.stdin if lines is None else lines
    stream = sys.stdout if stream is None else stream
    assistant = Assistant(config, **options)
    answered = 0
    if prompt:
        stream.write(prompt)
        stream.flush()
    for line in lines:
        question = line.strip()
        if question.lower() in EXIT_WORDS:
            break
        if question:
            assistant.answer(question, stream)
            answered += 1
        if prompt:
            stream.write(prompt)
            stream.flush()
    return answered

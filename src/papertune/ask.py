"""``papertune ask`` and ``papertune chat``: the tuned model answering, tokens streamed to the terminal.

The model is ``train.model`` with the LoRA adapter from ``RUN/train/adapter`` (or a merged folder or GGUF
file, or the base model alone). Questions go through the same chat template and system prompt
(``build.system_prompt``) as the training examples and are tokenized the same way (no added special
tokens), so the model sees exactly the prompt ids it was trained on. Greedy unless
``evaluate.temperature`` > 0.

``--cite`` retrieves the chunks of ``RUN/chunks.jsonl`` closest to the question with a sentence-
embedding index (``evaluate.embedding_model``, all-MiniLM by default) kept in ``RUN/index/``: built
once, reused, and rebuilt when ``chunks.jsonl`` or the embedding model changes. The passages are not
put into the prompt (the model was trained without them); they show the documents and pages the
answer rests on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, InputError
from papertune.index import ChunkIndex, format_citations
from papertune.inference import Decoding, GenerationRequest, generate_batch, load_for_answering

log = logging.getLogger(__name__)

EXIT_WORDS = {"exit", "quit", ":q"}


def generate_answer(model: Any, tokenizer: Any, question: str, system_prompt: str | None, *, max_new_tokens: int,
                    temperature: float = 0.0, stream: TextIO | None = None) -> str:
    """One answer to ``question`` asked with the training prompt, its text written to ``stream`` as it comes
    (then a newline); returns the whole answer."""
    from papertune.chat import render_prompt

    ids = tokenizer(render_prompt(tokenizer, question, system_prompt), add_special_tokens=False)["input_ids"]

    def write(text: str) -> None:
        if stream is not None:
            stream.write(text)
            stream.flush()

    request = GenerationRequest(list(ids), Decoding(max_new_tokens=max_new_tokens, temperature=temperature),
                                on_text=write if stream is not None else None)
    answer = generate_batch(model, tokenizer, [request])[0].text
    write("\n")
    return answer


class Assistant:
    """A loaded model (and, with ``cite``, the chunk index) answering one question after another."""

    def __init__(self, config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False,
                 cite: bool = False, top_k: int | None = None, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> None:
        self.config = config
        self.top_k = top_k or config.evaluate.cite_top_k
        self.max_new_tokens = max_new_tokens or config.evaluate.max_new_tokens
        self.temperature = config.evaluate.temperature if temperature is None else temperature
        if self.top_k < 1 or self.max_new_tokens < 1 or self.temperature < 0:
            raise ConfigError("--top-k and --max-new-tokens must be >= 1 and --temperature >= 0")
        # The index first: a missing chunks.jsonl fails before the model is loaded.
        self.index = (ChunkIndex.load_or_build(Path(config.run_dir), config.evaluate.embedding_model)
                      if cite else None)
        loaded = load_for_answering(config, merged=merged, base_only=base_only)
        self.model, self.tokenizer, self.description = loaded.model, loaded.tokenizer, loaded.description
        log.info("answering with %s", self.description)

    def answer(self, question: str, stream: TextIO | None = None) -> dict[str, Any]:
        stream = sys.stdout if stream is None else stream
        text = generate_answer(self.model, self.tokenizer, question, self.config.build.system_prompt,
                               max_new_tokens=self.max_new_tokens, temperature=self.temperature, stream=stream)
        result: dict[str, Any] = {"question": question, "answer": text, "sources": []}
        if self.index is not None:
            hits = self.index.search(question, self.top_k)
            result["sources"] = [{"chunk_id": c["id"], "source": c.get("source"), "page_start": c.get("page_start"),
                                  "page_end": c.get("page_end"), "section": c.get("section"), "score": s}
                                 for c, s in hits]
            stream.write(format_citations(hits) + "\n")
            stream.flush()
        return result


def ask(config: PapertuneConfig, question: str, *, stream: TextIO | None = None, **options: Any) -> dict[str, Any]:
    """Answer one question (streamed to ``stream``); returns the answer and, with ``cite``, its sources."""
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

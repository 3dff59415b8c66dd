"""The ``seq2seq`` generator: a question-generation model asks about answer spans picked from the chunk.

Answer spans come from simple heuristics over each sentence: the subject of a definition ("X is a
..."), a long form spelled by an acronym, a number with its unit ("100,000 steps", "28.4 BLEU"), or a
named term (LoRA, GPT-3 175B, Mixtral 8x7B). The model reads the chunk with the span highlighted, in the
format of valhalla/t5-base-qg-hl::

    generate question: ... <hl> 100,000 steps <hl> ... </s>

and writes a question; the pair is (question, span), so the answer is always a span of the chunk.
Spans come from different sentences, one per sentence, best kinds first. Sentences carrying instructions
planted for the model (see :mod:`papertune.injection`) are cut from the chunk before anything else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from papertune.config import PapertuneConfig
from papertune.errors import ConfigError
from papertune.generate.base import (
    Chunk,
    ChunkResult,
    Grounding,
    drop_injected,
    finish_question,
    normalise_question,
    take_pairs,
    tidy,
)
from papertune.generate.phrases import acronyms, good_subject, is_math_heavy, is_table_debris
from papertune.ingest.segment import get_splitter

log = logging.getLogger(__name__)

HIGHLIGHT = "<hl>"
PREFIX = "generate question: "
MAX_INPUT_TOKENS = 512
MAX_NEW_TOKENS = 48

_NUMBER_SPAN = re.compile(
    r"(?<![\w.$-])(?:about |over |up to |~)?\d+(?:,\d{3})*(?:\.\d+)?"
    r"(?:-[A-Za-z]+|\s?(?:%|x\b|×|[KMBT]\b|GB\b|MB\b))?"
    r"(?P<unit>\s(?!(?:and|or|of|the|in|to|for|with|on|at|by|a|an|is|are|was|were|as|than|that|which|so|but)\b)[A-Za-z][\w-]*)?"
)
_NAMED = re.compile(r"\b(?:[A-Z][\w.-]*[A-Z0-9][\w.-]*|[A-Za-z]+-\d[\w.]*)(?:\s(?:\d[\w.]*|[A-Z][\w-]*))*")


@dataclass
class Span:
    start: int  # character offsets in the chunk
    end: int
    priority: int

    def text(self, chunk: str) -> str:
        return chunk[self.start : self.end]


def _sentence_spans(text: str, segmenter: str) -> list[tuple[int, int]]:
    return [(a, b) for a, b in get_splitter(segmenter)(text) if text[a:b].strip()]


def _best_span(text: str, s_start: int, s_end: int) -> Span | None:
    """The best answer span of one sentence, or None if it has none worth asking about."""
    sentence = text[s_start:s_end]
    if len(sentence.split()) < 5 or is_math_heavy(sentence) or is_table_debris(sentence):
        return None
    found: list[Span] = []
    # "X is a/an/the ..." -> X
    m = re.match(r"^(?P<subj>[^,;:()]+?)\s+(?:is|are)\s+(?:a|an|the|one of)\s", sentence)
    if m and good_subject(m.group("subj")):
        found.append(Span(s_start + m.start("subj"), s_start + m.end("subj"), 0))
    # "Low-Rank Adaptation (LoRA)" -> the long form
    for short, long_form in acronyms(sentence):
        at = sentence.find(long_form)
        if at >= 0:
            found.append(Span(s_start + at, s_start + at + len(long_form), 1))
    # numbers with their unit
    for m in _NUMBER_SPAN.finditer(sentence):
        span = m.group(0).rstrip(" ,.")
        if re.fullmatch(r"(?:19|20)\d\d", span):
            continue  # a year alone is usually part of a citation
        with_unit = m.group("unit") is not None or not span.isdigit()
        found.append(Span(s_start + m.start(), s_start + m.start() + len(span), 2 if with_unit else 3))
    # named terms
    for m in _NAMED.finditer(sentence):
        if m.start() == 0 and " " not in m.group(0) and not re.search(r"[A-Z].*[A-Z]|\d", m.group(0)[1:]):
            continue  # just a capitalised first word
        found.append(Span(s_start + m.start(), s_start + m.end(), 3))
    found = [s for s in found if s.end - s.start >= 2 and len(text[s.start : s.end].split()) <= 8]
    if not found:
        return None
    return min(found, key=lambda s: (s.priority, s.start))


def answer_spans(text: str, n: int, segmenter: str = "nupunkt") -> list[Span]:
    """Up to ``n`` answer spans, each from a different sentence, best kinds first, in text order."""
    spans = [s for a, b in _sentence_spans(text, segmenter) if (s := _best_span(text, a, b)) is not None]
    chosen = sorted(spans, key=lambda s: (s.priority, s.start))[:n]
    return sorted(chosen, key=lambda s: s.start)


def highlight(text: str, span: Span) -> str:
    """The model input: the chunk with the answer span between <hl> markers."""
    return f"{PREFIX}{text[: span.start]}{HIGHLIGHT} {text[span.start : span.end]} {HIGHLIGHT}{text[span.end :]}"


class Seq2SeqGenerator:
    """Questions from a highlight-format question-generation model (``generate.seq2seq_model``)."""

    name = "seq2seq"

    def __init__(self, config: PapertuneConfig) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from papertune.models import resolve_model

        self.cfg = config.generate
        self.segmenter = config.ingest.segmenter
        self.model = self.cfg.seq2seq_model
        self.batch_size = self.cfg.seq2seq_batch_size
        name = resolve_model(self.cfg.seq2seq_model, "generate.seq2seq_model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.network = AutoModelForSeq2SeqLM.from_pretrained(name, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"generate.seq2seq_model={self.cfg.seq2seq_model!r} could not be loaded ({exc}). Use a local folder "
                f"holding a question-generation model such as valhalla/t5-base-qg-hl (safetensors weights), or a Hub "
                f"id with network access"
            ) from exc
        if self.tokenizer.convert_tokens_to_ids(HIGHLIGHT) in (None, self.tokenizer.unk_token_id):
            log.warning("generate.seq2seq_model %s has no %s token; it was not trained on highlighted answers",
                        self.cfg.seq2seq_model, HIGHLIGHT)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.network.to(self.device)
        self.network.eval()

    def questions(self, inputs: list[str]) -> list[str]:
        """One generated question per input, in order; batched."""
        import torch

        out: list[str] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = self.tokenizer(
                inputs[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=MAX_INPUT_TOKENS,
            ).to(self.device)
            with torch.inference_mode():
                generated = self.network.generate(
                    **batch,
                    max_new_tokens=MAX_NEW_TOKENS,
                    num_beams=self.cfg.seq2seq_num_beams,
                    early_stopping=self.cfg.seq2seq_num_beams > 1,
                )
            out.extend(t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return out

    def generate(self, chunks: list[Chunk]) -> Iterator[tuple[str, ChunkResult]]:
        jobs: list[tuple[int, str]] = []  # (chunk index, answer)
        inputs: list[str] = []
        results = {i: ChunkResult() for i in range(len(chunks))}
        groundings = [Grounding(chunk["text"], self.segmenter) for chunk in chunks]
        for index, grounding in enumerate(groundings):
            # The model reads the chunk without its injected sentences; each with an answer span counts as a drop.
            skipped = sum(bool(answer_spans(s, 1, self.segmenter)) for s in grounding.injected_sentences)
            if skipped:
                results[index].dropped["injection"] += skipped
            text = grounding.clean_text
            for span in answer_spans(text, self.cfg.pairs_per_chunk, self.segmenter):
                jobs.append((index, tidy(span.text(text))))
                inputs.append(highlight(text, span))
        generated = self.questions(inputs) if inputs else []
        per_chunk: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(chunks))}
        for (index, answer), question in zip(jobs, generated):
            question = finish_question(question.replace(HIGHLIGHT, " "))
            if len(question.split()) < 3:
                results[index].dropped["empty"] += 1
                continue
            if normalise_question(answer) and normalise_question(answer) in normalise_question(question):
                results[index].dropped["answer_in_question"] += 1
                continue
            per_chunk[index].append((question, answer))
        for index, chunk in enumerate(chunks):
            pairs = drop_injected(per_chunk[index], groundings[index], results[index])
            take_pairs(pairs, self.cfg.pairs_per_chunk, results[index])
            yield chunk["id"], results[index]

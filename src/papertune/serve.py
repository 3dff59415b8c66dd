"""``papertune serve``: the tuned model behind an OpenAI-compatible HTTP API, with a web chat page.

Endpoints (errors are OpenAI-style JSON, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx
status for a bad request and 5xx when the server cannot answer):

- ``GET /v1/models``, ``GET /v1/models/{id}``: the one model served (id ``serve.model_name``).
- ``POST /v1/chat/completions``: chat completions with and without ``stream`` (server-sent events,
  ``data: {chat.completion.chunk}`` lines, then ``data: [DONE]``); honours ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature`` (0 = greedy), ``top_p``, ``stop``, ``seed`` and
  ``stream_options.include_usage``. Non-standard: the response (when streaming, its first chunk) carries
  ``papertune_citations``, the chunks of ``RUN/chunks.jsonl`` closest to the question (document, pages,
  section, score), as ``papertune ask --cite`` lists them.
- ``POST /v1/citations`` with ``{"query": ..., "top_k": k}``: those chunks alone.
- ``GET /health``: the model, the queue and counters.
- ``GET /``: a chat page; ``/?q=QUESTION`` asks on load.

A single user message is rendered exactly like ``papertune ask`` renders a question (``chat.render_prompt``
with ``build.system_prompt``: the training prompt), and the defaults (``evaluate.max_new_tokens``,
``evaluate.temperature``) are ask's, so a greedy answer here is ask's answer. A system message from the
client replaces ``build.system_prompt``; earlier turns go through the model's chat template (the model was
trained on single turns).

One worker thread owns the model and takes requests from a queue. Greedy requests waiting together,
streamed or not, are generated in one left-padded batch (up to ``serve.max_batch_size``; each gets the
answer it gets alone, as evaluate's batched answers do); sampling requests run one at a time, so that a
``seed`` reproduces an answer. A client that disconnects cancels its request: it leaves the queue, or its
row stops after the next token while the rest of its batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, InputError, PapertuneError

log = logging.getLogger(__name__)

CHAT_PAGE = "chat.html"
MAX_MESSAGES = 256
MAX_STOP_SEQUENCES = 4
RECENT_JOBS = 16  # finished requests listed in /health


# --- errors ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the server refuses or cannot answer; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# --- requests --------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """A validated ``/v1/chat/completions`` body."""

    system: str | None  # the client's system message; None: build.system_prompt
    conversation: list[dict[str, str]]  # user/assistant turns, the last one the user's question
    max_tokens: int | None  # None: evaluate.max_new_tokens (clamped to the context left)
    temperature: float
    top_p: float | None
    stop: list[str]
    stream: bool
    include_usage: bool
    seed: int | None

    @property
    def question(self) -> str:
        return self.conversation[-1]["content"]


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts; only text can be answered
        texts = []
        for n, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid(f"{where}[{n}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                               "this model reads text only", where)
            texts.append(part["text"])
        return "\n".join(texts)
    raise _invalid(f"{where} must be a string or a list of text parts", where)


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _invalid(f"{name} must be a number between {low:g} and {high:g}; got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _invalid(f"{name} must be an integer {bound}; got {value!r}", name)
    return value


def parse_chat_request(body: Any, *, model_name: str, default_temperature: float, max_tokens_limit: int) -> ChatRequest:
    """Check a decoded request body; an ``ApiError`` (400/404) names the offending field."""
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", None)
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_name!r} (GET /v1/models)",
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise _invalid(f"messages holds {len(messages)} messages; at most {MAX_MESSAGES}", "messages")
    system_parts: list[str] = []
    conversation: list[dict[str, str]] = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise _invalid(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _invalid(f"{where}.role must be system, user or assistant; got {role!r}", f"{where}.role")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        text = _message_text(content, f"{where}.content")
        if role in ("system", "developer"):
            if conversation:
                raise _invalid(f"{where}: system messages must come before the conversation", f"{where}.role")
            system_parts.append(text)
        else:
            conversation.append({"role": role, "content": text})
    if not conversation or conversation[-1]["role"] != "user":
        raise _invalid("the last message must be the user's question", "messages")
    if not conversation[-1]["content"].strip():
        raise _invalid("the question (the last user message) is empty", f"messages[{len(messages) - 1}].content")

    max_tokens = _integer(body, "max_tokens", 1, max_tokens_limit)
    max_completion = _integer(body, "max_completion_tokens", 1, max_tokens_limit)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise _invalid("max_tokens and max_completion_tokens differ; give one", "max_completion_tokens")
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise _invalid("top_p must be > 0", "top_p")
    n = _integer(body, "n", 1)
    if n is not None and n != 1:
        raise _invalid("only n=1 is supported", "n")

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _invalid("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
        raise _invalid(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings", "stop")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid(f"stream must be true or false; got {stream!r}", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise _invalid("stream_options must be {\"include_usage\": true|false}", "stream_options")
        if not stream:
            raise _invalid("stream_options is only allowed with stream: true", "stream_options")
        include_usage = options.get("include_usage", False)
    seed = _integer(body, "seed", 0, 2**63 - 1)
    return ChatRequest(system="\n\n".join(system_parts) if system_parts else None, conversation=conversation,
                       max_tokens=max_tokens if max_tokens is not None else max_completion,
                       temperature=default_temperature if temperature is None else temperature, top_p=top_p,
                       stop=stops, stream=stream, include_usage=include_usage, seed=seed)


def render_conversation(tokenizer: Any, request: ChatRequest, default_system: str | None) -> str:
    """The prompt text: ask's (training's) prompt for a single question, the chat template for longer talks."""
    from papertune.chat import render_prompt

    system = default_system if request.system is None else request.system
    if len(request.conversation) == 1:
        return render_prompt(tokenizer, request.question, system)
    messages = ([{"role": "system", "content": system}] if system else []) + request.conversation
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --- generation ------------------------------------------------------------------------------------


@dataclass
class Completion:
    text: str
    finish_reason: str  # stop (end of turn or a stop string), length, cancelled
    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False)
class Job:
    """One request for the generation worker. The callbacks run on the worker thread."""

    prompt_ids: list[int]
    max_new_tokens: int
    on_done: Callable[[Completion | None, ApiError | None], None]
    on_text: Callable[[str], None] | None = None  # set for streaming: called with each new piece of text
    temperature: float = 0.0
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batchable(self) -> bool:
        return self.temperature == 0

    def cancel(self) -> None:
        self.cancelled.set()


def _stop_position(text: str, stops: list[str]) -> int:
    positions = [p for p in (text.find(s) for s in stops) if p >= 0]
    return min(positions) if positions else -1


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not shown yet)."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


class _Row:
    """Generation state of one job in a batch."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.length: int | None = None  # tokens kept, once the row is finished by us
        self.reason: str | None = None
        self.shown = ""  # text already streamed

    def visible_text(self, text: str, final: bool) -> str:
        """What may be streamed of the decoded ``text``: stripped like the final answer, without a stop
        string, and (until the end) without a trailing partial character, whitespace or stop-string start."""
        position = _stop_position(text, self.job.stop)
        if position >= 0:
            text = text[:position]
        elif not final and self.job.stop:
            text = text[:len(text) - _held_back(text, self.job.stop)]
        text = text.lstrip()
        return text.rstrip() if final else text.rstrip().rstrip("\ufffd").rstrip()


class _Watcher:
    """A stopping criterion called after every generated token: per-row token limits, cancellation, stop
    strings, and streaming of the text so far. Rows need their ids on the host only when they stream or
    have stop strings, so a plain greedy batch adds no device sync per token."""

    def __init__(self, rows: list[_Row], width: int, decode: Callable[[list[int]], str], eos_id: int | None) -> None:
        self.rows = rows
        self.width = width
        self.decode = decode
        self.eos_id = eos_id

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        watched = any(r.length is None and (r.job.on_text or r.job.stop) for r in self.rows)
        generated = input_ids[:, self.width:].tolist() if watched else None
        flags = []
        for index, row in enumerate(self.rows):
            job = row.job
            if row.length is None:
                if job.cancelled.is_set():
                    row.length, row.reason = step, "cancelled"
                elif generated is not None and (job.on_text or job.stop):
                    tokens = generated[index]
                    ended = tokens[-1] == self.eos_id
                    text = self.decode(tokens)
                    if ended or _stop_position(text, job.stop) >= 0:
                        row.length, row.reason = step, "stop"
                    elif job.on_text is not None:
                        visible = row.visible_text(text, final=False)
                        if len(visible) > len(row.shown) and visible.startswith(row.shown):
                            job.on_text(visible[len(row.shown):])
                            row.shown = visible
                if row.length is None and step >= job.max_new_tokens:
                    row.length, row.reason = step, "length"
            flags.append(row.length is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class GenerationWorker:
    """The one thread that runs the model, fed by a queue of jobs."""

    def __init__(self, model: Any, tokenizer: Any, tokenizer_lock: threading.Lock, *, max_batch_size: int,
                 batch_wait_s: float, max_queue: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_lock = tokenizer_lock
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = {"requests": 0, "cancelled": 0, "errors": 0, "batches": 0, "largest_batch": 0,
                      "completion_tokens": 0}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_JOBS)

    # -- life cycle --

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="papertune-generation", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            for job in self._running:
                job.cancel()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        for job in pending:
            self._fail(job, ApiError(503, "the server is shutting down", type="server_error"))
        if thread is not None:
            thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", type="server_error")
            if len(self._pending) >= self.max_queue:
                raise ApiError(503, f"the server is busy: {len(self._pending)} requests are waiting "
                               "(serve.max_queue); try again shortly", type="server_error", code="queue_full")
            self._pending.append(job)
            self._cond.notify_all()
        if self._thread is None:
            self.start()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._pending), "running": len(self._running), **self.stats,
                    "recent": list(self.recent)}

    # -- the worker thread --

    def _take(self) -> list[Job] | None:
        """The next job, and with a batchable one the batchable jobs waiting behind it; None to stop."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._pending.popleft()
            if first.cancelled.is_set():
                self._finish_cancelled(first)
                return []
            batch = [first]
            if first.batchable and self.max_batch_size > 1:
                deadline = time.monotonic() + self.batch_wait_s
                while (sum(j.batchable for j in self._pending) < self.max_batch_size - 1
                       and (left := deadline - time.monotonic()) > 0 and not self._stopping):
                    self._cond.wait(left)
                kept: deque[Job] = deque()
                for job in self._pending:
                    if job.batchable and not job.cancelled.is_set() and len(batch) < self.max_batch_size:
                        batch.append(job)
                    else:
                        kept.append(job)
                self._pending = kept
            self._running = batch
            return batch

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            try:
                self._generate(jobs)
            except Exception as exc:  # a failed batch fails its requests, not the server
                log.exception("generation failed for %d request(s)", len(jobs))
                with self._cond:
                    self.stats["errors"] += len(jobs)
                for job in jobs:
                    self._fail(job, ApiError(500, f"generation failed: {type(exc).__name__}: {exc}",
                                             type="server_error"))
            finally:
                with self._cond:
                    self._running = []

    def _fail(self, job: Job, error: ApiError) -> None:
        try:
            job.on_done(None, error)
        except Exception:  # the client's side is gone; nothing left to tell
            log.debug("could not report an error to request %s", job.id, exc_info=True)

    def _finish_cancelled(self, job: Job) -> None:
        self.stats["cancelled"] += 1
        self.recent.append({"id": job.id, "finish_reason": "cancelled", "completion_tokens": 0,
                            "max_tokens": job.max_new_tokens})
        log.info("request %s cancelled before it started (client gone)", job.id)

    def _decode(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _generate(self, jobs: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        tokenizer = self.tokenizer
        device = next(self.model.parameters()).device
        width = max(len(j.prompt_ids) for j in jobs)
        pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        input_ids = torch.full((len(jobs), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):  # left padding: every prompt ends where generation starts
            n = len(job.prompt_ids)
            input_ids[row, width - n:] = torch.tensor(job.prompt_ids, dtype=torch.long)
            attention_mask[row, width - n:] = 1
        rows = [_Row(job) for job in jobs]
        sampling = jobs[0].temperature > 0  # sampling jobs run alone
        watcher = _Watcher(rows, width, self._decode, eos_id)
        kwargs: dict[str, Any] = {"max_new_tokens": max(j.max_new_tokens for j in jobs), "pad_token_id": pad_id,
                                  "eos_token_id": eos_id, "do_sample": sampling,
                                  "stopping_criteria": StoppingCriteriaList([watcher])}
        if sampling:
            kwargs["temperature"] = jobs[0].temperature
            if jobs[0].top_p is not None:
                kwargs["top_p"] = jobs[0].top_p
            if jobs[0].seed is not None:
                torch.manual_seed(jobs[0].seed)
        else:  # greedy, as papertune ask: no sampling defaults from the model's generation config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self._cond:
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        started = time.monotonic()
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                         **kwargs)
        generated = output[:, width:].tolist()
        elapsed = time.monotonic() - started
        for index, row in enumerate(rows):
            self._complete(row, generated[index])
        log.debug("batch of %d: %.2fs", len(jobs), elapsed)

    def _complete(self, row: _Row, tokens: list[int]) -> None:
        job = row.job
        tokens = tokens[:row.length if row.length is not None else job.max_new_tokens]
        reason = row.reason
        eos_id = self.tokenizer.eos_token_id
        if eos_id in tokens:  # ended its turn (later tokens are padding)
            tokens = tokens[:tokens.index(eos_id) + 1]
            reason = reason if reason == "cancelled" else "stop"
        raw = self._decode(tokens)
        if _stop_position(raw, job.stop) >= 0:
            reason = "stop"
        if reason is None:
            reason = "length" if len(tokens) >= job.max_new_tokens else "stop"
        text = row.visible_text(raw, final=True)  # the answer stripped, as papertune ask returns it
        if job.on_text is not None and reason != "cancelled":
            if text.startswith(row.shown):
                if len(text) > len(row.shown):
                    job.on_text(text[len(row.shown):])
            else:  # cannot happen with prefix-stable decoding; the streamed text stays as it was
                log.warning("request %s: streamed text is not a prefix of the final answer", job.id)
        completion = Completion(text=text, finish_reason=reason, prompt_tokens=len(job.prompt_ids),
                                completion_tokens=len(tokens))
        with self._cond:
            self.stats["requests"] += 1
            self.stats["completion_tokens"] += len(tokens)
            if reason == "cancelled":
                self.stats["cancelled"] += 1
            self.recent.append({"id": job.id, "finish_reason": reason, "completion_tokens": len(tokens),
                                "max_tokens": job.max_new_tokens})
        if reason == "cancelled":
            log.info("request %s cancelled after %d tokens (client gone)", job.id, len(tokens))
        try:
            job.on_done(completion, None)
        except Exception:
            log.debug("request %s finished after its client left", job.id, exc_info=True)


# --- the service -----------------------------------------------------------------------------------


def _context_length(model: Any, tokenizer: Any) -> int | None:
    config = getattr(model, "config", None)
    lengths = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    lengths = [n for n in lengths if isinstance(n, int) and 0 < n < 10_000_000]  # tokenizers say 1e30 for "none"
    return min(lengths) if lengths else None


def _citation(chunk: dict, score: float, rank: int) -> dict[str, Any]:
    text = " ".join(str(chunk.get("text", "")).split())
    return {"index": rank, "chunk_id": chunk.get("id"), "source": chunk.get("source"), "title": chunk.get("title"),
            "section": chunk.get("section"), "page_start": chunk.get("page_start"),
            "page_end": chunk.get("page_end"), "score": round(float(score), 4),
            "excerpt": text if len(text) <= 300 else text[:297] + "..."}


class Service:
    """The loaded model, its tokenizer, the chunk index and the worker: what the HTTP handlers use."""

    def __init__(self, config: PapertuneConfig, model: Any, tokenizer: Any, description: str,
                 index: Any | None = None) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.description = description
        self.index = index
        self.model_name = config.serve.model_name
        self.created = int(time.time())
        self.context_length = _context_length(model, tokenizer)
        # Fast tokenizers are not safe to call from two threads at once (they change their own settings).
        self.tokenizer_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self.worker = GenerationWorker(model, tokenizer, self.tokenizer_lock,
                                       max_batch_size=config.serve.max_batch_size,
                                       batch_wait_s=config.serve.batch_wait_ms / 1000, max_queue=config.serve.max_queue)

    @classmethod
    def load(cls, config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False,
             cite: bool | None = None) -> Service:
        """The model as ``papertune ask`` loads it (base + adapter, ``merged`` or ``base_only``), and with
        ``cite`` (default ``serve.cite``) the chunk index; a ``PapertuneError`` when either cannot be had."""
        from papertune.ask import ChunkIndex, load_model

        cite = config.serve.cite if cite is None else cite
        index = None
        if cite:  # the index first: missing chunks fail before a large model is loaded
            run_dir = Path(config.run_dir)
            if not (run_dir / "chunks.jsonl").is_file():
                raise InputError(f"no chunks in {run_dir} for the citations: run `papertune ingest DOCS_DIR "
                                 f"--run-dir {run_dir}` first, or serve without citations (--no-cite)")
            if not config.evaluate.embedding_model:
                raise ConfigError("evaluate.embedding_model is empty; the citations need a sentence-transformers "
                                  "model (or serve with --no-cite)")
            index = ChunkIndex.load_or_build(run_dir, config.evaluate.embedding_model)
        model, tokenizer, description = load_model(config, merged=merged, base_only=base_only)
        return cls(config, model, tokenizer, description, index)

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "papertune",
                "papertune_description": self.description, "papertune_context_length": self.context_length,
                "papertune_citations": self.index is not None}

    def encode(self, request: ChatRequest) -> list[int]:
        text = render_conversation(self.tokenizer, request, self.config.build.system_prompt)
        with self.tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def completion_budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        """max_new_tokens for the request; a 400 when the prompt (and the asked-for answer) do not fit."""
        context = self.context_length
        if context is not None and prompt_tokens >= context:
            raise _invalid(f"the prompt is {prompt_tokens} tokens, but the model's context is {context} tokens; "
                           "ask a shorter question", "messages", "context_length_exceeded")
        if request.max_tokens is not None:
            if context is not None and prompt_tokens + request.max_tokens > context:
                raise _invalid(f"the model's context is {context} tokens, but {prompt_tokens + request.max_tokens} "
                               f"were asked for ({prompt_tokens} in the messages, {request.max_tokens} in the "
                               "completion); lower max_tokens or shorten the messages", "max_tokens",
                               "context_length_exceeded")
            return request.max_tokens
        budget = min(self.config.evaluate.max_new_tokens, self.config.serve.max_tokens)
        return budget if context is None else min(budget, context - prompt_tokens)

    def citations(self, query: str, top_k: int | None = None) -> list[dict[str, Any]] | None:
        if self.index is None:
            return None
        with self._index_lock:  # the embedder's tokenizer, like the model's, is not thread-safe
            hits = self.index.search(query, top_k or self.config.evaluate.cite_top_k)
        return [_citation(chunk, score, rank) for rank, (chunk, score) in enumerate(hits, start=1)]


# --- HTTP ------------------------------------------------------------------------------------------


async def _read_json(request: Any, limit: int) -> Any:
    length = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is larger than {limit} bytes (serve.max_request_bytes)",
                         code="request_too_large")
    if length is not None:
        try:
            if int(length) > limit:
                raise too_large
        except ValueError:
            raise _invalid("bad Content-Length header", None) from None
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    if not body.strip():
        raise _invalid("the request body is empty; send a JSON object", None)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"the request body is not valid JSON: {exc}", None) from None


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"  # ASCII: no character in an answer can break an event line


def _chunk(job: Job, model: str, created: int, delta: dict, finish_reason: str | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"id": job.id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}


def _usage(completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def create_app(config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False,
               cite: bool | None = None, service: Service | None = None) -> Any:
    """The ASGI app (Starlette): loads the model (or uses ``service``); the worker runs while the app does."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    service = service or Service.load(config, merged=merged, base_only=base_only, cite=cite)
    settings = config.serve
    page = resources.files("papertune").joinpath("data", CHAT_PAGE).read_text(encoding="utf-8")

    class EventStream(StreamingResponse):
        """Server-sent events that cancel their job when the client goes away, whatever the ASGI version."""

        def __init__(self, content: Any, job: Job) -> None:
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.job = job

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            import anyio

            try:
                async with anyio.create_task_group() as group:
                    async def stream() -> None:
                        with contextlib.suppress(OSError):  # ASGI 2.4 servers raise on send to a gone client
                            await self.stream_response(send)
                        group.cancel_scope.cancel()

                    group.start_soon(stream)
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()
            finally:
                self.job.cancel()  # no-op once it finished

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [service.model_card()]})

    async def model(request: Request) -> Response:
        if request.path_params["model"] != service.model_name:
            raise ApiError(404, f"the model {request.path_params['model']!r} does not exist", param="model",
                           code="model_not_found")
        return JSONResponse(service.model_card())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": service.model_name, "description": service.description,
                             **service.worker.status()})

    async def index_page(request: Request) -> Response:
        return HTMLResponse(page)

    async def citations(request: Request) -> Response:
        body = await _read_json(request, settings.max_request_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
            raise _invalid("send {\"query\": \"...\"} with a non-empty query", "query")
        top_k = _integer(body, "top_k", 1, 100)
        if service.index is None:
            raise ApiError(404, "this server runs without citations (started with --no-cite)",
                           code="citations_disabled")
        data = await run_in_threadpool(service.citations, body["query"], top_k)
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request, settings.max_request_bytes)
        chat = parse_chat_request(body, model_name=service.model_name,
                                  default_temperature=config.evaluate.temperature, max_tokens_limit=settings.max_tokens)
        prompt_ids = await run_in_threadpool(service.encode, chat)
        max_new_tokens = service.completion_budget(chat, len(prompt_ids))
        sources = await run_in_threadpool(service.citations, chat.question)
        extra = {} if sources is None else {"papertune_citations": sources}
        loop = asyncio.get_running_loop()
        created = int(time.time())

        if chat.stream:
            events: asyncio.Queue = asyncio.Queue()

            def post(kind: str, value: Any) -> None:  # worker thread -> event loop
                with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
                    loop.call_soon_threadsafe(events.put_nowait, (kind, value))

            job = Job(prompt_ids, max_new_tokens, on_text=lambda text: post("text", text),
                      on_done=lambda result, error: post("done", (result, error)), temperature=chat.temperature,
                      top_p=chat.top_p, stop=chat.stop, seed=chat.seed)
            service.worker.submit(job)

            async def stream() -> Any:
                yield _sse(_chunk(job, service.model_name, created, {"role": "assistant", "content": ""}, **extra))
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        yield _sse(_chunk(job, service.model_name, created, {"content": value}))
                        continue
                    result, error = value
                    if error is not None:
                        yield _sse(error.body())
                    else:
                        yield _sse(_chunk(job, service.model_name, created, {}, result.finish_reason))
                        if chat.include_usage:
                            yield _sse({"id": job.id, "object": "chat.completion.chunk", "created": created,
                                        "model": service.model_name, "choices": [], "usage": _usage(result)})
                    break
                yield "data: [DONE]\n\n"

            return EventStream(stream(), job)

        done: asyncio.Future = loop.create_future()

        def resolve(result: Completion | None, error: ApiError | None) -> None:
            if not done.done():
                done.set_result((result, error))

        job = Job(prompt_ids, max_new_tokens, on_done=lambda r, e: loop.call_soon_threadsafe(resolve, r, e),
                  temperature=chat.temperature, top_p=chat.top_p, stop=chat.stop, seed=chat.seed)
        service.worker.submit(job)
        try:
            while not done.done():
                await asyncio.wait([done], timeout=0.5)
                if not done.done() and await request.is_disconnected():
                    job.cancel()
                    return Response(status_code=499)  # nobody reads it; the log shows what happened
        finally:
            if not done.done():
                job.cancel()
        result, error = done.result()
        if error is not None:
            raise error
        return JSONResponse({
            "id": job.id, "object": "chat.completion", "created": created, "model": service.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                         "finish_reason": result.finish_reason}],
            "usage": _usage(result), **extra,
        })

    async def api_error(request: Request, exc: ApiError) -> Response:
        log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        service.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.worker.stop)

    app = Starlette(
        routes=[
            Route("/", index_page, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/citations", citations, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


# --- running it ------------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not listening yet); a clear error when the address is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"serve.host={host!r} is not an address this machine has ({exc})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"serve.port: cannot listen on {host}:{port} ({exc.strerror}); is another server running "
                          "there? Pick another port with --port") from exc
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: Any, *, access_log: bool) -> Any:
    import uvicorn

    # log_config=None: uvicorn's loggers go through papertune's logging setup.
    return uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=access_log, timeout_graceful_shutdown=10))


@contextlib.contextmanager
def serve_in_background(app: Any, host: str = "127.0.0.1", port: int = 0, *,
                        startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``app`` from a thread (port 0: a free one) while the block runs; yields the base URL."""
    sock = bind_socket(host, port)
    server = _uvicorn_server(app, access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="papertune-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise PapertuneError("the server did not start; see the log above")
        time.sleep(0.02)
    try:
        yield _url(sock)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def run(config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False,
        cite: bool | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    settings = config.serve
    sock = bind_socket(settings.host, settings.port)  # first: a taken port fails before the model loads
    try:
        app = create_app(config, merged=merged, base_only=base_only, cite=cite)
        url = _url(sock)
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s: anyone who can reach this address can use the model (no authentication)",
                        settings.host)
        log.info("chat page at %s/ ; OpenAI-compatible API at %s/v1 (model %r)", url, url, settings.model_name)
        server = _uvicorn_server(app, access_log=True)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then raises the signal again for the handler
        # that was there before: make that one quiet, so stopping the server is a normal exit (code 0).
        quiet = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None) if quiet else None
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            if quiet:
                signal.signal(signal.SIGTERM, previous)
        log.info("server stopped")
    finally:
        sock.close()

"""Answers from a loaded causal LM: one batched, streamable ``generate`` with one set of decoding settings.

Every part of papertune that makes a model write text (the teacher LLM's ``hf`` backend, evaluate, ask,
serve, export's checks) goes through :func:`generate_batch`:

- prompts are token ids, left-padded into one batch, so every prompt ends where generation starts and
  each greedy row gets the answer it gets alone;
- greedy (``temperature`` 0) drops the sampling defaults of the model's generation config; sampling
  rows of one batch share their settings (a ``seed`` seeds the whole batch);
- after every token a stopping criterion applies each row's own token limit, its stop strings and its
  cancel event, and streams the text so far to the row's ``on_text`` callback;
- the answer text is decoded without special tokens and stripped; streamed pieces add up to it.

:func:`generate` is the convenience for many prompts: sorted by length and cut into batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "cancelled")  # stop: end of turn or a stop string


@dataclass(frozen=True)
class Decoding:
    """How to continue a prompt: at most ``max_new_tokens`` tokens, greedy at ``temperature`` 0."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None  # sampling only
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(eq=False)
class GenerationRequest:
    """One prompt to continue. ``on_text`` (streaming) and ``cancel`` may be used from other threads."""

    prompt_ids: list[int]
    decoding: Decoding
    on_text: Callable[[str], None] | None = None  # called with each new piece of the answer's text
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Completion:
    """The answer to one request: its text (stripped, without a stop string) and the tokens generated."""

    text: str
    token_ids: list[int]  # the tokens kept: ends with the end-of-turn token when the model gave one
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    completion_tokens: int


def _stop_position(text: str, stops: Sequence[str]) -> int:
    positions = [p for p in (text.find(s) for s in stops) if p >= 0]
    return min(positions) if positions else -1


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not shown yet)."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


class _Row:
    """Generation state of one request in a batch."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.stop = request.decoding.stop
        self.length: int | None = None  # tokens kept, once the row is finished by us
        self.reason: str | None = None
        self.shown = ""  # text already streamed

    def visible_text(self, text: str, final: bool) -> str:
        """What may be streamed of the decoded ``text``: stripped like the final answer, without a stop
        string, and (until the end) without a trailing partial character, whitespace or stop-string start."""
        position = _stop_position(text, self.stop)
        if position >= 0:
            text = text[:position]
        elif not final and self.stop:
            text = text[:len(text) - _held_back(text, self.stop)]
        text = text.lstrip()
        return text.rstrip() if final else text.rstrip().rstrip("\ufffd").rstrip()


class _Watcher:
    """A stopping criterion called after every generated token: per-row token limits, cancellation, stop
    strings, and streaming of the text so far. Rows need their ids on the host only when they stream or
    have stop strings, so a plain greedy batch adds no device sync per token."""

    def __init__(self, rows: list[_Row], width: int, decode: Callable[[list[int]], str], eos_ids: set[int]) -> None:
        self.rows = rows
        self.width = width
        self.decode = decode
        self.eos_ids = eos_ids

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        watched = any(r.length is None and (r.request.on_text or r.stop) for r in self.rows)
        generated = input_ids[:, self.width:].tolist() if watched else None
        flags = []
        for index, row in enumerate(self.rows):
            request = row.request
            if row.length is None:
                if request.cancelled.is_set():
                    row.length, row.reason = step, "cancelled"
                elif generated is not None and (request.on_text or row.stop):
                    tokens = generated[index]
                    ended = tokens[-1] in self.eos_ids
                    text = self.decode(tokens)
                    if ended or _stop_position(text, row.stop) >= 0:
                        row.length, row.reason = step, "stop"
                    elif request.on_text is not None:
                        visible = row.visible_text(text, final=False)
                        if len(visible) > len(row.shown) and visible.startswith(row.shown):
                            request.on_text(visible[len(row.shown):])
                            row.shown = visible
                if row.length is None and step >= request.decoding.max_new_tokens:
                    row.length, row.reason = step, "length"
            flags.append(row.length is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def _eos_ids(eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def generate_batch(model: Any, tokenizer: Any, requests: Sequence[GenerationRequest], *,
                   eos_token_id: int | Sequence[int] | None = None,
                   tokenizer_lock: threading.Lock | None = None) -> list[Completion]:
    """Continue every request's prompt in one left-padded batch; one completion per request, in order.

    The requests may differ in prompt, token limit, stop strings and streaming; a batch is either all greedy
    or all sampling with the same temperature, top_p and seed. ``eos_token_id`` ends a turn (default: the
    tokenizer's); ``tokenizer_lock`` is held while decoding, for a tokenizer other threads also use.
    """
    import torch
    from transformers import StoppingCriteriaList

    if not requests:
        return []
    first = requests[0].decoding
    if any(r.decoding.greedy != first.greedy or (not first.greedy and (r.decoding.temperature, r.decoding.top_p,
           r.decoding.seed) != (first.temperature, first.top_p, first.seed)) for r in requests):
        raise ValueError("one batch is all greedy, or all sampling with the same temperature, top_p and seed")
    lock = tokenizer_lock if tokenizer_lock is not None else contextlib.nullcontext()

    def decode(tokens: list[int]) -> str:
        with lock:
            return tokenizer.decode(tokens, skip_special_tokens=True)

    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = _eos_ids(eos)
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    width = max(len(r.prompt_ids) for r in requests)
    # Left padding: every prompt ends where generation starts (padded cells are masked out).
    input_ids = torch.full((len(requests), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
    for row, request in enumerate(requests):
        n = len(request.prompt_ids)
        input_ids[row, width - n:] = torch.tensor(request.prompt_ids, dtype=torch.long)
        attention_mask[row, width - n:] = 1
    rows = [_Row(r) for r in requests]
    watcher = _Watcher(rows, width, decode, eos_ids)
    kwargs: dict[str, Any] = {"max_new_tokens": max(r.decoding.max_new_tokens for r in requests),
                              "pad_token_id": pad_id, "eos_token_id": eos, "do_sample": not first.greedy,
                              "stopping_criteria": StoppingCriteriaList([watcher])}
    if first.greedy:  # no sampling defaults from the model's generation config (no warnings, no surprises)
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs["temperature"] = first.temperature
        if first.top_p is not None:
            kwargs["top_p"] = first.top_p
        if first.seed is not None:
            torch.manual_seed(first.seed)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
    generated = output[:, width:].tolist()
    return [_complete(row, tokens, eos_ids, decode) for row, tokens in zip(rows, generated)]


def _complete(row: _Row, tokens: list[int], eos_ids: set[int], decode: Callable[[list[int]], str]) -> Completion:
    request = row.request
    limit = request.decoding.max_new_tokens
    tokens = tokens[:row.length if row.length is not None else limit]
    reason = row.reason
    end = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
    if end is not None:  # ended its turn (later tokens are padding)
        tokens = tokens[:end + 1]
        reason = reason if reason == "cancelled" else "stop"
    raw = decode(tokens)
    if _stop_position(raw, row.stop) >= 0:
        reason = "stop"
    if reason is None:
        reason = "length" if len(tokens) >= limit else "stop"
    text = row.visible_text(raw, final=True)
    if request.on_text is not None and reason != "cancelled":
        if text.startswith(row.shown):
            if len(text) > len(row.shown):
                request.on_text(text[len(row.shown):])
        else:  # cannot happen with prefix-stable decoding; the streamed text stays as it was
            log.warning("streamed text is not a prefix of the final answer")
    return Completion(text=text, token_ids=tokens, finish_reason=reason, prompt_tokens=len(request.prompt_ids),
                      completion_tokens=len(tokens))


def generate(model: Any, tokenizer: Any, prompts: Sequence[str | list[int]], decoding: Decoding, *,
             batch_size: int = 1, progress: str | None = None,
             eos_token_id: int | Sequence[int] | None = None) -> list[Completion]:
    """Completions of many prompts (text, tokenized without added special tokens, or token ids), in order.

    Longest prompts first, in batches of ``batch_size``: similar lengths waste less on padding, and the
    longest batch fails fast on memory. With sampling, ``decoding.seed`` seeds once, before the first batch.
    ``progress`` names a progress bar (none when None).
    """
    import torch
    from tqdm.auto import tqdm

    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) if isinstance(p, str) else list(p)
               for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    if not decoding.greedy and decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    per_batch = replace(decoding, seed=None)
    size = max(1, batch_size)
    results: list[Any] = [None] * len(encoded)
    with tqdm(total=len(order), desc=progress, unit="q", disable=progress is None) as bar:
        for start in range(0, len(order), size):
            index = order[start:start + size]
            done = generate_batch(model, tokenizer, [GenerationRequest(encoded[i], per_batch) for i in index],
                                  eos_token_id=eos_token_id)
            for i, completion in zip(index, done):
                results[i] = completion
            bar.update(len(index))
    return results

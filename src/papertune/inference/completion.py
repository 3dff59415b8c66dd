"""What one generation request is and how its answer is finished, whichever engine decodes it.

- :class:`Decoding`: how to continue a prompt (token limit, greedy or sampling, stop strings);
  :func:`request_seed`: a sampled request's own seed, from what it asks;
- :class:`GenerationRequest`: one prompt, its decoding, an optional streaming callback, a cancel event and an
  optional JSON schema its reply must follow;
- :class:`Completion`: the answer (text stripped, without a stop string) and the tokens generated;
- :class:`AnswerTracker`: the per-request bookkeeping both engines share (:mod:`.generation`'s static batches,
  :mod:`.continuous`'s continuous batching): stop strings, streaming of the text so far, and turning the
  generated tokens into a :class:`Completion`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from papertune.rundir import sha256_json

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

    def same_sampling(self, other: Decoding) -> bool:
        """Whether two requests can share one batch: both greedy, or sampling with the same settings."""
        if self.greedy or other.greedy:
            return self.greedy == other.greedy
        return (self.temperature, self.top_p, self.seed) == (other.temperature, other.top_p, other.seed)


def request_seed(request: Any, seed: int = 0) -> int:
    """The seed one sampled request is sent with: from what it asks (a conversation, prompt token ids) and the
    call's ``seed``. The same request draws from the same random stream on every run, whatever else is in flight
    beside it or in which order the requests go out (an engine that batches requests together can still move a
    near-tie with what shares its batch); a caller asking the same thing again passes another ``seed``."""
    return int(sha256_json([request, seed])[:8], 16) & 0x7FFFFFFF


@dataclass(eq=False)
class GenerationRequest:
    """One prompt to continue. ``on_text`` (streaming) and ``cancel`` may be used from other threads.
    ``json_schema`` constrains the reply to that JSON Schema (papertune.inference.structured)."""

    prompt_ids: list[int]
    decoding: Decoding
    on_text: Callable[[str], None] | None = None  # called with each new piece of the answer's text
    cancelled: threading.Event = field(default_factory=threading.Event)
    json_schema: dict[str, Any] | None = None

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


def check_one_sampling(requests: Sequence[GenerationRequest]) -> None:
    """Requests decoded together are all greedy, or all sampling with the same temperature, top_p and seed."""
    first = requests[0].decoding
    if any(not r.decoding.same_sampling(first) for r in requests):
        raise ValueError("one batch is all greedy, or all sampling with the same temperature, top_p and seed")


def eos_id_set(eos_token_id: int | Sequence[int] | None) -> set[int]:
    """The end-of-turn token ids as a set (a generation config holds one id or a list)."""
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def decoder(tokenizer: Any, tokenizer_lock: threading.Lock | None = None) -> Callable[[list[int]], str]:
    """Token ids -> text without special tokens (holding ``tokenizer_lock``, for a tokenizer shared by threads)."""
    lock = tokenizer_lock if tokenizer_lock is not None else contextlib.nullcontext()

    def decode(tokens: list[int]) -> str:
        with lock:
            return tokenizer.decode(tokens, skip_special_tokens=True)

    return decode


def sampling_kwargs(decoding: Decoding) -> dict[str, Any]:
    """Generation settings for ``decoding``: greedy drops the model's sampling defaults (no warnings, no
    surprises); sampling sets its temperature and top_p."""
    if decoding.greedy:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    kwargs: dict[str, Any] = {"do_sample": True, "temperature": decoding.temperature}
    if decoding.top_p is not None:
        kwargs["top_p"] = decoding.top_p
    return kwargs


def stop_position(text: str, stops: Sequence[str]) -> int:
    """Where the first stop string starts in ``text`` (-1: none)."""
    positions = [p for p in (text.find(s) for s in stops) if p >= 0]
    return min(positions) if positions else -1


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not shown yet)."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


class AnswerTracker:
    """Generation state of one request: when it ended (if an engine's step found out) and what was streamed.

    An engine calls :meth:`observe` with the tokens generated so far after a step (only needed when the request
    streams or has stop strings: :attr:`watched`), and :meth:`finish` with the final tokens.
    """

    def __init__(self, request: GenerationRequest, decode: Callable[[list[int]], str], eos_ids: set[int]) -> None:
        self.request = request
        self.stop = request.decoding.stop
        self.decode = decode
        self.eos_ids = eos_ids
        self.length: int | None = None  # tokens kept, once the request was ended by a step
        self.reason: str | None = None
        self.shown = ""  # text already streamed

    @property
    def watched(self) -> bool:
        """Whether the tokens must be looked at after every step (streaming, or stop strings to find)."""
        return self.length is None and (self.request.on_text is not None or bool(self.stop))

    def visible_text(self, text: str, final: bool) -> str:
        """What may be streamed of the decoded ``text``: stripped like the final answer, without a stop
        string, and (until the end) without a trailing partial character, whitespace or stop-string start."""
        position = stop_position(text, self.stop)
        if position >= 0:
            text = text[:position]
        elif not final and self.stop:
            text = text[:len(text) - _held_back(text, self.stop)]
        text = text.lstrip()
        return text.rstrip() if final else text.rstrip().rstrip("\ufffd").rstrip()

    def end(self, length: int, reason: str) -> None:
        self.length, self.reason = length, reason

    def observe(self, tokens: list[int]) -> bool:
        """Look at the tokens generated so far: end at the end of turn or a stop string, else stream the new
        text. True when the request has ended."""
        if self.length is not None:
            return True
        if not tokens:
            return False
        ended = tokens[-1] in self.eos_ids
        if not ended and not self.watched:
            return False
        text = self.decode(tokens)
        if ended or stop_position(text, self.stop) >= 0:
            self.end(len(tokens), "stop")
            return True
        if self.request.on_text is not None:
            visible = self.visible_text(text, final=False)
            if len(visible) > len(self.shown) and visible.startswith(self.shown):
                self.request.on_text(visible[len(self.shown):])
                self.shown = visible
        return False

    def finish(self, tokens: list[int]) -> Completion:
        """The completion from the generated ``tokens`` (cut at this request's end and token limit); streams
        the rest of the answer."""
        request = self.request
        limit = request.decoding.max_new_tokens
        tokens = tokens[:self.length if self.length is not None else limit]
        reason = self.reason
        end = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if end is not None:  # ended its turn (later tokens are padding)
            tokens = tokens[:end + 1]
            reason = reason if reason == "cancelled" else "stop"
        raw = self.decode(tokens)
        if stop_position(raw, self.stop) >= 0:
            reason = "stop"
        if reason is None:
            reason = "length" if len(tokens) >= limit else "stop"
        text = self.visible_text(raw, final=True)
        if request.on_text is not None and reason != "cancelled":
            if text.startswith(self.shown):
                if len(text) > len(self.shown):
                    request.on_text(text[len(self.shown):])
            else:  # cannot happen with prefix-stable decoding; the streamed text stays as it was
                log.warning("streamed text is not a prefix of the final answer")
        return Completion(text=text, token_ids=tokens, finish_reason=reason, prompt_tokens=len(request.prompt_ids),
                          completion_tokens=len(tokens))

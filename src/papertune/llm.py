"""Instruct models that write text for the pipeline: one interface, two backends.

- ``hf``: a local Hugging Face model in this process, batched generation.
- ``openai``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, papertune serve), with a
  concurrency limit, timeouts and retries with backoff.

Callers use ``make_chat_model(cfg, "generate.llm").chat(conversations)`` and get one reply per
conversation, in order.

Failures are :class:`papertune.errors.PapertuneError` subclasses with messages naming the setting:
:class:`LLMUnreachableError` (no server at ``base_url``; a config problem) and :class:`LLMRequestError`
(a request that still failed after the retries). Both carry ``replies``: the replies of the other
conversations of the same call that did finish (``None`` where not), so a caller can keep them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from papertune.config import LLMConfig
from papertune.errors import ConfigError, PapertuneError

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0


class ChatModel(Protocol):
    name: str

    def chat(
        self,
        conversations: Sequence[list[Message]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[str]:
        """One reply per conversation, in the same order."""
        ...


class LLMRequestError(PapertuneError):
    """A request to the model failed for good (after the retries, or with an error not worth retrying)."""

    def __init__(self, message: str, *, reason: str = "", replies: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.replies = replies


class LLMUnreachableError(ConfigError):
    """No server answers at the configured ``base_url``: a setting to fix (exit code 2), not a bad request."""

    def __init__(self, message: str, *, replies: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.reason = message
        self.replies = replies


def make_chat_model(cfg: LLMConfig, setting: str) -> ChatModel:
    """The backend ``cfg.backend`` names; ``setting`` (e.g. "generate.llm") names the config in errors."""
    if cfg.backend == "hf":
        return HFChatModel(cfg, setting)
    if cfg.backend == "openai":
        return OpenAIChatModel(cfg, setting)
    raise ConfigError(f"{setting}.backend must be 'hf' or 'openai', got {cfg.backend!r}")


# ---------------------------------------------------------------------------------------------
# hf: in-process generation


@functools.lru_cache(maxsize=2)
def _load_hf(spec: str, setting: str, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """Model and tokenizer, loaded once per process (generate and augment may share one model)."""
    from papertune.models import load_causal_lm

    model, tokenizer = load_causal_lm(spec, setting=setting, device=device, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"  # decoder-only batches: the prompts must end where generation starts
    return model, tokenizer


class HFChatModel:
    """A local causal LM with a chat template; batched, greedy at temperature 0."""

    def __init__(self, cfg: LLMConfig, setting: str) -> None:
        self.cfg = cfg
        self.setting = setting
        self.name = cfg.model
        self.model, self.tokenizer = _load_hf(cfg.model, f"{setting}.model", cfg.device, cfg.trust_remote_code)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"{setting}.model={cfg.model!r} has no chat template; use an instruct (chat) model such as "
                f"SmolLM2-135M-Instruct or Qwen2.5-*-Instruct"
            )

    def _encode(self, conversation: list[Message]) -> list[int]:
        prompt = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        # The template already holds every special token the model expects.
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def chat(
        self,
        conversations: Sequence[list[Message]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[str]:
        import torch

        if not conversations:
            return []
        max_new_tokens = max_new_tokens or self.cfg.max_new_tokens
        temperature = self.cfg.temperature if temperature is None else temperature
        encoded = [self._encode(c) for c in conversations]
        # Similar lengths in one batch waste less on padding; the longest batch first fails fast on memory.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        replies: list[str] = [""] * len(encoded)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            gen_kwargs["temperature"] = temperature
        bs = self.cfg.batch_size
        device = self.model.device
        for start in range(0, len(order), bs):
            index = order[start : start + bs]
            batch = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in index]}, padding=True, return_tensors="pt"
            )
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            with torch.inference_mode():
                output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
            new_tokens = output[:, input_ids.shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(index, texts):
                replies[i] = text.strip()
        return replies


# ---------------------------------------------------------------------------------------------
# openai: an OpenAI-compatible HTTP server


class _Attempt(Exception):
    """One failed attempt worth retrying; ``kind`` is connect, dropped, timeout, http or malformed."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_detail(response: Any) -> str:
    """The server's own error message where it sent one (OpenAI style), else the body's start."""
    try:
        data = response.json()
    except ValueError:
        return _excerpt(response.text or "")
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _excerpt(str(error["message"]))
        if isinstance(error, str):
            return _excerpt(error)
        if data.get("detail"):
            return _excerpt(str(data["detail"]))
    return _excerpt(response.text or "")


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, min(float(value), MAX_RETRY_AFTER_S))
    except ValueError:
        return None


class OpenAIChatModel:
    """``POST {base_url}/chat/completions``, ``cfg.concurrency`` requests at a time, with retries."""

    def __init__(self, cfg: LLMConfig, setting: str) -> None:
        import requests

        self._requests = requests
        self.cfg = cfg
        self.setting = setting
        self.name = cfg.model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._local = threading.local()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # Sessions keep connections alive; one per worker thread, as a Session is not meant to be shared.
    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        return session

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.cfg.concurrency, thread_name_prefix="papertune-llm"
                )
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _attempt(self, payload: dict[str, Any]) -> str:
        requests = self._requests
        try:
            response = self._session().post(self.url, json=payload, headers=self.headers, timeout=self.cfg.timeout_s)
        except requests.exceptions.ConnectTimeout as exc:
            raise _Attempt("connect", f"connection timed out ({type(exc).__name__})") from exc
        except requests.exceptions.Timeout as exc:
            raise _Attempt("timeout", f"no answer within {self.cfg.timeout_s:g} s ({self.setting}.timeout_s)") from exc
        except requests.exceptions.ConnectionError as exc:
            reason = str(exc.args[0]) if exc.args else type(exc).__name__
            lowered = reason.lower()
            if "refused" in lowered:
                raise _Attempt("connect", "connection refused") from exc
            if "failed to establish" in lowered or "resolve" in lowered or "name or service" in lowered:
                raise _Attempt("connect", f"cannot connect ({_excerpt(reason, 160)})") from exc
            # The server was reached but dropped the connection: worth a retry, but not "unreachable".
            raise _Attempt("dropped", f"connection dropped by the server ({_excerpt(reason, 160)})") from exc
        except requests.exceptions.RequestException as exc:
            raise _Attempt("connect", f"request failed ({type(exc).__name__}: {_excerpt(str(exc), 160)})") from exc

        status = response.status_code
        if status == 429 or status >= 500:
            raise _Attempt("http", f"HTTP {status}: {_error_detail(response)}", _retry_after(response))
        if status >= 400:
            hint = ""
            if status in (401, 403):
                hint = f" (set the API key in the environment variable {self.cfg.api_key_env}, {self.setting}.api_key_env)"
            elif status == 404:
                hint = (f" (check {self.setting}.base_url, usually ending in /v1, and that the server knows the "
                        f"model {self.cfg.model!r}, {self.setting}.model)")
            raise LLMRequestError(
                f"{self.setting}: {self.url} refused the request with HTTP {status}: {_error_detail(response)}{hint}",
                reason=f"HTTP {status}",
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise _Attempt("malformed", f"malformed response (not valid JSON): {_excerpt(response.text or '', 120)!r}") from exc
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise _Attempt("malformed", f"malformed response (no choices[0].message.content): {_excerpt(str(data), 120)}") from exc
        if content is not None and not isinstance(content, str):
            raise _Attempt("malformed", f"malformed response (content is {type(content).__name__}, not text)")
        return (content or "").strip()

    def _request(self, payload: dict[str, Any], abort: threading.Event | None = None) -> str | None:
        """The reply to one request, with retries; None if ``abort`` was set (another request failed)."""
        attempts = self.cfg.max_retries + 1
        last: _Attempt | None = None
        for attempt in range(attempts):
            if abort is not None and abort.is_set():
                return None
            if last is not None:
                delay = min(self.cfg.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                delay *= 1 + 0.25 * random.random()  # jitter: parallel retries do not arrive together
                if last.retry_after is not None:
                    delay = max(delay, last.retry_after)
                log.info("%s: %s; retry %d/%d in %.2f s", self.setting, last.reason, attempt, attempts - 1, delay)
                time.sleep(delay)
            try:
                return self._attempt(payload)
            except _Attempt as exc:
                last = exc
        assert last is not None
        if last.kind == "connect":
            raise LLMUnreachableError(
                f"{self.setting}.base_url={self.cfg.base_url!r}: no server answers at {self.url} ({last.reason}, "
                f"{attempts} attempt(s)). Start an OpenAI-compatible server there (vLLM, Ollama, llama.cpp "
                f"server), set {self.setting}.base_url to where one runs, or use {self.setting}.backend=hf to run "
                f"the model in this process"
            )
        raise LLMRequestError(
            f"{self.setting}: request to {self.url} failed after {attempts} attempt(s) "
            f"({self.setting}.max_retries={self.cfg.max_retries}): {last.reason}",
            reason=last.reason,
        )

    def chat(
        self,
        conversations: Sequence[list[Message]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[str]:
        if not conversations:
            return []
        max_new_tokens = max_new_tokens or self.cfg.max_new_tokens
        temperature = self.cfg.temperature if temperature is None else temperature
        payloads = [
            {"model": self.cfg.model, "messages": list(c), "max_tokens": max_new_tokens, "temperature": temperature,
             "stream": False}
            for c in conversations
        ]
        replies: list[str | None] = [None] * len(payloads)
        abort = threading.Event()  # set by the first request that fails for good: the rest are not sent

        def request(payload: dict[str, Any]) -> str | None:
            try:
                return self._request(payload, abort)
            except BaseException:
                abort.set()
                raise

        pool = self._pool()
        futures = {pool.submit(request, p): i for i, p in enumerate(payloads)}
        error: BaseException | None = None
        for future in concurrent.futures.as_completed(futures):
            try:
                replies[futures[future]] = future.result()
            except BaseException as exc:  # noqa: BLE001 - the first failure is raised after the others settle
                if error is None:
                    error = exc
        if error is not None:
            if isinstance(error, (LLMRequestError, LLMUnreachableError)):
                error.replies = replies
            raise error
        return [r if r is not None else "" for r in replies]

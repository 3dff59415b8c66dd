"""The server backends of :mod:`papertune.llm`: ``openai`` (any OpenAI-compatible server, or several: requests
spread over them, a concurrency limit, timeouts, retries with backoff, on another server when there is one)
and ``llamacpp`` (llama.cpp's server in this process on a GGUF file, asked exactly as ``openai`` asks a
server, with parallel slots and its prompt cache)."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from papertune.config import LLMConfig
from papertune.inference.completion import request_seed
from papertune.inference.llamacpp import LlamaCppServer
from papertune.llm_base import ChatModel, LLMRequestError, LLMUnreachableError, Message
from papertune.models import resolve_gguf

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0


# ---------------------------------------------------------------------------------------------
# openai: an OpenAI-compatible HTTP server


class _Attempt(Exception):
    """One failed attempt worth retrying; ``kind`` is connect, dropped, timeout, http or malformed."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


def _latest_per_server(failures: list[tuple[str, _Attempt]]) -> list[tuple[str, _Attempt]]:
    """Each server's last failure, in the order the servers were first tried."""
    latest: dict[str, _Attempt] = {}
    for base, exc in failures:
        latest[base] = exc
    return list(latest.items())


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


@functools.cache
def _warn_cut(setting: str, max_tokens: int | None) -> None:
    """Said once per setting: a reply was cut off, so a JSON reply is incomplete and may not parse."""
    log.warning("%s: a reply stopped at max_new_tokens=%s before it was complete; raise %s.max_new_tokens "
                "(or bound the reply, e.g. maxLength in its JSON schema)", setting, max_tokens, setting)


SET_ASIDE_AFTER = 2  # failed attempts in a row after which a server is set aside
SET_ASIDE_S = 30.0  # for this long; then it is tried again


class ServerPool:
    """The servers of ``base_url``: requests go round-robin to those not set aside; a server whose attempts
    fail ``SET_ASIDE_AFTER`` times in a row is set aside for ``SET_ASIDE_S`` seconds."""

    def __init__(self, base_urls: Sequence[str]) -> None:
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self._turn = 0
        self._failures = dict.fromkeys(self.base_urls, 0)
        self._aside_until = dict.fromkeys(self.base_urls, 0.0)
        self._lock = threading.Lock()

    def pick(self, avoid: Sequence[str] = ()) -> str:
        """The next server in turn, preferring ones not set aside and not in ``avoid`` (failed this request)."""
        with self._lock:
            now = time.monotonic()
            n = len(self.base_urls)
            ring = [self.base_urls[(self._turn + k) % n] for k in range(n)]
            self._turn = (self._turn + 1) % n
            usable = [u for u in ring if self._aside_until[u] <= now]
            for candidates in ([u for u in usable if u not in avoid], usable):
                if candidates:
                    return candidates[0]
            return min(ring, key=lambda u: self._aside_until[u])  # all set aside: the one back soonest

    def failed(self, base_url: str, reason: str, setting: str) -> None:
        with self._lock:
            self._failures[base_url] += 1
            if self._failures[base_url] >= SET_ASIDE_AFTER and len(self.base_urls) > 1:
                self._aside_until[base_url] = time.monotonic() + SET_ASIDE_S
                self._failures[base_url] = 0
                log.warning("%s: %s set aside for %.0f s after failing %d times in a row (%s)", setting, base_url,
                            SET_ASIDE_S, SET_ASIDE_AFTER, reason)

    def succeeded(self, base_url: str) -> None:
        with self._lock:
            self._failures[base_url] = 0


def endpoint(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


class OpenAIChatModel(ChatModel):
    """``POST {base_url}/chat/completions`` on each server of ``base_url``, ``cfg.concurrency`` requests at a
    time per server, with retries (on another server when there is one)."""

    def __init__(self, cfg: LLMConfig, setting: str) -> None:
        import requests

        self._requests = requests
        self.cfg = cfg
        self.setting = setting
        self.name = cfg.model
        self.servers = ServerPool(cfg.base_urls)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.max_in_flight = cfg.concurrency * len(cfg.base_urls)  # requests sent at once
        self.extra_body: dict[str, Any] = {}  # fields added to every request (server-specific options)
        self._local = threading.local()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The first server's chat endpoint (the only one of the llamacpp backend)."""
        return endpoint(self.servers.base_urls[0])

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
                    max_workers=self.max_in_flight, thread_name_prefix="papertune-llm"
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

    def _attempt(self, payload: dict[str, Any], url: str) -> str:
        requests = self._requests
        try:
            response = self._session().post(url, json=payload, headers=self.headers, timeout=self.cfg.timeout_s)
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
                f"{self.setting}: {url} refused the request with HTTP {status}: {_error_detail(response)}{hint}",
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
        if data["choices"][0].get("finish_reason") == "length":
            _warn_cut(self.setting, payload.get("max_tokens"))
        return (content or "").strip()

    def _request(self, payload: dict[str, Any], abort: threading.Event | None = None) -> str | None:
        """The reply to one request, with retries; None if ``abort`` was set (another request failed).

        A failed attempt is retried at once on a server this request has not failed on yet; once every
        server has failed it, each retry waits (exponential backoff with jitter, or the server's Retry-After).
        """
        attempts = max(self.cfg.max_retries + 1, len(self.servers.base_urls))
        failures: list[tuple[str, _Attempt]] = []
        for attempt in range(attempts):
            if abort is not None and abort.is_set():
                return None
            tried = [base for base, _ in failures]
            base = self.servers.pick(avoid=tried)
            if failures:
                last = failures[-1][1]
                if base in tried:
                    delay = min(self.cfg.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                    delay *= 1 + 0.25 * random.random()  # jitter: parallel retries do not arrive together
                    if last.retry_after is not None:
                        delay = max(delay, last.retry_after)
                else:
                    delay = 0.0
                log.info("%s: %s; retry %d/%d on %s in %.2f s", self.setting, last.reason, attempt, attempts - 1,
                         base, delay)
                time.sleep(delay)
            try:
                reply = self._attempt(payload, endpoint(base))
            except _Attempt as exc:
                failures.append((base, exc))
                self.servers.failed(base, exc.reason, self.setting)
                continue
            self.servers.succeeded(base)
            return reply
        last = failures[-1][1]
        if all(exc.kind == "connect" for _, exc in failures):
            raise self._unreachable(f"{last.reason}, {attempts} attempt(s)")
        where = "; ".join(f"{endpoint(base)}: {exc.reason}" for base, exc in _latest_per_server(failures))
        raise LLMRequestError(
            f"{self.setting}: request failed after {attempts} attempt(s) "
            f"({self.setting}.max_retries={self.cfg.max_retries}): {where}",
            reason=last.reason,
        )

    def _ready(self) -> None:
        """Called before the requests of each ``chat``: a backend that starts its server lazily does it here."""

    def _unreachable(self, reason: str) -> LLMUnreachableError:
        urls = ", ".join(endpoint(base) for base in self.servers.base_urls)
        return LLMUnreachableError(
            f"{self.setting}.base_url={self.cfg.base_url!r}: no server answers at {urls} ({reason}). Start an "
            f"OpenAI-compatible server there (vLLM, Ollama, llama.cpp server), set {self.setting}.base_url to "
            f"where one runs, or use {self.setting}.backend=llamacpp or hf to run the model in this process"
        )

    def replies(self, conversations: list[list[Message]], max_new_tokens: int, temperature: float,
                json_schema: dict[str, Any] | None, seed: int) -> list[str]:
        self._ready()
        payloads = [
            {"model": self.cfg.model, "messages": list(c), "max_tokens": max_new_tokens, "temperature": temperature,
             "stream": False, **self.extra_body}
            for c in conversations
        ]
        if temperature > 0:  # vLLM, SGLang, llama.cpp's server and OpenAI's API take a seed per request
            for payload, conversation in zip(payloads, conversations):
                payload["seed"] = request_seed(conversation, seed)
        if json_schema is not None:
            response_format = {"type": "json_schema",
                               "json_schema": {"name": "reply", "schema": json_schema, "strict": True}}
            for payload in payloads:
                payload["response_format"] = response_format
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


# ---------------------------------------------------------------------------------------------
# llamacpp: llama.cpp's server in this process, asked like any OpenAI-compatible server


class LlamaCppChatModel(OpenAIChatModel):
    """A GGUF file in llama.cpp, started on first use; ``cfg.parallel`` requests in flight, one per slot.

    Every request asks llama.cpp to keep its prompt cached (``cache_prompt``), so a system prompt and
    examples shared by all conversations are evaluated once per slot, not once per request.
    """

    def __init__(self, cfg: LLMConfig, setting: str) -> None:
        super().__init__(cfg, setting)
        self.max_in_flight = cfg.parallel
        self.extra_body = {"cache_prompt": True}
        self.server: LlamaCppServer | None = None
        self._start_lock = threading.Lock()

    def start(self) -> LlamaCppServer:
        """The running server, started here the first time (loading the model takes a few seconds)."""
        with self._start_lock:
            if self.server is None:
                path = resolve_gguf(self.cfg.model, f"{self.setting}.model")
                self.server = LlamaCppServer(path, n_ctx=self.cfg.context_length, n_parallel=self.cfg.parallel,
                                             threads=self.cfg.threads, setting=f"{self.setting}.model")
                self.servers = ServerPool([self.server.openai_base_url])
            return self.server

    def _unreachable(self, reason: str) -> LLMUnreachableError:
        return LLMUnreachableError(
            f"{self.setting}: llama.cpp's server in this process stopped answering at "
            f"{self.url} ({reason})"
        )

    def _ready(self) -> None:
        self.start()

    def close(self) -> None:
        """Finish the requests in flight, then stop the server (a later ``chat`` starts it again)."""
        super().close()
        with self._start_lock:
            if self.server is not None:
                self.server.close()
                self.server = None

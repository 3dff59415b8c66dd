"""Small OpenAI-compatible HTTP servers on 127.0.0.1 for the tests and benchmarks/bench_generate.py (stdlib
only).

- :class:`ChatServer` serves a :class:`papertune.llm.ChatModel` (e.g. the real SmolLM2 through the hf
  backend) at ``/v1/models`` and ``/v1/chat/completions`` (non-streaming). Requests that arrive together
  are answered with one batched ``chat`` call, the way vLLM and llama.cpp batch parallel requests, so
  client concurrency pays off as it would against a real server.
- :class:`FaultServer` answers ``/v1/chat/completions`` from a script of responses (delays, HTTP
  errors, malformed bodies, dropped connections) to test the client's timeouts and retries.

Both listen on a free port chosen by the OS; ``url`` is the base URL (``http://127.0.0.1:PORT/v1``).
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a scripted delay does not hold up shutdown
    allow_reuse_address = True


class _BaseServer:
    """Start on construction (or use as a context manager); ``close()`` stops it."""

    def __init__(self) -> None:
        handler = self._handler_class()
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send_json(handler: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(obj).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def _error(handler: BaseHTTPRequestHandler, status: int, message: str) -> None:
    _send_json(handler, status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})


def _read_json(handler: BaseHTTPRequestHandler) -> Any:
    length = int(handler.headers.get("Content-Length") or 0)
    return json.loads(handler.rfile.read(length) or b"null")


def completion(content: str, model: str, index: int = 0) -> dict[str, Any]:
    """An OpenAI chat.completion response body."""
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


# ---------------------------------------------------------------------------------------------
# a real model behind the API


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float | None
    done: threading.Event = field(default_factory=threading.Event)
    reply: str | None = None
    error: BaseException | None = None


class ChatServer(_BaseServer):
    """Serves ``chat_model``; concurrent requests are batched (up to ``max_batch``, waiting ``max_wait_s``)."""

    def __init__(self, chat_model: Any, *, model_name: str = "smollm2-135m-instruct", max_batch: int = 8,
                 max_wait_s: float = 0.02) -> None:
        self.chat_model = chat_model
        self.model_name = model_name
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.requests = 0
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._counter = itertools.count()
        self._worker = threading.Thread(target=self._loop, daemon=True)
        self._worker.start()
        super().__init__()

    def close(self) -> None:
        super().close()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            groups: dict[tuple[Any, Any], list[_Pending]] = defaultdict(list)
            for item in batch:
                groups[(item.max_tokens, item.temperature)].append(item)
            for (max_tokens, temperature), items in groups.items():
                self.batch_sizes.append(len(items))
                try:
                    replies = self.chat_model.chat([i.messages for i in items], max_new_tokens=max_tokens,
                                                   temperature=temperature)
                    for item, reply in zip(items, replies):
                        item.reply = reply
                except BaseException as exc:  # noqa: BLE001 - reported to the waiting request
                    for item in items:
                        item.error = exc
                for item in items:
                    item.done.set()

    def submit(self, messages: list[dict[str, str]], max_tokens: int | None, temperature: float | None) -> str:
        item = _Pending(messages, max_tokens, temperature)
        self._queue.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.reply or ""

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    _send_json(self, 200, {"object": "list", "data": [
                        {"id": server.model_name, "object": "model", "owned_by": "papertune-tests"}]})
                else:
                    _error(self, 404, f"no route {self.path}")

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    _error(self, 404, f"no route {self.path}")
                    return
                try:
                    body = _read_json(self)
                except ValueError:
                    _error(self, 400, "request body is not JSON")
                    return
                messages = body.get("messages") if isinstance(body, dict) else None
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages
                ):
                    _error(self, 400, "messages must be a list of {role, content}")
                    return
                if body.get("stream"):
                    _error(self, 400, "streaming is not supported by this test server")
                    return
                server.requests += 1
                try:
                    reply = server.submit(messages, body.get("max_tokens"), body.get("temperature"))
                except Exception as exc:  # noqa: BLE001
                    _error(self, 500, f"{type(exc).__name__}: {exc}")
                    return
                _send_json(self, 200, completion(reply, body.get("model") or server.model_name, next(server._counter)))

        return Handler


# ---------------------------------------------------------------------------------------------
# scripted faults


@dataclass
class Reply:
    """One scripted response. ``body`` is JSON-encoded unless it is a str or bytes (sent as is)."""

    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


def ok(content: str) -> Reply:
    return Reply(200, completion(content, "scripted"))


class FaultServer(_BaseServer):
    """Answers each chat request with the next scripted :class:`Reply` (the last one repeats).

    ``echo=True`` with an empty script answers with the last user message, so order can be checked.
    ``received`` holds (headers, body) of every request.
    """

    def __init__(self, script: Sequence[Reply] = (), *, echo: bool = False) -> None:
        self.script = list(script)
        self.echo = echo
        self.received: list[tuple[dict[str, str], Any]] = []
        self._lock = threading.Lock()
        super().__init__()

    def _next(self) -> Reply | None:
        with self._lock:
            index = len(self.received) - 1
            if not self.script:
                return None
            return self.script[min(index, len(self.script) - 1)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                try:
                    body = _read_json(self)
                except ValueError:
                    body = None
                with server._lock:
                    server.received.append((dict(self.headers), body))
                reply = server._next()
                if reply is None:
                    content = body["messages"][-1]["content"] if server.echo else "ok"
                    _send_json(self, 200, completion(content, "scripted"))
                    return
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(reply.body, (str, bytes)):
                    data = reply.body.encode() if isinstance(reply.body, str) else reply.body
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    try:
                        self.wfile.write(data)
                    except OSError:
                        pass  # the client gave up (timeout)
                    return
                try:
                    _send_json(self, reply.status, reply.body, reply.headers)
                except OSError:
                    pass

        return Handler

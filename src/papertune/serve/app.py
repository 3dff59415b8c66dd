"""The HTTP side of ``papertune serve``: the loaded :class:`Service`, the Starlette app and the server.

:func:`create_app` routes the endpoints (see :mod:`papertune.serve`) to the service and its generation
worker, behind the access checks of :mod:`.security`; :func:`run` serves until interrupted,
:func:`serve_in_background` from a thread (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from papertune.chat import abstains, cited_numbers
from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, InputError, PapertuneError
from papertune.inference import Completion, Decoding, GenerationRequest, load_for_answering
from papertune.retrieval import Passage, Retriever
from papertune.serve.protocol import (
    ApiError,
    ChatRequest,
    checked_text,
    completion_chunk,
    integer_field,
    invalid_request,
    parse_chat_request,
    read_json,
    render_conversation,
    sse,
    usage,
)
from papertune.serve.security import AccessGuard, resolve_api_key
from papertune.serve.worker import GenerationWorker, Job
from papertune.verify import note_base_model, settle_answers, verifies

log = logging.getLogger(__name__)

CHAT_PAGE = "chat.html"


def _context_length(model: Any, tokenizer: Any) -> int | None:
    config = getattr(model, "config", None)
    lengths = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    lengths = [n for n in lengths if isinstance(n, int) and 0 < n < 10_000_000]  # tokenizers say 1e30 for "none"
    return min(lengths) if lengths else None


def _shown_name(model: str) -> str:
    """A model as clients see it: a Hub id as it is, a local folder by its name (never its path)."""
    return Path(model).name if Path(model).exists() else model


def model_label(config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False) -> str:
    """What the server says it serves, in names, not paths (paths tell clients about the server's disk)."""
    if merged:
        return f"merged model {Path(merged).name}"
    base = _shown_name(config.train.model)
    if base_only:
        return f"base model {base}"
    if config.evaluate.adapter:
        return f"{base} + adapter {Path(config.evaluate.adapter).name}"
    return f"{base} + adapter of run {Path(config.run_dir).resolve().name}"


def citation(passage: Passage, cited: bool | None = None) -> dict[str, Any]:
    """A passage as ``papertune_citations`` lists it; ``cited``: whether the answer cites it ([n]), when known."""
    chunk = passage.chunk
    text = " ".join(str(chunk.get("text", "")).split())
    entry = {"index": passage.n, "chunk_id": chunk.get("id"), "source": chunk.get("source"),
             "title": chunk.get("title"), "section": chunk.get("section"), "page_start": chunk.get("page_start"),
             "page_end": chunk.get("page_end"), "score": round(passage.score, 4),
             "excerpt": text if len(text) <= 300 else text[:297] + "..."}
    return entry if cited is None else {**entry, "cited": cited}


def grounding(passages: list[Passage], answer: str, checked: str, retry: dict[str, Any] | None = None,
              quote: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a grounded answer adds to its response: its passages, each ``cited`` or not by the checked answer
    (``checked``: as :mod:`papertune.verify` settled it, given as ``papertune_checked_answer`` when it differs
    from the model's ``answer``), whether it declined (``papertune_abstained``: the passages do not hold the
    answer, as the model said or as the checks found), and with a retry (``retrieval.verify_retry``)
    ``papertune_retry``: the passage the question was answered again from, that answer, the model's reply; a
    model trained to quote (``build.raft_quote``) adds ``papertune_quote``: the passage its quote is in, and
    the quote (``papertune.verify.placed_quote``)."""
    cited = set(cited_numbers(checked))
    out = {"papertune_citations": [citation(p, p.n in cited) for p in passages],
           "papertune_abstained": abstains(checked)}
    if retry is not None:
        out["papertune_retry"] = retry
    if quote is not None:
        out["papertune_quote"] = quote
    return out if checked == answer else {**out, "papertune_checked_answer": checked}


class Service:
    """The loaded model, its tokenizer, the retriever and the worker: what the HTTP handlers use.

    ``grounded`` (``retrieval.grounded``): prompts hold the passages retrieved for the question; else the
    retriever (when there is one) only lists them as ``papertune_citations``."""

    def __init__(self, config: PapertuneConfig, model: Any, tokenizer: Any, description: str,
                 retriever: Retriever | None = None, *, tuned: bool = True) -> None:
        if config.retrieval.grounded and retriever is None:
            raise ConfigError("grounded answers need the retriever over RUN/chunks.jsonl; set retrieval.grounded: "
                              "false (serve --closed-book) to serve without it")
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.description = description
        self.retriever = retriever
        self.grounded = config.retrieval.grounded
        self.tuned = tuned  # the tuned model, not the base alone: it verifies its answers (papertune.verify)
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
        """The model as ``papertune ask`` loads it (base + adapter, ``merged`` or ``base_only``) and, when
        grounded or with ``cite`` (default ``serve.cite``), the retriever; a ``PapertuneError`` when either
        cannot be had."""
        cite = config.serve.cite if cite is None else cite
        retriever = None
        if config.retrieval.grounded or cite:  # the retriever first: missing chunks fail before the model loads
            run_dir = Path(config.run_dir)
            if not (run_dir / "chunks.jsonl").is_file():
                way_out = ("serve closed-book (--closed-book)" if config.retrieval.grounded
                           else "serve without citations (--no-cite)")
                raise InputError(f"no chunks in {run_dir} to retrieve passages from: run `papertune ingest DOCS_DIR "
                                 f"--run-dir {run_dir}` first, or {way_out}")
            retriever = Retriever.for_run(run_dir, config.retrieval)
        loaded = load_for_answering(config, merged=merged, base_only=base_only)
        log.info("loaded %s", loaded.description)  # the paths, for the operator's log only
        note_base_model(config, tuned=loaded.tuned)
        return cls(config, loaded.model, loaded.tokenizer, model_label(config, merged=merged, base_only=base_only),
                   retriever, tuned=loaded.tuned)

    def model_card(self) -> dict[str, Any]:
        """The ``/v1/models`` entry of the model served."""
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "papertune",
                "papertune_description": self.description, "papertune_context_length": self.context_length,
                "papertune_citations": self.retriever is not None, "papertune_grounded": self.grounded,
                "papertune_verifies": self.grounded and verifies(self.config, tuned=self.tuned)}

    def encode(self, request: ChatRequest, passages: list[Passage]) -> list[int]:
        """The prompt ids of a chat request, grounded in ``passages`` when the service is (no added special
        tokens: the template holds them)."""
        text = render_conversation(self.tokenizer, request, self.config.build.system_prompt,
                                   [p.chunk for p in passages] if self.grounded else None)
        with self.tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def completion_budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        """max_new_tokens for the request; a 400 when the prompt (and the asked-for answer) do not fit."""
        context = self.context_length
        if context is not None and prompt_tokens >= context:
            raise invalid_request(f"the prompt is {prompt_tokens} tokens, but the model's context is {context} tokens; "
                                  "ask a shorter question", "messages", "context_length_exceeded")
        if request.max_tokens is not None:
            if context is not None and prompt_tokens + request.max_tokens > context:
                asked = prompt_tokens + request.max_tokens
                raise invalid_request(f"the model's context is {context} tokens, but {asked} "
                                      f"were asked for ({prompt_tokens} in the messages, {request.max_tokens} in the "
                                      "completion); lower max_tokens or shorten the messages", "max_tokens",
                                      "context_length_exceeded")
            return request.max_tokens
        budget = min(self.config.evaluate.max_new_tokens, self.config.serve.max_tokens)
        return budget if context is None else min(budget, context - prompt_tokens)

    async def grounding(self, question: str, passages: list[Passage], answer: str,
                        decoding: Decoding) -> dict[str, Any]:
        """:func:`grounding` of a grounded answer to ``question``, settled as ask settles it
        (:func:`papertune.verify.settle_answers`: the retriever's check and, with ``retrieval.verify``, the
        model's own, through the worker; a retry answers with ``decoding``, the request's)."""
        settle = functools.partial(settle_answers, [question], [answer], [passages], retriever=self.retriever,
                                   tokenizer=self.tokenizer, config=self.config, generate=self.generate,
                                   answer_decoding=decoding, tuned=self.tuned)
        # The model's own check waits for the worker: off the event loop. The retriever's alone is quick.
        settled = (await asyncio.to_thread(settle) if verifies(self.config, tuned=self.tuned) else settle())[0]
        return grounding(passages, answer, settled.answer, settled.retry, settled.quote)

    def generate(self, prompts: list[str], decoding: Decoding) -> list[str]:
        """The model's texts for rendered prompts, each a job of the worker; waits for all of them (call it from
        a thread, never the event loop)."""
        with self.tokenizer_lock:
            ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        futures: list[concurrent.futures.Future] = []
        for prompt_ids in ids:
            future: concurrent.futures.Future = concurrent.futures.Future()
            futures.append(future)
            self.worker.submit(Job(GenerationRequest(list(prompt_ids), decoding),
                                   on_done=lambda r, e, f=future: f.set_exception(e) if e else f.set_result(r)))
        return [future.result().text for future in futures]

    def retrieve(self, query: str, top_k: int | None = None) -> list[Passage]:
        """The passages retrieval ranks first for ``query`` (``retrieval.top_k``); [] without the retriever."""
        if self.retriever is None:
            return []
        with self._index_lock:  # the embedder's tokenizer, like the model's, is not thread-safe
            return self.retriever.search(query, top_k)


def create_app(config: PapertuneConfig, *, merged: str | Path | None = None, base_only: bool = False,
               cite: bool | None = None, service: Service | None = None) -> Any:
    """The ASGI app (Starlette): loads the model (or uses ``service``); the worker runs while the app does.
    The access checks guard ``serve.host``; a ``ConfigError`` (before any model loads) when it needs a key
    that ``serve.api_key_env`` does not give."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    settings = config.serve
    api_key = resolve_api_key(settings)
    service = service or Service.load(config, merged=merged, base_only=base_only, cite=cite)
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
        body = await read_json(request, settings.max_request_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
            raise invalid_request("send {\"query\": \"...\"} with a non-empty query", "query")
        checked_text(body["query"], "query")
        top_k = integer_field(body, "top_k", 1, 100)
        if service.retriever is None:
            raise ApiError(404, "this server runs without citations (started with --closed-book --no-cite)",
                           code="citations_disabled")
        passages = await run_in_threadpool(service.retrieve, body["query"], top_k)
        return JSONResponse({"object": "list", "data": [citation(p) for p in passages]})

    async def chat_completions(request: Request) -> Response:
        body = await read_json(request, settings.max_request_bytes)
        chat = parse_chat_request(body, model_name=service.model_name,
                                  default_temperature=config.evaluate.temperature, max_tokens_limit=settings.max_tokens)
        passages = await run_in_threadpool(service.retrieve, chat.question)
        prompt_ids = await run_in_threadpool(service.encode, chat, passages)
        decoding = Decoding(max_new_tokens=service.completion_budget(chat, len(prompt_ids)),
                            temperature=chat.temperature, top_p=chat.top_p, seed=chat.seed, stop=tuple(chat.stop))
        # The passages come first (in the first streamed chunk); a grounded answer's last chunk, or its whole
        # response, says which of them it cites and whether it declined.
        extra = {"papertune_citations": [citation(p) for p in passages]} if service.retriever is not None else {}
        loop = asyncio.get_running_loop()
        created = int(time.time())

        if chat.stream:
            events: asyncio.Queue = asyncio.Queue()

            def post(kind: str, value: Any) -> None:  # worker thread -> event loop
                with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
                    loop.call_soon_threadsafe(events.put_nowait, (kind, value))

            job = Job(GenerationRequest(prompt_ids, decoding, on_text=lambda text: post("text", text)),
                      on_done=lambda result, error: post("done", (result, error)))
            service.worker.submit(job)

            async def stream() -> Any:
                yield sse(completion_chunk(job.id, service.model_name, created, {"role": "assistant", "content": ""},
                                           **extra))
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        yield sse(completion_chunk(job.id, service.model_name, created, {"content": value}))
                        continue
                    result, error = value
                    if error is not None:
                        yield sse(error.body())
                    else:
                        final = (await service.grounding(chat.question, passages, result.text, decoding)
                                 if service.grounded else {})
                        yield sse(completion_chunk(job.id, service.model_name, created, {}, result.finish_reason,
                                                   **final))
                        if chat.include_usage:
                            yield sse({"id": job.id, "object": "chat.completion.chunk", "created": created,
                                        "model": service.model_name, "choices": [], "usage": usage(result)})
                    break
                yield "data: [DONE]\n\n"

            return EventStream(stream(), job)

        done: asyncio.Future = loop.create_future()

        def resolve(result: Completion | None, error: ApiError | None) -> None:
            if not done.done():
                done.set_result((result, error))

        async def client_gone() -> None:  # the body is read: the next message is the client hanging up
            while (await request.receive())["type"] != "http.disconnect":
                pass

        job = Job(GenerationRequest(prompt_ids, decoding),
                  on_done=lambda r, e: loop.call_soon_threadsafe(resolve, r, e))
        service.worker.submit(job)
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait([done, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not done.done():
                job.cancel()
        if not done.done():
            return Response(status_code=499)  # nobody reads it; the worker logs the cancelled request
        result, error = done.result()
        if error is not None:
            raise error
        final = await service.grounding(chat.question, passages, result.text, decoding) if service.grounded else {}
        return JSONResponse({
            "id": job.id, "object": "chat.completion", "created": created, "model": service.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                         "finish_reason": result.finish_reason}],
            "usage": usage(result), **extra, **final,
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
        middleware=[
            Middleware(AccessGuard, bound_host=settings.host, allowed_hosts=settings.allowed_hosts,
                       allowed_origins=settings.allowed_origins, api_key=api_key),
            *([Middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["GET", "POST"],
                          allow_headers=["Authorization", "Content-Type"])] if settings.allowed_origins else []),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


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
    resolve_api_key(settings)  # first: a missing key and a taken port fail before the model loads
    sock = bind_socket(settings.host, settings.port)
    try:
        app = create_app(config, merged=merged, base_only=base_only, cite=cite)
        url = _url(sock)
        if settings.api_key_env:
            log.info("clients must send `Authorization: Bearer KEY`, the key in $%s; the chat page asks for it",
                     settings.api_key_env)
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

"""``papertune serve``: the tuned model behind an OpenAI-compatible HTTP API, with a web chat page.

Endpoints (errors are OpenAI-style JSON, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx
status for a bad request and 5xx when the server cannot answer):

- ``GET /v1/models``, ``GET /v1/models/{id}``: the one model served (id ``serve.model_name``).
- ``POST /v1/chat/completions``: chat completions with and without ``stream`` (server-sent events,
  ``data: {chat.completion.chunk}`` lines, then ``data: [DONE]``); honours ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature`` (0 = greedy), ``top_p``, ``stop``, ``seed`` and
  ``stream_options.include_usage``. Non-standard: the response (when streaming, its first chunk) carries
  ``papertune_citations``, the passages of ``RUN/chunks.jsonl`` retrieved for the question
  (:class:`papertune.retrieval.Retriever`: ``retrieval.top_k`` of them, numbered as in the prompt, with
  document, pages, section, score). Grounded (``retrieval.grounded``, the default) the answer is written
  from them, and the response (when streaming, its last chunk, the one with ``finish_reason``) carries them
  again, each with ``cited`` (the answer cites it as [n]), and ``papertune_abstained`` (the answer says the
  passages do not contain it). The answer is settled as ask settles it (:mod:`papertune.verify`: the answer
  check, and with ``retrieval.verify`` the model's own, asked through the worker); where that changes it,
  ``papertune_checked_answer`` is the answer to show. Closed book (``serve --closed-book``) the passages are
  only listed (``serve.cite``; ``--no-cite``: none).
- ``POST /v1/citations`` with ``{"query": ..., "top_k": k}``: those passages alone.
- ``GET /health``: the model's name, the queue and counters.
- ``GET /``: a chat page; ``/?q=QUESTION`` asks on load.

Access (:mod:`.security`): request bodies must be ``application/json`` (415 otherwise); requests from web
pages of other origins than ``serve.allowed_origins`` get 403, a ``Host`` that is not the server's 421. With
``serve.api_key_env`` every endpoint but ``/`` and ``/health`` needs ``Authorization: Bearer KEY`` (401);
a host other than loopback refuses to start without it. Responses name the model, never paths on disk.

A single user message is rendered exactly like ``papertune ask`` renders a question (``chat.render_prompt``
with ``build.system_prompt`` and, grounded, the passages: the training prompt), and the defaults
(``evaluate.max_new_tokens``, ``evaluate.temperature``) are ask's, so a greedy answer here is ask's answer.
A system message from the client replaces ``build.system_prompt``. In a longer conversation the passages
are retrieved for the last user message only, which is grounded like a single question; earlier turns go
through the model's chat template as the client sent them, without passages (the model was trained on
single turns).

One worker thread owns the model and takes requests from a queue. Greedy requests waiting together,
streamed or not, are generated in one left-padded batch (up to ``serve.max_batch_size``; each gets the
answer it gets alone, as evaluate's batched answers do); sampling requests run one at a time, so that a
``seed`` reproduces an answer. A client that disconnects cancels its request: it leaves the queue, or its
row stops after the next token while the rest of its batch goes on.

Modules: :mod:`.protocol` (requests, errors, response pieces), :mod:`.worker` (the generation queue),
:mod:`.security` (the API key and access checks), :mod:`.app` (the service, the HTTP app, running it).
"""

from papertune.serve.app import (
    Service,
    bind_socket,
    citation,
    create_app,
    grounding,
    model_label,
    run,
    serve_in_background,
)
from papertune.serve.protocol import ApiError, ChatRequest, parse_chat_request, render_conversation
from papertune.serve.security import AccessGuard, is_loopback, resolve_api_key
from papertune.serve.worker import GenerationWorker, Job

__all__ = ["AccessGuard", "ApiError", "ChatRequest", "GenerationWorker", "Job", "Service", "bind_socket", "citation",
           "create_app", "grounding", "is_loopback", "model_label", "parse_chat_request", "render_conversation",
           "resolve_api_key", "run", "serve_in_background"]

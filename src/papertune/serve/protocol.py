"""The OpenAI-compatible protocol of ``papertune serve``: requests, errors and the pieces of responses.

- :class:`ApiError`: a request refused (4xx) or not answered (5xx), as an OpenAI-style error body.
- :func:`parse_chat_request`: a ``/v1/chat/completions`` body checked field by field into a
  :class:`ChatRequest`; :func:`render_conversation` turns it into the prompt text (ask's prompt for a
  single question, grounded or closed-book; the chat template for a longer conversation).
- :func:`read_json`, :func:`sse`, :func:`completion_chunk`, :func:`usage`: reading bodies, writing responses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from papertune.chat import render_prompt, user_turn
from papertune.inference import Completion

MAX_MESSAGES = 256
MAX_STOP_SEQUENCES = 4


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


def invalid_request(message: str, param: str | None, code: str | None = None) -> ApiError:
    """A 400 error about ``param``."""
    return ApiError(400, message, param=param, code=code)


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


def checked_text(text: str, where: str) -> str:
    """``text``, or a 400 naming ``where`` when it holds a lone surrogate (JSON's ``\\ud800`` escapes decode to
    one), which is not text: no tokenizer reads it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_request(f"{where} holds a lone surrogate escape (\\ud800-\\udfff), which is not text",
                              where) from None
    return text


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return checked_text(content, where)
    if isinstance(content, list):  # OpenAI's content parts; only text can be answered
        texts = []
        for n, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid_request(f"{where}[{n}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                                      "this model reads text only", where)
            texts.append(checked_text(part["text"], f"{where}[{n}].text"))
        return "\n".join(texts)
    raise invalid_request(f"{where} must be a string or a list of text parts", where)


def number_field(body: dict, name: str, low: float, high: float) -> float | None:
    """``body[name]``: None when absent, else a number in [low, high]; a 400 naming the field otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid_request(f"{name} must be a number between {low:g} and {high:g}; got {value!r}", name)
    return float(value)


def integer_field(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    """``body[name]``: None when absent, else an integer in [low, high]; a 400 naming the field otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise invalid_request(f"{name} must be an integer {bound}; got {value!r}", name)
    return value


def parse_chat_request(body: Any, *, model_name: str, default_temperature: float, max_tokens_limit: int) -> ChatRequest:
    """Check a decoded request body; an ``ApiError`` (400/404) names the offending field."""
    if not isinstance(body, dict):
        raise invalid_request("the request body must be a JSON object", None)
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_name!r} (GET /v1/models)",
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("messages must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid_request(f"messages holds {len(messages)} messages; at most {MAX_MESSAGES}", "messages")
    system_parts: list[str] = []
    conversation: list[dict[str, str]] = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise invalid_request(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise invalid_request(f"{where}.role must be system, user or assistant; got {role!r}", f"{where}.role")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        text = _message_text(content, f"{where}.content")
        if role in ("system", "developer"):
            if conversation:
                raise invalid_request(f"{where}: system messages must come before the conversation", f"{where}.role")
            system_parts.append(text)
        else:
            conversation.append({"role": role, "content": text})
    if not conversation or conversation[-1]["role"] != "user":
        raise invalid_request("the last message must be the user's question", "messages")
    if not conversation[-1]["content"].strip():
        raise invalid_request("the question (the last user message) is empty", f"messages[{len(messages) - 1}].content")

    max_tokens = integer_field(body, "max_tokens", 1, max_tokens_limit)
    max_completion = integer_field(body, "max_completion_tokens", 1, max_tokens_limit)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise invalid_request("max_tokens and max_completion_tokens differ; give one", "max_completion_tokens")
    temperature = number_field(body, "temperature", 0.0, 2.0)
    top_p = number_field(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise invalid_request("top_p must be > 0", "top_p")
    n = integer_field(body, "n", 1)
    if n is not None and n != 1:
        raise invalid_request("only n=1 is supported", "n")

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise invalid_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
        raise invalid_request(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings", "stop")
    for stop_text in stops:
        checked_text(stop_text, "stop")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request(f"stream must be true or false; got {stream!r}", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid_request("stream_options must be {\"include_usage\": true|false}", "stream_options")
        if not stream:
            raise invalid_request("stream_options is only allowed with stream: true", "stream_options")
        include_usage = options.get("include_usage", False)
    seed = integer_field(body, "seed", 0, 2**63 - 1)
    return ChatRequest(system="\n\n".join(system_parts) if system_parts else None, conversation=conversation,
                       max_tokens=max_tokens if max_tokens is not None else max_completion,
                       temperature=default_temperature if temperature is None else temperature, top_p=top_p,
                       stop=stops, stream=stream, include_usage=include_usage, seed=seed)


def render_conversation(tokenizer: Any, request: ChatRequest, default_system: str | None,
                        passages: Sequence[dict] | None = None) -> str:
    """The prompt text: ask's (training's) prompt for a single question, grounded in ``passages`` when given;
    for a longer conversation the chat template over the turns as the client sent them, the last user turn
    (the question) grounded like ask's (earlier turns keep their text and get no passages of their own)."""
    system = default_system if request.system is None else request.system
    if len(request.conversation) == 1:
        return render_prompt(tokenizer, request.question, system, passages)
    messages = (([{"role": "system", "content": system}] if system else []) + request.conversation[:-1]
                + [{"role": "user", "content": user_turn(request.question, passages)}])
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


async def read_json(request: Any, limit: int) -> Any:
    """The request's JSON body, read up to ``limit`` bytes (a 413 beyond); a 415 unless it is sent as
    ``application/json`` (a web page cannot send that cross-origin without asking first), a 400 when it is not
    JSON, a 499 when the client hangs up before sending all of it."""
    from starlette.requests import ClientDisconnect

    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, f"send the request body as Content-Type: application/json, not {media_type or 'nothing'!r}",
                       code="unsupported_media_type")
    length = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is larger than {limit} bytes (serve.max_request_bytes)",
                         code="request_too_large")
    if length is not None:
        try:
            if int(length) > limit:
                raise too_large
        except ValueError:
            raise invalid_request("bad Content-Length header", None) from None
    body = bytearray()
    try:
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise ApiError(499, f"the client hung up after sending {len(body)} bytes of the request body",
                       code="client_disconnected") from None
    if not body.strip():
        raise invalid_request("the request body is empty; send a JSON object", None)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # also not UTF-8, integers past the digit limit, deep nesting
        raise invalid_request(f"the request body is not valid JSON: {exc}", None) from None


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n"  # ASCII: no character in an answer can break an event line


def completion_chunk(completion_id: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
                     **extra: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` of a streamed answer."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}


def usage(completion: Completion) -> dict[str, int]:
    """The OpenAI ``usage`` object of a completion."""
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}

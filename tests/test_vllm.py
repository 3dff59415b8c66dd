"""The vllm backend of papertune.llm: its settings, its errors where vLLM or a GPU is missing, and, on a GPU
with vLLM installed, greedy replies that agree with the hf backend's and follow a JSON schema."""

from __future__ import annotations

import json

import pytest

from papertune.config import LLMConfig, load_config
from papertune.errors import ConfigError
from papertune.inference import vllm_engine
from papertune.llm import make_chat_model


def test_vllm_is_a_backend_and_its_memory_share_is_checked():
    cfg = load_config(None, ["generate.llm.backend=vllm", "generate.llm.memory_share=0.7"])
    assert (cfg.generate.llm.backend, cfg.generate.llm.memory_share) == ("vllm", 0.7)
    with pytest.raises(ConfigError, match=r"curate\.judge\.memory_share must be in \(0, 1\), got 1\.5"):
        load_config(None, ["curate.judge_enabled=true", "curate.judge.backend=vllm", "curate.judge.memory_share=1.5"])


def test_without_vllm_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: None)
    with pytest.raises(ConfigError, match=r"curate\.judge\.backend=vllm needs vLLM, which is not installed "
                                          r"\(pip install vllm.*use curate\.judge\.backend: hf"):
        make_chat_model(LLMConfig(backend="vllm"), "curate.judge")


def test_without_a_gpu_the_error_names_the_backends_that_run_here(monkeypatch):
    import torch

    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: "0.26.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"generate\.llm\.backend=vllm runs on a CUDA GPU and torch sees none; "
                                          r"use generate\.llm\.backend: hf or llamacpp"):
        make_chat_model(LLMConfig(backend="vllm"), "generate.llm")


def test_vllm_is_asked_the_prompt_tokens_hf_is_asked(monkeypatch, talking_model):
    """The chat template applied and tokenized as for hf (no special tokens added), the call's decoding and
    schema handed over, the replies returned in order."""
    from transformers import AutoTokenizer

    from papertune.inference import Completion

    seen = {}

    class Engine:
        path = str(talking_model)

        def generate(self, prompts, decoding, *, json_schema=None):
            seen.update(prompts=prompts, decoding=decoding, schema=json_schema)
            return [Completion(f"reply {i}", [1], "stop", len(p), 1) for i, p in enumerate(prompts)]

    monkeypatch.setattr(vllm_engine, "shared_engine", lambda *args, **kwargs: Engine())
    model = make_chat_model(LLMConfig(backend="vllm", model=str(talking_model), max_new_tokens=7), "generate.llm")
    conversations = [[{"role": "user", "content": "What is LoRA?"}], [{"role": "user", "content": "And QLoRA?"}]]
    assert model.chat(conversations, json_schema={"type": "object"}) == ["reply 0", "reply 1"]
    tokenizer = AutoTokenizer.from_pretrained(talking_model)
    assert seen["prompts"] == [
        tokenizer(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False)["input_ids"] for c in conversations]
    assert (seen["decoding"].max_new_tokens, seen["decoding"].greedy, seen["schema"]) == (7, True, {"type": "object"})


@pytest.fixture(scope="module")
def qwen_shaped(tmp_path_factory):
    """A 2-layer Qwen2 with the real Qwen2.5 tokenizer and random (untied) weights, head size 64 as vLLM's
    attention kernels want."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from papertune.models import resolve_model

    path = tmp_path_factory.mktemp("qwen-shaped")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:qwen2.5-tokenizer"))
    shape = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 2048, "tie_word_embeddings": False}
    torch.manual_seed(0)
    for part in (Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), **shape)), tokenizer):
        part.save_pretrained(path)
    return path


@pytest.mark.gpu
def test_vllm_greedy_replies_agree_with_hf_and_follow_the_schema(qwen_shaped):
    if vllm_engine.vllm_version() is None:
        pytest.fail("vLLM is not installed on this GPU machine (benchmarks/gpu_vllm.sh installs it)")
    conversations = [[{"role": "user", "content": f"Question {i}: why is long context useful?"}] for i in range(8)]
    hf = make_chat_model(LLMConfig(model=str(qwen_shaped), max_new_tokens=8, engine="static", batch_size=8),
                         "generate.llm")
    fast = make_chat_model(LLMConfig(backend="vllm", model=str(qwen_shaped), max_new_tokens=8, memory_share=0.2,
                                     context_length=1024), "generate.llm")
    ours, theirs = hf.chat(conversations), fast.chat(conversations)
    # bf16 in both; different kernels move near-ties of a random model, so most, not all, agree
    assert sum(a == b for a, b in zip(ours, theirs)) >= len(conversations) // 2, (ours, theirs)
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 12}},
              "required": ["answer"], "additionalProperties": False}
    replies = fast.chat(conversations, json_schema=schema, max_new_tokens=48)
    vllm_engine.release_engines()
    assert all(set(json.loads(r)) == {"answer"} for r in replies), replies


def test_a_rank_vllm_cannot_serve_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: "0.26.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"evaluate\.engine=vllm: vLLM serves LoRA adapters up to rank 512, this "
                                          r"one has rank 1024; use evaluate\.engine: auto"):
        vllm_engine.VLLMEngine("m", setting="train", flag="evaluate.engine", instead="use evaluate.engine: auto",
                               lora_rank=1024)


@pytest.mark.gpu
def test_vllm_answers_with_a_lora_adapter_as_peft_does_and_gives_the_card_back(qwen_shaped, tmp_path):
    """evaluate.engine=vllm's path: the base model alone and with a (random, non-zero) LoRA adapter in one engine;
    greedy replies with the adapter agree with PEFT's on most prompts, differ from the base model's, and the
    engine's share of the card is free again after release."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papertune.config_model import LORA_ALL_LINEAR
    from papertune.inference import Decoding, generate

    if vllm_engine.vllm_version() is None:
        pytest.fail("vLLM is not installed on this GPU machine (benchmarks/gpu_vllm.sh installs it)")
    tokenizer = AutoTokenizer.from_pretrained(qwen_shaped)
    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(qwen_shaped, dtype=torch.bfloat16).cuda(),
                          LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_ALL_LINEAR),
                                     init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": f"Question {i}: what is RAFT?"}],
                                                       tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for i in range(8)]
    decoding = Decoding(max_new_tokens=8)
    theirs = [c.text for c in generate(peft, tokenizer, prompts, decoding, batch_size=8, engine="static")]
    del peft
    torch.cuda.empty_cache()
    free_before = torch.cuda.mem_get_info()[0]
    engine = vllm_engine.VLLMEngine(str(qwen_shaped), setting="train", memory_share=0.2, max_model_len=1024,
                                    lora_rank=8)
    base = [c.text for c in engine.generate(prompts, decoding)]
    tuned = [c.text for c in engine.generate(prompts, decoding, adapter=adapter)]
    assert sum(a == b for a, b in zip(tuned, theirs)) >= len(prompts) // 2, (tuned, theirs)
    assert tuned != base
    engine.release()
    free_after, total = torch.cuda.mem_get_info()
    assert free_after > free_before - 0.05 * total, (free_before, free_after)

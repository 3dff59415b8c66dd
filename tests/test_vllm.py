"""The vllm backend of papertune.llm: its settings, its errors where vLLM or a GPU is missing, and, on a GPU
with vLLM installed, greedy replies that agree with the hf backend's and follow a JSON schema."""

from __future__ import annotations

import json
import sys

import pytest

from papertune.config import LLMConfig, load_config
from papertune.errors import ConfigError
from papertune.inference import vllm_engine
from papertune.llm import make_chat_model


@pytest.fixture(autouse=True)
def _engines_released():
    """A test that fails with an engine loaded still gives it back (its process would keep pytest running)."""
    yield
    vllm_engine.release_engines()


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
    model.chat(conversations, temperature=0.5, seed=3)
    assert (seen["decoding"].temperature, seen["decoding"].seed) == (0.5, 3)


def test_sampled_vllm_prompts_each_get_their_own_seed(monkeypatch):
    """vLLM's sampling settings (a stand-in vllm module records them): greedy without a seed; sampling, each
    prompt seeded by its tokens and the call's seed, so a rerun samples the same replies in any order."""
    import types

    from papertune.inference import Decoding, request_seed

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kwargs: kwargs
    structured = types.ModuleType("vllm.sampling_params")
    structured.StructuredOutputsParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", structured)
    assert "seed" not in vllm_engine.sampling_params(Decoding(max_new_tokens=5), None, [1, 2])
    sampled = Decoding(max_new_tokens=5, temperature=0.7, seed=2)
    params = [vllm_engine.sampling_params(sampled, {"type": "object"}, p) for p in ([1, 2], [3], [1, 2])]
    assert [p["seed"] for p in params] == [request_seed([1, 2], 2), request_seed([3], 2), request_seed([1, 2], 2)]
    assert params[0]["seed"] != params[1]["seed"] and params[0]["structured_outputs"] == {"json": {"type": "object"}}


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


def test_vllm_replicas_share_the_prompts_out_one_process_per_gpu_and_keep_their_order(tmp_path):
    """Prompt k goes to replica k mod n, each replica's process sees only its GPU, the decoding, schema and
    adapter reach every replica, the replies come back in the prompts' order, and release ends the processes."""
    from fake_engines import DeviceEcho

    from papertune.inference import Decoding

    replicas = vllm_engine.VLLMReplicas("m", devices=["3", "5"], make=DeviceEcho, setting="generate.llm",
                                        memory_share=0.4)
    processes = [process for process, _ in replicas._workers]
    prompts = [[7] * (k + 1) for k in range(5)]
    replies = replicas.generate(prompts, Decoding(max_new_tokens=9), json_schema={"type": "object"},
                                adapter=tmp_path)
    assert [c.text for c in replies] == [f"{'35'[k % 2]}|{k + 1}|{tmp_path.resolve()}|9|{{'type': 'object'}}"
                                         for k in range(5)]
    assert [c.token_ids for c in replies] == prompts
    assert replicas.generate([], Decoding(max_new_tokens=4)) == []
    assert [c.text.split("|")[0] for c in replicas.generate(prompts[:1], Decoding(max_new_tokens=4))] == ["3"]
    replicas.release()
    assert [p.exitcode for p in processes] == [0, 0]


def test_a_replica_that_fails_to_load_is_a_clear_error_and_no_process_is_left():
    import multiprocessing

    from fake_engines import DeviceEcho

    with pytest.raises(ConfigError, match=r"the vLLM replica on GPU 0 failed to load: generate\.llm\.backend=vllm "
                                          r"needs vLLM.*the vLLM replica on GPU 1 failed to load"):
        vllm_engine.VLLMReplicas("broken", devices=["0", "1"], make=DeviceEcho, setting="generate.llm")
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("papertune-vllm")]


def test_vllm_replicas_follow_the_replicas_setting_and_the_visible_gpus(monkeypatch, talking_model):
    import torch

    seen = {}

    class Engine:
        path = str(talking_model)

    def shared(spec, **kwargs):
        seen.update(kwargs)
        return Engine()

    monkeypatch.setattr(vllm_engine, "shared_engine", shared)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    make_chat_model(LLMConfig(backend="vllm", model=str(talking_model), replicas=0), "generate.llm")
    assert seen["devices"] == ["cuda:0", "cuda:1"]
    make_chat_model(LLMConfig(backend="vllm", model=str(talking_model)), "generate.llm")
    assert seen["devices"] == ["auto"]  # one engine: vLLM's own choice of GPU
    with pytest.raises(ConfigError, match=r"generate\.llm\.replicas=3 needs as many GPUs, but torch sees 2"):
        make_chat_model(LLMConfig(backend="vllm", model=str(talking_model), replicas=3), "generate.llm")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert vllm_engine.cuda_device_ids(["cuda:0", "cuda:1"]) == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert vllm_engine.cuda_device_ids(["cuda:0", "cuda:1"]) == ["0", "1"]


def test_shared_replicas_get_the_model_resolved_once_and_the_gpus_as_their_processes_name_them(monkeypatch):
    """A .gguf is converted (or a packaged model fetched) once, before the replicas start, not by each at once."""
    import papertune.models

    made = []
    monkeypatch.setattr(vllm_engine, "_ENGINES", {})
    monkeypatch.setattr(papertune.models, "resolve_model", lambda spec, setting: f"/cache/{spec}.folder")
    monkeypatch.setattr(vllm_engine, "VLLMReplicas", lambda path, **kwargs: made.append((path, kwargs)) or path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    engine = vllm_engine.shared_engine("teacher.gguf", setting="generate.llm", devices=["cuda:0", "cuda:1"])
    assert engine == "/cache/teacher.gguf.folder"
    assert made == [("/cache/teacher.gguf.folder", {"devices": ["4", "5"], "setting": "generate.llm",
                                                    "memory_share": 0.5, "max_model_len": 8192,
                                                    "trust_remote_code": False})]
    assert vllm_engine.shared_engine("teacher.gguf", setting="curate.judge", devices=["cuda:0", "cuda:1"]) is engine
    assert len(made) == 1  # the judge naming the same model shares them


@pytest.mark.gpu
def test_two_vllm_replicas_answer_as_one_engine_does_and_give_the_card_back(qwen_shaped):
    """Two replicas (both on GPU 0 here, where one card is all there is; one per GPU in use) share the prompts
    out; greedy replies agree with one engine's on most prompts (bf16 near-ties move with the batch), and once
    released, the card's memory is free again."""
    import torch
    from transformers import AutoTokenizer

    from papertune.inference import Decoding

    if vllm_engine.vllm_version() is None:
        pytest.fail("vLLM is not installed on this GPU machine (benchmarks/gpu_vllm.sh installs it)")
    tokenizer = AutoTokenizer.from_pretrained(qwen_shaped)
    prompts = [tokenizer(f"Question {i}: what is retrieval-augmented fine-tuning?")["input_ids"] for i in range(16)]
    decoding = Decoding(max_new_tokens=12)
    free_before = torch.cuda.mem_get_info()[0]
    one = vllm_engine.VLLMEngine(str(qwen_shaped), setting="generate.llm", memory_share=0.2, max_model_len=512)
    alone = [c.token_ids for c in one.generate(prompts, decoding)]
    one.release()
    two = vllm_engine.VLLMReplicas(str(qwen_shaped), devices=["0", "0"], setting="generate.llm", memory_share=0.2,
                                   max_model_len=512)
    shared = [c.token_ids for c in two.generate(prompts, decoding)]
    two.release()
    assert all(len(ids) == 12 for ids in shared)
    assert sum(a == b for a, b in zip(alone, shared)) >= len(prompts) // 2, (alone, shared)
    assert torch.cuda.mem_get_info()[0] > free_before - 2 * 2**30  # both replicas' shares are free again


def test_every_engine_left_loaded_is_released_after_a_command_and_at_exit(monkeypatch, tmp_path):
    """An engine core or replica process left running keeps papertune's process from ending: every engine not
    yet released, shared or not, is released after each command and at exit, once."""
    import atexit

    from fake_engines import DeviceEcho

    from papertune import cli

    released = []

    class Engine:
        path = "m"

        def release(self):
            released.append(self)
            vllm_engine._forget(self)

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    shared, alone = Engine(), Engine()
    vllm_engine._live(shared)
    vllm_engine._live(alone)
    assert registered == [vllm_engine.release_engines, vllm_engine.release_engines]  # after vLLM's own, each time
    monkeypatch.setitem(vllm_engine._ENGINES, ("m", 0.5, 8, False, ()), shared)
    assert cli.main(["generate", "--run-dir", str(tmp_path / "no-run")]) != 0  # a command that fails
    assert released == [shared, alone] and not vllm_engine._LIVE and not vllm_engine._ENGINES
    vllm_engine.release_engines()
    assert released == [shared, alone]  # each once
    replicas = vllm_engine.VLLMReplicas("m", devices=["0"], make=DeviceEcho, setting="generate.llm")
    assert vllm_engine._LIVE == [replicas]
    vllm_engine.release_engines()
    assert not vllm_engine._LIVE


def test_a_process_that_leaves_its_replicas_loaded_still_ends(tmp_path):
    """Without the release at exit, multiprocessing would wait for the replica processes, which wait for work."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("from fake_engines import DeviceEcho\n"
              "from papertune.inference.vllm_engine import VLLMReplicas\n"
              "replicas = VLLMReplicas('m', devices=['0', '1'], make=DeviceEcho, setting='generate.llm')\n"
              "print([p.pid for p, _ in replicas._workers], flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    for pid in json.loads(done.stdout):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()

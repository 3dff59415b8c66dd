from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import built_run, tiny_overrides
from papertune import export, gguf_export, train
from papertune.config import SMOLLM2_PACKAGED, load_config
from papertune.errors import ConfigError, PapertuneError
from papertune.inference.llamacpp import LlamaCppServer
from papertune.models import QWEN2_5_TOKENIZER, resolve_model

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None and not os.environ.get("CI"),
    reason="xllamacpp (llama.cpp's prebuilt wheel) not installed: pip install -e '.[test]'; CI installs it",
)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 with Qwen2.5's real tokenizer, untied embeddings, 7 embedding rows past the tokenizer's
    last id (as real Qwen2.5 checkpoints pad theirs), random weights."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(QWEN2_5_TOKENIZER))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer) + 7, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, tie_word_embeddings=False,
                                         bos_token_id=151643, eos_token_id=151645))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _prompt_ids(model_dir: Path, questions: list[str]) -> tuple[list[str], list[list[int]], object]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": "Answer briefly."},
                                              {"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=False) for q in questions]
    return prompts, [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts], tokenizer


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.")
              or name in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id")}
    fields["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    fields["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields


# --- adapter and merged ------------------------------------------------------------------------------------


def test_export_adapter_and_merged_give_the_same_greedy_answers(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    run = built_run(tmp_path, tiny_model)
    overrides = tiny_overrides(run, tiny_model, max_steps=2) + ["export.verify_questions=2", "export.max_new_tokens=8"]
    cfg = load_config(None, overrides)
    train.run(cfg)
    out = export.run(cfg)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert list((out / "merged").glob("*.safetensors")) and (out / "merged" / "tokenizer.json").is_file()
    assert not (out / "gguf").exists()  # not asked for
    AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True)  # plain transformers loads it
    report = json.loads((out / "report.json").read_text())
    assert report["greedy_match"] == {"adapter": True, "merged": True}
    assert report["details"]["merged"] == {"questions": 2, "identical": 2}
    card = (out / "README.md").read_text()
    assert str(tiny_model) in card and "## Loss" in card and "| Step | Training Loss | Validation Loss |" in card
    assert "greedy answers identical to base + adapter" in card


def test_export_needs_an_adapter_and_known_formats(tmp_path, tiny_model):
    run = built_run(tmp_path, tiny_model)
    with pytest.raises(Exception, match="papertune train"):
        export.run(load_config(None, tiny_overrides(run, tiny_model)))
    with pytest.raises(ConfigError, match="export.formats: unknown format 'onnx'"):
        load_config(None, ["export.formats=onnx"])
    with pytest.raises(ConfigError, match="export.gguf_type: unknown GGUF type 'q4_k_m'; use one of f32, f16, bf16"):
        load_config(None, ["export.formats=[merged,gguf]", "export.gguf_type=q4_k_m"])
    assert load_config(None, ["export.formats=[gguf]", "export.gguf_type=bf16"]).export.gguf_type == "bf16"


# --- GGUF: the converter ------------------------------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_f32_round_trip_is_exact(tmp_path, arch, tiny_model, tiny_qwen2):
    """An f32 GGUF holds exactly the model's weights: transformers (which undoes llama.cpp's Q/K permutation)
    gives the same logits, llama.cpp (which needs it) the same greedy tokens and the same tokenization of the
    chat prompts."""
    from transformers import AutoModelForCausalLM

    src = tiny_model if arch == "llama" else tiny_qwen2
    dest = tmp_path / "gguf" / "model-f32.gguf"
    info = gguf_export.convert(src, dest, "f32", name="tiny")
    # Llama: embedding, final norm, 9 per block; tied, so no output.weight. Qwen2: +3 q/k/v biases per block,
    # and its own output.weight.
    expected = {"llama": 2 + 2 * 9, "qwen2": 3 + 2 * 12}[arch]
    assert info["tensors"] == expected and info["tensor_types"] == {"F32": expected}
    fields = _fields(dest)
    assert fields["general.architecture"] == arch and fields["general.name"] == "tiny"
    assert fields["general.file_type"] == 0 and len(fields["tensors"]) == expected
    assert ("output.weight" in fields["tensors"]) is (arch == "qwen2")
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    assert fields["n_tokens"] == ref.config.vocab_size == fields[f"{arch}.vocab_size"]
    assert fields[f"{arch}.block_count"] == 2 and fields[f"{arch}.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.eos_token_id"] == ref.config.eos_token_id
    assert "tokenizer.chat_template" in fields

    prompts, ids, tokenizer = _prompt_ids(src, ["What is LoRA in 2024?", "Why quantize a model's weights?"])
    if arch == "llama":  # (transformers parses Qwen's 151k-token vocabulary from the file in pure Python, ~40 s;
        # the slow export test below loads the Qwen2 file in transformers)
        loaded = AutoModelForCausalLM.from_pretrained(dest.parent, gguf_file=dest.name, dtype=torch.float32).eval()
        with torch.no_grad():
            for prompt in ids:
                x = torch.tensor([prompt])
                torch.testing.assert_close(loaded(x).logits, ref(x).logits, rtol=0, atol=1e-5)

    reference = [export.greedy_token_ids(ref, tokenizer, p, 8) for p in ids]
    runtime = LlamaCppServer(dest, n_ctx=256)
    assert [runtime.greedy(p, 8) for p in ids] == reference
    assert [runtime.tokenize(p) for p in prompts] == ids


def test_gguf_refuses_what_it_cannot_convert(tmp_path, tiny_model):
    def folder(name: str, **config) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
        return path

    mistral = folder("mistral", architectures=["MistralForCausalLM"], num_hidden_layers=2)
    with pytest.raises(PapertuneError, match="does not support the MistralForCausalLM architecture.*"
                                             "LlamaForCausalLM, Qwen2ForCausalLM"):
        gguf_export.convert(mistral, tmp_path / "m.gguf", "f16")
    llama3 = folder("llama3", architectures=["LlamaForCausalLM"], hidden_act="silu",
                    rope_scaling={"rope_type": "llama3", "factor": 32.0})
    with pytest.raises(PapertuneError, match="rope scaling 'llama3' is not supported"):
        gguf_export.convert(llama3, tmp_path / "l.gguf", "q8_0")
    sentencepiece = folder("tinyllama", architectures=["LlamaForCausalLM"], num_hidden_layers=2, hidden_size=64,
                           num_attention_heads=4, vocab_size=32000, intermediate_size=128)
    (sentencepiece / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "byte_fallback": True}}))
    with pytest.raises(PapertuneError, match="supports byte-level BPE tokenizers.*BPE with byte fallback"):
        gguf_export.convert(sentencepiece, tmp_path / "s.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf"))


def test_gguf_names_the_pre_tokenizer_llama_cpp_uses(tmp_path):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    split = {"type": "Split", "behavior": "Isolated", "invert": False}
    no_regex = {**byte_level, "use_regex": False}
    cases = {
        "gpt-2": byte_level,  # papertune's SmolLM2 (transformers' rebuild of the packaged GGUF's tokenizer)
        "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]},
        "qwen2": {"type": "Sequence", "pretokenizers": [
            {**split, "pattern": {"Regex": gguf_export._SPLIT_PATTERNS["qwen2"]}}, no_regex]},
        "llama-bpe": {"type": "Sequence", "pretokenizers": [
            {**split, "pattern": {"Regex": gguf_export._SPLIT_PATTERNS["llama-bpe"]}}, no_regex]},
    }
    for name, pre in cases.items():
        assert gguf_export._pre_tokenizer_name({"pre_tokenizer": pre}, tmp_path) == name
    with pytest.raises(PapertuneError, match="splits text in a way papertune cannot name for llama.cpp"):
        gguf_export._pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace", "replacement": "_"}}, tmp_path)


# --- GGUF: papertune export --------------------------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=pytest.mark.slow)])
def test_export_gguf_f16_is_identical_and_q8_0_within_tolerance(tmp_path, arch, tiny_model, tiny_qwen2):
    model = tiny_model if arch == "llama" else tiny_qwen2
    run = built_run(tmp_path, model)
    base = tiny_overrides(run, model, max_steps=2) + ["export.verify_questions=2", "export.max_new_tokens=8"]
    train.run(load_config(None, base))

    out = export.run(load_config(None, base + ["export.formats=[merged,gguf]", "export.gguf_type=f16"]))
    report = json.loads((out / "report.json").read_text())
    assert report["greedy_match"] == {"merged": True, "gguf": True}
    gguf = report["details"]["gguf"]
    assert gguf["file"] == "gguf/model-f16.gguf" and gguf["type"] == "f16" and gguf["architecture"] == arch
    assert gguf["bytes"] == (out / gguf["file"]).stat().st_size
    assert gguf["transformers"] == {"questions": 2, "identical": 2, "token_agreement": 1.0, "disagreements": []}
    assert {k: gguf["llama_cpp"][k] for k in ("questions", "identical", "token_agreement", "tokenizer_identical")} \
        == {"questions": 2, "identical": 2, "token_agreement": 1.0, "tokenizer_identical": 2}
    fields = _fields(out / gguf["file"])
    assert fields["general.file_type"] == 1 and fields["general.name"] == run.name
    assert set(fields["tensors"].values()) == {"F16", "F32"} and len(fields["tensors"]) == gguf["tensors"]
    card = (out / "README.md").read_text()
    assert ("- `gguf/model-f16.gguf`: GGUF F16 for llama.cpp" in card
            and "greedy answers identical to base + adapter in transformers and llama.cpp" in card)

    # q8_0 from the adapter alone: the merged model is made for the conversion and not kept. Quantization may
    # flip a near tie (a random model's next-token distribution is all near ties: about one token in 30 flips
    # for the untied Qwen2), so the tolerance is judged on 4 answers of 16 tokens.
    q8 = base + ["export.formats=[adapter,gguf]", "export.gguf_type=q8_0", "export.verify_questions=4",
                 "export.max_new_tokens=16"]
    out = export.run(load_config(None, q8))
    report = json.loads((out / "report.json").read_text())
    assert report["greedy_match"] == {"adapter": True, "gguf": True}
    assert sorted(p.name for p in (out / "gguf").iterdir()) == ["model-q8_0.gguf"]
    assert not (out / ".gguf-source").exists() and not list(out.glob(".*.tmp"))
    gguf = report["details"]["gguf"]
    assert gguf["tensor_types"]["Q8_0"] == 7 * 2 + (1 if arch == "llama" else 2)  # + embedding (+ output)
    for runtime in ("transformers", "llama_cpp"):
        assert gguf[runtime]["token_agreement"] >= gguf_export.MIN_TOKEN_AGREEMENT
        margins = [d["reference_margin"] for d in gguf[runtime]["disagreements"]]
        assert all(0 <= m <= gguf_export.NEAR_TIE_NATS["q8_0"] for m in margins)
    assert "- `gguf/model-q8_0.gguf`: GGUF Q8_0" in (out / "README.md").read_text()


def test_agreement_counts_teacher_forced_next_tokens():
    reference = [[5, 6, 7, 8, 2]]

    def flips_third(prompt: list[int], n: int) -> list[int]:
        done = len(prompt) - 1
        return ([5, 6, 9, 9, 9][done:] if done < 2 else reference[0][done:])[:n]

    assert export._agreement(lambda p, n: reference[0][len(p) - 1:][:n], [[1]], reference) == \
        {"questions": 1, "identical": 1, "token_agreement": 1.0, "disagreements": []}
    assert export._agreement(flips_third, [[1]], reference) == {
        "questions": 1, "identical": 0, "token_agreement": 0.8,
        "disagreements": [{"question": 0, "position": 2, "reference_token": 7, "token": 9}]}

    def stops_early(prompt: list[int], n: int) -> list[int]:
        done = len(prompt) - 1
        # an end-of-generation token where the reference goes on (2 instead of 7) is one disagreement
        return [5, 6, 2] if done == 0 else reference[0][done:][:n]

    assert export._agreement(stops_early, [[1]], reference)["disagreements"] == \
        [{"question": 0, "position": 2, "reference_token": 7, "token": 2}]

    def pauses(prompt: list[int], n: int) -> list[int]:
        done = len(prompt) - 1
        # a runtime that ends a reply after agreeing (5, 6) is asked on; one that says nothing disagrees
        return {0: [5, 6], 2: []}.get(done, reference[0][done:][:n])

    result = export._agreement(pauses, [[1]], reference)
    assert result["token_agreement"] == 0.8 and result["disagreements"] == \
        [{"question": 0, "position": 2, "reference_token": 7, "token": None}]

    def verdict(margins: list[float | None], agreement: float, gguf_type: str) -> bool:
        disagreements = [{"reference_margin": m} for m in margins]
        return export._gguf_verdict({"questions": 2, "identical": 0, "token_agreement": agreement,
                                     "disagreements": disagreements}, gguf_type)

    assert verdict([0.002, 0.012], 0.99, "f16") and not verdict([0.002, 0.3], 0.99, "f16")
    assert verdict([0.33, 0.05], 0.95, "q8_0") and not verdict([2.5], 0.99, "q8_0")
    assert not verdict([None], 0.99, "q8_0") and not verdict([0.01] * 10, 0.85, "q8_0")


# --- the real SmolLM2-135M ---------------------------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.slow
def test_smollm2_q8_0_gguf_gives_the_same_greedy_answers(tmp_path):
    """SmolLM2-135M-Instruct (papertune's CPU model) as a Q8_0 GGUF: llama.cpp answers two questions exactly like
    the safetensors model; transformers' dequantized copy stays within the Q8_0 tolerance (it flips one near tie
    late in the second answer)."""
    from transformers import AutoModelForCausalLM

    src = Path(resolve_model(SMOLLM2_PACKAGED))
    dest = tmp_path / "model-q8_0.gguf"
    info = gguf_export.convert(src, dest, "q8_0", name="smollm2")
    assert info["tensors"] == 2 + 30 * 9 and info["tensor_types"] == {"Q8_0": 211, "F32": 61}
    assert 140e6 < info["bytes"] < 150e6  # about 8.5 bits per weight
    prompts, ids, tokenizer = _prompt_ids(src, ["What is LoRA in machine learning?",
                                                "Why does quantization reduce memory use?"])
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    eos = ref.generation_config.eos_token_id
    reference = [export.greedy_token_ids(ref, tokenizer, p, 24, eos) for p in ids]

    runtime = LlamaCppServer(dest, n_ctx=256)
    assert [runtime.greedy(p, 24) for p in ids] == reference
    assert [runtime.tokenize(p) for p in prompts] == ids
    runtime.close()
    loaded = AutoModelForCausalLM.from_pretrained(dest.parent, gguf_file=dest.name, dtype=torch.float32).eval()
    agreement = export._agreement(lambda p, n: export.greedy_token_ids(loaded, tokenizer, p, n, eos),
                                  ids, reference)
    export._reference_margins(ref, ids, reference, agreement["disagreements"])
    assert export._gguf_verdict(agreement, "q8_0") and agreement["identical"] >= 1

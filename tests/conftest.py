"""Shared fixtures: the sample corpus's config, tiny real models (tied, and untied to answer in words) and a run
trained on one, and the ``gpu`` marker's rule (skipped, with the reason, where CUDA is not available). Plain
helpers and constants are in helpers.py, the fake OpenAI-compatible servers in helpers_openai.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SAMPLE_CORPUS, built_run, make_config, tiny_overrides
from papertune.config import SMOLLM2_PACKAGED, PapertuneConfig, load_config


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skip them, saying so, where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); run `pytest -m gpu` "
                                   "on a GPU machine")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def sample_config(tmp_path: Path) -> PapertuneConfig:
    return make_config(tmp_path / "run", SAMPLE_CORPUS)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's real tokenizer and chat template, random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from papertune.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2_PACKAGED))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, tie_word_embeddings=True))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def talking_model(tmp_path_factory, tiny_model) -> Path:
    """tiny_model with untied output embeddings. A random tied model repeats its last prompt token (the newline
    after "assistant"), so every answer would strip to "" and equal every other; this one answers each
    question with its own visible words."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("talking-llama")
    config = LlamaConfig.from_pretrained(tiny_model)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model) -> Path:
    """A built dataset (chunk-grouped) and a LoRA adapter trained for a few steps on the tiny model."""
    from papertune import train

    run = built_run(tmp_path_factory.mktemp("trained"), tiny_model, n_chunks=10)
    train.run(load_config(None, tiny_overrides(run, tiny_model, max_steps=4)))
    return run

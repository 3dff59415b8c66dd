from __future__ import annotations

import json

import pytest

from papertune import export, train
from papertune.config import load_config
from papertune.errors import ConfigError
from test_train import built_run, tiny_model, tiny_overrides  # noqa: F401  (fixture)


def test_export_adapter_and_merged_give_the_same_greedy_answers(tmp_path, tiny_model):  # noqa: F811
    from transformers import AutoModelForCausalLM

    run = built_run(tmp_path, tiny_model)
    overrides = tiny_overrides(run, tiny_model, max_steps=2) + ["export.verify_questions=2", "export.max_new_tokens=8"]
    cfg = load_config(None, overrides)
    train.run(cfg)
    out = export.run(cfg)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert list((out / "merged").glob("*.safetensors")) and (out / "merged" / "tokenizer.json").is_file()
    AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True)  # plain transformers loads it
    report = json.loads((out / "report.json").read_text())
    assert report["greedy_match"] == {"adapter": True, "merged": True}
    assert report["details"]["merged"] == {"questions": 2, "identical": 2}
    card = (out / "README.md").read_text()
    assert str(tiny_model) in card and "## Loss" in card and "| Step | Training Loss | Validation Loss |" in card
    assert "greedy answers identical to base + adapter" in card


def test_export_needs_an_adapter_and_known_formats(tmp_path, tiny_model):  # noqa: F811
    run = built_run(tmp_path, tiny_model)
    with pytest.raises(Exception, match="papertune train"):
        export.run(load_config(None, tiny_overrides(run, tiny_model)))
    with pytest.raises(ConfigError, match="export.formats: unknown format 'gguf'"):
        load_config(None, ["export.formats=gguf"])

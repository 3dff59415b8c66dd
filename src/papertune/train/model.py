"""The model to fine-tune, with LoRA adapters, from either backend.

- ``unsloth``: ``FastLanguageModel`` as in the training report (4-bit, its fused kernels and
  gradient checkpointing).
- ``hf``: transformers + bitsandbytes NF4 (double quantization, bf16 compute) + PEFT.

Both give a PEFT model and a tokenizer whose pad token is not the end-of-sequence token (a pad equal
to EOS would teach the model to never stop, once pads are masked).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from typing import Any

from papertune.config import TrainConfig
from papertune.errors import ConfigError
from papertune.models import default_dtype, resolve_model

log = logging.getLogger(__name__)

# Tried in order when a tokenizer's pad token is missing or equal to its EOS token.
_PAD_CANDIDATES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "<unk>")


def choose_backend(cfg: TrainConfig) -> str:
    import torch

    if cfg.backend != "auto":
        if cfg.backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
            raise ConfigError("train.backend=unsloth but Unsloth is not installed (pip install unsloth; needs a CUDA GPU)")
        return cfg.backend
    return "unsloth" if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None else "hf"


def fix_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token distinct from EOS, taken from its own vocabulary."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in _PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            log.info("pad token set to %r (id %d), distinct from EOS %r", candidate, vocab[candidate], tokenizer.eos_token)
            return
    raise ConfigError(
        f"the tokenizer has no pad token distinct from its EOS token {tokenizer.eos_token!r}, and none of "
        f"{', '.join(_PAD_CANDIDATES)} is in its vocabulary; add a pad token to the model's tokenizer"
    )


def torch_dtype(cfg: TrainConfig) -> Any:
    """The dtype the model is trained (and answers) in: ``train.dtype``, or bf16/fp16 on a GPU and fp32 on CPU."""
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    return default_dtype("cuda" if torch.cuda.is_available() else "cpu")


def _local_rank_device() -> dict[str, int]:
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def load_tokenizer(cfg: TrainConfig) -> Any:
    """``train.model``'s tokenizer as the ``hf`` backend trains with it."""
    from transformers import AutoTokenizer

    name = resolve_model(cfg.model, "train.model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise ConfigError(
            f"train.model={cfg.model!r}: its tokenizer could not be loaded ({exc}). Use a local model folder, or a Hub "
            "id with network access"
        ) from exc
    fix_pad_token(tokenizer)
    return tokenizer


def load_for_training(cfg: TrainConfig, backend: str) -> tuple[Any, Any]:
    """(PEFT model ready to train, tokenizer) for ``backend``."""
    model, tokenizer, _ = load_planned(cfg, backend)
    return model, tokenizer


def load_planned(cfg: TrainConfig, backend: str, tokenizer: Any = None,
                 mean_example_tokens: float | None = None) -> tuple[Any, Any, TrainConfig]:
    """(PEFT model ready to train, tokenizer, ``cfg`` as planned): with ``train.packed_length: auto`` the
    memory plan (train/fast.py) sets the rows' length and the gradient accumulation from
    ``mean_example_tokens``, the training split's mean length. ``tokenizer``: one already loaded with
    ``load_tokenizer`` (hf backend)."""
    import torch

    name = resolve_model(cfg.model, "train.model")
    if cfg.load_in_4bit and not torch.cuda.is_available():
        raise ConfigError("train.load_in_4bit=true needs a CUDA GPU (bitsandbytes NF4); on CPU set train.load_in_4bit=false")

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        # Unsloth places the model itself; only a distributed run pins each rank to its own GPU.
        placement = {"device_map": _local_rank_device()} if "LOCAL_RANK" in os.environ else {}
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=name,
            max_seq_length=cfg.max_seq_length,
            dtype=None if cfg.dtype == "auto" else torch_dtype(cfg),
            load_in_4bit=cfg.load_in_4bit,
            trust_remote_code=cfg.trust_remote_code,
            **placement,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias="none",
            target_modules=list(cfg.target_modules),
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing is not False else False,
            random_state=cfg.seed,
        )
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from papertune.train import fast

        dtype = torch_dtype(cfg)
        attention = "sdpa"
        if cfg.packing and fast.varlen_attention_available():
            attention = fast.register_varlen_attention()
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "use_safetensors": True,  # never unpickle weights
            "trust_remote_code": cfg.trust_remote_code,
            "attn_implementation": attention,
        }
        if torch.cuda.is_available():
            kwargs["device_map"] = _local_rank_device()
        if cfg.load_in_4bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
            )
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg)
        try:
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        except OSError as exc:
            raise ConfigError(
                f"train.model={cfg.model!r} could not be loaded ({exc}). Use a local model folder with "
                "safetensors weights, or a Hub id with network access"
            ) from exc
        decisions = fast.plan(cfg, model, mean_example_tokens)
        log.info("train: attention %s; %s", attention, ", ".join(f"{k} {v}" for k, v in decisions.items()))
        if "packed_length" in decisions:
            cfg = dataclasses.replace(cfg, packed_length=decisions["packed_length"],
                                      gradient_accumulation_steps=decisions["gradient_accumulation_steps"])
            log.info("train: packed rows of %d tokens x gradient accumulation %d: about %s examples per optimizer "
                     "step (train.packed_length=auto, train.packed_examples_per_step=%d)", cfg.packed_length,
                     cfg.gradient_accumulation_steps, decisions["examples_per_step"], cfg.packed_examples_per_step)
        checkpointing = decisions["gradient_checkpointing"]
        if cfg.load_in_4bit and decisions["dequantize_base"]:
            replaced, added = fast.dequantize_4bit_base(model)
            log.info("train: %d NF4 layers dequantized once to %s (+%.2f GiB; train.dequantize_base)", replaced,
                     dtype, added / 2**30)
        if fast.apply_fused_kernels(model, cfg.fused_kernels):
            log.info("train: Liger's RMSNorm and SwiGLU kernels on the model (train.fused_kernels)")
        if cfg.load_in_4bit and not decisions["dequantize_base"]:
            # Non-reentrant checkpointing: the reentrant kind breaks DDP with frozen base weights.
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.config.use_cache = False  # training: no KV cache (and packed positions need none)
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.target_modules),
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )
        if cfg.torch_compile:
            log.info("train: %d decoder layers compiled with torch.compile (train.torch_compile)",
                     fast.compile_decoder_layers(model))
    fix_pad_token(tokenizer)
    return model, tokenizer, cfg

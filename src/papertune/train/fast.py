"""The pieces of papertune's fast GPU path (``train.packing``, ``train.dequantize_base``, automatic
gradient checkpointing). Each keeps the loss of the report's recipe token for token; only the work per
token changes.

- Padding-free packing: the examples of a micro-batch are laid end to end in one row with restarting
  ``position_ids`` (TRL's padding-free collator), so no compute is spent on padding. Examples must not
  attend to each other: on CUDA the ``papertune_varlen`` attention runs PyTorch's variable-length
  flash attention over the sequence boundaries in the batch (``cu_seq_lens_q``, which TRL >= 1.16's
  collator sends and ``SequenceBoundsCollator`` adds for older ones); elsewhere transformers' SDPA builds
  a block-diagonal causal mask from the restarting positions (exact too, but quadratic in the row).
- Dequantized base: QLoRA multiplies by the NF4 weights dequantized to bf16, again in every forward and
  backward. When the card has the memory, doing it once and keeping the bf16 result gives the same
  numbers (the same NF4 values) without the per-step dequantization.
- Gradient checkpointing only when the activations of a micro-batch would not fit in the memory budget.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "papertune_varlen"


def varlen_attention_available() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (PyTorch >= 2.10)
    except ImportError:
        return False
    return True


@functools.cache  # called by every attention layer of every forward: look the signature up once
def _varlen_kwargs() -> tuple[Any, dict[str, Any], bool]:
    """varlen_attn and how this PyTorch version asks for causal masking and grouped-query attention."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return varlen_attn, causal, "enable_gqa" in params


def papertune_varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                               dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: varlen flash attention for one packed row, SDPA otherwise.

    ``query``/``key``/``value`` come as (batch, heads, tokens, head_dim); the result is (batch, tokens,
    heads, head_dim) like every transformers attention function returns.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None or query.shape[0] != 1 or not query.is_cuda or dropout:
        if cu_seq_lens is None and query.shape[0] == 1 and query.is_cuda and module.training:
            _warn_no_bounds()
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    varlen_attn, causal, has_gqa = _varlen_kwargs()
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    if k.shape[1] != q.shape[1] and not has_gqa:
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    cu = cu_seq_lens.to(device=q.device, dtype=torch.int32)
    max_len = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    extra = {"enable_gqa": True} if has_gqa and k.shape[1] != q.shape[1] else {}
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, **causal, **extra)
    return out.unsqueeze(0), None


@functools.cache  # once per process: it would otherwise come from every layer of every step
def _warn_no_bounds() -> None:
    log.warning("train: a packed row came without sequence bounds (cu_seq_lens_q), so attention runs as SDPA "
                "with a block-diagonal mask, quadratic in the row length; wrap the collator in "
                "papertune.train.fast.SequenceBoundsCollator")


def add_sequence_bounds(batch: dict[str, Any]) -> dict[str, Any]:
    """Add ``cu_seq_lens_q/k`` and ``max_length_q/k`` to a padding-free batch (one row, restarting
    ``position_ids``) that lacks them, as TRL >= 1.16's collator sends them: a sequence starts at every
    position 0, so each padding token is a sequence of its own. Runs in the data loader, on the CPU, so
    the model does not derive them with a GPU sync in every layer."""
    import torch

    position_ids = batch.get("position_ids")
    if position_ids is None or "cu_seq_lens_q" in batch or position_ids.shape[0] != 1:
        return batch
    starts = (position_ids[0] == 0).nonzero().flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([position_ids.shape[1]])]).to(torch.int32)
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
    batch["max_length_q"] = batch["max_length_k"] = int(cu_seq_lens.diff().max())
    return batch


class SequenceBoundsCollator:
    """A padding-free collator whose batches always carry their sequence bounds (``add_sequence_bounds``).

    TRL before 1.16 sends only ``position_ids``; without the bounds the ``papertune_varlen`` attention
    cannot run and every packed row pays for full quadratic attention (45% of an H200 step at 8,192 tokens)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        return add_sequence_bounds(self.inner(features))


def compile_decoder_layers(model: Any) -> int:
    """``torch.compile`` every decoder layer of ``model`` in place (``train.torch_compile``); returns how many.

    ``papertune_varlen`` attention stays outside the compiled graphs (registered that way): packed rows
    change their sequence bounds, and the longest sequence (an int), every step, which would otherwise
    recompile. Layers share one compiled graph (parameters are graph inputs), so compiling costs about one
    layer's worth.
    """
    layers = _decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def _decoder_layers(model: Any) -> list[Any]:
    """The decoder layers under PEFT / DDP wrappers (``model.layers`` of the inner decoder)."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    decoder = getattr(inner, "model", inner)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"train.torch_compile: cannot find the decoder layers of {type(inner).__name__}")
    return list(layers)


def skip_lora_input_casts(model: Any) -> int:
    """Stop PEFT from casting each LoRA layer's input to the adapter's dtype; returns the layers changed.

    With float32 adapters (``train.adapter_dtype``) PEFT copies every projection's bf16 input to float32
    before the adapter's matmuls, and autocast copies it straight back to bf16 for them: two copies of
    every input (and two in the backward) for bitwise the same result, about a tenth of an H200 step.
    Only valid while the forward runs under autocast (the Trainer's bf16/fp16 mixed precision).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    changed = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and getattr(module, "cast_input_dtype_enabled", False):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def register_varlen_attention() -> str:
    """Register ``papertune_varlen`` with transformers (attention and mask functions); returns its name."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    # A graph break under train.torch_compile (see compile_decoder_layers); nothing changes in eager mode.
    AttentionInterface.register(VARLEN_ATTENTION, torch.compiler.disable(papertune_varlen_attention))
    # Padded batches (evaluation) fall back to SDPA, which needs SDPA's mask.
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, sdpa_mask)
    return VARLEN_ATTENTION


def dequantize_4bit_base(model: Any) -> tuple[int, int]:
    """Replace every bitsandbytes 4-bit linear layer by a frozen 16-bit one holding its dequantized weight.

    The values are exactly those QLoRA's forward computes from the NF4 weights each step. Returns
    (layers replaced, bytes of 16-bit weights added). Call before the LoRA adapters are attached.
    """
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit

    replaced, added = 0, 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = dequantize_4bit(child.weight.data, child.weight.quant_state)
            dtype = child.compute_dtype or torch.bfloat16
            linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                     device=weight.device, dtype=dtype)
            linear.weight.data = weight.to(dtype).reshape(child.out_features, child.in_features)
            linear.weight.requires_grad_(False)
            if child.bias is not None:
                linear.bias.data = child.bias.data.to(dtype)
                linear.bias.requires_grad_(False)
            setattr(parent, name, linear)
            replaced += 1
            added += linear.weight.numel() * linear.weight.element_size()
    torch.cuda.empty_cache()
    return replaced, added


def activation_bytes_per_token(config: Any) -> int:
    """Activation memory that one token keeps for the backward pass without gradient checkpointing, in bytes
    (bf16, LoRA on every linear layer): per layer the inputs of the 7 projections, the norms, attention and
    the MLP's intermediate products. An estimate on the safe side, checked against peak memory on an H200."""
    hidden, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_layer = 2 * (8 * hidden + 2 * kv * head_dim + 6 * inter)
    return per_layer * config.num_hidden_layers


def choose_gradient_checkpointing(setting: str, model_config: Any, tokens_per_micro_batch: int,
                                  budget_bytes: int | None) -> bool:
    """``auto``: checkpoint only when one micro-batch's activations would not fit in ``budget_bytes``."""
    if setting in ("true", "false"):
        return setting == "true"
    if budget_bytes is None:
        return True
    need = activation_bytes_per_token(model_config) * tokens_per_micro_batch
    use = need > budget_bytes
    log.info("train: activations of a %d-token micro-batch ~%.1f GiB, budget %.1f GiB -> gradient checkpointing %s",
             tokens_per_micro_batch, need / 2**30, budget_bytes / 2**30, "on" if use else "off")
    return use


def memory_budget_bytes(cap_gib: float) -> int | None:
    """Bytes papertune may plan with on this GPU: ``train.memory_cap_gib`` (0: the card's total), less what
    is already allocated. None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    cap = min(total, int(cap_gib * 2**30)) if cap_gib > 0 else total
    return cap - torch.cuda.memory_allocated()


def tokens_per_micro_batch(cfg: Any) -> int:
    length = (cfg.packed_length or cfg.max_seq_length) if cfg.packing else cfg.max_seq_length
    return length * cfg.per_device_train_batch_size


ROW_MULTIPLE = 1024  # planned rows are whole multiples of this many tokens: steady shapes for the kernels


def _round_up(value: float, multiple: int) -> int:
    return multiple * -(-int(value) // multiple)


def packed_rows(tokens_per_step: int, longest: int, fitting_tokens: int | None) -> tuple[int, int]:
    """(row length, gradient accumulation) for optimizer steps of about ``tokens_per_step`` tokens: as few rows
    as possible, each at most ``fitting_tokens`` long (the most that fit without checkpointing; None: no limit)
    and at least ``longest`` (the longest example allowed)."""
    if fitting_tokens is None or fitting_tokens >= tokens_per_step:
        return tokens_per_step, 1
    accumulation = -(-tokens_per_step // max(fitting_tokens, longest))
    while True:  # one more row when rounding up made them too long
        row = max(longest, _round_up(tokens_per_step / accumulation, ROW_MULTIPLE))
        if row <= fitting_tokens or row == longest:
            return row, accumulation
        accumulation += 1


def plan(cfg: Any, model: Any, mean_example_tokens: float | None = None) -> dict[str, Any]:
    """Decide ``dequantize_base`` and ``gradient_checkpointing`` (when ``auto``) for the loaded 4-bit or
    16-bit model from the memory budget, and with ``packed_length: auto`` the packed rows' length and the
    gradient accumulation: about ``packed_examples_per_step`` examples of ``mean_example_tokens`` tokens per
    optimizer step (over all data-parallel ranks), in rows as long as fit without checkpointing. Returns
    the decisions and the numbers behind them."""
    import torch

    budget = memory_budget_bytes(cfg.memory_cap_gib)
    margin = 2 * 2**30  # optimizer state, CUDA workspaces, fragmentation
    activations = activation_bytes_per_token(model.config)
    # Without the fused loss, the logits in float32 and their gradient.
    logits = 0 if resolve_fused_cross_entropy(cfg.fused_cross_entropy) else model.config.vocab_size * 8
    quantized_params = sum(p.numel() * 2 for p in model.parameters() if p.dtype == torch.uint8)  # 2 weights a byte
    auto_rows = cfg.packing and cfg.packed_length == "auto"
    if auto_rows:
        if not mean_example_tokens:
            raise ValueError("train.packed_length=auto needs the training examples' mean length")
        smallest = cfg.max_seq_length  # a row must hold the longest example
        ranks = int(os.environ.get("WORLD_SIZE", "1"))  # data parallel: each rank trains its share of the step
        tokens_per_step = max(smallest, _round_up(cfg.packed_examples_per_step * mean_example_tokens / ranks,
                                                  ROW_MULTIPLE))
    else:
        smallest = tokens_per_micro_batch(cfg)

    def room(extra: int) -> int | None:  # tokens whose activations fit beside ``extra`` bytes (None: no budget)
        return None if budget is None else max(0, int((budget - extra - margin) // (activations + logits)))

    dequantize = cfg.dequantize_base
    if dequantize == "auto":
        # Worth it only where the bf16 copy leaves room for activations without checkpointing.
        dequantize = bool(quantized_params) and budget is not None and room(quantized_params * 2) >= smallest
    extra = quantized_params * 2 if dequantize else 0
    if auto_rows:
        fits = room(extra)
        row, accumulation = packed_rows(tokens_per_step, smallest, fits if fits is not None and fits >= smallest else None)
        micro_batch = row
    else:
        micro_batch = smallest
    checkpointing = cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = choose_gradient_checkpointing(
            "auto", model.config, micro_batch, None if budget is None else budget - extra - margin - logits * micro_batch)
    decisions = {"dequantize_base": bool(dequantize), "gradient_checkpointing": bool(checkpointing),
                 "tokens_per_micro_batch": micro_batch,
                 "budget_gib": None if budget is None else round(budget / 2**30, 1),
                 "activation_gib": round(activations * micro_batch / 2**30, 1)}
    if auto_rows:
        decisions.update(packed_length=row, gradient_accumulation_steps=accumulation,
                         examples_per_step=round(row * accumulation / mean_example_tokens, 1))
    return decisions


def resolve_fused_cross_entropy(setting: bool | str) -> bool:
    return _resolve_liger(setting, "train.fused_cross_entropy")


def resolve_fused_kernels(setting: bool | str) -> bool:
    return _resolve_liger(setting, "train.fused_kernels")


def _resolve_liger(setting: bool | str, field: str) -> bool:
    """A Liger option's value: ``auto`` is on with CUDA and liger-kernel; ``true`` without liger-kernel is an error."""
    import importlib.util

    import torch

    if setting == "auto":
        return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if setting and importlib.util.find_spec("liger_kernel") is None:
        from papertune.errors import ConfigError

        raise ConfigError(f"{field}=true needs liger-kernel (pip install liger-kernel; CUDA only)")
    return bool(setting)


def apply_fused_kernels(model: Any, setting: bool | str) -> bool:
    """``train.fused_kernels``: Liger's RMSNorm and SwiGLU kernels on ``model`` (a transformers causal LM, before
    PEFT wraps it); returns whether they were applied.

    Only this instance changes. Liger's patch functions also replace classes in the architecture's
    transformers module; those are put back, so models loaded later in the process (evaluation) are plain
    transformers ones. RoPE is left alone: Liger patches it only module-wide.
    """
    import sys

    if not resolve_fused_kernels(setting):
        return False
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        if setting is True:
            from papertune.errors import ConfigError

            raise ConfigError(f"train.fused_kernels=true: liger-kernel has no kernels for model type {model_type!r}; "
                              "set train.fused_kernels to auto or false")
        log.info("train: no fused kernels for model type %s (liger-kernel); running without", model_type)
        return False
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]
    wanted = dict(rope=False, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    accepted = inspect.signature(apply).parameters  # the options differ between architectures
    modeling = sys.modules[type(model).__module__]
    saved = dict(vars(modeling))
    try:
        apply(model=model, **{k: v for k, v in wanted.items() if k in accepted})
    finally:
        for name, value in saved.items():
            if vars(modeling).get(name) is not value:
                setattr(modeling, name, value)
    return True


def final_hidden_states(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(the decoder's final, normed hidden states, the LM head's weight) for ``inputs``, computed by calling
    ``model`` itself with its LM head bypassed for that call.

    Going through ``model`` (not its inner decoder) matters under DDP: only a forward through the
    DistributedDataParallel wrapper arms its gradient all-reduce for the backward."""
    import torch

    unwrapped = getattr(model, "module", model)  # DDP
    causal_lm = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped  # PEFT
    head = causal_lm.lm_head
    causal_lm.lm_head = torch.nn.Identity()  # the frozen head has no trainable weights: DDP is unaffected
    try:
        hidden = model(**inputs, use_cache=False).logits
    finally:
        causal_lm.lm_head = head
    return hidden, head.weight


def fused_causal_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Causal-LM loss through Liger's fused linear cross-entropy: the decoder's hidden states go to the LM
    head in chunks, so the (tokens x vocabulary) logits never exist. Normalised like transformers' own
    loss: by ``num_items_in_batch`` (labelled tokens of the whole accumulated step) when given, else the mean."""
    import torch
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    labels = inputs.pop("labels")
    inputs.pop("num_items_in_batch", None)
    hidden, weight = final_hidden_states(model, inputs)
    shift_labels = labels[:, 1:].reshape(-1).to(hidden.device)
    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = LigerFusedLinearCrossEntropyLoss(reduction=reduction)(weight, flat.to(weight.dtype), shift_labels)
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return loss

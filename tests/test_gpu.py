"""The fast training path's CUDA pieces on a tiny random Llama: varlen flash attention keeps packed examples
apart, Liger's kernels and fused loss give transformers' numbers, and the dequantized NF4 base gives the 4-bit
model's logits. Marked ``gpu``: run them alone with ``pytest -m gpu`` on a CUDA machine with the gpu extra
installed (``pip install -e '.[gpu,test]'``); elsewhere they are skipped, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from papertune.train.fast import (
    apply_fused_kernels,
    dequantize_4bit_base,
    fused_causal_lm_loss,
    papertune_varlen_attention,
    register_varlen_attention,
    resolve_fused_kernels,
    varlen_attention_available,
)

pytestmark = pytest.mark.gpu

VOCAB = 512


def tiny_llama(dtype: torch.dtype = torch.float32, attention: str = "sdpa"):
    """A 2-layer Llama with grouped-query attention, random weights, on the GPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation=attention)
    return LlamaForCausalLM(config).to(device="cuda", dtype=dtype).eval()


def test_varlen_attention_equals_causal_attention_of_each_example_alone():
    assert varlen_attention_available()
    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [5, 17, 9], 4, 2, 32
    cu = torch.tensor([0, 5, 22, 31], dtype=torch.int32)
    q = torch.randn(1, heads, 31, dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, kv_heads, 31, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out, _ = papertune_varlen_attention(torch.nn.Module(), q, k, v, None, scaling=dim ** -0.5, cu_seq_lens_q=cu,
                                        cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    assert out.shape == (1, 31, heads, dim)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end].repeat_interleave(2, dim=1),
            v[:, :, start:end].repeat_interleave(2, dim=1), is_causal=True, scale=dim ** -0.5)
        torch.testing.assert_close(out[0, start:end], alone[0].transpose(0, 1), atol=2e-2, rtol=2e-2)


def test_a_packed_row_through_the_model_gives_each_example_its_own_logits():
    """The model with ``papertune_varlen`` attention on one packed row (restarting positions, sequence bounds)
    gives every example the logits it gets alone with SDPA. Without the restarting positions too: the sequence
    bounds alone keep the examples apart (RoPE only sees distances), which SDPA's fallback mask could not."""
    attention = register_varlen_attention()
    packed_model = tiny_llama(torch.bfloat16, attention)
    alone_model = tiny_llama(torch.bfloat16, "sdpa")
    lengths = [7, 20, 12]
    examples = [torch.randint(0, VOCAB, (n,), device="cuda") for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    positions = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    with torch.no_grad():
        bounds = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        packed = packed_model(input_ids=torch.cat(examples)[None], position_ids=positions, **bounds).logits[0]
        unpositioned = packed_model(input_ids=torch.cat(examples)[None], **bounds).logits[0]
        for start, example in zip(cu[:-1].tolist(), examples):
            alone = alone_model(input_ids=example[None]).logits[0]
            torch.testing.assert_close(packed[start:start + len(example)], alone, atol=5e-2, rtol=5e-2)
            torch.testing.assert_close(unpositioned[start:start + len(example)], alone, atol=5e-2, rtol=5e-2)


def test_fused_cross_entropy_equals_the_transformers_loss():
    model = tiny_llama(torch.float32)
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 24), device="cuda")
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt: not learned
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss
        fused = fused_causal_lm_loss(model, {"input_ids": ids, "labels": labels.clone()})
        torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)
        # Normalised by the labelled tokens of an accumulated step, as transformers does.
        items = torch.tensor(3 * int((labels[:, 1:] != -100).sum()), device="cuda")
        expected = model(input_ids=ids, labels=labels, num_items_in_batch=items).loss
        fused = fused_causal_lm_loss(model, {"input_ids": ids, "labels": labels.clone()}, num_items_in_batch=items)
        torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)


def test_liger_kernels_keep_the_logits():
    assert resolve_fused_kernels("auto")  # CUDA and liger-kernel: on
    model = tiny_llama(torch.float32)
    ids = torch.randint(0, VOCAB, (2, 16), device="cuda")
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        assert apply_fused_kernels(model, True)
        fused = model(input_ids=ids).logits
    assert "LigerRMSNorm" in repr(model.model.norm) and "LigerRMSNorm" in repr(model.model.layers[0].input_layernorm)
    torch.testing.assert_close(fused, plain, atol=1e-3, rtol=1e-3)


def test_dequantized_nf4_base_gives_the_4bit_models_logits(tmp_path: Path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(torch.float32).save_pretrained(tmp_path, safe_serialization=True)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=nf4, dtype=torch.bfloat16,
                                                 device_map={"": 0})
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each layer
    ids = torch.randint(0, VOCAB, (2, 16), device="cuda")
    with torch.no_grad():
        before = model(input_ids=ids).logits
        replaced, added = dequantize_4bit_base(model)
        after = model(input_ids=ids).logits
    assert replaced == len(quantized) and not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert added == sum(m.in_features * m.out_features * 2 for m in quantized)  # bf16 weights
    torch.testing.assert_close(after, before, atol=2e-2, rtol=2e-2)

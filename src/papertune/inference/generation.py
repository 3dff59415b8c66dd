"""Answers from a loaded causal LM: one batched, streamable ``generate`` with one set of decoding settings.

Every part of papertune that makes a model write text (the teacher LLM's ``hf`` backend, evaluate, ask,
serve, export's checks) goes through this module. Three engines decode (``engine``):

- ``static`` (:func:`generate_batch`): prompts are token ids, left-padded into one batch, so every prompt ends
  where generation starts and each greedy row gets the answer it gets alone; after every token a stopping
  criterion applies each row's own token limit, its stop strings and its cancel event, and streams the text
  so far to the row's ``on_text`` callback. Requests with a ``json_schema`` are constrained here
  (:mod:`.structured`).
- ``continuous`` (:mod:`.continuous`): transformers' continuous batching with a paged KV cache: requests
  stream through the running batch, none padded to the longest, each leaving as soon as it ends.
- ``compiled``: static batches over a KV cache of one fixed size (transformers' static cache), every batch
  filled to ``batch_size`` so that all share one shape; on a GPU transformers compiles the decoding step with
  ``torch.compile`` into CUDA graphs, once, and replays it for every token (on the CPU nothing is compiled).
- ``auto``: static on a GPU, continuous on the CPU (measured, docs/benchmarks.md), but static for constrained
  requests and when the model's generation config asks for what continuous batching cannot apply (a
  repetition penalty).

Greedy (``temperature`` 0) drops the sampling defaults of the model's generation config; sampling requests
decoded together share their settings (a ``seed`` seeds them all). The answer text is decoded without special
tokens and stripped; streamed pieces add up to it.

:func:`generate` is the convenience for many prompts: continuous, or sorted by length and cut into batches.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from papertune.config_data import ENGINES
from papertune.inference.completion import (
    FINISH_REASONS,
    AnswerTracker,
    Completion,
    Decoding,
    GenerationRequest,
    check_one_sampling,
    decoder,
    eos_id_set,
    sampling_kwargs,
)
from papertune.inference.continuous import ContinuousSettings, generate_continuous, settings_it_cannot_apply

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "FINISH_REASONS", "Completion", "Decoding", "GenerationRequest", "generate", "generate_batch",
           "resolve_engine"]

CACHE_LEN_STEP = 256  # the compiled engine's KV cache length is rounded up to a multiple of this


class _Watcher:
    """A stopping criterion called after every generated token: per-row token limits, cancellation, stop
    strings, and streaming of the text so far. Rows need their ids on the host only when they stream or
    have stop strings, so a plain greedy batch adds no device sync per token."""

    def __init__(self, rows: list[AnswerTracker], width: int) -> None:
        self.rows = rows
        self.width = width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        watched = any(r.watched for r in self.rows)
        generated = input_ids[:, self.width:].tolist() if watched else None
        flags = []
        for index, row in enumerate(self.rows):
            if row.length is None:
                if row.request.cancelled.is_set():
                    row.end(step, "cancelled")
                elif generated is not None and row.watched:
                    row.observe(generated[index])
                if row.length is None and step >= row.request.decoding.max_new_tokens:
                    row.end(step, "length")
            flags.append(row.length is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def generate_batch(model: Any, tokenizer: Any, requests: Sequence[GenerationRequest], *,
                   eos_token_id: int | Sequence[int] | None = None,
                   tokenizer_lock: threading.Lock | None = None, cache_len: int | None = None) -> list[Completion]:
    """Continue every request's prompt in one left-padded batch; one completion per request, in order.

    The requests may differ in prompt, token limit, stop strings, streaming and JSON schema; a batch is either
    all greedy or all sampling with the same temperature, top_p and seed. ``eos_token_id`` ends a turn (default:
    the tokenizer's); ``tokenizer_lock`` is held while decoding, for a tokenizer other threads also use.
    ``cache_len``: decode over a static KV cache of that many tokens (the prompt and the longest reply must fit),
    which transformers compiles on a GPU (engine ``compiled``).
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if not requests:
        return []
    check_one_sampling(requests)
    first = requests[0].decoding
    decode = decoder(tokenizer, tokenizer_lock)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = eos_id_set(eos)
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    width = max(len(r.prompt_ids) for r in requests)
    # Left padding: every prompt ends where generation starts (padded cells are masked out).
    input_ids = torch.full((len(requests), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
    for row, request in enumerate(requests):
        n = len(request.prompt_ids)
        input_ids[row, width - n:] = torch.tensor(request.prompt_ids, dtype=torch.long)
        attention_mask[row, width - n:] = 1
    rows = [AnswerTracker(r, decode, eos_ids) for r in requests]
    kwargs: dict[str, Any] = {"max_new_tokens": max(r.decoding.max_new_tokens for r in requests),
                              "pad_token_id": pad_id, "eos_token_id": eos, "do_sample": not first.greedy,
                              "stopping_criteria": StoppingCriteriaList([_Watcher(rows, width)])}
    if any(r.json_schema is not None for r in requests):
        from papertune.inference.structured import json_schema_processor

        kwargs["logits_processor"] = LogitsProcessorList(
            [json_schema_processor(model, tokenizer, [r.json_schema for r in requests], sorted(eos_ids))])
    kwargs.update(sampling_kwargs(first))
    if cache_len is not None:
        if cache_len < width + kwargs["max_new_tokens"]:
            raise ValueError(f"cache_len {cache_len} is shorter than the prompt ({width}) and the longest reply "
                             f"({kwargs['max_new_tokens']})")
        kwargs.update(cache_implementation="static", max_cache_len=cache_len)
    if not first.greedy and first.seed is not None:
        torch.manual_seed(first.seed)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
    generated = output[:, width:].tolist()
    return [row.finish(tokens) for row, tokens in zip(rows, generated)]


def resolve_engine(engine: str, model: Any, *, constrained: bool = False) -> str:
    """``static``, ``continuous`` or ``compiled`` for ``engine`` on this model: auto is static on a GPU, else
    continuous unless the model's generation config asks for what continuous batching cannot apply.
    Constrained (JSON schema) requests never run continuous: continuous batching cannot mask one request's
    logits."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if constrained:
        if engine == "continuous":
            _say_constrained_static()
        return "compiled" if engine == "compiled" else "static"
    if engine == "auto":
        if str(getattr(model, "device", "cpu")).startswith("cuda"):
            return "static"  # measured slower than static batches on CUDA without flash attention (docs/benchmarks.md)
        dropped = settings_it_cannot_apply(model)
        if dropped:
            _say_settings_need_static(", ".join(dropped))
            return "static"
        return "continuous"
    return engine


@functools.cache
def _say_settings_need_static(settings: str) -> None:
    log.info("engine auto decodes in static batches: continuous batching would ignore the model's generation "
             "settings %s (engine continuous drops them)", settings)


@functools.cache
def _say_constrained_static() -> None:
    log.info("replies constrained to a JSON schema are decoded in static batches (continuous batching in "
             "transformers has no per-request logits processing)")


def generate(model: Any, tokenizer: Any, prompts: Sequence[str | list[int]], decoding: Decoding, *,
             batch_size: int = 1, progress: str | None = None,
             eos_token_id: int | Sequence[int] | None = None, engine: str = "auto",
             json_schema: dict[str, Any] | None = None,
             continuous: ContinuousSettings | None = None) -> list[Completion]:
    """Completions of many prompts (text, tokenized without added special tokens, or token ids), in order.

    ``engine`` (auto, static, continuous, compiled: see the module's docstring). Static: longest prompts first,
    in batches of ``batch_size`` (similar lengths waste less on padding, and the longest batch fails fast on
    memory). Compiled: the same, every batch filled to ``batch_size`` (the fillers ask for one token and are
    dropped) over one static KV cache sized for the longest prompt and reply. Continuous: every prompt enters
    one continuous batch (``continuous`` sizes it; ``batch_size`` is not used). ``json_schema`` constrains every reply (static batches). With sampling, ``decoding.seed`` seeds
    once, before the first batch. ``progress`` names a progress bar (none when None).
    """
    import torch
    from tqdm.auto import tqdm

    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) if isinstance(p, str) else list(p)
               for p in prompts]
    if not encoded:
        return []
    chosen = resolve_engine(engine, model, constrained=json_schema is not None)
    if chosen == "continuous":
        requests = [GenerationRequest(ids, decoding) for ids in encoded]
        return generate_continuous(model, tokenizer, requests, eos_token_id=eos_token_id, settings=continuous,
                                   progress=progress)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    if not decoding.greedy and decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    per_batch = replace(decoding, seed=None)
    size = max(1, batch_size)
    cache_len = None
    if chosen == "compiled":
        longest = max(len(e) for e in encoded) + decoding.max_new_tokens
        cache_len = -(-longest // CACHE_LEN_STEP) * CACHE_LEN_STEP
    results: list[Any] = [None] * len(encoded)
    with tqdm(total=len(order), desc=progress, unit="q", disable=progress is None) as bar:
        for start in range(0, len(order), size):
            index = order[start:start + size]
            batch = [GenerationRequest(encoded[i], per_batch, json_schema=json_schema) for i in index]
            if cache_len is not None and len(batch) < size:  # one shape for every batch: nothing recompiles
                filler = replace(per_batch, max_new_tokens=1, stop=())
                batch += [GenerationRequest(encoded[index[-1]], filler, json_schema=json_schema)
                          for _ in range(size - len(batch))]
            answers = generate_batch(model, tokenizer, batch, eos_token_id=eos_token_id, cache_len=cache_len)
            for i, completion in zip(index, answers):
                results[i] = completion
            bar.update(len(index))
    return results

"""Continuous batching: many requests decoded by transformers' ``ContinuousBatchingManager``.

Requests enter one running batch over a paged KV cache: a request's prompt is prefilled while others
decode, and it leaves the batch at its own end of turn or token limit, so no request is padded to the
longest and the GPU stays full until the last one (transformers' scheduler, CUDA graphs and paged
attention; flash attention when installed). Greedy answers are the static batches' answers up to the
floating-point differences of another batch layout.

The answers are finished as :mod:`.generation`'s are (:class:`papertune.inference.completion.AnswerTracker`):
per-request token limits, stop strings (the request is cancelled in the engine once one appears), the
end-of-turn token, streaming of the text so far (``on_text``) and cancellation (``cancel()``).

Works with transformers 5.17 and later (the settings' names are read from its ``ContinuousBatchingConfig``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from papertune.inference.completion import AnswerTracker, Completion, GenerationRequest, check_one_sampling
from papertune.inference.completion import decoder, eos_id_set, sampling_kwargs

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05  # how often cancel events are looked at while waiting for results
CPU_CACHE_BYTES = 1 << 30  # the KV cache's size on the CPU, at most (requests beyond it wait their turn)
CPU_PAGE_SIZE = 64


class ContinuousBatchingError(RuntimeError):
    """The continuous batching engine failed a request or stopped before every request had its answer."""


@dataclass(frozen=True)
class ContinuousSettings:
    """How the continuous batch is sized; 0 / None leave the choice to transformers (from free GPU memory)."""

    max_batch_tokens: int = 0  # tokens of all requests in one forward pass (prefill chunks + one per decoding)
    num_blocks: int = 0  # KV cache blocks; on the CPU 0 sizes the cache for the whole workload
    page_size: int = 0  # tokens per cache page (transformers' block_size before 5.17's rename)
    max_memory_share: float = 0.0  # share of free GPU memory the KV cache may take
    max_requests_per_batch: int = 0
    cuda_graphs: bool | None = None
    compile_level: int = 0  # transformers' default_compile_level (0: no torch.compile)
    warmup: bool = True  # capture CUDA graphs before the first request


# Generation-config settings transformers' continuous batching drops (it has no per-request version of them).
_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "min_new_tokens": (None, 0),
            "min_length": (None, 0), "bad_words_ids": (None,), "sequence_bias": (None,)}


def settings_it_cannot_apply(model: Any) -> list[str]:
    """The model's generation-config settings (e.g. ``repetition_penalty=1.05``) continuous batching would drop,
    so that its answers would differ from static batches' by more than floating point."""
    config = model.generation_config
    return [f"{name}={getattr(config, name)!r}" for name, neutral in _NEUTRAL.items()
            if getattr(config, name, None) not in neutral]


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of key and value cache one token takes in every layer of ``model``."""
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def batching_config(settings: ContinuousSettings, device_type: str, workload_tokens: int, longest_request: int,
                    bytes_per_token: int) -> Any:
    """transformers' ``ContinuousBatchingConfig`` for ``settings``, with only the fields this version has.

    On a GPU transformers sizes the cache from free memory; elsewhere it holds the whole workload, up to
    ``CPU_CACHE_BYTES``, and always the longest request twice over."""
    from transformers.generation import ContinuousBatchingConfig

    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    page_field = "page_size" if "page_size" in names else "block_size"
    wanted: dict[str, Any] = {}
    page = settings.page_size or None
    if settings.num_blocks:
        wanted["num_blocks"] = settings.num_blocks
    elif device_type != "cuda":
        page = page or CPU_PAGE_SIZE
        cap = CPU_CACHE_BYTES // (bytes_per_token * page)
        wanted["num_blocks"] = max(min(-(-workload_tokens // page), cap), 2 * (-(-longest_request // page) + 1), 8)
    if page:
        wanted[page_field] = page
    if settings.max_batch_tokens:
        wanted["max_batch_tokens"] = settings.max_batch_tokens
    elif device_type != "cuda":
        wanted["max_batch_tokens"] = 256
    if settings.max_memory_share:
        wanted["max_memory_percent"] = settings.max_memory_share
    if settings.max_requests_per_batch:
        wanted["max_requests_per_batch"] = settings.max_requests_per_batch
    if settings.cuda_graphs is not None:
        wanted["use_cuda_graph"] = settings.cuda_graphs
    if settings.compile_level:
        wanted["default_compile_level"] = settings.compile_level
    missing = sorted(set(wanted) - names)
    if missing:
        import transformers

        raise ValueError(f"transformers {transformers.__version__}'s continuous batching has no setting "
                         f"{', '.join(missing)}; leave it at 0")
    return ContinuousBatchingConfig(**wanted)


def generate_continuous(model: Any, tokenizer: Any, requests: Sequence[GenerationRequest], *,
                        eos_token_id: int | Sequence[int] | None = None,
                        settings: ContinuousSettings | None = None, progress: str | None = None,
                        tokenizer_lock: threading.Lock | None = None,
                        on_done: Callable[[int, Completion], None] | None = None) -> list[Completion]:
    """One completion per request, in order, decoded in one continuous batch.

    The requests may differ in prompt, token limit, stop strings and streaming; they are all greedy, or all
    sampling with the same temperature, top_p and seed. ``eos_token_id`` ends a turn (default: the
    tokenizer's). ``on_done(index, completion)`` is called as each request finishes (in finishing order).
    JSON-schema requests are refused (decode them with :func:`papertune.inference.generation.generate_batch`).
    Settings of the model's generation config continuous batching cannot apply (:func:`settings_it_cannot_apply`)
    are dropped, with a warning.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers.generation.continuous_batching.utils import WorkloadHints

    if not requests:
        return []
    check_one_sampling(requests)
    if any(r.json_schema is not None for r in requests):
        raise ValueError("continuous batching cannot constrain replies to a JSON schema; use static batches")
    settings = settings or ContinuousSettings()
    dropped = settings_it_cannot_apply(model)
    if dropped:
        log.warning("continuous batching ignores the model's generation settings %s; engine static applies them",
                    ", ".join(dropped))
    first = requests[0].decoding
    decode = decoder(tokenizer, tokenizer_lock)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = eos_id_set(eos)
    longest_reply = max(r.decoding.max_new_tokens for r in requests)
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.update(**sampling_kwargs(first), max_new_tokens=longest_reply, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
    lengths = [len(r.prompt_ids) + r.decoding.max_new_tokens for r in requests]
    device_type = next(model.parameters()).device.type
    config = batching_config(settings, device_type, sum(lengths), max(lengths), kv_bytes_per_token(model))
    if not first.greedy and first.seed is not None:
        config.seed = first.seed
        torch.manual_seed(first.seed)
    hints = WorkloadHints(max_prompt_length=max(len(r.prompt_ids) for r in requests),
                          max_generated_length=longest_reply, num_requests=len(requests))
    trackers = [AnswerTracker(r, decode, eos_ids) for r in requests]
    request_ids = [f"papertune-{i}" for i in range(len(requests))]
    index_of = {rid: i for i, rid in enumerate(request_ids)}
    latest: list[list[int]] = [[] for _ in requests]  # tokens seen so far (streamed requests)
    results: list[Completion | None] = [None] * len(requests)
    pending = set(range(len(requests)))

    def finish(i: int, tokens: list[int]) -> None:
        results[i] = trackers[i].finish(tokens)
        pending.discard(i)
        bar.update(1)
        if on_done is not None:
            on_done(i, results[i])

    with tqdm(total=len(requests), desc=progress, unit="q", disable=progress is None) as bar, \
            model.continuous_batching_context_manager(generation_config=generation_config, block=True,
                                                      continuous_batching_config=config, warmup=settings.warmup,
                                                      workload_hints=hints) as manager:
        try:
            for i, request in enumerate(requests):
                manager.add_request(request.prompt_ids, request_id=request_ids[i], streaming=trackers[i].watched,
                                    max_new_tokens=request.decoding.max_new_tokens,
                                    eos_token_id=sorted(eos_ids) if eos_ids else -1)
            polled = time.monotonic()
            while pending:
                if time.monotonic() - polled >= CANCEL_POLL_S:
                    polled = time.monotonic()
                    for i in [i for i in pending if requests[i].cancelled.is_set()]:
                        manager.cancel_request(request_ids[i])
                        trackers[i].end(len(latest[i]), "cancelled")
                        finish(i, latest[i])
                output = manager.get_result(timeout=CANCEL_POLL_S)
                if output is None:
                    if not manager.is_running():
                        raise ContinuousBatchingError(
                            f"continuous batching stopped with {len(pending)} of {len(requests)} requests unanswered")
                    continue
                i = index_of.get(output.request_id)
                if i is None or i not in pending:  # a late streamed piece of a request already finished here
                    continue
                if output.error is not None:
                    raise ContinuousBatchingError(f"continuous batching failed a request: {output.error}")
                tokens = list(output.generated_tokens)
                latest[i] = tokens
                if output.is_finished():
                    finish(i, tokens)
                elif trackers[i].observe(tokens):  # a stop string (or end of turn) seen while streaming
                    manager.cancel_request(request_ids[i])
                    finish(i, tokens)
        except BaseException:
            for i in pending:  # nothing left to decode when the manager flushes on the way out
                manager.cancel_request(request_ids[i])
            raise
    return [r for r in results if r is not None]

"""Instruct models that write text for the pipeline: one interface, four backends.

- ``hf``: a local Hugging Face model in this process, batched generation (``papertune.inference``).
- ``openai``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, papertune serve), with a
  concurrency limit, timeouts and retries with backoff.
- ``llamacpp``: a GGUF file run by llama.cpp's server in this process (``papertune.inference.llamacpp``),
  started on first use, asked exactly as the ``openai`` backend asks a server, with parallel slots.
- ``vllm``: vLLM on a GPU (``papertune.inference.vllm_engine``): every conversation of a call
  handed to its continuous batching at once, replies constrained by vLLM's structured outputs.

Replies can be constrained to a JSON schema (``chat(..., json_schema=SCHEMA)``): the server backends send
it as an OpenAI ``response_format``, so every reply parses; ``hf`` constrains them with xgrammar when
``constrain_json`` is set (static batches), and otherwise says once that it parses them leniently.

``hf`` decodes with the engine ``engine`` names (static padded batches, or continuous batching on a GPU:
papertune.inference); ``hf`` and ``vllm`` run ``replicas`` copies of the model (one per GPU, the
conversations shared out).
``openai`` spreads requests over every server of ``base_url`` and retries a failed one on another.

Callers use ``make_chat_model(cfg, "generate.llm").chat(conversations)`` and get one reply per
conversation, in order. This module holds ``hf`` and ``vllm``; the server backends (``openai``,
``llamacpp``) are in :mod:`papertune.llm_server` and the shared types in :mod:`papertune.llm_base`, all
imported from here.

Failures are :class:`papertune.errors.PapertuneError` subclasses with messages naming the setting:
:class:`LLMUnreachableError` (no server at ``base_url``; a config problem) and :class:`LLMRequestError`
(a request that still failed after the retries). Both carry ``replies``: the replies of the other
conversations of the same call that did finish (``None`` where not), so a caller can keep them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from typing import Any

from papertune.config import LLMConfig
from papertune.config_data import LLM_BACKENDS
from papertune.errors import ConfigError
from papertune.inference import ContinuousSettings, Decoding, generate
from papertune.inference.structured import require_xgrammar
from papertune.llm_base import ChatModel, LLMRequestError, LLMUnreachableError, Message
from papertune.llm_server import LlamaCppChatModel, OpenAIChatModel

log = logging.getLogger(__name__)

__all__ = ["ChatModel", "HFChatModel", "LLMRequestError", "LLMUnreachableError", "LlamaCppChatModel", "Message",
           "OpenAIChatModel", "VLLMChatModel", "chat_prompt", "make_chat_model"]


def make_chat_model(cfg: LLMConfig, setting: str) -> ChatModel:
    """The backend ``cfg.backend`` names; ``setting`` (e.g. "generate.llm") names the config in errors."""
    if cfg.backend == "hf":
        return HFChatModel(cfg, setting)
    if cfg.backend == "openai":
        return OpenAIChatModel(cfg, setting)
    if cfg.backend == "llamacpp":
        return LlamaCppChatModel(cfg, setting)
    if cfg.backend == "vllm":
        return VLLMChatModel(cfg, setting)
    raise ConfigError(f"{setting}.backend must be one of {', '.join(LLM_BACKENDS)}, got {cfg.backend!r}")


# ---------------------------------------------------------------------------------------------
# hf: in-process generation


@functools.lru_cache(maxsize=8)
def _load_hf(spec: str, setting: str, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """Model and tokenizer, loaded once per process and device (generate and augment may share one model)."""
    from papertune.models import load_causal_lm

    return load_causal_lm(spec, setting=setting, device=device, trust_remote_code=trust_remote_code)


@functools.cache
def _warn_unconstrained(setting: str) -> None:
    """Said once per setting: the hf backend generates freely, so a reply may not match the schema."""
    log.info("%s: backend hf generates replies without their JSON schema and parses them leniently (set "
             "%s.constrain_json: true to constrain them; static batches)", setting, setting)


def replica_devices(cfg: LLMConfig, setting: str) -> list[str]:
    """The devices the hf and vllm backends load a copy of the model on: ``cfg.device`` alone, or one GPU
    each."""
    if cfg.replicas == 1:
        return [cfg.device]
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.replicas == 0 and gpus <= 1:
        return [cfg.device]
    if cfg.device not in ("auto", "cuda"):
        raise ConfigError(f"{setting}.replicas={cfg.replicas} puts one copy of the model on each GPU; it needs "
                          f"{setting}.device: auto (got {cfg.device!r}), or set {setting}.replicas: 1")
    count = gpus if cfg.replicas == 0 else cfg.replicas
    if count > gpus:
        raise ConfigError(f"{setting}.replicas={cfg.replicas} needs as many GPUs, but torch sees {gpus}; set "
                          f"{setting}.replicas to at most {gpus} (0: one per GPU)")
    return [f"cuda:{i}" for i in range(count)]


def chat_prompt(tokenizer: Any, conversation: list[Message]) -> str:
    """The model's chat template applied to ``conversation``, ready for the reply. It holds every special token
    the model expects: the prompt is tokenized without adding any."""
    return tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)


class HFChatModel(ChatModel):
    """A local causal LM with a chat template; batched (static or continuous), greedy at temperature 0."""

    def __init__(self, cfg: LLMConfig, setting: str) -> None:
        self.cfg = cfg
        self.setting = setting
        self.name = cfg.model
        if cfg.constrain_json:
            require_xgrammar(f"{setting}.constrain_json")
        devices = replica_devices(cfg, setting)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(devices)) as pool:
            self.replicas = list(pool.map(
                lambda device: _load_hf(cfg.model, f"{setting}.model", device, cfg.trust_remote_code), devices))
        self.model, self.tokenizer = self.replicas[0]
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"{setting}.model={cfg.model!r} has no chat template; use an instruct (chat) model such as "
                f"SmolLM2-135M-Instruct or Qwen2.5-*-Instruct"
            )

    def _prompt(self, conversation: list[Message]) -> str:
        return chat_prompt(self.tokenizer, conversation)

    def replies(self, conversations: list[list[Message]], max_new_tokens: int, temperature: float,
                json_schema: dict[str, Any] | None, seed: int) -> list[str]:
        if json_schema is not None and not self.cfg.constrain_json:
            _warn_unconstrained(self.setting)
            json_schema = None
        # transformers samples a batch from one generator: the call's seed seeds it
        decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        prompts = [self._prompt(c) for c in conversations]
        settings = ContinuousSettings(max_batch_tokens=self.cfg.max_batch_tokens)

        def answer(replica: tuple[Any, Any], share: list[str]) -> list[str]:
            model, tokenizer = replica
            completions = generate(model, tokenizer, share, decoding, batch_size=self.cfg.batch_size,
                                   eos_token_id=model.generation_config.eos_token_id, engine=self.cfg.engine,
                                   json_schema=json_schema, continuous=settings)
            return [c.text for c in completions]

        if len(self.replicas) == 1 or len(prompts) == 1:
            return answer(self.replicas[0], prompts)
        # Every replica takes every n-th conversation (similar mixes of lengths), on its own GPU at once.
        n = len(self.replicas)
        with concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="papertune-replica") as pool:
            shares = list(pool.map(answer, self.replicas, [prompts[k::n] for k in range(n)]))
        replies: list[str] = [""] * len(prompts)
        for k, share in enumerate(shares):
            replies[k::n] = share
        return replies


# ---------------------------------------------------------------------------------------------
# vllm: vLLM on a GPU


class VLLMChatModel(ChatModel):
    """A model run by vLLM; prompts from the model's chat template tokenized as ``hf`` does
    them, so both backends ask the same tokens. One engine per process serves every setting naming the
    same model (a teacher and a judge share it); with ``replicas``, one engine per GPU, the prompts shared out."""

    def __init__(self, cfg: LLMConfig, setting: str) -> None:
        from transformers import AutoTokenizer

        from papertune.inference.vllm_engine import shared_engine

        self.cfg = cfg
        self.name = cfg.model
        self.engine = shared_engine(cfg.model, setting=setting, memory_share=cfg.memory_share,
                                    max_model_len=cfg.context_length, trust_remote_code=cfg.trust_remote_code,
                                    devices=replica_devices(cfg, setting))
        self.tokenizer = AutoTokenizer.from_pretrained(self.engine.path, trust_remote_code=cfg.trust_remote_code)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{setting}.model={cfg.model!r} has no chat template; use an instruct (chat) model")

    def replies(self, conversations: list[list[Message]], max_new_tokens: int, temperature: float,
                json_schema: dict[str, Any] | None, seed: int) -> list[str]:
        decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        prompts = [self.tokenizer(chat_prompt(self.tokenizer, c), add_special_tokens=False)["input_ids"]
                   for c in conversations]
        return [c.text for c in self.engine.generate(prompts, decoding, json_schema=json_schema)]

"""Instruct models that write text for the pipeline: one interface, two backends.

- ``hf``: a local Hugging Face model in this process, batched generation.
- ``openai``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, papertune serve), with a
  concurrency limit, timeouts and retries with backoff.

Callers use ``make_chat_model(cfg, "generate.llm").chat(conversations)`` and get one reply per
conversation, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from papertune.config import LLMConfig

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class ChatModel(Protocol):
    name: str

    def chat(
        self,
        conversations: Sequence[list[Message]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
    ) -> list[str]:
        """One reply per conversation, in the same order."""
        ...


def make_chat_model(cfg: LLMConfig, setting: str) -> ChatModel:
    """The backend ``cfg.backend`` names; ``setting`` (e.g. "generate.llm") names the config in errors."""
    raise NotImplementedError("being written: papertune.llm backends")  # replaced by the hf/openai backends

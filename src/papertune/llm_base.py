"""What every chat backend of :mod:`papertune.llm` shares: a message, the :class:`ChatModel` interface,
and the two failures a caller can catch (each carrying the replies of a call that did arrive)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from papertune.errors import ConfigError, PapertuneError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class ChatModel:
    """A chat model: :meth:`chat` gives one reply per conversation, in order. A backend sets ``name`` and
    ``cfg`` (its :class:`papertune.config.LLMConfig`) and writes :meth:`replies`; the call's options are
    resolved against ``cfg`` here, once for every backend. Stand-ins (tests) may write ``chat`` alone."""

    name: str
    cfg: Any

    def chat(
        self,
        conversations: Sequence[list[Message]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        json_schema: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> list[str]:
        """One reply per conversation, in the same order; ``max_new_tokens`` and ``temperature`` default to
        the setting's. Sampled replies are seeded per conversation and ``seed``
        (:func:`papertune.inference.request_seed`): a rerun draws what the run before drew; a caller asking the
        same conversations again for other replies passes another ``seed``.

        ``json_schema`` (a JSON Schema dict) asks the backend to constrain each reply to it; a backend
        that cannot (``hf`` without ``constrain_json``) says so once in the log and the caller parses the
        reply leniently.
        """
        if not conversations:
            return []
        return self.replies(list(conversations), max_new_tokens or self.cfg.max_new_tokens,
                            self.cfg.temperature if temperature is None else temperature, json_schema, seed)

    def replies(self, conversations: list[list[Message]], max_new_tokens: int, temperature: float,
                json_schema: dict[str, Any] | None, seed: int) -> list[str]:
        """The backend's replies to a non-empty call, its options resolved."""
        raise NotImplementedError


class LLMRequestError(PapertuneError):
    """A request to the model failed for good (after the retries, or with an error not worth retrying)."""

    def __init__(self, message: str, *, reason: str = "", replies: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.replies = replies


class LLMUnreachableError(ConfigError):
    """No server answers at the configured ``base_url``: a setting to fix (exit code 2), not a bad request."""

    def __init__(self, message: str, *, replies: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.reason = message
        self.replies = replies

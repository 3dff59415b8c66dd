"""llama.cpp's server in this process, on a GGUF file: the one way papertune runs llama.cpp.

``xllamacpp`` (a prebuilt CPU wheel of llama.cpp on PyPI) starts llama.cpp's own HTTP server inside this
process, listening on 127.0.0.1 only. :class:`LlamaCppServer` sets it up (context, parallel slots with
continuous batching, threads, prompt caching so a shared system prompt is evaluated once per slot) and gives:

- ``openai_base_url``: the OpenAI-compatible API (``/v1/chat/completions``, with ``response_format``
  JSON schemas), used by the ``llamacpp`` backend of :mod:`papertune.llm`;
- :meth:`LlamaCppServer.greedy` and :meth:`LlamaCppServer.tokenize`: llama.cpp's native ``/completion`` and
  ``/tokenize`` endpoints in token ids, used by ``papertune export`` to check a GGUF file.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

from papertune.errors import ConfigError, PapertuneError
from papertune.models import is_gguf

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install xllamacpp"


class LlamaCppStartError(PapertuneError):
    """llama.cpp's server did not start on the file (bad file, not enough memory, an unknown architecture)."""


def xllamacpp_version() -> str | None:
    """The xllamacpp version when that prebuilt llama.cpp binding is installed, else None."""
    try:
        import xllamacpp
    except ImportError:
        return None
    return str(getattr(xllamacpp, "__version__", "?"))


def thread_count(threads: int) -> int:
    """``threads`` CPU threads, 0 meaning every core this process may use."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppServer:
    """A GGUF file served by llama.cpp in this process on 127.0.0.1 (CPU).

    ``n_ctx`` is the context of ONE conversation (prompt + reply); the server holds ``n_parallel`` slots of
    it and decodes them together (continuous batching). ``threads`` 0 uses every core. ``setting`` names
    the config in errors (e.g. ``generate.llm.model``).
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_parallel: int = 1, threads: int = 0,
                 setting: str = "model") -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise ConfigError(f"{setting}: running a GGUF file in llama.cpp needs xllamacpp ({INSTALL_HINT})") from exc
        path = Path(path)
        if not is_gguf(path):
            raise ConfigError(f"{setting}: {path} is not a GGUF file (llama.cpp runs .gguf files only)")
        if n_ctx < 1 or n_parallel < 1 or threads < 0:
            raise ValueError(f"n_ctx and n_parallel must be >= 1 and threads >= 0, got {n_ctx}, {n_parallel}, {threads}")
        self.path = path
        self.n_ctx = int(n_ctx)
        self.n_parallel = int(n_parallel)
        self.threads = thread_count(threads)
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = self.n_ctx * self.n_parallel  # llama.cpp splits the context evenly among the slots
        params.n_parallel = self.n_parallel
        params.cont_batching = True
        params.cache_prompt = True
        params.warmup = False
        params.verbosity = -1
        params.n_gpu_layers = 0
        params.hostnames = ["127.0.0.1"]
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        # Threads sleep rather than spin while they wait for each other: on a machine whose cores are busy
        # with other work, spinning threads slowed generation ~30x (2 threads on 2 shared cores).
        params.cpuparams.poll = 0
        params.cpuparams_batch.poll = 0
        started = time.monotonic()
        try:
            self._server: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise LlamaCppStartError(
                f"{setting}: llama.cpp's server failed to start on {path} ({exc}); check that the file is a "
                f"complete GGUF model of an architecture llama.cpp knows and that memory suffices for "
                f"{self.n_parallel} slot(s) of {self.n_ctx} tokens"
            ) from exc
        self.address = (getattr(self._server, "listening_address", "") or "").rstrip("/")
        if not self.address.startswith("http://127.0.0.1"):
            self.close()
            raise LlamaCppStartError(f"{setting}: llama.cpp's server gave no loopback address ({self.address!r})")
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        log.info("llama.cpp serves %s at %s (%d slot(s) x %d tokens, %d threads) after %.1f s", path.name,
                 self.address, self.n_parallel, self.n_ctx, self.threads, time.monotonic() - started)

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-compatible API's base URL (``.../v1``)."""
        return f"{self.address}/v1"

    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._server is None:
            raise RuntimeError("the llama.cpp server is closed")
        request = urllib.request.Request(f"{self.address}/{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with self._opener.open(request, timeout=600) as response:
            return json.loads(response.read())

    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt_ids``; ends with the end-of-generation token if it stopped on one."""
        if max_new_tokens < 1:
            return []
        result = self._post("completion", {
            "prompt": [int(i) for i in prompt_ids], "n_predict": int(max_new_tokens), "temperature": 0.0,
            "top_k": 1, "return_tokens": True, "cache_prompt": False, "seed": 0,
        })
        return [int(t) for t in result["tokens"]]

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenization of ``text`` with the file's tokenizer: special tokens parsed, no BOS added."""
        result = self._post("tokenize", {"content": text, "add_special": False, "parse_special": True})
        return [int(t) for t in result["tokens"]]

    def close(self) -> None:
        """Stop the server and free the model (xllamacpp stops it when the server object is released)."""
        self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

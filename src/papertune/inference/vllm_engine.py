"""vLLM on a GPU, driven from this process: the one way papertune runs vLLM (backend ``vllm`` of
:mod:`papertune.llm`, ``evaluate.engine: vllm``).

vLLM decodes with continuous batching over a paged KV cache, CUDA graphs and its own attention kernels, the
fastest of papertune's ways to write many replies on one GPU. :class:`VLLMEngine` loads the model once: a
``.gguf``, ``packaged:`` or ``python-package:`` model is first converted into a plain folder by
:func:`papertune.models.resolve_model`, so vLLM reads the same bf16 weights the ``hf`` backend loads. Prompts
are given as token ids, tokenized by the caller with the model's chat template exactly as for every other
backend; greedy at temperature 0; a reply can be constrained to a JSON schema (vLLM's structured outputs,
through xgrammar); a LoRA adapter can answer beside the base model. vLLM's engine core runs in a process of
its own (vLLM's default): after transformers and sentence-transformers had used the card in papertune's process,
vLLM's CUDA-graph capture failed there once in two loads, and never in a process of its own (docs/benchmarks.md);
released, that process ends and the card is free again. :class:`VLLMReplicas` runs one engine per GPU, each in a
process that sees only its GPU, and shares each call's prompts out among them (vLLM's offline engine runs one
copy of a model per process). vLLM needs its own install (``pip install vllm``) and a CUDA GPU.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from papertune.errors import ConfigError
from papertune.inference.completion import Completion, Decoding, request_seed

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install vllm (a CUDA GPU and the torch version vLLM pins)"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the LoRA ranks vLLM can reserve room for


def vllm_version() -> str | None:
    """vLLM's version when it is installed, else None (imports nothing heavy)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return None


def sampling_params(decoding: Decoding, json_schema: dict[str, Any] | None = None,
                    prompt: Sequence[int] = ()) -> Any:
    """vLLM's sampling settings for ``decoding``: greedy at temperature 0 (vLLM then ignores top-p and the
    seed), stop strings left out of the text, the reply constrained to ``json_schema`` (compact) when given.
    Sampling, the seed is the prompt's own (:func:`request_seed` of its tokens and ``decoding.seed``)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    kwargs: dict[str, Any] = {"max_tokens": decoding.max_new_tokens, "temperature": decoding.temperature,
                              "stop": list(decoding.stop) or None}
    if not decoding.greedy:
        kwargs["top_p"] = 1.0 if decoding.top_p is None else decoding.top_p
        kwargs["seed"] = request_seed(list(prompt), decoding.seed or 0)
    if json_schema is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(json=json_schema)
    return SamplingParams(**kwargs)


class VLLMEngine:
    """One model loaded by vLLM.

    ``memory_share`` is the share of the GPU's memory vLLM may take for weights, activations and its KV cache
    (it reserves it at start: leave room for anything else on the card); ``max_model_len`` the longest
    prompt plus reply; ``setting`` names the config in errors (e.g. ``generate.llm``).
    """

    def __init__(self, spec: str, *, setting: str, memory_share: float = 0.5, max_model_len: int = 8192,
                 trust_remote_code: bool = False, seed: int = 0, lora_rank: int = 0,
                 flag: str | None = None, instead: str | None = None) -> None:
        flag = flag or f"{setting}.backend"  # the setting that chose vLLM, and what errors suggest instead
        lora: dict[str, Any] = {}
        if lora_rank:
            fits = [r for r in LORA_RANKS if r >= lora_rank]
            if not fits:
                raise ConfigError(f"{flag}=vllm: vLLM serves LoRA adapters up to rank {LORA_RANKS[-1]}, this one "
                                  f"has rank {lora_rank}; {instead or 'use another backend'}")
            lora = {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": 1}
        if vllm_version() is None:
            raise ConfigError(f"{flag}=vllm needs vLLM, which is not installed ({INSTALL_HINT}); or "
                              f"{instead or f'use {flag}: hf'}")
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{flag}=vllm runs on a CUDA GPU and torch sees none; "
                              f"{instead or f'use {flag}: hf or llamacpp on this machine'}")
        from vllm import LLM

        from papertune.models import resolve_model

        path = resolve_model(spec, f"{setting}.model")
        if importlib.util.find_spec("flashinfer") is None:
            # vLLM samples top-k/top-p with FlashInfer when asked to (its default) and fails where FlashInfer
            # is not installed; its own PyTorch sampler does the same job.
            os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        started = time.monotonic()
        # Compact JSON in constrained replies, as the hf backend constrains them: no run of whitespace can use
        # up the token budget (vLLM sets this for the engine, not per request).
        self.llm = LLM(model=path, tokenizer=path, dtype="bfloat16", gpu_memory_utilization=memory_share,
                       max_model_len=max_model_len, seed=seed, trust_remote_code=trust_remote_code,
                       enable_prefix_caching=True,
                       structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True}, **lora)
        self.path = path
        self._adapters: dict[str, int] = {}
        _live(self)
        log.info("vLLM %s loaded %s in %.1f s (%.0f%% of the GPU's memory)", vllm_version(), path,
                 time.monotonic() - started, 100 * memory_share)

    def generate(self, prompts: Sequence[Sequence[int]], decoding: Decoding, *,
                 json_schema: dict[str, Any] | None = None, adapter: str | Path | None = None) -> list[Completion]:
        """The answer to each prompt (token ids), in order: all submitted at once, vLLM schedules them.
        ``adapter`` (a PEFT LoRA folder; the engine was made with ``lora_rank``) answers with the model plus it."""
        if not prompts:
            return []
        # greedy: one set of sampling settings for all; sampling: each prompt with its own seed
        params = (sampling_params(decoding, json_schema) if decoding.greedy
                  else [sampling_params(decoding, json_schema, p) for p in prompts])
        lora_request = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            key = str(Path(adapter).resolve())
            number = self._adapters.setdefault(key, len(self._adapters) + 1)  # vLLM's id for it: one per folder
            lora_request = LoRARequest(f"adapter-{number}", number, key)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False,
                                    lora_request=lora_request)
        completions = []
        for prompt, output in zip(prompts, outputs):
            reply = output.outputs[0]
            reason = {"length": "length", "abort": "cancelled"}.get(reply.finish_reason or "", "stop")
            completions.append(Completion(text=reply.text.strip(), token_ids=list(reply.token_ids),
                                          finish_reason=reason, prompt_tokens=len(prompt),
                                          completion_tokens=len(reply.token_ids)))
        return completions

    def release(self) -> None:
        """Give the GPU memory back: the engine core shuts down (its process ends), then vLLM's own cleanup of
        what it keeps in this process. The engine is unusable after."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        _forget(self)
        cleanup_dist_env_and_memory()
        log.info("vLLM released %s", self.path)


def _replica_main(conn: Any, device: str, make: Callable[..., Any], spec: str, kwargs: dict[str, Any]) -> None:
    """One replica's process: load the engine on ``device`` alone, then answer the parent's requests until it
    asks for release (or goes away). Every reply is ``("ok", value)`` or ``("error", (exception name,
    message))``."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        engine = make(spec, **kwargs)
        conn.send(("ok", engine.path))
    except Exception as exc:  # reported to the parent, which raises it with the device named
        conn.send(("error", (type(exc).__name__, str(exc))))
        return
    while True:
        try:
            request = conn.recv()
        except EOFError:
            request = ("release",)
        if request[0] == "release":
            engine.release()
            if not conn.closed:
                with contextlib.suppress(OSError):  # the parent may be gone already
                    conn.send(("ok", None))
            return
        try:
            _, prompts, decoding, json_schema, adapter = request
            conn.send(("ok", engine.generate(prompts, decoding, json_schema=json_schema, adapter=adapter)))
        except Exception as exc:
            conn.send(("error", (type(exc).__name__, str(exc))))


class VLLMReplicas:
    """One vLLM engine per device (a CUDA device id as ``CUDA_VISIBLE_DEVICES`` names it), each in a process of
    its own; a call's prompts are dealt out in turn (prompt k to replica k mod n, so each gets long and short
    ones alike) and the replies come back in the prompts' order. ``make`` builds one engine in a replica's
    process (:class:`VLLMEngine`); the keyword arguments go to it."""

    def __init__(self, spec: str, *, devices: Sequence[str], make: Callable[..., Any] = VLLMEngine,
                 **kwargs: Any) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked process
        self.devices = list(devices)
        self._workers: list[tuple[Any, Any]] = []
        started = time.monotonic()
        for device in self.devices:
            parent, child = context.Pipe()
            process = context.Process(target=_replica_main, args=(child, device, make, spec, kwargs),
                                      name=f"papertune-vllm-{device}")
            process.start()
            child.close()
            self._workers.append((process, parent))
        _live(self)
        loaded = self._replies("load")
        self.path = loaded[0]
        log.info("vLLM: %d replicas of %s loaded in %.1f s (devices %s)", len(self.devices), self.path,
                 time.monotonic() - started, ", ".join(self.devices))

    def _replies(self, what: str) -> list[Any]:
        """Each replica's reply, in order; the first error (naming its device) raised after all have answered,
        and then every replica is shut down."""
        replies, errors, kinds = [], [], set()
        for device, (process, conn) in zip(self.devices, self._workers):
            try:
                status, value = conn.recv()
            except EOFError:
                process.join(timeout=5)
                status, value = "error", ("EOFError", f"its process ended (exit code {process.exitcode})")
            if status == "error":
                kinds.add(value[0])
                errors.append(f"the vLLM replica on GPU {device} failed to {what}: {value[1]}")
            replies.append(value)
        if errors:
            self.release()
            # a setting's error (vLLM missing, a rank it cannot serve) stays one, naming the setting to change
            raise (ConfigError if kinds == {"ConfigError"} else RuntimeError)("; ".join(errors))
        return replies

    def generate(self, prompts: Sequence[Sequence[int]], decoding: Decoding, *,
                 json_schema: dict[str, Any] | None = None, adapter: str | Path | None = None) -> list[Completion]:
        """As :meth:`VLLMEngine.generate`, the prompts shared out among the replicas, which decode at once."""
        if not prompts:
            return []
        n = len(self._workers)
        where = None if adapter is None else str(Path(adapter).resolve())
        for k, (_, conn) in enumerate(self._workers):
            conn.send(("generate", [list(p) for p in prompts[k::n]], decoding, json_schema, where))
        completions: list[Any] = [None] * len(prompts)
        for k, share in enumerate(self._replies("generate")):
            completions[k::n] = share
        return completions

    def release(self) -> None:
        """Every replica releases its engine and its process ends."""
        for process, conn in self._workers:
            try:
                if process.is_alive():
                    conn.send(("release",))
                    conn.recv()
            except (EOFError, OSError):  # the replica's process is gone already
                pass
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._workers = []
        _forget(self)


def cuda_device_ids(devices: Sequence[str]) -> list[str]:
    """``cuda:K`` devices as the ids a process's ``CUDA_VISIBLE_DEVICES`` takes, through this process's own
    ``CUDA_VISIBLE_DEVICES`` when it narrows the GPUs (cuda:1 under ``CUDA_VISIBLE_DEVICES=2,3`` is GPU 3)."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = []
    for device in devices:
        index = int(device.split(":")[1]) if ":" in device else 0
        ids.append(visible[index] if index < len(visible) else str(index))
    return ids


_ENGINES: dict[tuple[str, float, int, bool, tuple[str, ...]], VLLMEngine | VLLMReplicas] = {}
_LIVE: list[Any] = []  # every engine not yet released, shared or not


def _live(engine: Any) -> None:
    """Note a loaded engine. Every load also asks for every engine to be released when the interpreter exits
    (once: registering again moves it first): an engine core or replica process left running would keep this
    process from ending, and exit handlers run last-registered first, so this runs before vLLM's and
    multiprocessing's own."""
    atexit.unregister(release_engines)
    atexit.register(release_engines)
    _LIVE.append(engine)


def _forget(engine: Any) -> None:
    """A released engine: no longer shared, nothing left to release at exit."""
    _LIVE[:] = [e for e in _LIVE if e is not engine]
    for key in [k for k, e in _ENGINES.items() if e is engine]:
        del _ENGINES[key]


def shared_engine(spec: str, *, setting: str, memory_share: float = 0.5, max_model_len: int = 8192,
                  trust_remote_code: bool = False, devices: Sequence[str] = ()) -> VLLMEngine | VLLMReplicas:
    """One engine per model and settings in this process: settings naming the same model (a teacher and a
    judge) share it rather than each reserving its share of the GPU. Two or more ``devices`` (``cuda:K``):
    one replica on each (:class:`VLLMReplicas`)."""
    key = (spec, memory_share, max_model_len, trust_remote_code, tuple(devices))
    if key not in _ENGINES:
        kwargs = {"setting": setting, "memory_share": memory_share, "max_model_len": max_model_len,
                  "trust_remote_code": trust_remote_code}
        if len(devices) > 1:
            from papertune.models import resolve_model

            # converted (a .gguf) or fetched once, here, rather than by every replica at once
            path = resolve_model(spec, f"{setting}.model")
            _ENGINES[key] = VLLMReplicas(path, devices=cuda_device_ids(devices), **kwargs)
        else:
            _ENGINES[key] = VLLMEngine(spec, **kwargs)
    return _ENGINES[key]


def release_engines() -> None:
    """Release every engine of this process not yet released, shared or not: between the stages of
    ``papertune run`` (the next stage, training say, gets the card back), after every command, and at exit."""
    for engine in list(_LIVE):
        try:
            engine.release()
        except Exception as exc:  # noqa: BLE001 - one engine failing to release must not keep the others
            log.warning("vLLM: releasing %s failed: %s", getattr(engine, "path", engine), exc)

"""Stand-ins for a vLLM engine, importable by the processes :class:`papertune.inference.vllm_engine.VLLMReplicas`
starts (a spawned process finds this module on the test run's sys.path): no GPU, no vLLM."""

from __future__ import annotations

import os

from papertune.errors import ConfigError
from papertune.inference import Completion


class DeviceEcho:
    """Replies with the GPU its process sees, the prompt's length and the adapter asked for. A model named
    ``broken`` fails to load, as vLLM missing does."""

    def __init__(self, spec: str, **kwargs) -> None:
        if spec == "broken":
            raise ConfigError("generate.llm.backend=vllm needs vLLM, which is not installed")
        self.path, self.kwargs = spec, kwargs

    def generate(self, prompts, decoding, *, json_schema=None, adapter=None):
        device = os.environ["CUDA_VISIBLE_DEVICES"]
        return [Completion(f"{device}|{len(p)}|{adapter}|{decoding.max_new_tokens}|{json_schema}", list(p), "stop",
                           len(p), len(p)) for p in prompts]

    def release(self) -> None:
        pass

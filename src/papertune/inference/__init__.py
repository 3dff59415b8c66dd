"""Inference: loading the model that answers (:mod:`.loading`), generating with it (:mod:`.generation`: static
batches, or continuous batching in :mod:`.continuous`; requests and answers in :mod:`.completion`; JSON-schema
constraints in :mod:`.structured`), and llama.cpp's server in this process on a GGUF file (:mod:`.llamacpp`,
imported where used)."""

from papertune.inference.completion import Completion, Decoding, GenerationRequest, request_seed
from papertune.inference.continuous import ContinuousSettings, generate_continuous
from papertune.inference.generation import ENGINES, generate, generate_batch, resolve_engine
from papertune.inference.loading import (
    LoadedModel,
    adapter_path,
    attach_adapter,
    check_adapter,
    load_base,
    load_for_answering,
    load_merged,
)

__all__ = ["ENGINES", "Completion", "ContinuousSettings", "Decoding", "GenerationRequest", "LoadedModel", "adapter_path",
           "attach_adapter", "check_adapter", "generate", "generate_batch", "generate_continuous", "load_base",
           "load_for_answering", "load_merged", "request_seed", "resolve_engine"]

"""Inference: loading the model that answers (:mod:`.loading`), generating with it (:mod:`.generation`),
and llama.cpp's server in this process on a GGUF file (:mod:`.llamacpp`, imported where used)."""

from papertune.inference.generation import Completion, Decoding, GenerationRequest, generate, generate_batch
from papertune.inference.loading import (
    LoadedModel,
    adapter_path,
    attach_adapter,
    check_adapter,
    load_base,
    load_for_answering,
    load_merged,
)

__all__ = ["Completion", "Decoding", "GenerationRequest", "LoadedModel", "adapter_path", "attach_adapter",
           "check_adapter", "generate", "generate_batch", "load_base", "load_for_answering", "load_merged"]

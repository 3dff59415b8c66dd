"""The evaluate stage: base and tuned model on the held-out split, written to ``RUN/eval``.

It reads ``RUN/dataset``, loads the models (``papertune.inference``), measures loss and answers
(:mod:`.metrics`, :mod:`.judge`), aggregates them per model, group and document, and writes
``metrics.json``, ``answers.jsonl`` and the report (:mod:`.report`).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from papertune.chat import render_prompt
from papertune.config import PapertuneConfig
from papertune.errors import InputError
from papertune.evaluate.judge import judge_answers
from papertune.evaluate.metrics import (
    GROUPS,
    MODELS,
    aggregate_loss,
    answer_summary,
    embedding_cosines,
    exact_match,
    example_losses,
    rouge_l,
    token_f1,
)
from papertune.evaluate.report import log_summary, render_report, write_charts
from papertune.inference import Decoding, adapter_path, attach_adapter, check_adapter, generate, load_for_answering
from papertune.rundir import (
    CHUNKS,
    DATASET,
    EVAL_ANSWERS,
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

log = logging.getLogger(__name__)

EVAL_DIR = "eval"


def load_test_split(run_dir: Path) -> tuple[list[dict], set[str]]:
    """The rows of ``RUN/dataset``'s test split, and the documents (``source``) its train split holds."""
    from datasets import load_from_disk

    path = run_dir / "dataset"
    if not (path / "dataset_dict.json").is_file():
        raise InputError(f"no dataset in {path}: run `papertune build --run-dir {run_dir}` first")
    ds = load_from_disk(str(path))
    for split in ("train", "test"):
        if split not in ds or not {"question", "answer", "prompt", "completion"} <= set(ds[split].column_names):
            raise InputError(f"{path} has no {split} split with question/answer/prompt/completion columns; "
                             "rebuild it with papertune build")
    test = ds["test"].to_list()
    if not test:
        raise InputError(f"{path}: the test split is empty; nothing to evaluate")
    train_sources = {s for s in ds["train"]["source"] if s} if "source" in ds["train"].column_names else set()
    return test, train_sources


def _pick_questions(n: int, cap: int, seed: int) -> list[int]:
    if cap == 0 or n <= cap:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), cap))


def generate_answers(model: Any, tokenizer: Any, questions: Sequence[str], system_prompt: str | None, *,
                     batch_size: int, max_new_tokens: int, temperature: float = 0.0, seed: int = 3407,
                     desc: str = "answers") -> list[str]:
    """Batched answers, each from the training prompt (chat template, system prompt, no added specials)."""
    prompts = [render_prompt(tokenizer, q, system_prompt) for q in questions]
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return [c.text for c in generate(model, tokenizer, prompts, decoding, batch_size=batch_size, progress=desc)]


def _inputs(config: PapertuneConfig) -> list[tuple[str, Path]]:
    run_dir = Path(config.run_dir)
    inputs = [(DATASET, run_dir / DATASET)]
    if config.evaluate.tuned:
        adapter = adapter_path(config)
        inputs.append((TRAIN_ADAPTER if not config.evaluate.adapter else str(adapter), adapter))
    if config.evaluate.judge_enabled:  # the judge sees the source chunk
        inputs.append((CHUNKS, run_dir / CHUNKS))
    return inputs


SPEC = StageSpec(
    name="evaluate",
    directory=EVAL_DIR,
    help="base vs tuned model on the test split: loss, perplexity, answer quality (RUN/eval)",
    description="Compute validation loss and perplexity of train.model with and without the adapter "
    "(RUN/train/adapter), generate answers to the held-out questions and score them against the references "
    "(ROUGE-L, token F1, exact match, embedding cosine, optional LLM judge); write RUN/eval/metrics.json, "
    "answers.jsonl, report.md and charts. evaluate.tuned=false evaluates the base model alone.",
    # evaluate loads train.model with the training dtype and prompt, and skips rows over max_seq_length.
    settings=("evaluate", "train.model", "train.dtype", "train.max_seq_length", "train.trust_remote_code",
              "build.system_prompt"),
    outputs=(EVAL_METRICS, EVAL_ANSWERS, EVAL_REPORT_MD, EVAL_METRICS_PLOT, EVAL_PER_DOCUMENT_PLOT),
    inputs=_inputs,
)


def run(config: PapertuneConfig) -> Path:
    """Evaluate base and tuned model on ``RUN/dataset``'s test split; returns ``RUN/eval``."""
    from papertune.train.data import tokenize_example

    cfg = config.evaluate
    run_dir = Path(config.run_dir)
    out = run_dir / EVAL_DIR
    test, train_sources = load_test_split(run_dir)
    adapter = adapter_path(config)
    if cfg.tuned:
        check_adapter(adapter, config)
    models = [m for m in MODELS if (m == "base" and cfg.base) or (m == "tuned" and cfg.tuned)]
    record_stage(run_dir, EVAL_DIR, config)

    # Groups: rows of documents training also saw, and rows of documents it never saw.
    for row in test:
        row["group"] = "in_domain" if row.get("source") in train_sources else "held_out_document"
    group_rows = {g: [r for r in test if r["group"] == g] for g in GROUPS}

    picked = _pick_questions(len(test), cfg.max_questions, cfg.seed)
    questions = [test[i] for i in picked]
    log.info("evaluate: %d test rows (%d in-domain, %d from held-out documents), %d questions answered by %s",
             len(test), len(group_rows["in_domain"]), len(group_rows["held_out_document"]), len(questions),
             " and ".join(models))

    loaded = load_for_answering(config, base_only=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    examples = [tokenize_example(tokenizer, r["prompt"], r["completion"]) for r in test]
    keep = [i for i, ex in enumerate(examples) if len(ex["input_ids"]) <= config.train.max_seq_length]
    over_length = len(examples) - len(keep)
    answers: dict[str, list[str]] = {}
    per_example_loss: dict[str, dict[int, tuple[float, int]]] = {}
    for name in models:
        if name == "tuned":
            model = attach_adapter(model, adapter)
        losses = example_losses(model, tokenizer, [examples[i] for i in keep], cfg.batch_size, desc=f"loss ({name})")
        per_example_loss[name] = dict(zip(keep, losses))
        answers[name] = generate_answers(model, tokenizer, [r["question"] for r in questions],
                                         config.build.system_prompt, batch_size=cfg.batch_size,
                                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                         seed=cfg.seed, desc=f"answers ({name})")
    del model

    # Scores per answer.
    answer_rows = []
    for k, row in enumerate(questions):
        scores = {}
        for name in models:
            pred = answers[name][k]
            scores[name] = {"rouge_l": rouge_l(pred, row["answer"]), "f1": token_f1(pred, row["answer"]),
                            "exact_match": exact_match(pred, row["answer"])}
        answer_rows.append({
            "id": row.get("id"), "question": row["question"], "reference": row["answer"],
            **{f"{name}_answer": answers[name][k] for name in models},
            "scores": scores, "source": row.get("source"), "page": row.get("page_start"),
            "chunk_id": row.get("chunk_id"), "group": row["group"], "augmentation": row.get("augmentation"),
        })
    if cfg.embedding_model:
        for name in models:
            cosines = embedding_cosines(answers[name], [r["answer"] for r in questions], cfg.embedding_model)
            for ar, cos in zip(answer_rows, cosines):
                ar["scores"][name]["embedding_cosine"] = cos
    judge_info = judge_answers(config, run_dir, questions, answer_rows, models) if cfg.judge_enabled else None

    # Aggregates.
    def loss_for(indices: Sequence[int], name: str) -> dict[str, Any]:
        return aggregate_loss([per_example_loss[name][i] for i in indices if i in per_example_loss[name]])

    index_of = {id(r): i for i, r in enumerate(test)}
    metrics: dict[str, Any] = {
        "model": config.train.model,
        "adapter": str(adapter) if cfg.tuned else None,
        "models": models,
        "test_rows": len(test),
        "over_max_seq_length": over_length,
        "questions": len(questions),
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                       "greedy": cfg.temperature == 0, "batch_size": cfg.batch_size},
        "loss": {name: loss_for(range(len(test)), name) for name in models},
        "answers": {name: answer_summary(answer_rows, name) for name in models},
        "groups": {},
        "per_document": {},
        "judge": judge_info,
    }
    for group in GROUPS:
        rows = group_rows[group]
        metrics["groups"][group] = {
            "test_rows": len(rows),
            "loss": {name: loss_for([index_of[id(r)] for r in rows], name) for name in models},
            "answers": {name: answer_summary([a for a in answer_rows if a["group"] == group], name)
                        for name in models},
        }
    metrics["split"] = ("document-grouped: every test row comes from a document training never saw"
                        if not group_rows["in_domain"] else
                        "chunk-grouped: every test document also feeds training (in-domain)"
                        if not group_rows["held_out_document"] else
                        "mixed: some test documents also feed training, some do not")
    by_doc: dict[str, list[dict]] = defaultdict(list)
    for a in answer_rows:
        by_doc[a["source"] or "(unknown)"].append(a)
    metrics["per_document"] = {doc: {"group": rows[0]["group"], **{name: answer_summary(rows, name) for name in models}}
                               for doc, rows in sorted(by_doc.items())}

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "answers.jsonl", answer_rows)
    write_json_atomic(out / "metrics.json", metrics)
    write_charts(out, metrics, models)
    write_text_atomic(out / "report.md", render_report(run_dir, metrics, answer_rows, models))
    log_summary(metrics, models, out)
    return out

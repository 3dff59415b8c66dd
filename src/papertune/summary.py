"""The run summary, ``RUN/summary.json`` and ``RUN/summary.md``: what the run directory holds after a run.

Counts after each stage (read from the files themselves), training time and speed, the loss table, base
vs tuned metrics, every artifact's path; :mod:`papertune.pipeline` adds what ran or was skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from papertune import rundir as layout
from papertune.rundir import read_jsonl
from papertune.train.losses import loss_table, render_loss_table

# name in the summary -> layout name, for every artifact a run may hold
ARTIFACTS = {
    "chunks": layout.CHUNKS, "ingest report": layout.INGEST_REPORT, "pairs (generated)": layout.QA,
    "generate report": layout.GENERATE_REPORT, "pairs (curated)": layout.QA_CURATED,
    "pairs (dropped)": layout.QA_DROPPED, "curate report": layout.CURATE_REPORT,
    "pairs (augmented)": layout.QA_AUGMENTED, "augment report": layout.AUGMENT_REPORT,
    "dataset (json)": layout.OUTPUT_JSON, "dataset": layout.DATASET, "dataset card": layout.DATASET_CARD,
    "build report": layout.BUILD_REPORT, "adapter": layout.TRAIN_ADAPTER, "merged model": layout.TRAIN_MERGED,
    "checkpoints": layout.TRAIN_CHECKPOINTS, "training metrics": layout.TRAIN_METRICS,
    "loss table": layout.TRAIN_LOSS_TABLE, "loss curve": layout.TRAIN_LOSS_CURVE,
    "tensorboard": layout.TRAIN_TENSORBOARD, "train report": layout.TRAIN_REPORT,
    "eval metrics": layout.EVAL_METRICS, "eval answers": layout.EVAL_ANSWERS, "eval report": layout.EVAL_REPORT_MD,
    "eval chart": layout.EVAL_METRICS_PLOT, "per-document chart": layout.EVAL_PER_DOCUMENT_PLOT,
}


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def collect_summary(run_dir: Path) -> dict[str, Any]:
    """What the run directory holds now: counts read from the files themselves, and the reports."""
    ingest_report = _load_json(run_dir / layout.INGEST_REPORT) or {}
    augment_report = _load_json(run_dir / layout.AUGMENT_REPORT) or {}
    build_report = _load_json(run_dir / layout.BUILD_REPORT) or {}
    train_report = _load_json(run_dir / layout.TRAIN_REPORT)
    eval_metrics = _load_json(run_dir / layout.EVAL_METRICS)
    output_json = run_dir / layout.OUTPUT_JSON
    output_rows = list(read_jsonl(output_json)) if output_json.is_file() else []
    documents = {
        "documents": ingest_report.get("documents"),
        "pages": ingest_report.get("pages"),
        "ocr_pages": ingest_report.get("ocr_pages"),
        "failed": [{"source": d["source"], "reason": d.get("reason")}
                   for d in ingest_report.get("per_document", []) if d.get("status") == "failed"],
    }
    counts = {
        "chunks": _count_lines(run_dir / layout.CHUNKS),
        "generated": _count_lines(run_dir / layout.QA),
        "curated": _count_lines(run_dir / layout.QA_CURATED),
        "dropped": _count_lines(run_dir / layout.QA_DROPPED),
        "augmented": _count_lines(run_dir / layout.QA_AUGMENTED),
        "variants": augment_report.get("variants"),
        "dataset_rows": len(output_rows) if output_rows else None,
        "train": build_report.get("train"),
        "test": build_report.get("test"),
    }
    training = None
    if train_report:
        training = {k: train_report.get(k) for k in ("model", "backend", "device", "global_steps", "epochs", "wall_s",
                                                     "tokens_seen", "tokens_per_s", "train_loss", "best_eval_loss",
                                                     "best_checkpoint", "stopped_early", "resumed_from")}
    evaluation = None
    if eval_metrics:
        evaluation = {"questions": eval_metrics.get("questions"), "test_rows": eval_metrics.get("test_rows"),
                      "models": {}}
        for name in eval_metrics.get("models", []):
            loss = eval_metrics.get("loss", {}).get(name, {})
            answers = eval_metrics.get("answers", {}).get(name, {})
            evaluation["models"][name] = {"loss": loss.get("loss"), "perplexity": loss.get("perplexity"),
                                          **{k: v for k, v in answers.items() if k != "questions"}}
    artifacts = {name: str(run_dir / rel) for name, rel in ARTIFACTS.items() if (run_dir / rel).exists()}
    return {"documents": documents, "counts": counts, "training": training,
            "loss_table": loss_table(run_dir / layout.TRAIN_METRICS), "evaluation": evaluation,
            "artifacts": artifacts}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def render_summary(summary: dict[str, Any]) -> str:
    """``summary.json`` as Markdown (``RUN/summary.md``, also logged)."""
    lines = [f"# papertune run: {summary['status']} (exit code {summary['exit_code']})", "",
             f"Run directory `{summary['run_dir']}`, config `{summary['config_file'] or '(defaults)'}`, "
             f"{summary['seconds']:.1f} s.", ""]
    if summary.get("failed_stage"):
        lines += [f"**Stage {summary['failed_stage']} failed:** {summary['error']}", ""]
    lines += ["## Stages", "", "| stage | status | seconds | why |", "|---|---|---|---|"]
    for row in summary["stages"]:
        why = row["reason"]
        if row["status"] == "skipped" and row.get("last_ran") and row["last_ran"].get("seconds") is not None:
            why += f" (made in {row['last_ran']['seconds']:.1f} s at {row['last_ran']['finished_at']})"
        lines.append(f"| {row['stage']} | {row['status']} | {row['seconds']:.1f} | {why} |")
    docs, counts = summary["documents"], summary["counts"]
    lines += ["", "## Data", "", "| what | count |", "|---|---|",
              f"| documents | {_fmt(docs['documents'])} ({len(docs['failed'])} failed) |",
              f"| pages (PDF) | {_fmt(docs['pages'])} ({_fmt(docs['ocr_pages'])} OCR) |",
              f"| chunks | {_fmt(counts['chunks'])} |",
              f"| pairs generated | {_fmt(counts['generated'])} |",
              f"| pairs after curate | {_fmt(counts['curated'])} ({_fmt(counts['dropped'])} dropped) |",
              f"| pairs after augment | {_fmt(counts['augmented'])} ({_fmt(counts['variants'])} variants) |",
              f"| dataset train / test | {_fmt(counts['train'])} / {_fmt(counts['test'])} |"]
    if docs["failed"]:
        lines += ["", "Failed documents:", ""] + [f"- `{d['source']}`: {d['reason']}" for d in docs["failed"]]
    training = summary.get("training")
    if training:
        lines += ["", "## Training", "",
                  f"{training['model']} ({training['backend']}, {training['device']}): {_fmt(training['global_steps'])} "
                  f"steps in {_fmt(training['wall_s'], 1)} s, {_fmt(training['tokens_per_s'], 1)} tokens/s"
                  + (f", resumed from {training['resumed_from']}" if training.get("resumed_from") else "") + ".", ""]
    if summary.get("loss_table"):
        lines.append(render_loss_table(summary["loss_table"]))
    evaluation = summary.get("evaluation")
    if evaluation and evaluation["models"]:
        models = list(evaluation["models"])
        metrics = [m for m in ("loss", "perplexity", "rouge_l", "f1", "exact_match", "embedding_cosine",
                               "judge_correctness", "judge_groundedness")
                   if any(evaluation["models"][n].get(m) is not None for n in models)]
        lines += ["", "## Base vs tuned", "",
                  f"{evaluation['test_rows']} test rows, {evaluation['questions']} questions answered.", "",
                  "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        lines += [f"| {m} | " + " | ".join(_fmt(evaluation["models"][n].get(m)) for n in models) + " |" for m in metrics]
    lines += ["", "## Artifacts", ""] + [f"- {name}: `{path}`" for name, path in summary["artifacts"].items()]
    return "\n".join(lines) + "\n"

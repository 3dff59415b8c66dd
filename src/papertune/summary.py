"""The run summary, ``RUN/summary.json`` and ``RUN/summary.md``: what the run directory holds after a run.

Counts after each stage (read from the files themselves), how the pairs were made (chunks covered, pairs per
chunk, the kind mix, drop reasons, the teacher's and the judge's speed, the judge's verdicts), training time
and speed, the loss table, base vs tuned metrics, every artifact's path; :mod:`papertune.pipeline` adds what
ran or was skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from papertune import rundir as layout
from papertune.evaluate.report import four_way_table
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
    "four-way chart": layout.EVAL_FOUR_WAY_PLOT,
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


def _nonzero(counts: dict[str, int] | None) -> dict[str, int]:
    """The counts above zero, largest first."""
    return dict(sorted(((k, n) for k, n in (counts or {}).items() if n), key=lambda kv: (-kv[1], kv[0])))


def collect_pairs(generate_report: dict[str, Any] | None, curate_report: dict[str, Any] | None) -> dict[str, Any] | None:
    """How the pairs were made, from the generate and curate reports (None when neither exists)."""
    if not generate_report and not curate_report:
        return None
    pairs: dict[str, Any] = {"generate": None, "curate": None}
    if generate_report:
        per_chunk = generate_report.get("pairs_per_content_chunk") or {}
        pairs["generate"] = {
            "chunks": generate_report.get("chunks"),
            "skipped_non_content": generate_report.get("skipped_non_content"),
            "skipped_non_content_reasons": generate_report.get("skipped_non_content_reasons") or {},
            "content_chunks": sum(per_chunk.values()),
            "content_chunks_with_pairs": generate_report.get("content_chunks_with_pairs"),
            "pairs_per_content_chunk": per_chunk,
            "kinds": generate_report.get("kinds") or {},
            "dropped": _nonzero(generate_report.get("dropped_total")),
            "teacher": generate_report.get("teacher"),
        }
    if curate_report:
        judge = curate_report.get("judge")
        pairs["curate"] = {
            "input": curate_report.get("input"),
            "kept": curate_report.get("kept"),
            "chunks_with_kept_pairs": curate_report.get("chunks_with_kept_pairs"),
            "dropped": _nonzero(curate_report.get("dropped_by_reason")),
            "refill": curate_report.get("refill"),
            "judge": None if not judge else {
                key: judge.get(key) for key in ("model", "pairs", "passed", "pass_rate", "failed_checks",
                                                "score_distribution", "judged_now", "from_cache", "reply_tokens",
                                                "reply_tokens_per_s")},
        }
    return pairs


def collect_summary(run_dir: Path) -> dict[str, Any]:
    """What the run directory holds now: counts read from the files themselves, and the reports."""
    ingest_report = _load_json(run_dir / layout.INGEST_REPORT) or {}
    generate_report = _load_json(run_dir / layout.GENERATE_REPORT)
    curate_report = _load_json(run_dir / layout.CURATE_REPORT)
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
                      "loss": {name: {"loss": eval_metrics.get("loss", {}).get(name, {}).get("loss"),
                                      "perplexity": eval_metrics.get("loss", {}).get(name, {}).get("perplexity")}
                               for name in eval_metrics.get("models", [])},
                      **{key: eval_metrics.get(key) for key in ("systems", "sets", "results", "retrieval")}}
    artifacts = {name: str(run_dir / rel) for name, rel in ARTIFACTS.items() if (run_dir / rel).exists()}
    return {"documents": documents, "counts": counts,
            "pairs": collect_pairs(generate_report, curate_report), "training": training,
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
    if summary.get("pairs"):
        lines += ["", "## Pairs", "", *render_pairs(summary["pairs"])]
    training = summary.get("training")
    if training:
        lines += ["", "## Training", "",
                  f"{training['model']} ({training['backend']}, {training['device']}): {_fmt(training['global_steps'])} "
                  f"steps in {_fmt(training['wall_s'], 1)} s, {_fmt(training['tokens_per_s'], 1)} tokens/s"
                  + (f", resumed from {training['resumed_from']}" if training.get("resumed_from") else "") + ".", ""]
    if summary.get("loss_table"):
        lines.append(render_loss_table(summary["loss_table"]))
    evaluation = summary.get("evaluation")
    if evaluation and evaluation["loss"]:
        lines += ["", "## Evaluation", "",
                  f"{evaluation['test_rows']} test rows, {evaluation['questions']} test questions answered; "
                  "every system and question set in `eval/report.md`.", "",
                  "| model | test loss | perplexity |", "|---|---|---|"]
        lines += [f"| {name} | {_fmt(v['loss'])} | {_fmt(v['perplexity'], 2)} |" for name, v in evaluation["loss"].items()]
        if evaluation.get("systems") and evaluation.get("results"):
            lines += ["", *four_way_table(evaluation)]
    lines += ["", "## Artifacts", ""] + [f"- {name}: `{path}`" for name, path in summary["artifacts"].items()]
    return "\n".join(lines) + "\n"


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _speed(stats: dict[str, Any]) -> str:
    """``N reply tokens at T tokens/s`` (tokens/s only when the model answered in this run)."""
    if not stats.get("reply_tokens_per_s"):
        return ""
    return f"; {stats['reply_tokens']:,} reply tokens at {stats['reply_tokens_per_s']:.1f} tokens/s"


def render_pairs(pairs: dict[str, Any]) -> list[str]:
    """The "Pairs" section of ``summary.md``: one line per fact, none for a report or part that is missing."""
    lines = []
    gen = pairs.get("generate")
    if gen:
        skipped = gen["skipped_non_content"] or 0
        lines.append(f"- Chunks covered: {_fmt(gen['content_chunks_with_pairs'])} of {gen['content_chunks']} content "
                     f"chunks have a pair"
                     + (f" ({skipped} more skipped as non-content: {_counts(gen['skipped_non_content_reasons'])})"
                        if skipped else "") + ".")
        if gen["pairs_per_content_chunk"]:
            lines.append("- Pairs per content chunk (pairs: chunks): "
                         + ", ".join(f"{k}: {n}" for k, n in gen["pairs_per_content_chunk"].items()) + ".")
        if gen["kinds"]:
            total = sum(gen["kinds"].values())
            lines.append("- Kinds: " + ", ".join(f"{k} {_percent(n, total)}" for k, n in gen["kinds"].items())
                         + f" (of {total} pairs).")
        if gen["dropped"]:
            lines.append(f"- Dropped by generate: {_counts(gen['dropped'])}.")
        teacher = gen.get("teacher")
        if teacher:
            lines.append(f"- Teacher: {teacher['model']}, {teacher['replies']} replies in this run{_speed(teacher)}.")
    cur = pairs.get("curate")
    if cur:
        judge = cur.get("judge")
        if judge:
            failed = _nonzero(judge.get("failed_checks"))
            scores = "; ".join(
                f"{key} " + "/".join(str(dist.get(str(score), dist.get(score, 0))) for score in range(1, 6))
                for key, dist in (judge.get("score_distribution") or {}).items())
            rate = f"{100 * judge['pass_rate']:.1f}%" if judge.get("pass_rate") is not None else "-"
            lines.append(f"- Judge: {judge['model']} passed {_fmt(judge['passed'])} of {_fmt(judge['pairs'])} pairs "
                         f"({rate}); failed checks: {_counts(failed) or 'none'}"
                         + (f"; scores 1/2/3/4/5: {scores}" if scores else "")
                         + f"; {_fmt(judge['from_cache'])} from its cache{_speed(judge)}.")
        chunks = cur.get("chunks_with_kept_pairs")
        lines.append(f"- Curate kept {_fmt(cur['kept'])} of {_fmt(cur['input'])} pairs"
                     + (f" ({_fmt(chunks)} chunks have a kept pair)" if chunks is not None else "")
                     + f"; dropped: {_counts(cur['dropped']) or 'none'}.")
        refill = cur.get("refill")
        if refill:
            lines.append(f"- Refill: {_fmt(refill['chunks'])} chunks that kept no pair were asked again, and "
                         f"{_fmt(refill['chunks_recovered'])} of them kept one ({_fmt(refill['kept'])} of "
                         f"{_fmt(refill['pairs'])} new pairs kept).")
    return lines

"""What evaluate writes for people: ``report.md``, the charts ``metrics.png`` and ``per_document.png``, and a
one-line summary in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from papertune.evaluate.metrics import ANSWER_METRICS, GROUPS
from papertune.rundir import atomic_path

log = logging.getLogger(__name__)

LABELS = {"rouge_l": "ROUGE-L", "f1": "token F1", "exact_match": "exact match", "embedding_cosine": "embedding cosine",
           "judge_correctness": "judge correctness (1-5)", "judge_groundedness": "judge groundedness (1-5)"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_charts(out: Path, metrics: dict, models: list[str]) -> None:
    """``metrics.png`` (answer quality, judge, loss: base vs tuned) and ``per_document.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"base": "#8c8c8c", "tuned": "#1f77b4"}
    unit = [m for m in ("rouge_l", "f1", "exact_match", "embedding_cosine")
            if any(metrics["answers"][n][m] is not None for n in models)]
    judged = [m for m in ("judge_correctness", "judge_groundedness")
              if any(metrics["answers"][n][m] is not None for n in models)]
    panels = [("answer quality vs reference", unit, (0, 1))]
    if judged:
        panels.append(("LLM judge", judged, (0, 5)))
    panels.append(("validation loss (answer tokens)", ["loss"], None))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 4), squeeze=False)
    width = 0.8 / len(models)
    for ax, (title, names, ylim) in zip(axes[0], panels):
        for k, model in enumerate(models):
            if names == ["loss"]:
                values = [metrics["loss"][model]["loss"] or 0.0]
            else:
                values = [metrics["answers"][model][m] or 0.0 for m in names]
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(names))]
            bars = ax.bar(xs, values, width, label=model, color=colors[model])
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([LABELS.get(n, n) for n in names], rotation=20, fontsize=8)
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("papertune: base vs tuned on the held-out split")
    fig.tight_layout()
    with atomic_path(out / "metrics.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    docs = list(metrics["per_document"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(docs) + 2), 4))
    for k, model in enumerate(models):
        values = [metrics["per_document"][d][model]["rouge_l"] or 0.0 for d in docs]
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(docs))]
        ax.bar(xs, values, width, label=model, color=colors[model])
    ax.set_xticks(range(len(docs)))
    ax.set_xticklabels([Path(d).name[:30] for d in docs], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROUGE-L")
    ax.set_title("answer ROUGE-L per document")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "per_document.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _one_line(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_report(run_dir: Path, metrics: dict, answer_rows: list[dict], models: list[str]) -> str:
    """``report.md``: loss, answer quality, groups, documents, and the best and worst answers."""
    head = " | ".join(models)
    sep = "|".join(["---"] * (len(models) + 1))
    lines = ["# Evaluation: base vs tuned", "",
             f"Model `{metrics['model']}`" + (f", adapter `{metrics['adapter']}`" if metrics["adapter"] else "")
             + f". {metrics['test_rows']} test rows; {metrics['questions']} questions answered "
             f"({'greedy' if metrics['generation']['greedy'] else 'temperature ' + str(metrics['generation']['temperature'])}, "
             f"at most {metrics['generation']['max_new_tokens']} new tokens).", "",
             f"Split: {metrics['split']}.", "",
             "## Validation loss and perplexity", "",
             "Loss on the answer tokens and the end-of-turn token only (as in training), token-weighted mean.", "",
             f"| | {head} |", f"|{sep}|"]
    for key in ("loss", "perplexity", "tokens", "examples"):
        lines.append(f"| {key} | " + " | ".join(_fmt(metrics["loss"][m][key], 4) for m in models) + " |")
    lines += ["", "## Answer quality", "", f"| metric | {head} |", f"|{sep}|"]
    for metric in ANSWER_METRICS:
        if any(metrics["answers"][m][metric] is not None for m in models):
            lines.append(f"| {LABELS[metric]} | " + " | ".join(_fmt(metrics["answers"][m][metric]) for m in models) + " |")
    if metrics["judge"]:
        j = metrics["judge"]
        lines += ["", f"Judge: `{j['model']}` ({j['backend']}); unparseable replies: "
                  + ", ".join(f"{m} {n}" for m, n in j["unparseable"].items()) + "."]
    lines += ["", "![base vs tuned](metrics.png)", "", "## In-domain vs held-out documents", "",
              "In-domain: test rows whose document also feeds training (the chunk-grouped split). Held-out "
              "documents: rows from documents training never saw.", "",
              "| group | rows | questions | " + " | ".join(f"{m} loss | {m} ROUGE-L | {m} F1" for m in models) + " |",
              "|" + "|".join(["---"] * (3 + 3 * len(models))) + "|"]
    for group in GROUPS:
        g = metrics["groups"][group]
        cells = [group, str(g["test_rows"]), str(g["answers"][models[0]]["questions"])]
        for m in models:
            cells += [_fmt(g["loss"][m]["loss"]), _fmt(g["answers"][m]["rouge_l"]), _fmt(g["answers"][m]["f1"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per document", "", "| document | group | questions | "
              + " | ".join(f"{m} ROUGE-L | {m} F1" for m in models) + " |",
              "|" + "|".join(["---"] * (3 + 2 * len(models))) + "|"]
    for doc, d in metrics["per_document"].items():
        cells = [_one_line(doc, 60), d["group"], str(d[models[0]]["questions"])]
        for m in models:
            cells += [_fmt(d[m]["rouge_l"]), _fmt(d[m]["f1"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![ROUGE-L per document](per_document.png)", ""]
    ranked_by = models[-1]
    ranked = sorted(answer_rows, key=lambda a: (a["scores"][ranked_by]["rouge_l"], a["scores"][ranked_by]["f1"]))
    for title, rows in (("best", list(reversed(ranked))[:5]), ("worst", ranked[:5])):
        lines += [f"## 5 {title} {ranked_by} answers (ROUGE-L)", ""]
        for a in rows:
            page = f", page {a['page']}" if a.get("page") is not None else ""
            lines += [f"- **Q:** {_one_line(a['question'])}", f"  - **reference:** {_one_line(a['reference'])}"]
            for m in models:
                lines.append(f"  - **{m}:** {_one_line(a[f'{m}_answer'])} (ROUGE-L {a['scores'][m]['rouge_l']:.3f})")
            lines.append(f"  - *source: {a['source']}{page}*")
        lines.append("")
    if (run_dir / "train" / "loss_curve.png").is_file():
        lines += ["## Training", "", "![training and validation loss](../train/loss_curve.png)", ""]
    return "\n".join(lines)


def log_summary(metrics: dict, models: list[str], out: Path) -> None:
    """One log line with each model's loss and answer scores."""
    parts = []
    for m in models:
        loss, ans = metrics["loss"][m], metrics["answers"][m]
        parts.append(f"{m}: loss {_fmt(loss['loss'])} (ppl {_fmt(loss['perplexity'], 2)}), ROUGE-L "
                     f"{_fmt(ans['rouge_l'])}, F1 {_fmt(ans['f1'])}, EM {_fmt(ans['exact_match'])}")
    log.info("evaluate: %s -> %s", "; ".join(parts), out)

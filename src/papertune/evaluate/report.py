"""What evaluate writes for people: ``report.md``, the charts ``four_way.png`` (every system side by side per
question set), ``metrics.png`` (the test split and the loss) and ``per_document.png``, and a summary in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from papertune.evaluate.metrics import CONTAINS_RECALL, GROUPS
from papertune.evaluate.sets import SET_LABELS
from papertune.rundir import EVAL_FOUR_WAY_PLOT, atomic_path

log = logging.getLogger(__name__)

FOUR_WAY_PLOT = Path(EVAL_FOUR_WAY_PLOT).name
LABELS = {"rouge_l": "ROUGE-L", "f1": "token F1", "exact_match": "exact match", "embedding_cosine": "embedding cosine",
          "judge_correctness": "judge correctness (1-5)", "judge_groundedness": "judge groundedness (1-5)",
          "judge_correct": "judged correct", "citation_rate": "citation rate",
          "citation_accuracy": "citation accuracy",
          "model_citation_accuracy": "citation accuracy, the model's own (before the check)",
          "abstention_rate": "declines", "quote_rate": "answers with a quote found in a passage"}
# Rows of the four-way table for answerable sets, and for the outside set (where declining is right).
ANSWERABLE_ROWS = ("judge_correct", "judge_correctness", "f1", "rouge_l", "embedding_cosine", "citation_rate",
                   "citation_accuracy", "model_citation_accuracy", "abstention_rate", "quote_rate")
OUTSIDE_ROWS = ("abstention_rate", "citation_rate", "quote_rate")
SHOWN_WHEN_NONZERO = ("quote_rate",)  # only a model trained to quote (build.raft_quote) has any
COLORS = {"base_closed_book": "#bdbdbd", "tuned_closed_book": "#6baed6", "base_retrieval": "#636363",
          "tuned_retrieval": "#08519c"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def headline_metric(metrics: dict) -> str:
    """The score the four-way chart shows for answerable sets: judged correct when a judge ran, else token F1."""
    return "judge_correct" if metrics.get("judge") else "f1"


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _grouped_bars(ax: Any, groups: list[str], series: list[tuple[str, str, list[float | None]]],
                  ylim: tuple[float, float] | None) -> None:
    """Bars of each (name, label, values) series side by side over ``groups``, labelled with their values."""
    width = 0.8 / max(1, len(series))
    for k, (name, label, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=label, color=COLORS.get(name))
        ax.bar_label(bars, labels=[_fmt(v, 2) for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)


def write_charts(out: Path, metrics: dict) -> None:
    """``four_way.png``, ``metrics.png`` and ``per_document.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = metrics["systems"]
    results = metrics["results"]
    headline = headline_metric(metrics)
    answerable = [s for s, info in metrics["sets"].items() if info["answerable"]]
    groups = [f"{SET_LABELS[s]}\n{LABELS[headline]}" for s in answerable]
    columns = [(s, headline) for s in answerable]
    if "outside" in results:
        groups.append(f"{SET_LABELS['outside']}\ndeclines (higher is right)")
        columns.append(("outside", "abstention_rate"))
    fig, ax = plt.subplots(figsize=(2.6 * len(groups) + 2, 4.5))
    _grouped_bars(ax, groups, [(s["name"], s["label"], [results[q][s["name"]][m] for q, m in columns])
                               for s in systems], (0, 1.08))
    ax.set_title("papertune: the systems side by side per question set", fontsize=10)
    _save(fig, out / FOUR_WAY_PLOT)

    test = results["test"]
    unit = [m for m in ("rouge_l", "f1", "exact_match", "embedding_cosine", "judge_correct")
            if any(test[s["name"]][m] is not None for s in systems)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    _grouped_bars(axes[0], [LABELS[m] for m in unit],
                  [(s["name"], s["label"], [test[s["name"]][m] for m in unit]) for s in systems], (0, 1.08))
    axes[0].set_title("answer quality on the test split", fontsize=10)
    _grouped_bars(axes[1], ["loss"], [(f"{m}_closed_book", m, [metrics["loss"][m]["loss"]]) for m in metrics["models"]],
                  None)
    axes[1].set_title("validation loss (answer tokens)", fontsize=10)
    _save(fig, out / "metrics.png")

    docs = list(metrics["per_document"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(docs) + 2), 4))
    _grouped_bars(ax, [Path(d).name[:30] for d in docs],
                  [(s["name"], s["label"], [metrics["per_document"][d][s["name"]]["rouge_l"] for d in docs])
                   for s in systems], (0, 1.08))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylabel("ROUGE-L")
    ax.set_title("answer ROUGE-L per document (test split and held-out documents)", fontsize=10)
    _save(fig, out / "per_document.png")


def _one_line(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def four_way_table(metrics: dict) -> list[str]:
    """The markdown table: one column per system, one block of rows per question set."""
    systems = metrics["systems"]
    retrieval = metrics["retrieval"]
    lines = ["| question set | metric | " + " | ".join(s["label"] for s in systems) + " |",
             "|" + "|".join(["---"] * (len(systems) + 2)) + "|"]
    for set_name, info in metrics["sets"].items():
        results = metrics["results"][set_name]
        title = f"{SET_LABELS[set_name]} ({info['questions']})"
        for metric in (ANSWERABLE_ROWS if info["answerable"] else OUTSIDE_ROWS):
            values = [results[s["name"]].get(metric) for s in systems]
            if all(v is None for v in values) or (metric in SHOWN_WHEN_NONZERO and not any(values)):
                continue
            label = LABELS[metric]
            if metric == "abstention_rate" and not info["answerable"]:
                label += " (declining is right)"
            lines.append(f"| {title} | {label} | " + " | ".join(_fmt(v) for v in values) + " |")
            title = ""
        if retrieval and info["answerable"]:
            recall = retrieval["recall_at_k"][set_name]
            lines.append(f"| {title} | recall@{retrieval['top_k']} | "
                         + " | ".join(_fmt(recall) if s["mode"] == "retrieval" else "-" for s in systems) + " |")
    return lines


def render_report(run_dir: Path, metrics: dict, answer_rows: list[dict]) -> str:
    """``report.md``: the four-way table and chart, loss, groups, documents, and the best and worst answers."""
    models, systems = metrics["models"], metrics["systems"]
    gen = metrics["generation"]
    lines = ["# Evaluation: " + ", ".join(s["label"] for s in systems), "",
             f"Model `{metrics['model']}`" + (f", adapter `{metrics['adapter']}`" if metrics["adapter"] else "")
             + f". {metrics['test_rows']} test rows; questions answered: "
             + ", ".join(f"{info['questions']} of {SET_LABELS[s]}" for s, info in metrics["sets"].items())
             + f" ({'greedy' if gen['greedy'] else 'temperature ' + str(gen['temperature'])}, "
             f"at most {gen['max_new_tokens']} new tokens).", "",
             f"Split: {metrics['split']}.", ""]
    if metrics["retrieval"]:
        r = metrics["retrieval"]
        said = r.get("outside_answer_in_index") or []
        lines += [f"Retrieval: {r['method']}, top {r['top_k']} passages in the prompt, as ask and serve answer; "
                  f"{len(r['outside_documents'])} outside documents left out of the index"
                  + (f"; {len(said)} of their questions left out too, as an indexed chunk says their answer "
                     f"({', '.join(said)})" if said else "") + ".", ""]
        judged = r.get("outside_judged_in_index")
        if judged:
            left = judged["left_out"]
            lines += [f"The judge looked for the answer of each of the {judged['checked']} outside questions in its "
                      f"retrieved passages (quoted {judged['quoted']}, {judged['quote_in_passage']} of the quotes a "
                      "passage's words): "
                      + ("; ".join(f"{e['id']} (\"{e['quote']}\")" for e in left)
                         + f": {len(left)} answered there (the quote holds half of what the reference adds to its "
                         "question), so not counted as questions to decline" if left else
                         "no quote holds half of what a reference adds to its question, so every one counts")
                      + ".", ""]
        if r.get("verify"):
            labels = {s["name"]: s["label"] for s in metrics["systems"]}
            retry = any("answered_again" in v for v in r["verify"].values())
            lines += ["Verification (`retrieval.verify`): after each answer that passed the answer check, the tuned "
                      "model was asked whether the passage it cites contains the answer (the base model is not: "
                      "it was never trained to judge); a no is counted as a decline"
                      + (" unless the model said yes to another passage and its answer from that one held "
                         "(`retrieval.verify_retry`)" if retry else "") + ": "
                      + "; ".join(f"{labels[name]} asked {v['asked']}, declined {v['declined']}"
                                  + (f" (said no {v['said_no']}, answered again {v['answered_again']}, "
                                     f"kept {v['kept']})" if "answered_again" in v else "")
                                  for name, v in r["verify"].items()) + ".", ""]
    explained = ["Scores of answerable questions are computed on the answer without its [n] markers. Declines: "
                 "answers saying the passages do not contain the answer (wrong on answerable questions, right on "
                 "documents outside the index)."]
    if metrics["retrieval"]:
        explained.append("Citation rate: answers that cite a passage; citation accuracy: of those, the ones citing "
                         "the source chunk or a passage that contains the reference answer (at least "
                         f"{CONTAINS_RECALL:.0%} of its content words); recall@k: the source chunk among the "
                         "retrieved passages.")
    lines += ["## Four-way comparison", "", " ".join(explained),
              "", *four_way_table(metrics), ""]
    if metrics["judge"]:
        j = metrics["judge"]
        lines += [f"Judge: `{j['model']}` ({j['backend']}); judged correct: correctness >= {j['correct_at']} of 5; "
                  "unparseable replies: " + (", ".join(f"{m} {n}" for m, n in j["unparseable"].items()) or "none")
                  + ".", ""]
    lines += [f"![the systems side by side]({FOUR_WAY_PLOT})", "",
              "## Validation loss and perplexity", "",
              "Loss on the test split's answer tokens and the end-of-turn token only (as in training), "
              "token-weighted mean.", "", "| | " + " | ".join(models) + " |",
              "|" + "|".join(["---"] * (len(models) + 1)) + "|"]
    for key in ("loss", "perplexity", "tokens", "examples"):
        lines.append(f"| {key} | " + " | ".join(_fmt(metrics["loss"][m][key], 4) for m in models) + " |")
    lines += ["", "![test split and loss](metrics.png)", "", "## In-domain vs held-out documents", "",
              "Test rows only. In-domain: rows whose document also feeds training (the chunk-grouped split). "
              "Held-out documents: rows from documents training never saw.", "",
              "| group | rows | questions | " + " | ".join(f"{m} loss" for m in models) + " | "
              + " | ".join(f"{s['label']} F1" for s in systems) + " |",
              "|" + "|".join(["---"] * (3 + len(models) + len(systems))) + "|"]
    for group in GROUPS:
        g = metrics["groups"][group]
        cells = [group, str(g["test_rows"]), str(g["answers"][systems[0]["name"]]["questions"])]
        cells += [_fmt(g["loss"][m]["loss"]) for m in models] + [_fmt(g["answers"][s["name"]]["f1"]) for s in systems]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per document", "", "Answerable questions (test split and held-out documents).", "",
              "| document | group | questions | " + " | ".join(f"{s['label']} F1" for s in systems) + " |",
              "|" + "|".join(["---"] * (3 + len(systems))) + "|"]
    for doc, d in metrics["per_document"].items():
        cells = [_one_line(doc, 60), d["group"], str(d[systems[0]["name"]]["questions"])]
        lines.append("| " + " | ".join(cells + [_fmt(d[s["name"]]["f1"]) for s in systems]) + " |")
    lines += ["", "![ROUGE-L per document](per_document.png)", ""]
    last = systems[-1]
    ranked = sorted((a for a in answer_rows if a["system"] == last["name"] and a["scores"]),
                    key=lambda a: (a["scores"]["rouge_l"], a["scores"]["f1"]))
    for title, rows in (("best", list(reversed(ranked))[:5]), ("worst", ranked[:5])):
        lines += [f"## 5 {title} {last['label']} answers (ROUGE-L)", ""]
        for a in rows:
            page = f", page {a['page']}" if a.get("page") is not None else ""
            lines += [f"- **Q:** {_one_line(a['question'])}", f"  - **reference:** {_one_line(a['reference'])}",
                      f"  - **{last['label']}:** {_one_line(a['answer'])} (ROUGE-L {a['scores']['rouge_l']:.3f})",
                      f"  - *{SET_LABELS[a['set']]}; source: {a['source']}{page}*"]
        lines.append("")
    if (run_dir / "train" / "loss_curve.png").is_file():
        lines += ["## Training", "", "![training and validation loss](../train/loss_curve.png)", ""]
    return "\n".join(lines)


def log_summary(metrics: dict, out: Path) -> None:
    """One log line per question set with each system's headline score, and each model's loss."""
    headline = headline_metric(metrics)
    for set_name, results in metrics["results"].items():
        metric = headline if metrics["sets"][set_name]["answerable"] else "abstention_rate"
        log.info("evaluate: %s, %s: %s", SET_LABELS[set_name], LABELS[metric],
                 "; ".join(f"{s['label']} {_fmt(results[s['name']][metric])}" for s in metrics["systems"]))
    log.info("evaluate: loss %s -> %s", "; ".join(f"{m} {_fmt(metrics['loss'][m]['loss'])}" for m in metrics["models"]),
             out)

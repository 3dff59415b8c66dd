"""The answer check (``Retriever.check_answer``) applied to the answers of an evaluate run, before and after.

Reads ``RUN/eval/answers.jsonl`` (the model's answers are ``model_answer`` where the run checked them, else
``answer``) and the run's ``chunks.jsonl``, checks every grounded answer again under the given ``--set``
overrides, and prints per system and question set: judged correct (the run's judge verdict; an answer the
check turns into the decline counts as not correct), declines and citation accuracy, as the model answered
and as checked, and the citations the check added to answers citing nothing (how many were right, overall
and among the answers judged correct). Nothing is generated or judged again: a CPU check of settings on a GPU
run's answers.

    python benchmarks/rescore_answers.py --chunks RUN/chunks.jsonl --answers RUN/eval/answers.jsonl \\
        --set retrieval.min_support=0.5 [--citation-margin 0.8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import papertune.retrieval  # noqa: E402
from papertune.chat import abstains, cited_numbers  # noqa: E402
from papertune.config import load_config  # noqa: E402
from papertune.evaluate.metrics import citation_correct  # noqa: E402
from papertune.retrieval import Passage, Retriever  # noqa: E402


def pct(num: float, den: int) -> str:
    return f"{100 * num / den:.1f}%" if den else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=Path, required=True)
    ap.add_argument("--answers", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="a config override, KEY=VALUE")
    ap.add_argument("--citation-margin", type=float, default=papertune.retrieval.CITATION_MARGIN,
                    help="share of the best passage's support a cited passage must hold to stand "
                         "(papertune.retrieval.CITATION_MARGIN, default %(default)s)")
    args = ap.parse_args()
    papertune.retrieval.CITATION_MARGIN = args.citation_margin  # read by check_citations at each call
    rows = [json.loads(line) for line in args.answers.read_text(encoding="utf-8").splitlines() if line.strip()]
    outside = {r["source"] for r in rows if r["set"] == "outside"}
    run = Path(tempfile.mkdtemp(prefix="rescore_"))
    shutil.copy(args.chunks, run / "chunks.jsonl")
    cfg = load_config(None, args.overrides).retrieval
    retriever = Retriever.for_run(run, cfg, exclude_sources=outside)
    chunks = retriever.index.chunks
    print(f"{len(rows)} answers; {', '.join(args.overrides) or 'default settings'} "
          f"(min_support {cfg.min_support}, min_question_support {cfg.min_question_support}, "
          f"citation margin {args.citation_margin})")
    print("| system | set | correct, model | correct, checked | declines, model | declines, checked "
          "| citation acc., model | citation acc., checked | citations added: right / added (judged correct) |"
          "\n|---|---|---|---|---|---|---|---|---|")
    for system in dict.fromkeys(r["system"] for r in rows if r["mode"] == "retrieval"):
        for set_name in ("test", "heldout", "outside"):
            sub = [r for r in rows if r["system"] == system and r["set"] == set_name]
            if not sub:
                continue
            counts = dict.fromkeys(("correct", "correct_c", "declines", "declines_c", "cite", "cite_c",
                                    "citing", "citing_c", "added", "added_ok", "added_r", "added_r_ok"), 0)
            for r in sub:
                model = r.get("model_answer", r["answer"])
                passages = [Passage(p["n"], chunks[p["chunk_id"]], p["score"]) for p in r["passages"]]
                checked = retriever.check_answer(r["question"], model, passages)
                right = r["scores"].get("judge_correct") == 1.0
                counts["correct"] += right and not abstains(model)
                counts["correct_c"] += right and not abstains(checked)
                counts["declines"] += abstains(model)
                counts["declines_c"] += abstains(checked)
                if set_name != "outside":
                    texts = [p.chunk for p in passages]
                    for key, answer in (("", model), ("_c", checked)):
                        verdict = citation_correct(answer, texts, r["chunk_id"], r["reference"])
                        if verdict is not None:
                            counts["citing" + key] += 1
                            counts["cite" + key] += verdict
                    if verdict is not None and not cited_numbers(model):  # verdict: the checked answer's
                        counts["added"] += 1
                        counts["added_ok"] += verdict
                        counts["added_r"] += right
                        counts["added_r_ok"] += right and verdict
            n = len(sub)
            print(f"| {system} | {set_name} ({n}) | {pct(counts['correct'], n)} | {pct(counts['correct_c'], n)} "
                  f"| {pct(counts['declines'], n)} | {pct(counts['declines_c'], n)} "
                  f"| {pct(counts['cite'], counts['citing'])} | {pct(counts['cite_c'], counts['citing_c'])} "
                  f"| {counts['added_ok']} / {counts['added']} ({counts['added_r_ok']} / {counts['added_r']}) |")
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The four-way table of benchmarks/gpu_raft.sh: the students side by side, per question set.

Usage: ``python benchmarks/raft_table.py NAME=RUN/eval/metrics.json [NAME=...]``, NAME a student's run directory
(raft, raft_p90, raft_retrieved, closed_book). Each file evaluated with ``evaluate.base`` gives its base model's
rows (closed-book and with retrieval; students of two model sizes have two bases), the first file's when none
other has them; then each student closed-book and with retrieval.
Columns per answerable set (test split, held-out documents): judged correct (``judge_correct``: the judge's
4 of 5 or more, backed by the reference's words; see ``papertune.evaluate.judge``),
token F1, citation accuracy and decline rate; recall@k of retrieval; and on documents outside the index, the
decline rate (there declining is right). Then the targets on held-out documents for each RAFT student, against
its own base model when its file has one, else the first file's ("tuned closed-book" is the closed_book
student's when it is given, else the RAFT student's own).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(*named: str) -> int:
    runs = {}
    for arg in named:
        name, _, path = arg.partition("=")
        if not Path(path).is_file():  # its evaluation failed: the others still make a table
            print(f"raft_table: no metrics for {name} ({path}): see its evaluate log", file=sys.stderr)
            continue
        runs[name] = json.loads(Path(path).read_text(encoding="utf-8"))
    if not runs:
        print("raft_table: no student has metrics", file=sys.stderr)
        return 1
    first_name = next(iter(runs))
    raft = runs[first_name]
    bases = {name: m for name, m in runs.items() if _has_base(m)} or {first_name: raft}
    rows = []
    for name, metrics in bases.items():
        of = f" ({name}'s model)" if len(bases) > 1 else ""
        rows += [(f"base{of} closed-book", metrics, "base_closed_book"),
                 (f"base{of} + retrieval", metrics, "base_retrieval")]
    for name, metrics in runs.items():
        rows += [(f"{name} student, closed-book", metrics, "tuned_closed_book"),
                 (f"{name} student + retrieval", metrics, "tuned_retrieval")]
    sets = [s for s in ("test", "heldout") if s in raft.get("results", {})]
    header = ["system"]
    for s in sets:
        header += [f"{s} correct", f"{s} F1", f"{s} citation acc. (model's own)", f"{s} declines"]
    if "outside" in raft.get("results", {}):
        header.append("outside declines")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, metrics, system in rows:
        cells = [label]
        for s in sets:
            r = metrics.get("results", {}).get(s, {}).get(system, {})
            own = f" ({_pct(r['model_citation_accuracy'])})" if r.get("model_citation_accuracy") is not None else ""
            cells += [_pct(r.get("judge_correct")), "-" if r.get("f1") is None else f"{r['f1']:.3f}",
                      _pct(r.get("citation_accuracy")) + own, _pct(r.get("abstention_rate"))]
        if "outside" in raft.get("results", {}):
            cells.append(_pct(metrics.get("results", {}).get("outside", {}).get(system, {}).get("abstention_rate")))
        print("| " + " | ".join(cells) + " |")
    recall = (raft.get("retrieval") or {}).get("recall_at_k") or {}
    k = (raft.get("retrieval") or {}).get("top_k")
    print()
    print(f"Retrieval recall@{k}: " + ", ".join(f"{s} {_pct(v)}" for s, v in recall.items()))
    print("Questions: " + ", ".join(f"{s} {v.get('questions')}" for s, v in raft.get("sets", {}).items()))
    for name, metrics in runs.items():  # a student trained to quote (build.raft_quote)
        quoted = {s: r.get("tuned_retrieval", {}).get("quote_rate") for s, r in metrics.get("results", {}).items()}
        if any(quoted.values()):
            print(f"Quote rate, {name} (answers shown with a quote found in a passage): "
                  + ", ".join(f"{s} {_pct(v)}" for s, v in quoted.items()))
    for name, metrics in runs.items():
        if name.startswith("raft"):
            _targets(name, metrics, metrics if _has_base(metrics) else raft, runs.get("closed_book"), recall, k)
    return 0


def _has_base(metrics: dict) -> bool:
    """Whether an evaluation answered with the base model too (``evaluate.base``)."""
    return any("base_retrieval" in systems for systems in metrics.get("results", {}).values())


def _targets(name: str, metrics: dict, base: dict, closed: dict | None, recall: dict, k: int | None) -> None:
    """The targets on held-out documents for one RAFT student."""
    held = metrics.get("results", {}).get("heldout", {})
    if not held:
        return
    tuned_r, base_r = held.get("tuned_retrieval", {}), base.get("results", {}).get("heldout", {}).get(
        "base_retrieval", {})
    tuned_c = (closed or metrics).get("results", {}).get("heldout", {}).get("tuned_closed_book", {})
    outside = metrics.get("results", {}).get("outside", {}).get("tuned_retrieval", {})
    print()
    print(f"| target (held-out documents, {name} student) | measured | met |")
    print("|---|---|---|")

    def line(label: str, value: float | None, ok: bool | None) -> None:
        print(f"| {label} | {_pct(value)} | {'-' if ok is None else ('yes' if ok else 'no')} |")

    tc, bc, cc = tuned_r.get("judge_correct"), base_r.get("judge_correct"), tuned_c.get("judge_correct")
    line(f"tuned + retrieval correct, >= base + retrieval ({_pct(bc)}) + 10 points", tc,
         None if tc is None or bc is None else tc >= bc + 0.10)
    line(f"tuned + retrieval correct, >= 2x tuned closed-book ({_pct(cc)})", tc,
         None if tc is None or cc is None else tc >= 2 * cc)
    ca = tuned_r.get("citation_accuracy")
    line("citation accuracy >= 90%", ca, None if ca is None else ca >= 0.90)
    rk = recall.get("heldout")
    line(f"recall@{k} >= 90%", rk, None if rk is None else rk >= 0.90)
    dec = outside.get("abstention_rate")
    line("declines on outside documents >= 80%", dec, None if dec is None else dec >= 0.80)
    ans = tuned_r.get("abstention_rate")
    line("answers >= 90% of answerable (1 - declines)", None if ans is None else 1 - ans,
         None if ans is None else 1 - ans >= 0.90)


if __name__ == "__main__":
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))

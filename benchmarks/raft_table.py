"""The four-way table of benchmarks/gpu_raft.sh: RAFT and closed-book students side by side, per question set.

Usage: ``python benchmarks/raft_table.py RAFT_RUN/eval/metrics.json CLOSED_BOOK_RUN/eval/metrics.json
[RAFT_RETRIEVED_RUN/eval/metrics.json]``

Rows: base closed-book and base + retrieval (from the RAFT run: the same base model and questions), the
closed-book-trained student closed-book and with retrieval, the RAFT student closed-book and with retrieval,
and, given a third file, the RAFT student trained with ``build.raft_distractors: retrieved``.
Columns per answerable set (test split, held-out documents): judged correct (``judge_correct``: the judge's
4 of 5 or more, backed by the reference's words; see ``papertune.evaluate.judge``),
token F1, citation accuracy and decline rate; recall@k of retrieval; and on documents outside the index, the
decline rate (there declining is right). Then the issue's targets on held-out documents.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(raft_path: str, closed_path: str, retrieved_path: str | None = None) -> int:
    raft = json.loads(Path(raft_path).read_text(encoding="utf-8"))
    closed = json.loads(Path(closed_path).read_text(encoding="utf-8"))
    rows = [
        ("base closed-book", raft, "base_closed_book"),
        ("base + retrieval", raft, "base_retrieval"),
        ("closed-book student, closed-book", closed, "tuned_closed_book"),
        ("closed-book student + retrieval", closed, "tuned_retrieval"),
        ("RAFT student, closed-book", raft, "tuned_closed_book"),
        ("RAFT student + retrieval", raft, "tuned_retrieval"),
    ]
    if retrieved_path:
        retrieved = json.loads(Path(retrieved_path).read_text(encoding="utf-8"))
        rows += [("RAFT student (retrieved distractors), closed-book", retrieved, "tuned_closed_book"),
                 ("RAFT student (retrieved distractors) + retrieval", retrieved, "tuned_retrieval")]
    sets = [s for s in ("test", "heldout") if s in raft.get("results", {})]
    header = ["system"]
    for s in sets:
        header += [f"{s} correct", f"{s} F1", f"{s} citation acc.", f"{s} declines"]
    if "outside" in raft.get("results", {}):
        header.append("outside declines")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, metrics, system in rows:
        cells = [label]
        for s in sets:
            r = metrics.get("results", {}).get(s, {}).get(system, {})
            cells += [_pct(r.get("judge_correct")), "-" if r.get("f1") is None else f"{r['f1']:.3f}",
                      _pct(r.get("citation_accuracy")), _pct(r.get("abstention_rate"))]
        if "outside" in raft.get("results", {}):
            cells.append(_pct(metrics.get("results", {}).get("outside", {}).get(system, {}).get("abstention_rate")))
        print("| " + " | ".join(cells) + " |")
    recall = (raft.get("retrieval") or {}).get("recall_at_k") or {}
    k = (raft.get("retrieval") or {}).get("top_k")
    print()
    print(f"Retrieval recall@{k}: " + ", ".join(f"{s} {_pct(v)}" for s, v in recall.items()))
    print("Questions: " + ", ".join(f"{s} {v.get('questions')}" for s, v in raft.get("sets", {}).items()))
    held = raft.get("results", {}).get("heldout", {})
    if held:
        tuned_r, base_r = held.get("tuned_retrieval", {}), held.get("base_retrieval", {})
        tuned_c = held.get("tuned_closed_book", {})
        outside = raft.get("results", {}).get("outside", {}).get("tuned_retrieval", {})
        print()
        print("| target (held-out documents, RAFT student) | measured | met |")
        print("|---|---|---|")

        def line(name: str, value: float | None, ok: bool | None) -> None:
            print(f"| {name} | {_pct(value)} | {'-' if ok is None else ('yes' if ok else 'no')} |")

        tc, bc, cc = tuned_r.get("judge_correct"), base_r.get("judge_correct"), tuned_c.get("judge_correct")
        line("tuned + retrieval correct, >= base + retrieval + 10 points", tc,
             None if tc is None or bc is None else tc >= bc + 0.10)
        line("tuned + retrieval correct, >= 2x tuned closed-book", tc,
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
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))

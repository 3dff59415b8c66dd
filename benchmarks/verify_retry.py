"""When the model says its cited passage does not hold the answer, should it decline or try another passage?

For each grounded answer of the tuned student in an evaluation's ``answers.jsonl`` (test split, held-out and
outside documents), with the product's own functions: the answer check (``Retriever.check_answer``), then the
verification question about the passage the checked answer cites (``chat.render_verify_prompt``; greedy,
``chat.VERIFY_TOKENS``). Where the reply is "no", the model is asked the same question about each other
retrieved passage; where one gets "yes", the question is answered again with that passage moved to [1] (the
others keep their order), checked, and verified again ("no" again: declined). Three policies side by side:

- ``check``: the answer check alone (``retrieval.verify: false``);
- ``verify``: a "no" declines (``retrieval.verify: true``);
- ``retry``: a "no" tries the passage the model says yes to, once.

Per set and policy: the share answered (outside: declined), token F1 and citation accuracy
(``evaluate.metrics.citation_correct``: the cited passage is the source or contains the reference) among
the answered. The rows that were retried go to ``--out`` for a hand check.

    python benchmarks/verify_retry.py --run-dir R --answers R/eval/answers.jsonl --out retried.jsonl
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from papertune.chat import (ABSTAIN, VERIFY_TOKENS, abstains, passage_to_verify, render_prompt,  # noqa: E402
                            render_verify_prompt, verify_says_no)
from papertune.config import load_config  # noqa: E402
from papertune.evaluate.metrics import citation_correct, token_f1  # noqa: E402
from papertune.evaluate.sets import outside_documents  # noqa: E402
from papertune.evaluate.stage import generate_texts  # noqa: E402
from papertune.inference.loading import load_for_answering  # noqa: E402
from papertune.retrieval import Passage, Retriever  # noqa: E402

POLICIES = ("check", "verify", "retry")


def moved_first(passages: list[Passage], n: int) -> list[Passage]:
    """``passages`` with passage ``n`` first and the others in their order, numbered again from 1."""
    order = [passages[n - 1]] + [p for p in passages if p.n != n]
    return [Passage(i, p.chunk, p.score) for i, p in enumerate(order, 1)]


def summary(rows: list[dict]) -> str:
    lines = ["| set | policy | questions | answered | F1 (answered) | citation accuracy (answered) |",
             "|---|---|---|---|---|---|"]
    for name in ("test", "heldout", "outside"):
        subset = [r for r in rows if r["set"] == name]
        if not subset:
            continue
        for policy in POLICIES:
            answered = [r for r in subset if not abstains(r[policy]["answer"])]
            f1 = sum(r[policy]["f1"] for r in answered) / max(1, len(answered))
            cited = [r[policy]["citation_correct"] for r in answered if r[policy]["citation_correct"] is not None]
            accuracy = f"{sum(cited) / len(cited):.1%}" if cited else "-"
            share = len(answered) / len(subset)
            shown = f"{share:.1%}" if name != "outside" else f"{share:.1%} (declined {1 - share:.1%})"
            lines.append(f"| {name} | {policy} | {len(subset)} | {shown} | {f1:.3f} | {accuracy} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--answers", required=True, type=Path, help="an evaluation's answers.jsonl")
    ap.add_argument("--out", required=True, type=Path, help="the retried answers, one JSON line each")
    ap.add_argument("--limit", type=int, default=0, help="only the first N answers of each set (a check)")
    ap.add_argument("--base-only", action="store_true", help="the base model (a check where no adapter is)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    args = ap.parse_args()
    config = load_config(args.run_dir / "config.yaml", [f"run_dir={args.run_dir}", *args.overrides])
    chunks = {c["id"]: c for c in map(json.loads, (args.run_dir / "chunks.jsonl").open())}
    records = [r for r in map(json.loads, args.answers.open())
               if r["system"] == "tuned_retrieval" and r.get("passages")]
    if args.limit:
        records = [r for s in ("test", "heldout", "outside")
                   for r in [x for x in records if x["set"] == s][:args.limit]]
    retriever = Retriever.for_run(args.run_dir, config.retrieval, exclude_sources=outside_documents(
        args.run_dir, [r for r in records if r["set"] == "outside"]))
    loaded = load_for_answering(config, base_only=args.base_only)
    model, tok = loaded.model, loaded.tokenizer
    system = config.build.system_prompt
    gen = {"batch_size": args.batch_size, "temperature": 0.0, "engine": "static"}

    def ask(prompts: list[str], tokens: int, desc: str) -> list[str]:
        return generate_texts(model, tok, prompts, max_new_tokens=tokens, desc=desc, **gen) if prompts else []

    def verify(items: list[tuple[str, Passage]], desc: str) -> list[bool]:
        """Whether the model says each passage holds the answer to its question."""
        replies = ask([render_verify_prompt(tok, q, p.chunk, system) for q, p in items], VERIFY_TOKENS, desc)
        return [not verify_says_no(reply) for reply in replies]

    def scored(r: dict, answer: str, passages: list[Passage]) -> dict:
        return {"answer": answer, "f1": token_f1(answer, r["reference"]),
                "citation_correct": citation_correct(answer, [p.chunk for p in passages], r["chunk_id"],
                                                     r["reference"])}

    rows, passages, checked = [], [], []
    for r in records:
        ps = [Passage(p["n"], chunks[p["chunk_id"]], p.get("score", 0.0)) for p in r["passages"]]
        passages.append(ps)
        checked.append(retriever.check_answer(r["question"], r["model_answer"], ps))
    cited = [passage_to_verify(a, len(ps)) for a, ps in zip(checked, passages)]
    asked = [k for k, n in enumerate(cited) if n is not None]
    says_yes = dict(zip(asked, verify([(records[k]["question"], passages[k][cited[k] - 1]) for k in asked],
                                      "verification")))
    # A "no": the other passages, each asked the same question.
    others = [(k, p) for k in asked if not says_yes[k] for p in passages[k] if p.n != cited[k]]
    other_yes = verify([(records[k]["question"], p) for k, p in others], "verification of the other passages")
    first_yes: dict[int, int] = {}
    for (k, p), yes in zip(others, other_yes):
        if yes and k not in first_yes:
            first_yes[k] = p.n
    retry = sorted(first_yes)
    moved = {k: moved_first(passages[k], first_yes[k]) for k in retry}
    again = ask([render_prompt(tok, records[k]["question"], system, [p.chunk for p in moved[k]]) for k in retry],
                config.evaluate.max_new_tokens, "answers again")
    again_text = dict(zip(retry, again))
    again_checked = {k: retriever.check_answer(records[k]["question"], again_text[k], moved[k]) for k in retry}
    again_cited = {k: passage_to_verify(a, len(moved[k])) for k, a in again_checked.items()}
    again_asked = [k for k in retry if again_cited[k] is not None]
    again_yes = dict(zip(again_asked, verify([(records[k]["question"], moved[k][again_cited[k] - 1])
                                              for k in again_asked], "verification again")))

    retried = []
    for k, r in enumerate(records):
        verified = checked[k] if says_yes.get(k, True) else ABSTAIN
        row = {"set": r["set"], "id": r["id"], "check": scored(r, checked[k], passages[k]),
               "verify": scored(r, verified, passages[k])}
        if k in retry:
            final = again_checked[k] if again_yes.get(k, True) else ABSTAIN
            row["retry"] = scored(r, final, moved[k])
            retried.append({"set": r["set"], "id": r["id"], "question": r["question"], "reference": r["reference"],
                            "source": r["chunk_id"], "first": checked[k],
                            "first_cited": passages[k][cited[k] - 1].chunk_id,
                            "retried_with": moved[k][0].chunk_id, "again": again_text[k],
                            "final": final, "f1": row["retry"]["f1"],
                            "citation_correct": row["retry"]["citation_correct"]})
        else:
            row["retry"] = row["verify"]
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(x) + "\n" for x in retried))
    recorded = [r for r in records if r.get("verify_reply") is None]
    same = sum(c == r["answer"] for c, r in zip(checked, records) if r.get("verify_reply") is None)
    print(f"answers checked again as evaluate checked them: {same} of {len(recorded)} unverified records; "
          f"verified {len(asked)}, said no {len(asked) - sum(says_yes.values())}, another passage said yes "
          f"{len(retry)}, answered again and kept {sum(not abstains(x['final']) for x in retried)}")
    print(summary(rows))


if __name__ == "__main__":
    main()

"""Which signal tells a grounded answer from an invented one? Scores of an evaluated RAFT student, on a GPU.

For each grounded answer of the tuned model in ``answers.jsonl`` (test split, held-out documents, and
outside documents whose answers are in no indexed passage), with the prompt rebuilt exactly as evaluation
built it (``papertune.chat.render_prompt``, the record's passages), one forward pass each gives:
- ``ans_mean`` / ``ans_min`` / ``ans_head``: the answer's mean and lowest token log-probability, and the
  mean over its first 8 tokens (the model's own answer, before the answer check);
- ``abs_mean``: the mean token log-probability of the decline (``papertune.chat.ABSTAIN``) in its place;
- ``ver_tuned`` / ``ver_base``: P(yes) / (P(yes) + P(no)) when the tuned model, and the base model (adapter
  off), is asked in a new conversation whether the answer's passage (its first citation after the check,
  else passage 1) contains the answer to the question (``papertune.chat.verify_turn``); ``ver_max``: the tuned model's
  highest over the four passages;
- ``sup_tuned`` / ``sup_base``: the same for "does the passage support this answer?" with the answer shown.
Then for each score: AUROC of held-out answers against outside ones, and the share of outside questions
declined when the threshold keeps 90% of held-out answers that the answer check let through.

    python benchmarks/answer_confidence.py --run-dir R --answers R/eval/answers.jsonl --out scores.jsonl
"""
import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from papertune.chat import ABSTAIN, render_prompt, strip_citations, verify_turn  # noqa: E402
from papertune.config import load_config  # noqa: E402
from papertune.inference.loading import load_for_answering  # noqa: E402


ASK_SUPPORTS = ("Passage:\n{passage}\n\nQuestion: {question}\nAnswer: {answer}\n\n"
                "Does the passage state this answer to the question? Reply yes or no.")


def token_logprobs(model, tokenizer, prompt: str, completion: str) -> list[float]:
    """Log-probabilities of ``completion``'s tokens after ``prompt`` (teacher forcing)."""
    import torch

    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1:-1].float()
    lp = torch.log_softmax(logits, -1).gather(1, ids[0, len(p):, None])[:, 0]
    return lp.tolist()


def yes_share(model, tokenizer, user: str, yes_ids: list[int], no_ids: list[int], system: str | None = None) -> float:
    """P(yes) / (P(yes) + P(no)) for the first reply token of a one-turn chat asking ``user``."""
    import torch

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=model.device)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    yes, no = float(probs[yes_ids].sum()), float(probs[no_ids].sum())
    return yes / (yes + no) if yes + no > 0 else 0.5


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def table(rows: list[dict], names: list[str]) -> str:
    """Per score: AUROC held-out vs outside, and outside declined at the threshold keeping 90% of held-out."""
    answered = [r for r in rows if not r["abstained"]]
    held = [r for r in answered if r["set"] == "heldout"]
    test = [r for r in answered if r["set"] == "test"]
    out = [r for r in rows if r["set"] == "outside"]
    lines = ["| score | AUROC held-out vs outside | threshold | held-out kept | test kept | outside declined |",
             "|---|---|---|---|---|---|"]
    base = sum(r["abstained"] for r in out) / max(1, len(out))
    lines.append(f"| (answer check alone) | | | 100% | 100% | {base:.1%} |")
    for name in names:
        h = sorted(r[name] for r in held)
        t = h[int(0.1 * len(h))] if h else 0.0
        kept_t = sum(r[name] >= t for r in test) / max(1, len(test))
        declined = sum(r["abstained"] or r[name] < t for r in out) / max(1, len(out))
        a = auroc([r[name] for r in held], [r[name] for r in out if not r["abstained"]])
        lines.append(f"| {name} | {a:.3f} | {t:.3f} | {sum(r[name] >= t for r in held) / max(1, len(held)):.0%} "
                     f"| {kept_t:.0%} | {declined:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--answers", required=True, type=Path, help="an evaluation's answers.jsonl")
    ap.add_argument("--out", required=True, type=Path, help="scores, one JSON line per answer")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N answers of each set (a check)")
    args = ap.parse_args()
    config = load_config(args.run_dir / "config.yaml", [f"run_dir={args.run_dir}"])
    chunks = {c["id"]: c for c in map(json.loads, (args.run_dir / "chunks.jsonl").open())}
    records = [r for r in map(json.loads, args.answers.open())
               if r["system"] == "tuned_retrieval" and r.get("passages")]
    if args.limit:
        records = [r for s in ("test", "heldout", "outside") for r in [x for x in records if x["set"] == s][:args.limit]]
    loaded = load_for_answering(config)
    model, tok = loaded.model, loaded.tokenizer
    yes_ids = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", " yes", " Yes")})
    no_ids = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("no", "No", " no", " No")})
    system = config.build.system_prompt
    rows = []
    for r in records:
        passages = [chunks[p["chunk_id"]] for p in r["passages"]]
        prompt = render_prompt(tok, r["question"], system, passages)
        own = r["model_answer"].strip() or ABSTAIN
        ans = token_logprobs(model, tok, prompt, own)
        abst = token_logprobs(model, tok, prompt, ABSTAIN)
        n = (r.get("cited") or [1])[0]
        chunk = passages[n - 1 if 1 <= n <= len(passages) else 0]
        passage = chunk["text"].strip()
        contains = verify_turn(r["question"], chunk)
        supports = ASK_SUPPORTS.format(passage=passage, question=r["question"], answer=strip_citations(own))
        row = {"set": r["set"], "id": r["id"], "question": r["question"], "answer": own,
               "abstained": bool(r["abstained"]), "f1": r["scores"].get("f1"),
               "ans_mean": sum(ans) / len(ans), "ans_min": min(ans), "ans_head": sum(ans[:8]) / len(ans[:8]),
               "abs_mean": sum(abst) / len(abst),
               "ver_tuned": yes_share(model, tok, contains, yes_ids, no_ids, system),
               "ver_max": max(yes_share(model, tok, verify_turn(r["question"], c), yes_ids, no_ids, system)
                              for c in passages),
               "sup_tuned": yes_share(model, tok, supports, yes_ids, no_ids)}
        with model.disable_adapter():
            row["ver_base"] = yes_share(model, tok, contains, yes_ids, no_ids, system)
            row["sup_base"] = yes_share(model, tok, supports, yes_ids, no_ids)
        row["ans_minus_abs"] = row["ans_mean"] - row["abs_mean"]
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(x) + "\n" for x in rows))
    names = ["ans_mean", "ans_min", "ans_head", "ans_minus_abs", "ver_tuned", "ver_max", "ver_base", "sup_tuned", "sup_base"]
    for name in names:  # a score is "higher = more likely answerable"
        assert all(math.isfinite(x[name]) for x in rows), name
    print(table(rows, names))


if __name__ == "__main__":
    main()

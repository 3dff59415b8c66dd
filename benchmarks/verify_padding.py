"""Do left-padded static batches move the model's yes/no on verification prompts, against one prompt alone?

``ask`` verifies one answer at a time; ``evaluate`` (static engine) verifies in left-padded batches. This
rebuilds the verification prompt of each verified answer in an ``answers.jsonl`` (``papertune.chat
.render_verify_prompt``: the question and the passage the answer cites) and compares the margin
log P(yes) - log P(no) of the first reply token, alone and in batches of ``--batch`` (longest first, as
``papertune.inference.generate`` batches them), in ``--dtype``, on the CPU. Prints one table row: the mean and largest
change of the margin, and how many decisions flip.

    python benchmarks/verify_padding.py --run-dir R --answers R/eval/answers.jsonl \
        --model packaged:qwen2.5-coder-0.5b-instruct --dtype bfloat16
"""
import argparse
import json
from pathlib import Path

import torch

from papertune.chat import render_verify_prompt
from papertune.config import load_config
from papertune.models import load_causal_lm


def margins(model, tokenizer, batch: list[list[int]], yes: list[int], no: list[int]) -> list[float]:
    """log P(yes) - log P(no) of the first reply token of each prompt, the prompts in one left-padded batch."""
    width = max(len(ids) for ids in batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), width), pad)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=1, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=pad)
    scores = out.scores[0].float()
    return (torch.logsumexp(scores[:, yes], 1) - torch.logsumexp(scores[:, no], 1)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="the run directory (config.yaml, chunks.jsonl)")
    parser.add_argument("--answers", type=Path, required=True, help="an evaluation's answers.jsonl, verified")
    parser.add_argument("--model", help="the model, as train.model takes it (default: the run's train.model)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--n", type=int, default=96, help="verified answers to take, in file order")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    config = load_config(args.run_dir / "config.yaml")
    spec = args.model or config.train.model
    model, tokenizer = load_causal_lm(spec, setting="--model", device="cpu", dtype=getattr(torch, args.dtype))
    chunks = {c["id"]: c for c in map(json.loads, (args.run_dir / "chunks.jsonl").open())}
    rows = [r for r in map(json.loads, args.answers.open()) if r.get("verify_reply") and r.get("cited")][:args.n]
    if not rows:
        raise SystemExit(f"{args.answers}: no verified answers citing a passage (evaluate with retrieval.verify)")
    ids = [tokenizer(render_verify_prompt(tokenizer, r["question"], chunks[r["passages"][r["cited"][0] - 1]["chunk_id"]],
                                          config.build.system_prompt), add_special_tokens=False)["input_ids"]
           for r in rows]
    yes = [tokenizer.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes")]
    no = [tokenizer.encode(w, add_special_tokens=False)[0] for w in ("no", "No")]
    alone = [margins(model, tokenizer, [x], yes, no)[0] for x in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    padded = [0.0] * len(ids)
    for start in range(0, len(order), args.batch):
        index = order[start:start + args.batch]
        for i, m in zip(index, margins(model, tokenizer, [ids[i] for i in index], yes, no)):
            padded[i] = m
    change = [p - a for p, a in zip(padded, alone)]
    flips = sum((p > 0) != (a > 0) for p, a in zip(padded, alone))
    print("| model | dtype | prompts | batch | mean change | largest change | mean abs. margin alone | decisions flipped |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {spec} | {args.dtype} | {len(ids)} | {args.batch} | {sum(change) / len(change):+.4f} | "
          f"{max(map(abs, change)):.4f} | {sum(map(abs, alone)) / len(alone):.3f} | {flips} |")


if __name__ == "__main__":
    main()

"""Does the way the model runs move its verifier? P(yes) on one model's verification prompts, run several ways.

For each verified answer in an ``answers.jsonl`` (evaluated with ``retrieval.verify``), the verification prompt
of its question and the passage it cites (``papertune.chat.render_verify_prompt``), and P(yes) / (P(yes) +
P(no)) for the first reply token ("yes"/"Yes" against "no"/"No", also after a space; the words of
``answer_confidence.py``'s ``yes_share``), from its top-20 log-probabilities (a word
outside them counts as the lowest of them). The model is the run's ``train.model`` with its adapter, as ``ask``
and ``evaluate`` load it (``--base``: without), and it runs:
- ``hf``: in transformers, one prompt at a time (as ``ask`` verifies);
- ``hf-padded``: in transformers, left-padded batches of ``--batch``, longest first (as ``evaluate``'s static
  engine verifies);
- ``vllm``: in vLLM, the adapter as a LoRA (as ``evaluate.engine: vllm``; needs a CUDA GPU and vLLM).
Prints one table: per way, the answers it says no to (P(yes) < 0.5) and the mean P(yes); then each other way
against the first: the mean change and the decisions that flip each way. ``--set`` changes the run's settings
(a CPU check: ``--set train.model=packaged:qwen2.5-coder-0.5b-instruct --set train.dtype=bfloat16 --base``).

    python benchmarks/verify_engines.py --run-dir R --answers OUT/verify/answers.jsonl --engines hf hf-padded vllm
"""
import argparse
import json
import math
from pathlib import Path

import torch

from papertune.chat import render_verify_prompt
from papertune.config import load_config
from papertune.inference import adapter_path, attach_adapter, load_base

TOP = 20  # log-probabilities kept per prompt, as vLLM returns them


def p_yes(logprob: dict[int, float], yes: list[int], no: list[int]) -> float:
    """P(yes) / (P(yes) + P(no)) from the log-probabilities of the first reply token (missing: the floor)."""
    floor = min(logprob.values())

    def pick(ids: list[int]) -> float:
        return math.log(sum(math.exp(logprob.get(i, floor)) for i in ids))

    return 1 / (1 + math.exp(pick(no) - pick(yes)))


def hf_scores(model, tokenizer, ids: list[list[int]], batch: int) -> list[dict[int, float]]:
    """The first reply token's top log-probabilities of each prompt, in transformers, in left-padded batches of
    ``batch`` prompts, longest first."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    out: list[dict[int, float]] = [{} for _ in ids]
    for start in range(0, len(order), batch):
        index = order[start:start + batch]
        width = max(len(ids[i]) for i in index)
        input_ids = torch.full((len(index), width), pad)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        with torch.inference_mode():
            scores = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=1,
                                    do_sample=False, output_scores=True, return_dict_in_generate=True,
                                    pad_token_id=pad).scores[0].float()
        top = torch.log_softmax(scores, -1).topk(TOP)
        for row, i in enumerate(index):
            out[i] = dict(zip(top.indices[row].tolist(), top.values[row].tolist()))
    return out


def vllm_scores(config, ids: list[list[int]], adapter: Path | None) -> list[dict[int, float]]:
    """The same in vLLM, the adapter as a LoRA, all prompts at once."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from papertune.inference.vllm_engine import VLLMEngine

    rank = int(json.loads((adapter / "adapter_config.json").read_text())["r"]) if adapter else 0
    engine = VLLMEngine(config.train.model, setting="train", memory_share=0.4,
                        max_model_len=max(map(len, ids)) + 8, lora_rank=rank)
    request = LoRARequest("adapter", 1, str(adapter.resolve())) if adapter else None
    outputs = engine.llm.generate([{"prompt_token_ids": p} for p in ids],
                                  SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP), use_tqdm=False,
                                  lora_request=request)
    engine.release()
    return [{t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="the run directory (config.yaml, chunks.jsonl)")
    parser.add_argument("--answers", type=Path, required=True, help="an evaluation's answers.jsonl, verified")
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "hf-padded", "vllm"])
    parser.add_argument("--batch", type=int, default=16, help="prompts per batch for hf-padded")
    parser.add_argument("--base", action="store_true", help="leave the adapter off")
    parser.add_argument("--n", type=int, default=0, help="verified answers to take, in file order (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of the run")
    args = parser.parse_args()

    config = load_config(args.run_dir / "config.yaml", [f"run_dir={args.run_dir}", *args.set])
    adapter = None if args.base else adapter_path(config)
    chunks = {c["id"]: c for c in map(json.loads, (args.run_dir / "chunks.jsonl").open())}
    rows = [r for r in map(json.loads, args.answers.open()) if r.get("verify_reply") and r.get("cited")]
    rows = rows[:args.n] if args.n else rows
    if not rows:
        raise SystemExit(f"{args.answers}: no verified answers citing a passage (evaluate with retrieval.verify)")
    model, tokenizer = load_base(config)
    if adapter is not None:
        model = attach_adapter(model, adapter)
    cited = [chunks[r["passages"][r["cited"][0] - 1]["chunk_id"]] for r in rows]
    ids = [tokenizer(render_verify_prompt(tokenizer, r["question"], chunk, config.build.system_prompt),
                     add_special_tokens=False)["input_ids"] for r, chunk in zip(rows, cited)]
    # The words answer_confidence.py reads too, with and without a leading space.
    yes = sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", " yes", " Yes")})
    no = sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in ("no", "No", " no", " No")})
    probs: dict[str, list[float]] = {}
    for engine in args.engines:
        if engine == "vllm":
            logprobs = vllm_scores(config, ids, adapter)
        else:
            logprobs = hf_scores(model, tokenizer, ids, 1 if engine == "hf" else args.batch)
        probs[engine] = [p_yes(lp, yes, no) for lp in logprobs]
    print("| run as | verification prompts | says no (P(yes) < 0.5) | mean P(yes) |")
    print("|---|---|---|---|")
    for engine, ps in probs.items():
        print(f"| {engine} | {len(ps)} | {sum(p < 0.5 for p in ps)} | {sum(ps) / len(ps):.3f} |")
    (first, a), *others = probs.items()
    for other, b in others:
        change = [y - x for x, y in zip(a, b)]
        print(f"\n{other} against {first}: mean P(yes) change {sum(change) / len(change):+.4f}, largest "
              f"{max(map(abs, change)):.4f}; yes -> no {sum(x >= 0.5 > y for x, y in zip(a, b))}, "
              f"no -> yes {sum(y >= 0.5 > x for x, y in zip(a, b))}")


if __name__ == "__main__":
    main()

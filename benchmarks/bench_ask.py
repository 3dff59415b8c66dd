"""How long `papertune ask` / `chat` takes per question on a trained run, as a user waits for it.

    python benchmarks/bench_ask.py RUN_DIR [--questions 5] [--closed-book] [--set SECTION.KEY=VALUE ...]

Loads the run's model once (``papertune.ask.Assistant``: base + adapter, and the retriever when grounded),
then answers the first --questions questions of the run's test split one after another, each as ``ask``
answers it (retrieval, the prompt with its passages, greedy generation streamed, the sources). Prints the
load time and, per question, the seconds, the prompt and answer tokens, whether it cited a passage or declined;
then the median of the questions after the first (the target: under 10 s on 2 cores for the cpu profile).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--closed-book", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    import torch
    from datasets import load_from_disk

    from papertune.ask import Assistant
    from papertune.chat import render_prompt
    from papertune.config import load_config
    from papertune.profiles import choose_config_file

    overrides = [f"run_dir={args.run_dir}", *args.set] + (["retrieval.grounded=false"] if args.closed_book else [])
    config = load_config(choose_config_file(None, args.run_dir, pick_for_machine=False), overrides)
    questions = [r["question"] for r in load_from_disk(str(args.run_dir / "dataset"))["test"]][:args.questions]
    started = time.perf_counter()
    assistant = Assistant(config)
    load_s = time.perf_counter() - started
    print(f"{assistant.description}; {'grounded' if assistant.grounded else 'closed book'}; "
          f"{torch.get_num_threads()} torch threads; loaded in {load_s:.1f} s", flush=True)
    print("| # | s | prompt tokens | answer tokens | cited | declined | question |")
    print("|---|---|---|---|---|---|---|")
    seconds = []
    for n, question in enumerate(questions, 1):
        sink = io.StringIO()
        started = time.perf_counter()
        record = assistant.answer(question, sink)
        seconds.append(time.perf_counter() - started)
        passages = ([assistant.retriever.chunks[p["chunk_id"]] for p in record["passages"]]
                    if assistant.grounded else None)
        prompt = render_prompt(assistant.tokenizer, question, config.build.system_prompt, passages)
        prompt_tokens = len(assistant.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        answer_tokens = len(assistant.tokenizer(record["answer"], add_special_tokens=False)["input_ids"])
        print(f"| {n} | {seconds[-1]:.1f} | {prompt_tokens} | {answer_tokens} | {record['cited'] or '-'} | "
              f"{'yes' if record['abstained'] else 'no'} | {question[:70]} |", flush=True)
    if len(seconds) > 1:
        print(f"\nafter the first: median {statistics.median(seconds[1:]):.1f} s, max {max(seconds[1:]):.1f} s "
              f"per question (first {seconds[0]:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

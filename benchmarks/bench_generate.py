"""Benchmark the generate stage: rules, and the llm generator batched vs one at a time, in-process and
against an OpenAI-compatible server on 127.0.0.1 with 1 vs 8 parallel requests.

    python benchmarks/bench_generate.py [--llm-chunks 8] [--max-new-tokens 48] [--repeat 3]

Chunks come from ingesting the sample corpus's Markdown files (no OCR, a few seconds). Every llm
setting runs on the same chunks with the same model, SmolLM2-135M-Instruct (loaded once, warmed up
before timing), greedy, in a fresh run directory (nothing resumed):

- llm, hf backend, generate.llm.batch_size 8 vs 1;
- llm, openai backend, against tests/helpers_openai.py serving that model (it batches requests that
  arrive together, as vLLM or llama.cpp do), generate.llm.concurrency 8 vs 1.

Greedy decoding makes the replies, and so the pairs, the same in every llm setting; only the time
differs. pairs/s counts the pairs kept after the grounding and injection filters (the small model
loses many), chunks/s every chunk done. The default run takes about 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the OpenAI-compatible test server (tests/helpers_openai.py)

from helpers_openai import ChatServer  # noqa: E402

from papertune import generate, ingest  # noqa: E402
from papertune.config import SMOLLM2_PACKAGED, LLMConfig, load_config  # noqa: E402
from papertune.generate.stage import load_chunks  # noqa: E402
from papertune.llm import make_chat_model  # noqa: E402
from papertune.rundir import read_jsonl, write_jsonl_atomic  # noqa: E402


def make_chunks(tmp: Path) -> Path:
    docs = tmp / "docs"
    docs.mkdir()
    for path in sorted((REPO / "samples" / "corpus").glob("*.md")):
        shutil.copy(path, docs / path.name)
    run_dir = tmp / "ingested"
    ingest.run(load_config(None, [f"run_dir={run_dir}", f"ingest.docs_dir={docs}", "ingest.workers=2"]))
    return run_dir / "chunks.jsonl"


def timed_run(chunks: list[dict], tmp: Path, overrides: list[str], chat_model=None) -> tuple[float, dict, list]:
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    write_jsonl_atomic(run_dir / "chunks.jsonl", chunks)
    cfg = load_config(None, [f"run_dir={run_dir}", *overrides])
    start = time.perf_counter()
    generate.run(cfg, chat_model=chat_model)
    seconds = time.perf_counter() - start
    import json

    report = json.loads((run_dir / generate.REPORT_FILE).read_text(encoding="utf-8"))
    rows = [(r["question"], r["answer"]) for r in read_jsonl(run_dir / generate.QA_FILE)]
    return seconds, report, rows


def row(name: str, setup: str, chunks: int, pairs: int, seconds: float) -> str:
    return (f"| {name} | {setup} | {chunks} | {pairs} | {seconds:.2f} | {pairs / seconds:.2f} | "
            f"{chunks / seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-chunks", type=int, default=8, help="chunks for each llm measurement")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generate.llm.max_new_tokens")
    parser.add_argument("--pairs-per-chunk", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timings of the rules generator (median reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    lines = [
        f"generate benchmark: {torch.get_num_threads()} torch threads, model {SMOLLM2_PACKAGED}, "
        f"max_new_tokens {args.max_new_tokens}, pairs_per_chunk {args.pairs_per_chunk}",
        "",
        "| generator | setup | chunks | pairs | seconds | pairs/s | chunks/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        chunks, _, _ = load_chunks(make_chunks(tmp))

        times, report = [], {}
        for _ in range(args.repeat):
            seconds, report, _ = timed_run(chunks, tmp, ["generate.generators={rules: 1}"])
            times.append(seconds)
        lines.append(row("rules", "offline patterns", len(chunks), report["pairs"], statistics.median(times)))

        llm_chunks = chunks[: args.llm_chunks]
        common = ["generate.generators={llm: 1}", f"generate.pairs_per_chunk={args.pairs_per_chunk}",
                  f"generate.llm.max_new_tokens={args.max_new_tokens}"]
        hf = {}
        for batch in (8, 1):
            cfg = LLMConfig(model=SMOLLM2_PACKAGED, batch_size=batch, max_new_tokens=args.max_new_tokens)
            hf[batch] = make_chat_model(cfg, "generate.llm")  # the weights are loaded once and shared
        hf[8].chat([[{"role": "user", "content": "Say hi."}]], max_new_tokens=4)  # warm-up, not timed
        outputs = {}
        for batch in (8, 1):
            seconds, report, outputs[f"hf{batch}"] = timed_run(
                llm_chunks, tmp, [*common, f"generate.llm.batch_size={batch}"], chat_model=hf[batch])
            lines.append(row("llm", f"hf, batch_size {batch}", len(llm_chunks), report["pairs"], seconds))

        with ChatServer(hf[8], model_name="smollm2-135m-instruct", max_batch=8) as server:
            for concurrency in (8, 1):
                seconds, report, outputs[f"openai{concurrency}"] = timed_run(
                    llm_chunks, tmp,
                    [*common, "generate.llm.backend=openai", f"generate.llm.base_url={server.url}",
                     "generate.llm.model=smollm2-135m-instruct", f"generate.llm.concurrency={concurrency}",
                     "generate.llm.timeout_s=600"])
                lines.append(row("llm", f"openai server, concurrency {concurrency}", len(llm_chunks),
                                 report["pairs"], seconds))
        same = len({tuple(v) for v in outputs.values()}) == 1
        lines += ["", f"llm pairs identical across the four settings (greedy): {same}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

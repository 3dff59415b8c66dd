"""The GPU benchmarks' results: every benchmark prints one ``RESULT {json}`` line per measurement; this
module reads them back from the logs and prints them as Markdown tables (as in docs/benchmarks.md).

    python benchmarks/results.py table LOG...                     # the RESULT lines of the logs -> a Markdown table
    python benchmarks/results.py scaling ONE_GPU_LOG TWO_GPU_LOG  # train_seed_mix.py workload: 1 vs 2 GPUs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def results(paths: list[str]) -> list[dict]:
    """The ``RESULT {json}`` lines of benchmark logs, in order."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[len("RESULT "):]))
    return rows


def markdown_table(rows: list[dict], columns: dict[str, object]) -> None:
    """Print ``rows`` as a Markdown table; ``columns``: header -> the row's key, or a function of the row."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(cell(row) if callable(cell) else row.get(cell)) for cell in columns.values()) + " |")


def table(paths: list[str]) -> None:
    """One table of the usual columns (mode or recipe, tokens/s, step or wall time, peak memory, GPU)."""
    markdown_table(results(paths), {
        "mode": lambda r: r.get("mode", r.get("recipe")), "tokens/s": "tokens_per_s",
        "step s (median)": lambda r: r.get("step_s_median", r.get("wall_s")), "peak GiB": "peak_gib", "GPU": "gpu"})


def scaling(one_gpu_log: str, two_gpu_log: str) -> None:
    """The seed-mix workload on one GPU and on two (``train_seed_mix.py workload`` under torchrun) side by side,
    and the scaling over the epoch and after warm-up."""
    one, two = results([one_gpu_log]), results([two_gpu_log])
    if not (one and two):
        print(f"scaling: no RESULT line in {one_gpu_log if not one else two_gpu_log}")
        return
    rows = [dict(r, gpus=n) for n, r in ((1, one[0]), (2, two[0]))]
    markdown_table(rows, {"GPUs": "gpus", "optimizer steps": "optimizer_steps", "wall s": "wall_s",
                          "tokens/s (epoch)": "tokens_per_s", "steady tokens/s": "steady_tokens_per_s",
                          "first step s": "first_step_s", "final loss": "final_loss", "peak GiB/GPU": "peak_gib"})
    print(f"scaling: epoch {two[0]['tokens_per_s'] / one[0]['tokens_per_s']:.2f}x, "
          f"steady {two[0]['steady_tokens_per_s'] / one[0]['steady_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    command, *paths = sys.argv[1:] or [""]
    if command == "table" and paths:
        table(paths)
    elif command == "scaling" and len(paths) == 2:
        scaling(*paths)
    else:
        sys.exit(__doc__)

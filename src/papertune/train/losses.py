"""The loss table (step, training loss, validation loss at each evaluation), like the training report's.

One function reads it from ``RUN/train/metrics.jsonl`` and one renders it, for ``RUN/train/loss_table.md``
and for the run summary alike, so both show the same table, also after a resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from papertune.rundir import read_jsonl

HEADER = "| Step | Training Loss | Validation Loss |"


def loss_table(metrics_path: Path) -> list[dict[str, Any]]:
    """(step, training loss, validation loss) at each evaluation; the last record of a step wins (a resumed
    run logs again the steps after its checkpoint). Without evaluations: the training losses alone."""
    if not metrics_path.is_file():
        return []
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for row in read_jsonl(metrics_path):
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            evals[row["step"]] = row["eval_loss"]
    rows = []
    for step in sorted(evals):
        before = [train[s] for s in sorted(train) if s <= step]
        rows.append({"step": step, "train_loss": before[-1] if before else None, "val_loss": evals[step]})
    if not rows:
        rows = [{"step": s, "train_loss": train[s], "val_loss": None} for s in sorted(train)]
    return rows


def _loss(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6f}" if math.isfinite(value) else str(value)


def render_loss_table(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown lines (no trailing newline)."""
    lines = [HEADER, "|------|---------------|-----------------|"]
    lines += [f"| {r['step']} | {_loss(r['train_loss'])} | {_loss(r['val_loss'])} |" for r in rows]
    return "\n".join(lines)

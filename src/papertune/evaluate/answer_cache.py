"""The answers evaluate has generated, kept in ``RUN/eval/answers_cache.jsonl`` as each system finishes.

Generating answers is evaluate's slow part; scoring them (metrics, the judge, the charts) comes after. A run
stopped there (a missing package, the judge running out of memory, a time limit) or rerun with other metrics
or another judge generates nothing again. An answer is found again only for the same model (``train.model``
and its dtype, the adapter's weights by content), the same prompt, byte for byte, and the same decoding
settings; anything else generates anew.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from papertune.rundir import EVAL_ANSWERS_CACHE, read_jsonl, sha256_file, write_jsonl_atomic


def model_identity(model: str, dtype: str, adapter: Path | None) -> dict[str, Any]:
    """What makes a model's answers its own: the base model setting, the dtype, and the adapter's weights."""
    weights = None
    if adapter is not None:
        files = sorted(adapter.glob("adapter_model.*"))
        weights = {f.name: sha256_file(f) for f in files} or None
    return {"model": model, "dtype": dtype, "adapter": weights}


class AnswerCache:
    """Answers by (model identity, prompt, decoding settings); :meth:`store` writes the file at once."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVAL_ANSWERS_CACHE
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.rows = {r["key"]: r for r in read_jsonl(self.path) if isinstance(r, dict) and "key" in r}

    @staticmethod
    def key(identity: dict[str, Any], prompt: str, decoding: dict[str, Any]) -> str:
        text = json.dumps([identity, prompt, decoding], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def lookup(self, identity: dict[str, Any], prompts: list[str], decoding: dict[str, Any]) -> list[str | None]:
        """The cached answer of each prompt, or None."""
        found = [self.rows.get(self.key(identity, p, decoding)) for p in prompts]
        return [None if row is None else row["answer"] for row in found]

    def store(self, identity: dict[str, Any], prompts: list[str], answers: list[str],
              decoding: dict[str, Any]) -> None:
        for prompt, answer in zip(prompts, answers, strict=True):
            key = self.key(identity, prompt, decoding)
            self.rows[key] = {"key": key, "answer": answer}
        write_jsonl_atomic(self.path, list(self.rows.values()))

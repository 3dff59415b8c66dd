"""The data stages write the same files in every process: nothing they write may follow the iteration order of
a set or dict of strings, which Python salts per process (PYTHONHASHSEED)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SAMPLE_CORPUS

FILES = ("chunks.jsonl", "qa.jsonl", "qa_curated.jsonl", "qa_dropped.jsonl", "qa_augmented.jsonl", "output.json")
# The offline generators only (no teacher, no judge): the stages' own code is what is checked.
SETTINGS = ("--config", "cpu", "--set", "generate.generators={rules: 1.0}", "--set", "curate.judge_enabled=false",
            "--set", "curate.refill_rounds=0", "-q")


def run_data_stages(run_dir: Path, hash_seed: int) -> None:
    """``papertune run --to build`` on the sample corpus in a process of its own."""
    args = [sys.executable, "-m", "papertune", "run", "--docs", str(SAMPLE_CORPUS), "--to", "build",
            "--run-dir", str(run_dir), *SETTINGS]
    proc = subprocess.run(args, env={**os.environ, "PYTHONHASHSEED": str(hash_seed)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"papertune run failed:\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_data_stages_write_the_same_files_under_any_hash_seed(tmp_path):
    from datasets import load_from_disk

    first, second = tmp_path / "a", tmp_path / "b"
    run_data_stages(first, 1)
    run_data_stages(second, 7919)
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "qa_curated.jsonl").read_text().count("\n") > 20  # a real amount of data was compared
    one, two = load_from_disk(str(first / "dataset")), load_from_disk(str(second / "dataset"))
    assert list(one) == list(two) and all(one[s].to_list() == two[s].to_list() for s in one)

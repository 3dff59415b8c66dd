"""Training examples as token ids with a loss mask, and the fingerprint that guards resumes.

Examples are tokenized here rather than by TRL (which takes a ``labels`` column as given), so exactly
which tokens carry loss does not depend on the TRL version: the prompt (system and user turns, and the assistant header) carries none; the
answer and the end-of-turn token carry it all. Prompt and completion are tokenized apart, without
special tokens added (the chat template already wrote them), which is also how ``papertune ask``
tokenizes a prompt: the model sees at inference exactly the ids it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from papertune.config import RESUME_SAFE, SPEED_ONLY, TrainConfig, settings_without
from papertune.errors import InputError
from papertune.rundir import DATASET, data_files, sha256_file


def tokenize_example(tokenizer: Any, prompt: str, completion: str) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 on the prompt): the collator of every TRL version uses them as is."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids}


def load_training_data(run_dir: Path, tokenizer: Any, max_len: int) -> tuple[Any, dict[str, int]]:
    """``RUN/dataset`` tokenized: a DatasetDict with ``input_ids`` and ``labels``, and counts (examples and
    tokens per split, and how many examples were longer than ``max_len``)."""
    import numpy as np
    import pyarrow.compute as pc
    from datasets import DatasetDict, load_from_disk

    path = run_dir / DATASET
    if not (path / "dataset_dict.json").is_file():
        raise InputError(f"no dataset in {path}: run `papertune build --run-dir {run_dir}` first")
    raw = load_from_disk(str(path))
    for split in ("train", "test"):
        if split not in raw or not {"prompt", "completion"} <= set(raw[split].column_names):
            raise InputError(f"{path} has no {split} split with prompt/completion columns; rebuild it with papertune build")
        if len(raw[split]) == 0:
            raise InputError(f"{path}: the {split} split is empty; more question-answer pairs are needed")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": []}
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            example = tokenize_example(tokenizer, prompt, completion)
            out["input_ids"].append(example["input_ids"])
            out["labels"].append(example["labels"])
        return out

    counts = {}
    tokenized = {}
    for split in ("train", "test"):
        # In memory: RUN/dataset stays exactly as build wrote it (no cache files beside it).
        ds = raw[split].map(encode, batched=True, remove_columns=raw[split].column_names, desc=f"tokenize {split}",
                            keep_in_memory=True)
        before = len(ds)
        lengths = pc.list_value_length(ds.data.column("input_ids")).to_numpy()  # from Arrow, no Python lists
        ds = ds.select(np.flatnonzero(lengths <= max_len), keep_in_memory=True)
        if len(ds) == 0:
            raise InputError(f"{path}: all {before} {split} examples are longer than train.max_seq_length={max_len} "
                             "tokens; raise train.max_seq_length or build shorter examples")
        counts[f"{split}_examples"] = len(ds)
        counts[f"{split}_tokens"] = int(lengths[lengths <= max_len].sum())
        counts[f"{split}_over_max_seq_length"] = before - len(ds)
        tokenized[split] = ds
    return DatasetDict(tokenized), counts


def dataset_fingerprint(run_dir: Path) -> str:
    """A hash of the saved dataset's files: it changes when the data does."""
    digest = hashlib.sha256()
    for path in data_files(run_dir / DATASET):
        digest.update(path.relative_to(run_dir).as_posix().encode())
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def run_fingerprint(cfg: TrainConfig, run_dir: Path, backend: str) -> dict[str, str]:
    """What checkpoints must share with the run that resumes them: the train settings (less the SPEED_ONLY and
    RESUME_SAFE ones), the data, the model and the backend."""
    settings = settings_without(cfg, SPEED_ONLY, RESUME_SAFE)
    return {
        "config": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "data": dataset_fingerprint(run_dir),
        "model": cfg.model,
        "backend": backend,
    }

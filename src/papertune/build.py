"""The build stage: question-answer pairs -> the SFT dataset the trainer reads.

Writes ``RUN/output.json`` (JSON lines, loadable with ``load_dataset("json", data_files=...)`` as in
the training report), ``RUN/dataset/`` (a ``datasets.DatasetDict`` with ``train`` and ``test``),
``RUN/dataset_card.md`` with length histograms, and ``RUN/build/report.json``.

The split is 80/20 with seed 3407 like the report's ``train_test_split``, but by group: every pair of
a source chunk (or document), with all its augmented variants, lands on one side, and groups that
share near-duplicate questions are joined first. The leakage check then measures near-duplicate
questions across the two sides (none, by construction) and what the report's plain row-level split
would have leaked.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from papertune.chat import render_example, to_messages
from papertune.config import BuildConfig, PapertuneConfig
from papertune.errors import InputError
from papertune.rundir import (
    BUILD_DIR,
    BUILD_LENGTHS_PLOT,
    BUILD_REPORT,
    CHUNKS,
    DATASET,
    DATASET_CARD,
    OUTPUT_JSON,
    QA,
    QA_AUGMENTED,
    QA_CURATED,
    atomic_dir,
    atomic_path,
    read_pairs,
    record_stage,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from papertune.stage import StageSpec, run_files
from papertune.text import jaccard, shingles

log = logging.getLogger(__name__)

# Newest first: the build uses the furthest stage that has run.
INPUT_FILES = (QA_AUGMENTED, QA_CURATED, QA)
_SHINGLE_WORDS = 3


# --- near-duplicate questions ----------------------------------------------------------------------


class _NearDuplicates:
    """MinHash LSH over word 3-shingles; candidates are confirmed with the exact Jaccard similarity."""

    def __init__(self, texts: list[str], threshold: float) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.shingles = [shingles(t, _SHINGLE_WORDS) for t in texts]
        self.lsh = MinHashLSH(threshold=threshold, num_perm=128)
        self.hashes = []
        for i, sh in enumerate(self.shingles):
            mh = MinHash(num_perm=128, seed=1)
            mh.update_batch([s.encode() for s in sh])
            self.hashes.append(mh)
            if sh:
                self.lsh.insert(i, mh)

    def neighbours(self, i: int) -> list[int]:
        if not self.shingles[i]:
            return []
        return [
            j for j in self.lsh.query(self.hashes[i])
            if j != i and jaccard(self.shingles[i], self.shingles[j]) >= self.threshold
        ]


def _count_leaks(rows: list[dict], test_ids: set[int], dups: _NearDuplicates) -> dict[str, int]:
    """Test rows whose question has a near-duplicate in train, or whose chunk also feeds train."""
    train_chunks = {rows[i].get("chunk_id") for i in range(len(rows)) if i not in test_ids}
    near = sum(1 for i in test_ids if any(j not in test_ids for j in dups.neighbours(i)))
    shared = sum(1 for i in test_ids if rows[i].get("chunk_id") in train_chunks)
    return {"test_rows_with_near_duplicate_in_train": near, "test_rows_sharing_a_chunk_with_train": shared}


# --- the split -------------------------------------------------------------------------------------


def grouped_split(rows: list[dict], cfg: BuildConfig, dups: _NearDuplicates) -> set[int]:
    """Indices of test rows: whole groups, joined over near-duplicate questions, ~test_size of the rows."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    # Variants share their original's chunk and source; a row without either is grouped by its original.
    key_field = "chunk_id" if cfg.group_by == "chunk" else "source"
    first_of_key: dict[Any, int] = {}
    for i, row in enumerate(rows):
        key = row.get(key_field) or row.get("parent_id") or row["id"]
        union(i, first_of_key.setdefault(key, i))
    for i in range(len(rows)):
        for j in dups.neighbours(i):
            union(i, j)

    components: dict[int, list[int]] = {}
    for i in range(len(rows)):
        components.setdefault(find(i), []).append(i)
    order = sorted(components)  # by first row: independent of hash seeds
    random.Random(cfg.seed).shuffle(order)
    target = cfg.test_size * len(rows)
    test: set[int] = set()
    for root in order:
        if len(test) >= target:
            break
        if len(components) > 1 and len(test) + len(components[root]) >= len(rows):
            continue  # never leave train empty
        test.update(components[root])
    return test


def _random_split(n: int, cfg: BuildConfig) -> set[int]:
    """What the report's row-level ``train_test_split(test_size, seed)`` would put in test."""
    indices = list(range(n))
    random.Random(cfg.seed).shuffle(indices)
    return set(indices[: max(1, round(cfg.test_size * n))])


# --- formatting ------------------------------------------------------------------------------------


def _format_batch(batch: dict[str, list], tokenizer: Any, system_prompt: str, max_len: int, overlength: str) -> dict:
    out: dict[str, list] = {"messages": [], "prompt": [], "completion": [], "text": [], "n_tokens": [], "truncated": []}
    for question, answer in zip(batch["question"], batch["answer"]):
        example = render_example(tokenizer, question, answer, system_prompt)
        ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"]
        truncated = False
        if len(ids) > max_len and overlength == "truncate":
            prompt_len = len(tokenizer(example["prompt"], add_special_tokens=False)["input_ids"])
            if prompt_len < max_len:
                example["completion"] = tokenizer.decode(ids[prompt_len:max_len])
                example["text"] = example["prompt"] + example["completion"]
                ids = ids[:max_len]
                truncated = True
        out["messages"].append(to_messages(question, answer, system_prompt))
        for key in ("prompt", "completion", "text"):
            out[key].append(example[key])
        out["n_tokens"].append(len(ids))
        out["truncated"].append(truncated)
    return out


def _load_tokenizer(cfg: BuildConfig) -> Any:
    from transformers import AutoTokenizer

    from papertune.models import resolve_model

    name = resolve_model(cfg.model, "build.model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise InputError(
            f"build.model={cfg.model!r}: its tokenizer could not be loaded ({exc}). Use a local model folder, "
            "a Hub id with network access, or builtin:qwen2.5-tokenizer for Qwen2.5's tokenizer offline"
        ) from exc
    if not tokenizer.chat_template:
        raise InputError(f"build.model={cfg.model!r} has no chat template; use an instruct model")
    return tokenizer


# --- the card --------------------------------------------------------------------------------------


def _histograms(splits: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, field in zip(axes, ("question", "answer")):
        for name, rows in splits.items():
            ax.hist([len(r[field].split()) for r in rows], bins=30, alpha=0.6, label=f"{name} ({len(rows)})")
        ax.set_title(f"{field} length")
        ax.set_xlabel("words")
        ax.set_ylabel("pairs")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _line_count(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def _card(run_dir: Path, report: dict, splits: dict[str, list[dict]]) -> str:
    stages = [("chunks", CHUNKS), ("generated pairs", QA), ("curated pairs", QA_CURATED),
              ("after augmentation", QA_AUGMENTED)]
    lines = ["# Dataset card", "", f"Built from `{report['input']}` for `{report['model']}` "
             f"(max {report['max_seq_length']} tokens).", "", "## Counts per stage", "", "| stage | rows |", "|---|---|"]
    for name, file in stages:
        count = _line_count(run_dir / file)
        if count is not None:
            lines.append(f"| {name} (`{file}`) | {count} |")
    lines += [f"| train | {report['train']} |", f"| test | {report['test']} |", ""]
    lines += ["## Per generator and augmentation", "", "| kind | train | test |", "|---|---|---|"]
    for field, label in (("generator", "generator"), ("augmentation", "augmentation")):
        counts = {name: Counter(r.get(field) or "original" for r in rows) for name, rows in splits.items()}
        for key in sorted(set(counts["train"]) | set(counts["test"])):
            lines.append(f"| {label}: {key} | {counts['train'][key]} | {counts['test'][key]} |")
    leak = report["leakage"]
    lines += ["", "## Split and leakage", "",
              f"Grouped by {report['group_by']} (seed {report['seed']}, test share {report['test_share']:.3f}). "
              f"Near-duplicate questions (Jaccard of word 3-shingles >= {report['leakage_threshold']}) across the "
              "split:", "",
              "| split | test rows with a near-duplicate question in train | test rows whose chunk also feeds train |",
              "|---|---|---|",
              f"| grouped (this dataset) | {leak['grouped']['test_rows_with_near_duplicate_in_train']} | "
              f"{leak['grouped']['test_rows_sharing_a_chunk_with_train']} |",
              f"| plain random rows (the report's split) | {leak['random']['test_rows_with_near_duplicate_in_train']} | "
              f"{leak['random']['test_rows_sharing_a_chunk_with_train']} |",
              "", f"Over {report['max_seq_length']} tokens: {report['overlength']} ({report['overlength_action']}).",
              "", "## Lengths", "", f"![question and answer lengths]({BUILD_LENGTHS_PLOT})", "", "## Examples", ""]
    for row in splits["train"][:3] + splits["test"][:2]:
        page = f", page {row['page_start']}" if row.get("page_start") else ""
        lines += [f"- **Q:** {row['question']}", f"  **A:** {row['answer']}",
                  f"  *source: {row.get('source')}{page}; generator: {row.get('generator')}; "
                  f"augmentation: {row.get('augmentation') or 'none'}*"]
    return "\n".join(lines) + "\n"


# --- the stage -------------------------------------------------------------------------------------


SPEC = StageSpec(
    name="build",
    directory=BUILD_DIR,
    help="the SFT dataset: RUN/output.json and RUN/dataset/ (train/test)",
    description="Split the pairs 80/20 (seed 3407) grouped by source chunk, check for leakage, format them with "
    "the target model's chat template and save a datasets DatasetDict and a dataset card.",
    # build formats with build.model's chat template (train warns when train.model differs).
    settings=("build",),
    outputs=(DATASET, OUTPUT_JSON, DATASET_CARD, BUILD_REPORT, BUILD_LENGTHS_PLOT),
    inputs=run_files(QA_AUGMENTED),
)


def run(config: PapertuneConfig) -> Path:
    """Build ``RUN/dataset`` (and ``RUN/output.json``) from the newest pairs file; returns the dataset path."""
    from datasets import Dataset, DatasetDict

    cfg = config.build
    run_dir = Path(config.run_dir)
    source = next((run_dir / f for f in INPUT_FILES if (run_dir / f).is_file()), None)
    if source is None:
        raise InputError(f"no question-answer pairs in {run_dir}: run `papertune generate --run-dir {run_dir}` first")
    if source.name != INPUT_FILES[0]:
        log.warning("build: %s not found, building from %s", INPUT_FILES[0], source.name)
    rows, problems, duplicates = read_pairs(source)
    duplicate_ids = len(duplicates)
    if len(rows) < 2:
        raise InputError(f"{source} has {len(rows)} usable pairs; at least 2 are needed to make a train/test split")
    tokenizer = _load_tokenizer(cfg)
    record_stage(run_dir, BUILD_DIR, config)

    dups = _NearDuplicates([r["question"] for r in rows], cfg.leakage_threshold)
    test_ids = grouped_split(rows, cfg, dups)
    leakage = {"grouped": _count_leaks(rows, test_ids, dups), "random": _count_leaks(rows, _random_split(len(rows), cfg), dups)}
    if leakage["grouped"]["test_rows_with_near_duplicate_in_train"]:
        raise AssertionError("grouped split leaked near-duplicate questions; this is a bug in papertune.build")

    for i, row in enumerate(rows):
        row["split"] = "test" if i in test_ids else "train"
    write_jsonl_atomic(run_dir / OUTPUT_JSON, rows)

    keep = ("id", "question", "answer", "chunk_id", "source", "title", "section", "page_start", "page_end",
            "generator", "kind", "augmentation", "parent_id")
    splits = {name: [{k: r.get(k) for k in keep} for r in rows if r["split"] == name] for name in ("train", "test")}
    dataset = DatasetDict({name: Dataset.from_list(split) for name, split in splits.items()})
    dataset = DatasetDict({
        name: ds.map(
            _format_batch,
            batched=True,
            num_proc=min(cfg.num_proc, len(ds)) if cfg.num_proc > 1 and len(ds) >= 2 * cfg.num_proc else None,
            fn_kwargs={"tokenizer": tokenizer, "system_prompt": cfg.system_prompt,
                       "max_len": cfg.max_seq_length, "overlength": cfg.overlength},
            desc=f"format {name}",
        )
        for name, ds in dataset.items()
    })
    over = {name: sum(1 for n in ds["n_tokens"] if n > cfg.max_seq_length) + sum(ds["truncated"]) for name, ds in dataset.items()}
    if cfg.overlength == "drop":
        dataset = DatasetDict({name: ds.filter(lambda n: n <= cfg.max_seq_length, input_columns="n_tokens")
                               for name, ds in dataset.items()})

    out = run_dir / DATASET
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))

    report = {
        "input": source.name,
        "model": cfg.model,
        "rows_in": len(rows) + duplicate_ids,
        "malformed_lines": len(problems),
        "duplicate_ids": duplicate_ids,
        "train": len(dataset["train"]),
        "test": len(dataset["test"]),
        "test_share": len(test_ids) / len(rows),
        "group_by": cfg.group_by,
        "seed": cfg.seed,
        "leakage_threshold": cfg.leakage_threshold,
        "leakage": leakage,
        "max_seq_length": cfg.max_seq_length,
        "overlength": sum(over.values()),
        "overlength_action": "dropped" if cfg.overlength == "drop" else "truncated",
    }
    write_json_atomic(run_dir / BUILD_REPORT, report)
    _histograms(splits, run_dir / BUILD_LENGTHS_PLOT)
    write_text_atomic(run_dir / DATASET_CARD, _card(run_dir, report, splits))
    log.info(
        "build: %d train / %d test pairs (grouped by %s; a random split would leak %d near-duplicate test "
        "questions), %d over %d tokens %s -> %s",
        report["train"], report["test"], cfg.group_by,
        leakage["random"]["test_rows_with_near_duplicate_in_train"], report["overlength"], cfg.max_seq_length,
        report["overlength_action"], out,
    )
    return out

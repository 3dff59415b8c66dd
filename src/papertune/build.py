"""The build stage: question-answer pairs -> the SFT dataset the trainer reads.

Writes ``RUN/output.json`` (JSON lines, loadable with ``load_dataset("json", data_files=...)`` as in
the training report), ``RUN/dataset/`` (a ``datasets.DatasetDict`` with ``train`` and ``test``, and
``heldout`` / ``outside`` when documents are kept out of training), ``RUN/dataset_card.md`` with length
histograms, and ``RUN/build/report.json``.

Documents kept out of training are drawn first (:func:`papertune.split.hold_out_documents`); the
rest are split 80/20 by group with a leakage check (:mod:`papertune.split`). In ``closed_book``
mode an example is the question alone; in ``raft`` mode the train and test questions come after
``retrieval.top_k`` passages (:mod:`papertune.raft`). Held-out and outside pairs are rendered
closed-book: evaluation builds its own prompts for them.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from papertune.chat import passage_label, render_example, to_messages, verify_turn
from papertune.config import BuildConfig, PapertuneConfig
from papertune.errors import InputError
from papertune.raft import assign_passages, decline_copies, raft_target, supporting_quote, verify_rows
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
    read_chunks,
    read_pairs,
    record_stage,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from papertune.split import (
    SAME_TEXT_THRESHOLD,
    NearDuplicates,
    count_leaks,
    grouped_split,
    hold_out_documents,
    random_split,
    same_text_documents,
)
from papertune.stage import StageSpec

log = logging.getLogger(__name__)

# Newest first: the build uses the furthest stage that has run.
INPUT_FILES = (QA_AUGMENTED, QA_CURATED, QA)
KEPT_OUT = ("heldout", "outside")
# The pair fields every split keeps, besides the rendered example.
PAIR_FIELDS = ("id", "question", "answer", "chunk_id", "source", "title", "section", "page_start", "page_end",
               "generator", "kind", "augmentation", "parent_id", "passage_ids", "source_passage", "verify", "quote")
# What a passage shows in a prompt (chat.grounded_question).
PASSAGE_FIELDS = ("id", "text", "source", "section", "page_start", "page_end")
# More RAFT rows than this share dropped for length is worth a loud warning.
LENGTH_DROP_WARNING = 0.05


# --- formatting ------------------------------------------------------------------------------------


def format_batch(batch: dict[str, list], tokenizer: Any, system_prompt: str, max_len: int, overlength: str,
                 chunks: dict[str, dict], without_source: str) -> dict:
    """Render a batch of rows: closed book when a row has no passages, else its RAFT prompt and target."""
    out: dict[str, list] = {"messages": [], "prompt": [], "completion": [], "text": [], "n_tokens": [], "truncated": []}
    for question, answer, passage_ids, source_passage, verify, quote in zip(
            batch["question"], batch["answer"], batch["passage_ids"], batch["source_passage"], batch["verify"],
            batch["quote"]):
        passages = [chunks[cid] for cid in passage_ids] if passage_ids else None
        # A verification row: its one passage and the question, the target "yes" or "no" (raft.verify_rows).
        user = verify_turn(question, passages[0]) if verify and passages else None
        target = (verify if user else raft_target(answer, source_passage, without_source, quote) if passages
                  else answer)
        example = render_example(tokenizer, question, target, system_prompt, passages, user=user)
        ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"]
        truncated = False
        if len(ids) > max_len and overlength == "truncate":
            prompt_len = len(tokenizer(example["prompt"], add_special_tokens=False)["input_ids"])
            if prompt_len < max_len:
                example["completion"] = tokenizer.decode(ids[prompt_len:max_len])
                example["text"] = example["prompt"] + example["completion"]
                ids = ids[:max_len]
                truncated = True
        out["messages"].append(to_messages(question, target, system_prompt, passages, user=user))
        for key in ("prompt", "completion", "text"):
            out[key].append(example[key])
        out["n_tokens"].append(len(ids))
        out["truncated"].append(truncated)
    return out


def load_tokenizer(cfg: BuildConfig) -> Any:
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


def _needs_chunks(cfg: BuildConfig) -> bool:
    """RAFT puts chunks in prompts; keeping documents out joins those that hold the same text."""
    return cfg.mode == "raft" or cfg.heldout_documents > 0 or cfg.outside_documents > 0


def _read_chunk_list(run_dir: Path, cfg: BuildConfig) -> list[dict]:
    path = run_dir / CHUNKS
    if not path.is_file():
        why = "build.mode=raft puts chunks in the prompts" if cfg.mode == "raft" else \
            "build.heldout_documents / build.outside_documents draw documents by their chunks"
        raise InputError(f"no chunks in {run_dir} ({why}): run `papertune ingest DOCS_DIR --run-dir {run_dir}` first")
    unique: dict[str, dict] = {}
    for chunk in read_chunks(path)[0]:
        unique.setdefault(chunk["id"], chunk)
    return list(unique.values())


# --- the card -------------------------------------------------------------------------------------


def write_histograms(splits: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, field in zip(axes, ("question", "answer")):
        for name, rows in splits.items():
            if rows:
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


def _documents(report: dict) -> list[str]:
    docs = report["documents"]
    lines = ["", "## Documents", "",
             f"- Trained on (train and test splits): {len(docs['train'])} document(s)."]
    for role, what in (("heldout", "held out: in the retrieval index, never trained on (split `heldout`)"),
                       ("outside", "outside: neither trained on nor indexed at evaluation (split `outside`, "
                                   "abstention questions)")):
        if docs[role]:
            lines.append(f"- Documents {what}: " + ", ".join(f"`{d}`" for d in docs[role]) + ".")
    return lines


def _raft(report: dict, example: dict | None, chunks: dict[str, dict]) -> list[str]:
    raft = report.get("raft")
    if not raft:
        return []
    lines = ["", "## RAFT examples", "",
             f"Each train and test question is asked after {raft['passages_per_row']} passages. "
             f"{raft['with_source']} hold the pair's source chunk (share {raft['source_share']}) and answer citing "
             f"it; {raft['without_source']} hold distractors only"
             + (f" ({raft['decline_copies']} of them a train pair asked again without its source)"
                if raft.get("decline_copies") else "") + " and answer "
             + ("that the passages do not contain the answer" if raft["without_source_target"] == "abstain"
                else "without a citation")
             + f". Distractors filled at random where retrieval found too few: {raft['distractor_fallbacks']}. "
             f"Dropped for length: {raft['dropped_for_length']}. Passages in {raft['order']} order: the source "
             f"is passage 1 in {raft['source_first']} of the {raft['with_source']} rows that hold it."
             + (f" {raft['verify_rows']} train rows teach verification: one passage and the question, the "
                "answer whether the passage contains the answer (yes for the source, no for a distractor)."
                if raft.get("verify_rows") else "")
             + (f" {raft['quoted']} of the rows that hold the source first quote its sentence that carries the "
                "answer, then answer." if "quoted" in raft else "")]
    if example:
        lines += ["", f"Example: **{example['question']}**", ""]
        for n, cid in enumerate(example["passage_ids"], 1):
            mark = " (source)" if n == example["source_passage"] else ""
            lines.append(f"{n}. {passage_label(chunks[cid])}{mark}")
    return lines


def dataset_card(run_dir: Path, report: dict, splits: dict[str, list[dict]],
                 chunks: dict[str, dict] | None = None) -> str:
    """The card's Markdown: counts per stage and split, documents kept out, the split's leakage, RAFT counts,
    lengths and a few examples. ``chunks`` (by id) name a RAFT example's passages."""
    stages = [("chunks", CHUNKS), ("generated pairs", QA), ("curated pairs", QA_CURATED),
              ("after augmentation", QA_AUGMENTED)]
    lines = ["# Dataset card", "", f"Built from `{report['input']}` for `{report['model']}` "
             f"(max {report['max_seq_length']} tokens, {'RAFT' if report['mode'] == 'raft' else 'closed-book'} examples).", "",
             "## Counts per stage", "", "| stage | rows |", "|---|---|"]
    for name, file in stages:
        count = _line_count(run_dir / file)
        if count is not None:
            lines.append(f"| {name} (`{file}`) | {count} |")
    lines += [f"| {name} | {report[name]} |" for name in splits] + [""]
    names = list(splits)
    lines += ["## Per generator and augmentation", "", "| kind | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for field, label in (("generator", "generator"), ("augmentation", "augmentation")):
        counts = {name: Counter(r.get(field) or "original" for r in rows) for name, rows in splits.items()}
        for key in sorted(set().union(*counts.values())):
            lines.append(f"| {label}: {key} | " + " | ".join(str(counts[n][key]) for n in names) + " |")
    lines += _documents(report)
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
              "", f"Over {report['max_seq_length']} tokens: {report['overlength']} ({report['overlength_action']})."]
    example = next((r for r in splits["train"] if r.get("source_passage") and not r.get("verify")), None)
    lines += _raft(report, example, chunks or {})
    lines += ["", "## Lengths", "", f"![question and answer lengths]({BUILD_LENGTHS_PLOT})", "", "## Examples", ""]
    for row in splits["train"][:3] + splits["test"][:2]:
        page = f", page {row['page_start']}" if row.get("page_start") else ""
        lines += [f"- **Q:** {row['question']}", f"  **A:** {row['answer']}",
                  f"  *source: {row.get('source')}{page}; generator: {row.get('generator')}; "
                  f"augmentation: {row.get('augmentation') or 'none'}*"]
    return "\n".join(lines) + "\n"


# --- the stage -------------------------------------------------------------------------------------


def _inputs(config: PapertuneConfig) -> list[tuple[str, Path]]:
    run_dir = Path(config.run_dir)
    names = (QA_AUGMENTED, CHUNKS) if _needs_chunks(config.build) else (QA_AUGMENTED,)
    return [(name, run_dir / name) for name in names]


SPEC = StageSpec(
    name="build",
    directory=BUILD_DIR,
    help="the SFT dataset: RUN/output.json and RUN/dataset/ (train/test, and held-out documents)",
    description="Keep a share of the documents out of training (build.heldout_documents, build.outside_documents), "
    "split the rest 80/20 (seed 3407) grouped by source chunk, check for leakage, format the pairs with the target "
    "model's chat template (closed book, or RAFT: the question after retrieved passages, build.mode) and save a "
    "datasets DatasetDict and a dataset card.",
    # build formats with build.model's chat template (train warns when train.model differs); RAFT distractors
    # come from the retriever's ranking.
    settings=("build", "retrieval.method", "retrieval.top_k", "retrieval.embedding_model", "retrieval.rrf_k",
              "retrieval.candidates", "retrieval.window_words"),
    outputs=(DATASET, OUTPUT_JSON, DATASET_CARD, BUILD_REPORT, BUILD_LENGTHS_PLOT),
    inputs=_inputs,
)


def run(config: PapertuneConfig) -> Path:
    """Build ``RUN/dataset`` (and ``RUN/output.json``) from the newest pairs file; returns the dataset path."""
    from datasets import Dataset, DatasetDict, Sequence, Value

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
    tokenizer = load_tokenizer(cfg)
    chunk_list = _read_chunk_list(run_dir, cfg) if _needs_chunks(cfg) else None
    same_text = NearDuplicates([c["text"] for c in chunk_list], SAME_TEXT_THRESHOLD) if chunk_list is not None else None
    record_stage(run_dir, BUILD_DIR, config)

    twins = same_text_documents(chunk_list, same_text) if chunk_list is not None and same_text is not None else {}
    documents = hold_out_documents(rows, twins, cfg)
    for row in rows:
        row["split"] = documents.role(row.get("source"))
        row["passage_ids"], row["source_passage"] = [], 0
    pool = [r for r in rows if r["split"] == "train"]
    if len(pool) < 2:
        raise InputError(f"{source}: {len(pool)} pair(s) left to train on after keeping documents out of training; "
                         "lower build.heldout_documents / build.outside_documents")
    dups = NearDuplicates([r["question"] for r in pool], cfg.leakage_threshold)
    test_ids = grouped_split(pool, cfg, dups)
    leakage = {"grouped": count_leaks(pool, test_ids, dups), "random": count_leaks(pool, random_split(len(pool), cfg), dups)}
    if leakage["grouped"]["test_rows_with_near_duplicate_in_train"]:
        raise AssertionError("grouped split leaked near-duplicate questions; this is a bug in papertune.build")
    for i, row in enumerate(pool):
        row["split"] = "test" if i in test_ids else "train"

    raft_stats: dict[str, Any] | None = None
    passages: dict[str, dict] = {}
    if cfg.mode == "raft":
        from papertune.retrieval import Retriever

        assert chunk_list is not None and same_text is not None
        chunks = {c["id"]: c for c in chunk_list}
        copies = decline_copies([r for r in pool if r["split"] == "train"], cfg)
        pool += copies
        rows += copies
        retriever = Retriever.for_run(run_dir, config.retrieval, exclude_sources=documents.heldout + documents.outside)
        assigned, raft_stats = assign_passages(pool, [r["split"] for r in pool], chunks, same_text, twins, retriever,
                                               cfg, config.retrieval.top_k)
        for row, chosen in zip(pool, assigned):
            row["passage_ids"], row["source_passage"] = chosen.passage_ids, chosen.source_passage
            passages.update({cid: {k: chunks[cid].get(k) for k in PASSAGE_FIELDS} for cid in chosen.passage_ids})
            if cfg.raft_quote and chosen.source_passage:
                row["quote"] = supporting_quote(chunks[row["chunk_id"]]["text"], row["answer"],
                                                config.ingest.segmenter)
        if cfg.raft_quote:
            raft_stats["quoted"] = sum(1 for r in pool if r.get("quote"))
        if cfg.raft_verify_rows:  # from passages already chosen: they are in `passages`
            checks = verify_rows([r for r in pool if r["split"] == "train"], chunks)
            rows += checks
            raft_stats["verify_rows"] = len(checks)
    write_jsonl_atomic(run_dir / OUTPUT_JSON, rows)

    names = ["train", "test"] + [name for name in KEPT_OUT if getattr(documents, name)]
    splits = {name: [{k: r.get(k) for k in PAIR_FIELDS} for r in rows if r["split"] == name] for name in names}
    dataset = DatasetDict({
        name: Dataset.from_list(split).cast_column("passage_ids", Sequence(Value("string")))
        for name, split in splits.items()
    })
    dataset = DatasetDict({
        name: ds.map(
            format_batch,
            batched=True,
            num_proc=min(cfg.num_proc, len(ds)) if cfg.num_proc > 1 and len(ds) >= 2 * cfg.num_proc else None,
            fn_kwargs={"tokenizer": tokenizer, "system_prompt": cfg.system_prompt, "max_len": cfg.max_seq_length,
                       "overlength": cfg.overlength, "chunks": passages, "without_source": cfg.raft_without_source},
            desc=f"format {name}",
        )
        for name, ds in dataset.items()
    })
    over = {name: sum(1 for n in ds["n_tokens"] if n > cfg.max_seq_length) + sum(ds["truncated"]) for name, ds in dataset.items()}
    # Rows still over the limit (all of them when dropping; those whose prompt alone is too long when truncating).
    kept = DatasetDict({name: ds.filter(lambda n: n <= cfg.max_seq_length, input_columns="n_tokens")
                        for name, ds in dataset.items()})
    dropped = {name: len(dataset[name]) - len(kept[name]) for name in dataset}
    dataset = kept

    out = run_dir / DATASET
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))

    if raft_stats is not None:
        raft_rows = len(pool)
        raft_stats["dropped_for_length"] = dropped["train"] + dropped["test"]
        if raft_stats["dropped_for_length"] > LENGTH_DROP_WARNING * raft_rows:
            log.warning(
                "build: %d of %d RAFT examples (%.0f%%) are longer than build.max_seq_length=%d tokens and were "
                "dropped: a RAFT prompt holds retrieval.top_k=%d chunks of up to ingest.chunk_tokens tokens. Raise "
                "build.max_seq_length and train.max_seq_length, or lower retrieval.top_k",
                raft_stats["dropped_for_length"], raft_rows, 100 * raft_stats["dropped_for_length"] / raft_rows,
                cfg.max_seq_length, config.retrieval.top_k,
            )
    report = {
        "input": source.name,
        "model": cfg.model,
        "mode": cfg.mode,
        "rows_in": len(rows) + duplicate_ids,
        "malformed_lines": len(problems),
        "duplicate_ids": duplicate_ids,
        **{name: len(dataset[name]) if name in dataset else 0 for name in ("train", "test", *KEPT_OUT)},
        "documents": documents.to_json(),
        "test_share": len(test_ids) / len(pool),
        "group_by": cfg.group_by,
        "seed": cfg.seed,
        "leakage_threshold": cfg.leakage_threshold,
        "leakage": leakage,
        "max_seq_length": cfg.max_seq_length,
        "overlength": sum(over.values()),
        "overlength_action": "dropped" if cfg.overlength == "drop" else "truncated",
        "dropped_for_length": dropped,
        "raft": raft_stats,
    }
    write_json_atomic(run_dir / BUILD_REPORT, report)
    write_histograms(splits, run_dir / BUILD_LENGTHS_PLOT)
    write_text_atomic(run_dir / DATASET_CARD, dataset_card(run_dir, report, splits, passages))
    log.info(
        "build: %d train / %d test pairs (%s; grouped by %s; a random split would leak %d near-duplicate test "
        "questions), %d over %d tokens %s, documents kept out: %d held out, %d outside -> %s",
        report["train"], report["test"], cfg.mode, cfg.group_by,
        leakage["random"]["test_rows_with_near_duplicate_in_train"], report["overlength"], cfg.max_seq_length,
        report["overlength_action"], len(documents.heldout), len(documents.outside), out,
    )
    return out

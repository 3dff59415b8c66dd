from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import qa_rows, write_rows
from papertune import build
from papertune.config import load_config
from papertune.errors import InputError
from papertune.models import QWEN2_5_TOKENIZER


def cfg_for(run_dir: Path, **build_settings):
    overrides = {"model": QWEN2_5_TOKENIZER, "num_proc": 1, **build_settings}
    return load_config(None, [f"run_dir={run_dir}"] + [f"build.{k}={v}" for k, v in overrides.items()])


def test_build_writes_grouped_split_without_leakage(tmp_path: Path):
    from datasets import load_dataset, load_from_disk

    run = tmp_path / "run"
    rows = qa_rows()
    write_rows(run, rows)
    out = build.run(cfg_for(run))
    ds = load_from_disk(str(out))
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) + len(ds["test"]) == len(rows)
    # Grouped: no chunk on both sides, and every variant sits with its original.
    train_chunks, test_chunks = set(list(ds["train"]["chunk_id"])), set(list(ds["test"]["chunk_id"]))
    assert not train_chunks & test_chunks
    side = {r["id"]: name for name in ds for r in ds[name]}
    for name in ds:
        for r in ds[name]:
            if r["parent_id"]:
                assert side[r["parent_id"]] == name
    report = json.loads((run / "build" / "report.json").read_text())
    assert report["leakage"]["grouped"] == {"test_rows_with_near_duplicate_in_train": 0,
                                            "test_rows_sharing_a_chunk_with_train": 0}
    # The report's plain random split puts variants and their originals on both sides.
    assert report["leakage"]["random"]["test_rows_sharing_a_chunk_with_train"] > 0
    assert 0.1 <= report["test_share"] <= 0.35
    # output.json loads the way the training report loads it.
    loaded = load_dataset("json", data_files=str(run / "output.json"))["train"]
    assert len(loaded) == len(rows) and set(loaded["split"]) == {"train", "test"}


def test_split_is_deterministic_and_seeded(tmp_path: Path):
    from datasets import load_from_disk

    rows = qa_rows()
    ids = []
    for name, seed in (("a", 3407), ("b", 3407), ("c", 1)):
        write_rows(tmp_path / name, rows)
        ds = load_from_disk(str(build.run(cfg_for(tmp_path / name, seed=seed))))
        ids.append(sorted(ds["test"]["id"]))
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_chat_template_formatting_is_exact(tmp_path: Path):
    from datasets import load_from_disk

    run = tmp_path / "run"
    write_rows(run, qa_rows(n_chunks=3, variants=False))
    ds = load_from_disk(str(build.run(cfg_for(run, system_prompt="Be brief."))))
    row = ds["train"][0]
    assert row["prompt"] == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{row['question']}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert row["completion"] == f"{row['answer']}<|im_end|>"
    assert row["text"] == row["prompt"] + row["completion"]
    assert row["messages"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": row["question"]},
                               {"role": "assistant", "content": row["answer"]}]
    assert row["n_tokens"] > 10


def test_overlength_dropped_or_truncated(tmp_path: Path):
    from datasets import load_from_disk

    rows = qa_rows(n_chunks=5, variants=False)
    rows[0]["answer"] = "word " * 400
    for action in ("drop", "truncate"):
        run = tmp_path / action
        write_rows(run, rows)
        ds = load_from_disk(str(build.run(cfg_for(run, max_seq_length=128, overlength=action))))
        report = json.loads((run / "build" / "report.json").read_text())
        assert report["overlength"] == 1
        total = len(ds["train"]) + len(ds["test"])
        lengths = list(ds["train"]["n_tokens"]) + list(ds["test"]["n_tokens"])
        assert max(lengths) <= 128
        assert total == (len(rows) - 1 if action == "drop" else len(rows))


def test_group_by_document(tmp_path: Path):
    from datasets import load_from_disk

    run = tmp_path / "run"
    write_rows(run, qa_rows(n_chunks=9))
    ds = load_from_disk(str(build.run(cfg_for(run, group_by="document"))))
    assert not set(ds["train"]["source"]) & set(ds["test"]["source"])


def test_card_and_histograms(tmp_path: Path):
    run = tmp_path / "run"
    write_rows(run, qa_rows())
    build.run(cfg_for(run))
    card = (run / "dataset_card.md").read_text()
    assert "| after augmentation (`qa_augmented.jsonl`) | 40 |" in card
    assert "augmentation: noise" in card and "plain random rows" in card
    png = (run / "build" / "lengths.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_malformed_rows_reported_and_skipped(tmp_path: Path, caplog):
    run = tmp_path / "run"
    rows = qa_rows(n_chunks=4, variants=False)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    text += "{not json\n" + json.dumps({**rows[0], "id": "x", "question": " "}) + "\n"
    run.mkdir()
    (run / "qa_curated.jsonl").write_text(text)
    build.run(cfg_for(run))
    assert f"{run / 'qa_curated.jsonl'}:13: not valid JSON" in caplog.text
    assert f"{run / 'qa_curated.jsonl'}:14: empty or missing question" in caplog.text
    assert "qa_augmented.jsonl not found, building from qa_curated.jsonl" in caplog.text
    report = json.loads((run / "build" / "report.json").read_text())
    assert report["malformed_lines"] == 2 and report["train"] + report["test"] == len(rows)


def test_rows_with_fields_of_the_wrong_type_are_skipped_naming_file_and_line(tmp_path: Path, caplog):
    """augment passes rows through as they are: a number for a question or an object for an answer reaches
    build, which skips them like any bad line."""
    from papertune.cli import main

    run = tmp_path / "run"
    rows = qa_rows(n_chunks=4, variants=False)
    bad = [{**rows[0], "id": "n", "question": 42}, {**rows[1], "id": "o", "answer": {"text": "An object."}},
           {**rows[2], "id": 7, "chunk_id": ["not", "an", "id"]}]
    write_rows(run, rows + bad)
    assert main(["build", "--run-dir", str(run), "-q", "--set", f"build.model={QWEN2_5_TOKENIZER}",
                 "--set", "build.num_proc=1"]) == 0
    source = run / "qa_augmented.jsonl"
    assert f"{source}:13: question must be a string, got an integer; line skipped" in caplog.text
    assert f"{source}:14: answer must be a string, got an object; line skipped" in caplog.text
    assert f"{source}:15: chunk_id must be a string or an integer, got a list; line skipped" in caplog.text
    report = json.loads((run / "build" / "report.json").read_text())
    assert report["malformed_lines"] == 3 and report["train"] + report["test"] == len(rows)


def test_no_input_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InputError, match="run `papertune generate"):
        build.run(cfg_for(tmp_path / "empty"))

"""The run directory's one checked reader of pairs and chunks, as the stages and the chunk index use it."""

from __future__ import annotations

import json
import logging

from helpers import CHUNKS, bag_of_words, write_chunks
from papertune.config import RetrievalConfig
from papertune.index import ChunkIndex
from papertune.retrieval import Retriever
from papertune.rundir import PAIR_OF_CHUNK, read_chunks, read_rows


def test_each_bad_row_is_skipped_with_its_file_line_and_problem(tmp_path, caplog):
    path = tmp_path / "qa.jsonl"
    good = {"id": 1, "question": "What is LoRA?", "answer": "Low-rank adapters.", "chunk_id": 4}
    lines = [good, {**good, "question": "   "}, {**good, "answer": None}, {**good, "chunk_id": True},
             {**good, "question": 7, "answer": {"a": 1}}, [good], {**good, "id": "x"}]
    path.write_text("\n".join(json.dumps(row) for row in lines) + '\n{"id": "cut", "quest')
    with caplog.at_level(logging.WARNING):
        rows, problems = read_rows(path, PAIR_OF_CHUNK)
    assert [(r["id"], r["chunk_id"]) for r in rows] == [("1", "4"), ("x", "4")]  # ids read as strings
    assert problems == [
        f"{path}:2: empty or missing question; line skipped",
        f"{path}:3: empty or missing answer; line skipped",
        f"{path}:4: chunk_id must be a string or an integer, got true or false; line skipped",
        f"{path}:5: question must be a string, got an integer; answer must be a string, got an object; line skipped",
        f"{path}:6: expected a JSON object, got list; line skipped",
        f"{path}:8: not valid JSON (Unterminated string starting at); line skipped",
    ]
    assert all(problem in caplog.text for problem in problems)


def test_the_chunk_index_skips_a_truncated_last_line_and_says_so(tmp_path, monkeypatch, caplog):
    """Retrieval (ask, serve, build, evaluate) on a chunks.jsonl whose writer was cut off."""
    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    run = tmp_path / "run"
    write_chunks(run)
    chunks_file = run / "chunks.jsonl"
    with chunks_file.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "cut.pdf#0000", "text": "A passage whose wr')
    with caplog.at_level(logging.WARNING):
        index = ChunkIndex.load_or_build(run, "fake-model")
    assert index.ids == [c["id"] for c in CHUNKS]
    found = Retriever(index, RetrievalConfig(embedding_model="fake-model")).search(CHUNKS[3]["text"], 1)
    assert [p.chunk_id for p in found] == ["moe.pdf#0002"]
    assert f"{chunks_file}:{len(CHUNKS) + 1}: not valid JSON" in caplog.text
    assert read_chunks(chunks_file)[0] == CHUNKS

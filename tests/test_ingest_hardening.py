"""Bad input gets a clear answer in the ingest report: links that lead nowhere, pages with nothing to OCR,
OCR past its bound, files in another text encoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pymupdf
import pytest

from helpers import make_config, needs_tesseract, write_scanned_pdf
from papertune import ingest
from papertune.ingest.stage import discover
from papertune.errors import ConfigError


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / ingest.REPORT_FILE).read_text())


def test_symlink_loops_and_dangling_links_are_listed_with_their_reason(tmp_path: Path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nText about attention heads, long enough to be a chunk of its own here.\n")
    os.symlink(docs / "missing.md", docs / "gone.md")  # dangling
    os.symlink(docs / "self.pdf", docs / "self.pdf")  # a link to itself
    os.symlink(docs, docs / "sub" / "back")  # a folder link back to a folder it is in
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "b.md").write_text("# B\n\nText about adapters, long enough to be a chunk of its own too.\n")
    os.symlink(tmp_path / "shared", docs / "linked")  # a good folder link: followed
    ingest.run(make_config(tmp_path / "run", docs))
    rep = report(tmp_path / "run")
    assert [d["source"] for d in rep["per_document"]] == ["a.md", "linked/b.md"]
    assert rep["ignored_files"] == ["gone.md", "self.pdf", "sub/back"]
    reasons = rep["ignored_reasons"]
    assert reasons["gone.md"] == f"dangling symbolic link: its target {docs / 'missing.md'} does not exist"
    assert reasons["self.pdf"] == "symbolic link loop: the links point at each other"
    assert reasons["sub/back"] == f"symbolic link loop: it points to {docs.resolve()}, a folder it is in"


def test_ignored_files_say_why(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text.\n")
    (docs / "notes.txt").write_text("x")
    files, ignored = discover(docs, [".md", ".pdf"])
    assert files == [docs / "a.md"]
    assert [(f.path.name, f.reason) for f in ignored] == [("notes.txt", "not one of ingest.extensions (.md, .pdf)")]


def test_blank_pages_and_encodings_in_the_report(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = pymupdf.open()
    for _ in range(40):
        pdf.new_page()
    pdf[0].insert_textbox(pymupdf.Rect(56, 100, 556, 300), "Quantization maps weights to fewer bits.", fontsize=10)
    pdf.save(docs / "blank.pdf")
    (docs / "latin.md").write_bytes("# Notes\n\nTrained in Z\xfcrich on a na\xefve baseline.\n".encode("latin-1"))
    ingest.run(make_config(tmp_path / "run", docs, tesseract_cmd=tmp_path / "no-tesseract"))
    rep = report(tmp_path / "run")
    assert rep["failed"] == 0 and rep["blank_pages"] == 39 and rep["ocr_pages"] == 0
    docs_by_source = {d["source"]: d for d in rep["per_document"]}
    assert docs_by_source["blank.pdf"]["blank_pages"] == list(range(2, 41))
    assert docs_by_source["latin.md"]["encoding"] == "cp1252"
    assert rep["decoded_from"] == {"latin.md": "cp1252"}


@needs_tesseract
def test_pages_past_the_ocr_bound_are_reported(tmp_path: Path):
    docs = tmp_path / "docs"
    write_scanned_pdf(docs / "scan.pdf", ["Low rank adaptation trains small matrices."] * 3, dpi=100)
    ingest.run(make_config(tmp_path / "run", docs, ocr_dpi=100, max_ocr_pages=2))
    (doc,) = report(tmp_path / "run")["per_document"]
    assert doc["ocr_pages"] == [1, 2] and doc["ocr_skipped_pages"] == [3]
    assert any("ingest.max_ocr_pages=2" in w for w in doc["warnings"])
    assert report(tmp_path / "run")["ocr_skipped_pages"] == 1


def test_max_ocr_pages_is_validated(tmp_path: Path):
    with pytest.raises(ConfigError, match="ingest.max_ocr_pages must be >= 0, got -1"):
        make_config(tmp_path / "run", max_ocr_pages=-1)

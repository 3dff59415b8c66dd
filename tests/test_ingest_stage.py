from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SAMPLE_CORPUS, make_config, needs_tesseract, write_pdf
from papertune import ingest
from papertune.cli import main
from papertune.errors import InputError
from papertune.rundir import read_jsonl

REQUIRED_KEYS = {"id", "text", "source", "title", "section", "page_start", "page_end", "hash"}


def small_corpus(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Alpha\n\n## Part\n\nAlpha text about attention heads. It is short.\n")
    (docs / "sub" / "b.md").write_text("# Beta\n\nBeta text about low-rank adapters. It is short too.\n")
    write_pdf(docs / "c.pdf", [[((56, 100, 556, 300), "Gamma text about quantization. It sits on page one.")],
                               [((56, 100, 556, 300), "More gamma text on page two.")]])
    (docs / "notes.txt").write_text("ignored")
    return docs


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / ingest.REPORT_FILE).read_text())


def test_chunks_schema_and_report(tmp_path: Path):
    docs = small_corpus(tmp_path)
    cfg = make_config(tmp_path / "run", docs)
    out = ingest.run(cfg)
    rows = list(read_jsonl(out))
    assert {r["source"] for r in rows} == {"a.md", "sub/b.md", "c.pdf"}
    for row in rows:
        assert REQUIRED_KEYS <= row.keys()
    by_source = {r["source"]: r for r in rows}
    assert by_source["a.md"] == {**by_source["a.md"], "title": "Alpha", "section": "Part", "page_start": None}
    assert by_source["c.pdf"]["page_start"] == 1 and by_source["c.pdf"]["page_end"] == 2
    assert by_source["c.pdf"]["text"] == (
        "Gamma text about quantization. It sits on page one. More gamma text on page two."
    )
    rep = report(tmp_path / "run")
    assert rep["documents"] == 3 and rep["failed"] == 0 and rep["ignored_files"] == ["notes.txt"]
    assert rep["pages"] == 2
    for doc in rep["per_document"]:
        assert doc["status"] == "ok" and doc["chunks"] >= 1 and doc["seconds"] >= 0
    # The resolved config and versions sit beside the outputs.
    assert (tmp_path / "run" / "ingest" / "config.yaml").read_text().count("docs_dir") == 1
    versions = json.loads((tmp_path / "run" / "ingest" / "versions.json").read_text())
    assert "pymupdf" in versions["packages"] and "papertune" in versions["packages"]


def test_rerun_reuses_unchanged_documents(tmp_path: Path):
    docs = small_corpus(tmp_path)
    cfg = make_config(tmp_path / "run", docs)
    first = (tmp_path / "run" / "chunks.jsonl")
    ingest.run(cfg)
    before = first.read_text()
    ingest.run(cfg)
    rep = report(tmp_path / "run")
    assert rep["processed"] == 0 and rep["cached"] == 3
    assert first.read_text() == before
    # Change one file: only it is processed again.
    (docs / "a.md").write_text("# Alpha\n\n## Part\n\nChanged alpha text. Still short.\n")
    ingest.run(cfg)
    rep = report(tmp_path / "run")
    assert rep["processed"] == 1 and rep["cached"] == 2
    assert "Changed alpha text." in first.read_text()
    # A setting that changes chunks invalidates the cache; one that does not (workers) keeps it.
    ingest.run(make_config(tmp_path / "run", docs, workers=2))
    assert report(tmp_path / "run")["processed"] == 0
    ingest.run(make_config(tmp_path / "run", docs, citations="keep"))
    assert report(tmp_path / "run")["processed"] == 3


def test_interrupted_run_resumes_from_finished_documents(tmp_path: Path):
    docs = small_corpus(tmp_path)
    cfg = make_config(tmp_path / "run", docs)
    ingest.run(cfg)
    expected = (tmp_path / "run" / "chunks.jsonl").read_text()
    # As if the run died after two documents: one cache entry and the final outputs are missing.
    cache = sorted((tmp_path / "run" / "ingest" / "cache").glob("*.json"))
    cache[0].unlink()
    (tmp_path / "run" / "chunks.jsonl").unlink()
    ingest.run(cfg)
    assert report(tmp_path / "run")["processed"] == 1
    assert (tmp_path / "run" / "chunks.jsonl").read_text() == expected


def test_output_identical_for_any_worker_count(tmp_path: Path):
    docs = small_corpus(tmp_path)
    one = ingest.run(make_config(tmp_path / "r1", docs, workers=1)).read_text()
    two = ingest.run(make_config(tmp_path / "r2", docs, workers=2)).read_text()
    assert one == two


def test_exact_duplicate_chunks_across_documents_dropped(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    body = "Shared paragraph about attention. It appears in two files.\n"
    (docs / "one.md").write_text("# One\n\n" + body)
    (docs / "two.md").write_text("# Two\n\n" + body.upper())
    rows = list(read_jsonl(ingest.run(make_config(tmp_path / "run", docs))))
    assert [r["source"] for r in rows] == ["one.md"]
    assert report(tmp_path / "run")["duplicate_chunks_dropped"] == 1


def test_bad_documents_reported_and_the_rest_processed(tmp_path: Path):
    docs = small_corpus(tmp_path)
    (docs / "fake.pdf").write_text("not a pdf at all")
    (docs / "latin.md").write_bytes("Привет".encode("cp1251"))  # too short to tell its encoding: refused
    write_pdf(docs / "big.pdf", [[((56, 100, 556, 300), "page")]] * 4)
    cfg = make_config(tmp_path / "run", docs, max_pages=3)
    rows = list(read_jsonl(ingest.run(cfg)))
    assert {r["source"] for r in rows} == {"a.md", "sub/b.md", "c.pdf"}
    failed = {d["source"]: d["reason"] for d in ingest.failed_documents(tmp_path / "run")}
    assert set(failed) == {"fake.pdf", "latin.md", "big.pdf"}
    assert "not a PDF" in failed["fake.pdf"]
    assert "not valid UTF-8" in failed["latin.md"]
    assert "over ingest.max_pages=3" in failed["big.pdf"]
    # Failed documents are not cached: fixing the file is enough for the next run to pick it up.
    (docs / "latin.md").write_text("# Latin\n\nCafé text is fine now. Yes.\n")
    ingest.run(cfg)
    assert "latin.md" not in {d["source"] for d in ingest.failed_documents(tmp_path / "run")}


def test_slow_document_hits_the_time_limit(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.md").write_text("# Ok\n\nA fine document. Short.\n")
    # A very large document of distinct sentences (repeated ones are cheap): about 16 MB, some 2 s of work on
    # an idle core (4 MB took 0.5 s), far more than the limit.
    paragraphs = (" ".join(f"Attention weighs token {i * 40 + j} against every other token in layer {j}."
                           for j in range(40)) for i in range(6000))
    (docs / "huge.md").write_text("# Huge\n\n" + "\n\n".join(paragraphs))
    cfg = make_config(tmp_path / "run", docs, doc_timeout_s=0.3, workers=2)
    rows = list(read_jsonl(ingest.run(cfg)))
    assert {r["source"] for r in rows} == {"ok.md"}
    (failed,) = ingest.failed_documents(tmp_path / "run")
    assert failed["source"] == "huge.md" and "ingest.doc_timeout_s" in failed["reason"]


def test_file_size_limit(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "big.md").write_text("# Big\n\n" + "x " * 600_000)
    (docs / "ok.md").write_text("# Ok\n\nFine. Short.\n")
    ingest.run(make_config(tmp_path / "run", docs, max_file_mb=1))
    (failed,) = ingest.failed_documents(tmp_path / "run")
    assert failed["source"] == "big.md" and "over ingest.max_file_mb=1" in failed["reason"]


def test_missing_or_empty_folder(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        ingest.run(make_config(tmp_path / "run", tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"no documents under .*empty.*1 other files ignored"):
        ingest.run(make_config(tmp_path / "run", tmp_path / "empty"))


def test_cli_exit_codes(tmp_path: Path, caplog):
    docs = small_corpus(tmp_path)
    assert main(["ingest", str(docs), "--run-dir", str(tmp_path / "ok")]) == 0
    (docs / "fake.pdf").write_text("not a pdf")
    assert main(["ingest", str(docs), "--run-dir", str(tmp_path / "partial"), "-j", "2"]) == 3
    assert "fake.pdf: not a PDF" in caplog.text
    assert (tmp_path / "partial" / "chunks.jsonl").stat().st_size > 0
    assert main(["ingest", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "x")]) == 2
    assert main(["ingest", str(docs), "--set", "ingest.workers=0"]) == 2
    assert "ingest.workers must be >= 1" in caplog.text


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "DOCS_DIR" in out and "--set" in out and "--run-dir" in out


@needs_tesseract
@pytest.mark.slow
def test_sample_corpus_end_to_end(tmp_path: Path):
    """The bundled corpus: Markdown, born-digital PDFs (one two-column) and a scanned PDF."""
    cfg = make_config(tmp_path / "run", SAMPLE_CORPUS, workers=2)
    rows = list(read_jsonl(ingest.run(cfg)))
    rep = report(tmp_path / "run")
    assert rep["failed"] == 0
    kinds = {d["source"]: d for d in rep["per_document"]}
    scanned = [d for d in rep["per_document"] if d["ocr_pages"]]
    assert len(scanned) == 1 and scanned[0]["ocr_pages"] == list(range(1, scanned[0]["pages"] + 1))
    born_digital = [d for d in rep["per_document"] if d["kind"] == "pdf" and not d["ocr_pages"]]
    assert len(born_digital) >= 3 and all(d["pages"] >= 3 for d in born_digital)
    assert sum(1 for s in kinds if s.endswith(".md")) >= 5
    pdf_rows = [r for r in rows if r["source"].endswith(".pdf")]
    assert all(r["page_start"] >= 1 and r["page_end"] >= r["page_start"] for r in pdf_rows)
    ocr_text = " ".join(r["text"] for r in rows if r["ocr"]).lower()
    assert len(ocr_text.split()) > 300
    for row in rows:
        assert "{%" not in row["text"] and "<!--" not in row["text"] and "](http" not in row["text"]
    # Every chunk stays within the token budget.
    assert max(r["n_tokens"] for r in rows) <= cfg.ingest.chunk_tokens

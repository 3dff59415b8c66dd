"""Shared fixtures: small documents built in the test, so each test says exactly what it feeds in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pymupdf
import pytest

from papertune.config import PapertuneConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO / "samples" / "corpus"

HAS_TESSERACT = shutil.which("tesseract") is not None
needs_tesseract = pytest.mark.skipif(
    not HAS_TESSERACT and not __import__("os").environ.get("CI"),
    reason="Tesseract not installed (apt-get install tesseract-ocr tesseract-ocr-eng); CI installs it",
)


def make_config(run_dir: Path, docs_dir: Path | None = None, **ingest: object) -> PapertuneConfig:
    overrides = [f"run_dir={run_dir}"]
    if docs_dir is not None:
        overrides.append(f"ingest.docs_dir={docs_dir}")
    overrides += [f"ingest.{k}={v}" for k, v in ingest.items()]
    return load_config(None, overrides)


def write_pdf(path: Path, pages: list[list[tuple]], *, fontsize: float = 10, title: str = "") -> Path:
    """A born-digital PDF: each page is a list of (rect, text[, fontname]) boxes, written in that order.

    Font names are PDF base-14 ones: "helv" (regular), "hebo" (bold), "cour" (monospaced).
    """
    doc = pymupdf.open()
    for boxes in pages:
        page = doc.new_page(width=612, height=792)
        for rect, text, *font in boxes:
            rc = page.insert_textbox(pymupdf.Rect(*rect), text, fontsize=fontsize, fontname=font[0] if font else "helv")
            assert rc >= 0, f"text did not fit in {rect}: {text[:40]!r}"
    if title:
        doc.set_metadata({"title": title})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def write_scanned_pdf(path: Path, lines_per_page: list[str], dpi: int = 200) -> Path:
    """An image-only PDF: text is drawn, rendered to a bitmap, and only the bitmap is kept."""
    src = pymupdf.open()
    for text in lines_per_page:
        page = src.new_page(width=612, height=792)
        assert page.insert_textbox(pymupdf.Rect(72, 72, 540, 720), text, fontsize=13, fontname="helv") >= 0
    out = pymupdf.open()
    for page in src:
        pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
        new = out.new_page(width=page.rect.width, height=page.rect.height)
        new.insert_image(new.rect, stream=pix.tobytes("png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


@pytest.fixture
def sample_config(tmp_path: Path) -> PapertuneConfig:
    return make_config(tmp_path / "run", SAMPLE_CORPUS)

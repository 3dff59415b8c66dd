from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from helpers import needs_tesseract, write_pdf, write_scanned_pdf
from papertune.config import IngestConfig
from papertune.errors import DocumentError
from papertune.ingest.pdf import read_pdf

LEFT_HEADING = (56, 198, 296, 218)
LEFT = (56, 222, 296, 700)
RIGHT = (316, 200, 556, 700)
FULL_TOP = (56, 90, 556, 190)
HEADER = (56, 30, 556, 50)
FOOTER = (280, 750, 330, 770)


def paper_pages(n: int = 3) -> list:
    pages = []
    for i in range(1, n + 1):
        # The right column is written first: reading order must come from the layout, not the stream.
        boxes = [
            (RIGHT, f"on {i} GPUs in the right column. Page {i} ends here."),
            (HEADER, "Efficient Attention, Short Title"),
            (FOOTER, str(i)),
            (LEFT, f"Left column text of page {i} says that the model is trained"),
            (LEFT_HEADING, f"{i} Section Number {i}", "hebo"),
        ]
        if i == 1:
            boxes.append(((56, 88, 556, 108), "Abstract", "hebo"))
            boxes.append(((56, 110, 556, 190), "This abstract spans the full width of the page and comes first."))
        pages.append(boxes)
    return pages


def test_two_columns_read_column_by_column_without_furniture(tmp_path: Path):
    path = write_pdf(tmp_path / "paper.pdf", paper_pages(), title="Efficient Attention")
    doc = read_pdf(path, "paper.pdf", IngestConfig())
    assert doc.title == "Efficient Attention"
    assert doc.pages == 3 and doc.ocr_pages == []
    got = [(p.section, p.text, p.page_start) for p in doc.paragraphs]
    # The left column ends mid-sentence and the right column continues it: one paragraph. Headers
    # ("Short Title") and page numbers are gone.
    assert got == [
        ("Abstract", "This abstract spans the full width of the page and comes first.", 1),
        *[
            (f"{i} Section Number {i}",
             f"Left column text of page {i} says that the model is trained on {i} GPUs in the right column. "
             f"Page {i} ends here.", i)
            for i in (1, 2, 3)
        ],
    ]


def test_sentence_continuing_on_next_page_keeps_both_pages(tmp_path: Path):
    pages = [
        [(HEADER, "Running Head"), ((56, 100, 556, 700), "Quantization maps weights to fewer bits so that"),
         (FOOTER, "1")],
        [(HEADER, "Running Head"), ((56, 100, 556, 700), "inference needs less memory. A second sentence."),
         (FOOTER, "2")],
    ]
    path = write_pdf(tmp_path / "q.pdf", pages)
    doc = read_pdf(path, "q.pdf", IngestConfig())
    assert len(doc.paragraphs) == 1
    para = doc.paragraphs[0]
    assert para.text == "Quantization maps weights to fewer bits so that inference needs less memory. A second sentence."
    assert (para.page_start, para.page_end) == (1, 2)
    assert para.page_at(0) == 1 and para.page_at(para.text.index("inference")) == 2


def test_references_and_after_dropped(tmp_path: Path):
    pages = [[((56, 100, 556, 300), "Body text that matters."), ((56, 320, 556, 340), "References", "hebo"),
              ((56, 360, 556, 500), "[1] A. Author. A paper. 2020.")],
             [((56, 100, 556, 300), "Appendix text after the references.")]]
    path = write_pdf(tmp_path / "r.pdf", pages)
    text = " ".join(p.text for p in read_pdf(path, "r.pdf", IngestConfig()).paragraphs)
    assert "Body text that matters." in text
    assert "A paper" not in text and "Appendix text" not in text
    kept = " ".join(p.text for p in read_pdf(path, "r.pdf", IngestConfig(drop_references=False)).paragraphs)
    assert "A paper" in kept


def test_ligatures_hyphenation_and_citations_cleaned(tmp_path: Path):
    # A font that has the ffi ligature glyph, so the text layer really holds U+FB03.
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_font(fontname="F0", fontbuffer=pymupdf.Font("cjk").buffer)
    text = "An e\ufb03cient trans-\nformer [4] from Montr\u00b4eal (Hu et al., 2021) works well."
    assert page.insert_textbox(pymupdf.Rect(56, 100, 300, 400), text, fontname="F0", fontsize=10) >= 0
    doc.save(tmp_path / "c.pdf")
    path = tmp_path / "c.pdf"
    assert "\ufb03" in pymupdf.open(path)[0].get_text()
    doc = read_pdf(path, "c.pdf", IngestConfig())
    assert doc.paragraphs[0].text == "An efficient transformer from Montréal works well."


def test_line_end_hyphens_resolved_with_the_document_vocabulary(tmp_path: Path):
    # "encoder" and "decoder" are words of this document, so "encoder-\ndecoder" keeps its hyphen;
    # "atten-\ntion" is a syllable break ("attention" appears elsewhere).
    text = ("The encoder reads and the decoder writes. An encoder-\ndecoder model uses atten-\ntion. "
            "Attention is cheap. A quanti-\nzation step follows.")
    path = write_pdf(tmp_path / "h.pdf", [[((56, 100, 556, 400), text)]])
    doc = read_pdf(path, "h.pdf", IngestConfig())
    assert doc.paragraphs[0].text == (
        "The encoder reads and the decoder writes. An encoder-decoder model uses attention. "
        "Attention is cheap. A quantization step follows."
    )


@needs_tesseract
def test_only_pages_without_text_layer_are_ocred(tmp_path: Path):
    scanned = write_scanned_pdf(
        tmp_path / "s.pdf",
        ["Low rank adaptation trains two small matrices.\n\nThe base model stays frozen during training."],
    )
    # A mixed document: a born-digital page, then the scanned page appended.
    mixed = pymupdf.open()
    page = mixed.new_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 540, 300), "A born digital page about attention heads.", fontsize=11)
    mixed.insert_pdf(pymupdf.open(scanned))
    mixed.save(tmp_path / "mixed.pdf")

    doc = read_pdf(tmp_path / "mixed.pdf", "mixed.pdf", IngestConfig(ocr_dpi=200))
    assert doc.ocr_pages == [2]
    texts = [p.text for p in doc.paragraphs]
    assert texts[0] == "A born digital page about attention heads."
    ocr_text = " ".join(texts[1:]).lower()
    assert "low rank adaptation trains two small matrices" in ocr_text
    assert "base model stays frozen" in ocr_text
    assert all(p.ocr for p in doc.paragraphs[1:]) and not doc.paragraphs[0].ocr
    assert all(p.page_start == 2 for p in doc.paragraphs[1:])


def test_ocr_disabled_skips_scanned_pages_with_a_warning(tmp_path: Path):
    scanned = write_scanned_pdf(tmp_path / "s.pdf", ["Some scanned words here."])
    doc = read_pdf(scanned, "s.pdf", IngestConfig(ocr=False))
    assert doc.paragraphs == [] and doc.ocr_pages == []
    assert "page 1 has no usable text layer" in doc.warnings[0]


def test_ocr_needed_but_tesseract_missing(tmp_path: Path):
    scanned = write_scanned_pdf(tmp_path / "s.pdf", ["Some scanned words here."])
    cfg = IngestConfig(tesseract_cmd=str(tmp_path / "no-tesseract-here"))
    with pytest.raises(DocumentError, match=r"s.pdf: page 1 has no usable text layer and needs OCR, but Tesseract was not found"):
        read_pdf(scanned, "s.pdf", cfg)


def test_encrypted_pdf(tmp_path: Path):
    path = write_pdf(tmp_path / "plain.pdf", [[((56, 100, 556, 300), "Secret text.")]])
    doc = pymupdf.open(path)
    doc.save(tmp_path / "enc.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="owner")
    with pytest.raises(DocumentError, match="enc.pdf: encrypted PDF that needs a password; decrypt it first"):
        read_pdf(tmp_path / "enc.pdf", "enc.pdf", IngestConfig())


def test_truncated_pdf(tmp_path: Path):
    path = write_pdf(tmp_path / "full.pdf", [[((56, 100, 556, 300), "Some text.")]] * 3)
    data = path.read_bytes()
    # Cut early, nothing is left to repair: a clear error.
    (tmp_path / "cut.pdf").write_bytes(data[: len(data) // 10])
    with pytest.raises(DocumentError, match=r"cut.pdf: damaged or truncated PDF .*repair it"):
        read_pdf(tmp_path / "cut.pdf", "cut.pdf", IngestConfig())
    # Cut late, MuPDF repairs it: what survives is read, with a warning that the file is damaged.
    (tmp_path / "half.pdf").write_bytes(data[: len(data) // 2])
    doc = read_pdf(tmp_path / "half.pdf", "half.pdf", IngestConfig())
    assert [p.text for p in doc.paragraphs] == ["Some text."]
    assert any("damaged" in w for w in doc.warnings)


def test_not_a_pdf(tmp_path: Path):
    (tmp_path / "notes.pdf").write_text("just some text, not a PDF")
    with pytest.raises(DocumentError, match=r"notes.pdf: not a PDF \(the file starts with b'just '"):
        read_pdf(tmp_path / "notes.pdf", "notes.pdf", IngestConfig())


def test_zero_page_pdf(tmp_path: Path):
    (tmp_path / "empty.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    with pytest.raises(DocumentError, match="empty.pdf: the PDF has no pages"):
        read_pdf(tmp_path / "empty.pdf", "empty.pdf", IngestConfig())


def test_too_many_pages(tmp_path: Path):
    path = write_pdf(tmp_path / "long.pdf", [[((56, 100, 556, 300), "Page text.")]] * 5)
    with pytest.raises(DocumentError, match="long.pdf: 5 pages, over ingest.max_pages=3"):
        read_pdf(path, "long.pdf", IngestConfig(max_pages=3))


def test_word_split_across_a_column_break_is_mended(tmp_path: Path):
    # "correspond-" ends the left column, "ing" starts the right one: two blocks, one word.
    pages = [[(RIGHT, "ing observations are in the node. The held-"), (LEFT, "Weights are non-zero where the correspond-"),
              ((316, 710, 556, 740), "out data stays apart.")]]
    doc = read_pdf(write_pdf(tmp_path / "w.pdf", pages), "w.pdf", IngestConfig())
    assert [p.text for p in doc.paragraphs] == [
        "Weights are non-zero where the corresponding observations are in the node. The held-out data stays apart."
    ]


def test_blank_pages_are_not_ocred(tmp_path: Path):
    doc = pymupdf.open()
    for _ in range(300):
        doc.new_page()
    page = doc[1]
    page.insert_textbox(pymupdf.Rect(56, 100, 556, 300), "The only text of the document.", fontsize=10)
    doc.save(tmp_path / "blank.pdf")
    # No Tesseract at all: a page that would be OCRed fails the document.
    cfg = IngestConfig(tesseract_cmd=str(tmp_path / "no-tesseract-here"))
    read = read_pdf(tmp_path / "blank.pdf", "blank.pdf", cfg)
    assert [p.text for p in read.paragraphs] == ["The only text of the document."]
    assert read.ocr_pages == [] and read.ocr_skipped_pages == []
    assert read.blank_pages == [1, *range(3, 301)]


def test_short_text_without_images_or_drawings_is_read_not_ocred(tmp_path: Path):
    path = write_pdf(tmp_path / "short.pdf", [[((56, 100, 556, 300), "Short page.")]])
    read = read_pdf(path, "short.pdf", IngestConfig(tesseract_cmd=str(tmp_path / "no-tesseract-here")))
    assert [p.text for p in read.paragraphs] == ["Short page."] and read.blank_pages == []


@needs_tesseract
def test_ocr_work_is_bounded_per_document(tmp_path: Path):
    scanned = write_scanned_pdf(tmp_path / "s.pdf", ["Page one words here."] * 4, dpi=100)
    doc = read_pdf(scanned, "s.pdf", IngestConfig(ocr_dpi=100, max_ocr_pages=1))
    assert doc.ocr_pages == [1] and doc.ocr_skipped_pages == [2, 3, 4]
    assert "3 more pages need OCR than ingest.max_ocr_pages=1 allows (pages 2-4): not read" in doc.warnings[0]
    assert "page one words" in " ".join(p.text for p in doc.paragraphs).lower()

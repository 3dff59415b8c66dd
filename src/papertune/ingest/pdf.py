"""Research-paper PDFs -> clean paragraphs with their section and pages.

PyMuPDF gives text blocks with their boxes and fonts. Blocks are put in reading order (column by
column on two-column pages); running headers, footers and page numbers are removed; headings are
recognised by font (larger or bold than the body), by the PDF outline, or by numbering; monospaced
blocks are code; pages without a usable text layer go through Tesseract (blank pages do not, and at
most ``ingest.max_ocr_pages`` per document do). Blocks cut by a column or page break mid-sentence are
joined again, and words split at line ends are mended (see ``clean.join_hyphenated``).
"""

from __future__ import annotations

import functools
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

from papertune.config import IngestConfig
from papertune.errors import DocumentError
from papertune.ingest.clean import (
    clean_paragraph,
    document_vocabulary,
    is_references_heading,
    join_hyphenated,
    normalize_unicode,
    printable_ratio,
    squash_whitespace,
)
from papertune.ingest.document import Paragraph, ReadDocument

log = logging.getLogger(__name__)

# No TEXT_DEHYPHENATE: MuPDF would turn "encoder-\ndecoder" into "encoderdecoder". Line-end hyphens are
# resolved per document instead (see clean.join_hyphenated).
_TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP

_PAGE_NUMBER = re.compile(r"^\s*(?:page\s*)?(?:\d{1,4}|[ivxlc]{1,6})(?:\s*(?:of|/)\s*\d{1,4})?\s*$", re.IGNORECASE)
_NUMBERED_HEADING = re.compile(r"^(?:\d{1,2}(?:\.\d{1,2}){0,3}\.?|[IVX]{1,5}\.|[A-H]\.(?:\d{1,2}\.?)?)\s+[A-Z][A-Za-z][^\n]{0,90}$")
_KNOWN_HEADINGS = re.compile(
    r"^(?:abstract|introduction|background|related work|preliminaries|method|methods|methodology|approach|"
    r"experiments?|experimental setup|results|evaluation|analysis|discussion|limitations|conclusions?|"
    r"future work|acknowledge?ments|references|bibliography|appendix(?:\s+[a-z0-9]+)?)\s*:?$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?:;)\]\"'\u201d]$")
_SPLIT_WORD_END = re.compile(r"[A-Za-z]-$")  # "func-" at a block's end, "tion" at the next one's start
_DIGITS = re.compile(r"\d+")
_MARGIN = 0.12  # running headers and footers sit in the top or bottom 12% of a page
_SPAN_BOLD, _SPAN_MONO, _SPAN_SUPERSCRIPT = 16, 8, 1
_FOOTNOTE_MARK = re.compile(r"^[\d*†‡§¶,]{1,4}$")
# What a page's content stream can draw besides text (PyMuPDF's bbox log kinds).
_TEXT_ONLY = {"fill-text", "stroke-text", "ignore-text", "clip-text", "clip-stroke-text"}


@dataclass
class _Line:
    text: str
    size: float = 0.0  # 0 for OCR text: no font information
    bold: bool = False
    mono: bool = False


@dataclass
class _Block:
    lines: list[_Line]
    x0: float
    y0: float
    x1: float
    y1: float
    page: int
    ocr: bool = False
    table: bool = False
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = "\n".join(line.text for line in self.lines)


def open_pdf(path: Path, source: str) -> pymupdf.Document:
    """Open a PDF, turning each way it can be unusable into a message that says what to do."""
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
        head = path.read_bytes()[:5]
        if not head.startswith(b"%PDF"):
            raise DocumentError(
                f"{source}: not a PDF (the file starts with {head!r}, not %PDF); rename or remove it"
            ) from exc
        raise DocumentError(f"{source}: damaged or truncated PDF ({exc}); re-download or repair it (qpdf)") from exc
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise DocumentError(
            f"{source}: encrypted PDF that needs a password; decrypt it first, "
            "e.g. qpdf --decrypt --password=... in.pdf out.pdf"
        )
    if doc.page_count == 0:
        doc.close()
        raise DocumentError(f"{source}: the PDF has no pages")
    return doc


# --- extraction ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _font_style(font: str, flags: int) -> int:
    """Bold and monospace bits from the span flags, or from the font name where the flags miss them."""
    name = font.lower()
    style = flags & (_SPAN_BOLD | _SPAN_MONO)
    if "bold" in name or "black" in name or "heavy" in name:
        style |= _SPAN_BOLD
    if "mono" in name or "courier" in name or "consol" in name or "code" in name:
        style |= _SPAN_MONO
    return style


def _page_blocks(page: pymupdf.Page) -> list[_Block]:
    page_no = page.number + 1
    blocks = []
    for raw in page.get_text("dict", flags=_TEXT_FLAGS, sort=False)["blocks"]:
        lines = []
        tabular = False
        prev_box = None
        for raw_line in raw.get("lines", ()):
            # Two "lines" side by side at the same height are cells of one table row.
            box = raw_line["bbox"]
            if prev_box is not None and box[0] >= prev_box[2] and min(box[3], prev_box[3]) - max(box[1], prev_box[1]) > 0.5 * (box[3] - box[1]):
                tabular = True
            prev_box = box
            spans = raw_line["spans"]
            # Superscript digits and daggers are footnote marks, not words.
            kept = [s for s in spans if not (s["flags"] & _SPAN_SUPERSCRIPT and _FOOTNOTE_MARK.match(s["text"].strip()))]
            text = "".join(s["text"] for s in kept).strip()
            if not text:
                continue
            bold = mono = chars = 0
            size, longest = 0.0, -1
            for span in kept:
                n = len(span["text"])
                chars += n
                if n > longest:  # the line's size is its longest piece's: subscripts do not count
                    size, longest = round(span["size"], 1), n
                style = _font_style(span["font"], span["flags"])
                if style & _SPAN_BOLD:
                    bold += n
                if style & _SPAN_MONO:
                    mono += n
            lines.append(_Line(text, size, bold >= 0.9 * chars, mono >= 0.8 * chars))
            # Wide gaps between the pieces of one line: the cells of a table row.
            if len(kept) > 1 and not tabular:
                gap = max(12.0, 1.5 * size)
                tabular = any(b["bbox"][0] - a["bbox"][2] > gap for a, b in zip(kept, kept[1:]))
        if lines:
            x0, y0, x1, y1 = raw["bbox"]
            blocks.append(_Block(lines, x0, y0, x1, y1, page_no, table=tabular))
    return blocks


def _draws_more_than_text(page: pymupdf.Page) -> bool:
    """Whether the page paints images or vector graphics: what OCR could read that the text layer lacks."""
    return any(kind not in _TEXT_ONLY for kind, _ in page.get_bboxlog())


def _ocr_page(page: pymupdf.Page, cfg: IngestConfig, source: str) -> list[_Block]:
    """OCR one page with Tesseract; blocks keep their real position and a size from the word heights."""
    import pytesseract
    from PIL import Image

    pix = page.get_pixmap(dpi=cfg.ocr_dpi, colorspace=pymupdf.csGRAY, alpha=False)
    image = Image.open(io.BytesIO(pix.tobytes("png")))
    pytesseract.pytesseract.tesseract_cmd = cfg.tesseract_cmd
    try:
        data = pytesseract.image_to_data(
            image, lang=cfg.ocr_lang, config="--psm 3", output_type=pytesseract.Output.DICT
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise DocumentError(
            f"{source}: page {page.number + 1} has no usable text layer and needs OCR, but Tesseract was not "
            f"found at {cfg.tesseract_cmd!r}. Install it (apt-get install tesseract-ocr tesseract-ocr-eng), "
            f"point ingest.tesseract_cmd at it, or set ingest.ocr=false to skip such pages"
        ) from exc
    except pytesseract.TesseractError as exc:
        raise DocumentError(f"{source}: Tesseract failed on page {page.number + 1}: {exc}") from exc

    scale = 72.0 / cfg.ocr_dpi  # pixels -> PDF points
    words: dict[tuple[int, int], dict[int, list[int]]] = {}
    for i, word in enumerate(data["text"]):
        if data["level"][i] == 5 and word.strip():
            para = words.setdefault((data["block_num"][i], data["par_num"][i]), {})
            para.setdefault(data["line_num"][i], []).append(i)
    blocks = []
    for lines in words.values():
        ids = [i for line in lines.values() for i in line]
        out_lines = []
        for line in lines.values():
            heights = sorted(data["height"][i] for i in line)
            out_lines.append(_Line(" ".join(data["text"][i] for i in line), round(heights[len(heights) // 2] * scale, 1)))
        x0 = min(data["left"][i] for i in ids) * scale
        y0 = min(data["top"][i] for i in ids) * scale
        x1 = max(data["left"][i] + data["width"][i] for i in ids) * scale
        y1 = max(data["top"][i] + data["height"][i] for i in ids) * scale
        blocks.append(_Block(out_lines, x0, y0, x1, y1, page.number + 1, ocr=True))
    return blocks


def _mark_table_cells(blocks: list[_Block], width: float) -> None:
    """Blocks side by side in the same column are table cells (text rarely sits beside text otherwise)."""
    mid = width / 2
    narrow = [b for b in blocks if not (b.x0 < mid - width * 0.04 and b.x1 > mid + width * 0.04)]
    for i, a in enumerate(narrow):
        for b in narrow[i + 1:]:
            if ((a.x0 + a.x1) / 2 < mid) != ((b.x0 + b.x1) / 2 < mid):
                continue
            overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
            if overlap > 0.5 * min(a.y1 - a.y0, b.y1 - b.y0):
                a.table = b.table = True


# --- layout ----------------------------------------------------------------------------------


def _reading_order(blocks: list[_Block], width: float) -> list[_Block]:
    """Column by column: full-width blocks cut the page into bands; in each band, left column then right."""
    mid = width / 2
    margin = width * 0.04
    ordered: list[_Block] = []
    band: list[_Block] = []

    def flush() -> None:
        left = sorted((b for b in band if (b.x0 + b.x1) / 2 < mid), key=lambda b: (b.y0, b.x0))
        right = sorted((b for b in band if (b.x0 + b.x1) / 2 >= mid), key=lambda b: (b.y0, b.x0))
        ordered.extend(left + right)
        band.clear()

    for block in sorted(blocks, key=lambda b: (b.y0, b.x0)):
        if block.x0 < mid - margin and block.x1 > mid + margin:  # spans both columns
            flush()
            ordered.append(block)
        else:
            band.append(block)
    flush()
    return ordered


def _furniture_key(text: str) -> str:
    return _DIGITS.sub("#", " ".join(text.lower().split()))


def _remove_page_furniture(pages: list[list[_Block]], heights: list[float], min_share: float) -> list[list[_Block]]:
    """Drop page numbers and running headers/footers.

    Only blocks in a page's top or bottom margin (and among the two outermost there) are candidates:
    a page number, or text that repeats, digits aside, at the edge of at least ``min_share`` of pages.
    """

    def edge_blocks(blocks: list[_Block], height: float) -> list[_Block]:
        by_y = sorted(blocks, key=lambda b: b.y0)
        top = [b for b in by_y[:2] if b.y1 <= height * _MARGIN]
        bottom = [b for b in by_y[-2:] if b.y0 >= height * (1 - _MARGIN)]
        return top + bottom

    counts: Counter[str] = Counter()
    for blocks, height in zip(pages, heights):
        counts.update({_furniture_key(b.text) for b in edge_blocks(blocks, height)})
    threshold = max(2, min_share * len(pages))
    repeated = {key for key, n in counts.items() if n >= threshold}

    cleaned = []
    for blocks, height in zip(pages, heights):
        furniture = {
            id(b)
            for b in edge_blocks(blocks, height)
            if _PAGE_NUMBER.match(b.text) or _furniture_key(b.text) in repeated
        }
        cleaned.append([b for b in blocks if id(b) not in furniture])
    return cleaned


def _body_size(pages: list[list[_Block]], ocr: bool) -> float:
    """The most common text size (by characters) of born-digital or of OCRed blocks."""
    sizes: Counter[float] = Counter()
    for blocks in pages:
        for block in blocks:
            if block.ocr != ocr:
                continue
            for line in block.lines:
                if line.size:
                    sizes[round(line.size * 2) / 2 if ocr else line.size] += len(line.text)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def _line_kind(line: _Line, body: float, ocr: bool, after_heading: bool) -> str:
    if line.mono:
        return "code"
    # OCR sizes come from word heights, which vary more than font sizes: ask for a clearer margin.
    larger = line.size >= body * (1.2 if ocr else 1.15)
    # A heading starts with a capital or its number; its wrapped second line may not.
    starts_well = line.text[0].isupper() or line.text[0].isdigit() or after_heading
    if line.size and len(line.text) <= 120 and (larger or line.bold) and starts_well:
        return "heading"
    return "body"


def _runs(block: _Block, body: float) -> list[tuple[str, str]]:
    """Split a block into (kind, text) runs: a bold first line is a heading above its paragraph."""
    if block.table:
        return [("table", block.text)]
    runs: list[tuple[str, list[str]]] = []
    for line in block.lines:
        kind = _line_kind(line, body, block.ocr, bool(runs) and runs[-1][0] == "heading")
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(line.text)
        else:
            runs.append((kind, [line.text]))
    out = []
    for kind, lines in runs:
        text = "\n".join(lines)
        if kind == "heading" and (len(lines) > 3 or len(text) > 200 or text.rstrip().endswith(".")):
            kind = "body"  # a bold or large paragraph, not a heading
        out.append((kind, text))
    return out


def _take_title(first_page: list[_Block], height: float, body: float) -> str | None:
    """The largest lines in the top half of page 1, when clearly larger than the body text.

    The title's lines are removed from the page: the title names the document, it is not part of it.
    """
    lines = [(b, line) for b in first_page if b.y0 < height / 2 and not b.table for line in b.lines if line.size]
    if not lines or not body:
        return None
    top = max(line.size for _, line in lines)
    if top < body * 1.25:
        return None
    chosen = [(b, line) for b, line in lines if abs(line.size - top) < 0.5]
    title = " ".join(line.text for _, line in chosen)
    if len(title) > 250:
        return None
    for block, line in chosen:
        block.lines.remove(line)
        block.text = "\n".join(x.text for x in block.lines)
    first_page[:] = [b for b in first_page if b.lines]
    return title


# --- the reader ------------------------------------------------------------------------------


@dataclass
class _OcrPages:
    """Pages (1-based) by what OCR did with them."""

    done: list[int] = field(default_factory=list)
    blank: list[int] = field(default_factory=list)  # nothing drawn at all: nothing to OCR
    over_limit: list[int] = field(default_factory=list)  # needed OCR past ingest.max_ocr_pages


def read_pdf(path: Path, source: str, cfg: IngestConfig) -> ReadDocument:
    doc = open_pdf(path, source)
    try:
        if doc.page_count > cfg.max_pages:
            raise DocumentError(
                f"{source}: {doc.page_count} pages, over ingest.max_pages={cfg.max_pages}; raise it to ingest this file"
            )
        toc_titles = {squash_whitespace(t[1]).lower() for t in doc.get_toc(simple=True) if t[1].strip()}
        # Outline entries often carry their number ("3 Method") while the page shows it too; match both.
        toc_titles |= {re.sub(r"^[\d.]+\s+", "", t) for t in toc_titles}
        pages: list[list[_Block]] = []
        heights: list[float] = []
        ocr = _OcrPages()
        warnings: list[str] = []
        if doc.is_repaired:
            warnings.append("the file is damaged (truncated?); MuPDF repaired it, so some text may be missing")
        for page in doc:
            page_no = page.number + 1
            blocks = _page_blocks(page)
            text = "".join(b.text for b in blocks)
            readable = printable_ratio(text) >= cfg.min_printable_ratio
            usable = len(text.strip()) >= cfg.min_page_chars and readable
            # A page that draws nothing but (readable) text has nothing more for OCR to find.
            needs_ocr = not usable and ((bool(text.strip()) and not readable) or _draws_more_than_text(page))
            if not usable and not needs_ocr and not text.strip():
                ocr.blank.append(page_no)
            if needs_ocr:
                if not cfg.ocr:
                    warnings.append(f"page {page_no} has no usable text layer and ingest.ocr is false: skipped")
                    blocks = []
                elif len(ocr.done) >= cfg.max_ocr_pages:
                    ocr.over_limit.append(page_no)
                    blocks = []
                else:
                    blocks = _reading_order(_ocr_page(page, cfg, source), page.rect.width)
                    ocr.done.append(page_no)
            elif blocks:
                _mark_table_cells(blocks, page.rect.width)
                blocks = _reading_order(blocks, page.rect.width)
            pages.append(blocks)
            heights.append(page.rect.height)
        metadata_title = squash_whitespace(normalize_unicode((doc.metadata or {}).get("title") or ""))
    finally:
        doc.close()
    if ocr.over_limit:
        warnings.append(
            f"{len(ocr.over_limit)} more pages need OCR than ingest.max_ocr_pages={cfg.max_ocr_pages} allows "
            f"(pages {_page_ranges(ocr.over_limit)}): not read; raise it to OCR them"
        )

    pages = _remove_page_furniture(pages, heights, cfg.header_footer_min_share)
    body = {False: _body_size(pages, ocr=False), True: _body_size(pages, ocr=True)}
    font_title = _take_title(pages[0], heights[0], body[1 in ocr.done]) if pages else None
    if metadata_title.lower() in {"untitled"} or metadata_title.lower().startswith("microsoft word"):
        metadata_title = ""
    title = metadata_title or (squash_whitespace(normalize_unicode(font_title)) if font_title else None)
    texts = [b.text for blocks in pages for b in blocks]
    vocabulary = document_vocabulary(texts) if any("-\n" in t for t in texts) else frozenset()

    paragraphs: list[Paragraph] = []
    section: str | None = None
    seen_heading = False
    for blocks in pages:
        for block in blocks:
            for kind, raw in _runs(block, body[block.ocr]):
                flat = squash_whitespace(raw)
                if kind == "table":
                    if cfg.tables == "keep":
                        cell = clean_paragraph(raw, citations=cfg.citations, document_words=vocabulary)
                        prev = paragraphs[-1] if paragraphs else None
                        if cell and _continues(prev, cell, section, table=True):
                            _extend(prev, cell, block, vocabulary)
                        elif cell:
                            paragraphs.append(Paragraph(cell, section, block.page, block.page, ocr=block.ocr, table=True))
                    continue
                if kind != "code" and (
                    kind == "heading" and len(flat) <= 120
                    or flat.lower() in toc_titles
                    or _KNOWN_HEADINGS.match(flat)
                    # Numbering is trusted only where fonts cannot tell (OCR): "20 November 2023" is no heading.
                    or (block.ocr and "\n" not in raw.strip() and _NUMBERED_HEADING.match(flat) and not flat.endswith("."))
                ):
                    heading = squash_whitespace(normalize_unicode(flat))
                    if cfg.drop_references and is_references_heading(heading):
                        return _result(title, path, paragraphs, pages, ocr, warnings)
                    section, seen_heading = heading, True
                    continue
                if kind == "code" and cfg.code == "drop":
                    continue
                if kind == "code":
                    paragraphs.append(Paragraph(raw.strip(), section, block.page, block.page, ocr=block.ocr))
                    continue
                text = clean_paragraph(raw, citations=cfg.citations, document_words=vocabulary)
                if not text:
                    continue
                # Author names, affiliations and dates between a title and the first heading.
                if (font_title and not seen_heading and block.page == 1 and len(text.split()) < 20
                        and not _SENTENCE_END.search(text)):
                    continue
                prev = paragraphs[-1] if paragraphs else None
                if _continues(prev, text, section, table=False):
                    _extend(prev, text, block, vocabulary)
                else:
                    paragraphs.append(Paragraph(text, section, block.page, block.page, ocr=block.ocr))
    return _result(title, path, paragraphs, pages, ocr, warnings)


def _continues(prev: Paragraph | None, text: str, section: str | None, *, table: bool) -> bool:
    """Whether ``text`` goes on from ``prev``: a sentence or a word cut by a column, page or block break.

    A table cell stands alone, never glued to the prose around it, unless a word was split across it.
    """
    if prev is None or prev.section != section or not text[:1].islower():
        return False
    if _SPLIT_WORD_END.search(prev.text):
        return True
    return not table and not prev.table and not _SENTENCE_END.search(prev.text)


def _extend(prev: Paragraph, text: str, block: _Block, vocabulary: frozenset[str]) -> None:
    """Append the next block's ``text`` to ``prev``, mending a word split across the two."""
    if _SPLIT_WORD_END.search(prev.text):
        merged = join_hyphenated(f"{prev.text}\n{text}", vocabulary).replace("\n", " ")
    else:
        merged = f"{prev.text} {text}"
    if block.page != prev.page_end:
        prev.page_breaks.append((len(merged) - len(text), block.page))
    prev.text = merged
    prev.page_end = block.page
    prev.ocr = prev.ocr or block.ocr


def _page_ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    ranges: list[list[int]] = []
    for page in pages:
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _result(title, path, paragraphs, pages, ocr: _OcrPages, warnings) -> ReadDocument:
    return ReadDocument(
        title=title or path.stem, paragraphs=paragraphs, pages=len(pages), ocr_pages=ocr.done,
        blank_pages=ocr.blank, ocr_skipped_pages=ocr.over_limit, warnings=warnings,
    )

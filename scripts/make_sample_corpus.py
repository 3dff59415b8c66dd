#!/usr/bin/env python3
"""Generate the PDF part of papertune's bundled sample corpus.

The sample corpus lives in ``samples/corpus/``.  It consists of short,
original Markdown notes on well-known AI-research topics (attention, LoRA and
QLoRA, post-training quantization, RLHF/DPO, LLM evaluation, tokenization and
mixture-of-experts) plus PDFs derived from some of them in ``samples/corpus/pdf/``.
The Markdown files are hand-written and deliberately contain the clutter an
ingester has to clean: YAML front matter, HTML comments and inline HTML,
Jekyll/Liquid tags, kramdown attribute lists, images, links, LaTeX math, code
fences, tables and numeric / author-year citations.

This script renders PDFs from a subset of the notes so that the PDF code paths
of the ingester can be exercised as well.  The corpus README deliberately lives
here (and not in ``samples/corpus/``) because a README inside the corpus would
itself be ingested.

Generated files (see ``PDF_SPECS`` below)::

    pdf/attention.pdf             born-digital, US Letter, TWO-COLUMN body with a
                                  full-width title + abstract block on page 1;
                                  author name and references use decomposed
                                  (NFD) diacritics, e.g. "e" + U+0301.
    pdf/lora-qlora.pdf            born-digital, A4, single column.
    pdf/quantization.pdf          born-digital, US Letter, single column.
    pdf/rlhf-preference.pdf       born-digital, A5, single column.
    pdf/tokenization-scanned.pdf  SCANNED: page images only (grayscale JPEG,
                                  200 dpi, slightly rotated and blurred), no
                                  text layer; header and page number are part
                                  of the image.

Every born-digital page carries a running header (short title) and a page
number footer, which the ingester is expected to strip.  The text is laid out
by MuPDF's HTML engine (``pymupdf.Story``), which shapes "fi", "fl", "ffi" ...
into ligature glyphs; their extracted text is U+FB01 etc., another thing the
cleaner must normalise.  Math is rendered as Unicode text with sub/superscripts,
much like the text layer of a LaTeX-produced paper.

Usage::

    python scripts/make_sample_corpus.py            # (re)generate the PDFs
    python scripts/make_sample_corpus.py --verify   # ... and sanity-check them
    python scripts/make_sample_corpus.py --check    # exit 1 if PDFs are stale

The output is deterministic: fixed PDF metadata, no timestamps, no random file
IDs, and fonts are subset deterministically, so re-running the script on the
same PyMuPDF version rewrites nothing.  Requirements: PyMuPDF, markdown-it-py,
PyYAML and Pillow; ``--verify`` additionally uses pytesseract (Tesseract OCR)
if it is available.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import html
import io
import logging
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pymupdf
import yaml
from markdown_it import MarkdownIt
from PIL import Image, ImageFilter

log = logging.getLogger("make_sample_corpus")

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO_ROOT / "samples" / "corpus"
DEFAULT_PDF_DIR = CORPUS_DIR / "pdf"

# Upper bound we want every generated PDF to respect (the corpus is committed).
MAX_PDF_BYTES = 400 * 1024


# --------------------------------------------------------------------------
# What to generate
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PdfSpec:
    """How to turn one Markdown note into one PDF."""

    source: str  # Markdown file name inside CORPUS_DIR
    output: str  # PDF file name inside the output directory
    short_title: str  # running header text
    paper: str = "letter"  # any name pymupdf.paper_rect() understands
    layout: str = "single"  # "single" or "two-column"
    font_size: float = 11.0  # base font size (CSS em) in points
    margin: float = 72.0  # left/right/bottom margin in points
    top_margin: float = 72.0  # space above the body (the header sits inside it)
    decompose_diacritics: bool = False  # NFD title block + references
    scanned: bool = False  # replace the text layer by page images


PDF_SPECS: tuple[PdfSpec, ...] = (
    PdfSpec(
        source="attention.md",
        output="attention.pdf",
        short_title="Attention and the Transformer",
        paper="letter",
        layout="two-column",
        font_size=10.5,
        margin=60.0,
        decompose_diacritics=True,
    ),
    PdfSpec(
        source="lora-qlora.md",
        output="lora-qlora.pdf",
        short_title="LoRA and QLoRA",
        paper="a4",
        font_size=11.5,
    ),
    PdfSpec(
        source="quantization.md",
        output="quantization.pdf",
        short_title="Post-Training Quantization of LLMs",
        paper="letter",
        font_size=12.0,
    ),
    PdfSpec(
        source="rlhf-preference.md",
        output="rlhf-preference.pdf",
        short_title="From RLHF to DPO",
        paper="a5",
        font_size=9.5,
        margin=48.0,
        top_margin=60.0,
    ),
    PdfSpec(
        source="tokenization.md",
        output="tokenization-scanned.pdf",
        short_title="Subword Tokenization",
        paper="letter",
        font_size=10.5,
        scanned=True,
    ),
)

# Settings of the simulated scanner.
SCAN_DPI = 200
SCAN_JPEG_QUALITY = 25  # text pages compress badly; 25 keeps the file < 400 KB
SCAN_BLUR_RADIUS = 0.8  # scanner optics are never perfectly sharp (also helps JPEG)
SCAN_ROTATION_DEG = 0.35  # a real scan is never perfectly straight
SCAN_PAPER_GRAY = 246  # slightly off-white paper

# Fixed document metadata: no dates, so output is reproducible.
CREATOR = "papertune scripts/make_sample_corpus.py"
SCAN_CREATOR = "papertune simulated scanner (scripts/make_sample_corpus.py)"

CSS = """
body { font-family: serif; text-align: justify; }
h1 { font-size: 1.6em; text-align: center; margin: 0 0 0.3em 0; }
h2 { font-size: 1.2em; margin: 0.9em 0 0.3em 0; }
h3 { font-size: 1.05em; margin: 0.7em 0 0.2em 0; }
p { margin: 0 0 0.45em 0; }
ul, ol { margin: 0 0 0.45em 0; }
li { margin: 0 0 0.15em 0; }
pre { font-family: monospace; font-size: 0.72em; text-align: left;
      margin: 0.3em 0 0.6em 0.8em; }
code { font-family: monospace; font-size: 0.9em; }
pre code { font-size: 1em; }
table { border-collapse: collapse; margin: 0.4em auto 0.7em auto;
        font-size: 0.8em; text-align: left; }
th, td { border: 0.5px solid #444; padding: 1px 3px; }
th { font-weight: bold; }
.authors { text-align: center; font-size: 1.05em; margin-bottom: 0.1em; }
.date { text-align: center; font-size: 0.9em; margin-bottom: 1em; }
.abstract-title { text-align: center; font-weight: bold; margin: 0.6em 0 0.2em 0; }
.abstract { margin: 0 2.5em 0.4em 2.5em; font-size: 0.95em; }
.eq { text-align: center; margin: 0.3em 0 0.5em 0; }
.caption { text-align: center; font-size: 0.85em; font-style: italic; }
.note { font-size: 0.92em; margin: 0.3em 1.2em 0.5em 1.2em; font-style: italic; }
.ref { font-size: 0.9em; text-align: left; margin: 0 0 0.3em 0; }
"""

# Narrow columns without hyphenation look better ragged-right than justified.
TWO_COLUMN_CSS = """
body { text-align: left; }
.note { margin: 0.3em 0.4em 0.5em 0.4em; }
"""

# --------------------------------------------------------------------------
# Markdown -> HTML
# --------------------------------------------------------------------------

FRONT_MATTER_RE = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
FENCE_RE = re.compile(r"^```.*?^```[ \t]*$", re.DOTALL | re.MULTILINE)
DISPLAY_MATH_RE = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
INLINE_MATH_RE = re.compile(r"(?<![\\$])\$([^$\n]+?)\$")
IMAGE_RE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")


def split_front_matter(text: str) -> tuple[dict, str]:
    """Return (front matter as dict, remaining Markdown body)."""
    m = FRONT_MATTER_RE.match(text)
    if not m:
        return {}, text
    return yaml.safe_load(m.group(1)) or {}, text[m.end() :]


def strip_site_artifacts(body: str) -> str:
    """Remove things a static-site generator would consume before rendering.

    Covers HTML comments, Liquid ``{% comment %}`` blocks, other Liquid tags
    (``{% include ... %}``) and output expressions (``{{ site.baseurl }}``), and
    kramdown inline attribute lists such as ``{: .note}``.  None of these would
    appear in a typeset paper.
    """
    body = re.sub(r"<!--.*?-->\n?", "", body, flags=re.DOTALL)
    body = re.sub(r"\{%-?\s*comment\s*-?%\}.*?\{%-?\s*endcomment\s*-?%\}\n?", "", body, flags=re.DOTALL)
    body = re.sub(r"^[ \t]*\{%.*?%\}[ \t]*\n", "", body, flags=re.MULTILINE)  # tag on its own line
    body = re.sub(r"\{%.*?%\}", "", body)
    body = re.sub(r"\{\{.*?\}\}", "", body)
    body = re.sub(r"^[ \t]*\{:[^}\n]*\}[ \t]*\n", "", body, flags=re.MULTILINE)
    return body


# LaTeX -> Unicode/HTML. Just enough for the formulas used in the corpus; the
# goal is a text layer that looks like what a LaTeX-produced PDF yields.
LATEX_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "Delta": "Δ",
    "epsilon": "ε", "lambda": "λ", "mu": "μ", "phi": "φ", "pi": "π",
    "sigma": "σ", "theta": "θ", "infty": "∞", "top": "⊤",
    "cdot": "·", "times": "×", "in": "∈", "le": "≤", "ge": "≥",
    "approx": "≈", "sim": "∼", "mid": "|", "sum": "Σ", "log": "log", "exp": "exp",
    "sin": "sin", "cos": "cos", "max": "max", "min": "min", "qquad": "    ",
    "quad": "  ", "dots": "…", "ldots": "…",
    "|": "‖", ",": " ", ";": " ", "!": "", " ": " ", "{": "{", "}": "}",
}
LATEX_DROP = {"left", "right", "big", "Big", "bigg", "Bigg"}
# Only BMP characters: MuPDF (1.28) writes a truncated ToUnicode entry for
# non-BMP glyphs, e.g. U+1D53C (double-struck E) is extracted as U+1D53.
LATEX_BLACKBOARD = {"R": "ℝ", "E": "E"}
LATEX_CALLIGRAPHIC = {"L": "ℒ"}


def _read_group(src: str, i: int) -> tuple[str, int]:
    """Read one TeX argument starting at src[i]: a {...} group, a command or a char."""
    while i < len(src) and src[i] == " ":
        i += 1
    if i >= len(src):
        return "", i
    if src[i] == "{":
        depth, j = 0, i
        while j < len(src):
            if src[j] == "{" and src[j - 1 : j] != "\\":
                depth += 1
            elif src[j] == "}" and src[j - 1 : j] != "\\":
                depth -= 1
                if depth == 0:
                    return src[i + 1 : j], j + 1
            j += 1
        return src[i + 1 :], len(src)
    if src[i] == "\\":
        m = re.match(r"\\([A-Za-z]+|.)", src[i:])
        assert m is not None
        return m.group(0), i + m.end()
    return src[i], i + 1


def _paren(s: str) -> str:
    """Parenthesise a converted operand unless it is a single token."""
    plain = re.sub(r"<[^>]+>", "", s)
    return s if re.fullmatch(r"[\w.√⊤]+", plain) else f"({s})"


def latex_to_html(src: str) -> str:
    """Convert a (simple) LaTeX math string to HTML text with <sub>/<sup>."""
    out: list[str] = []
    i = 0
    while i < len(src):
        c = src[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", src[i:])
            assert m is not None
            name, i = m.group(1), i + m.end()
            if name in LATEX_DROP:
                continue
            if name == "frac":
                num, i = _read_group(src, i)
                den, i = _read_group(src, i)
                out.append(f"{_paren(latex_to_html(num))}/{_paren(latex_to_html(den))}")
            elif name == "binom":
                n, i = _read_group(src, i)
                k, i = _read_group(src, i)
                out.append(f"C({latex_to_html(n)}, {latex_to_html(k)})")
            elif name == "sqrt":
                arg, i = _read_group(src, i)
                out.append("√" + _paren(latex_to_html(arg)))
            elif name == "hat":
                arg, i = _read_group(src, i)
                out.append(latex_to_html(arg) + "\u0302")
            elif name == "mathbb":
                arg, i = _read_group(src, i)
                out.append(LATEX_BLACKBOARD.get(arg, arg))
            elif name == "mathcal":
                arg, i = _read_group(src, i)
                out.append(LATEX_CALLIGRAPHIC.get(arg, arg))
            elif name in {"mathrm", "text", "operatorname", "mathbf"}:
                arg, i = _read_group(src, i)
                out.append(latex_to_html(arg))
            elif name in LATEX_SYMBOLS:
                out.append(LATEX_SYMBOLS[name])
            else:
                out.append(name)
        elif c in "_^":
            arg, i = _read_group(src, i + 1)
            tag = "sub" if c == "_" else "sup"
            out.append(f"<{tag}>{latex_to_html(arg)}</{tag}>")
        elif c == "{":
            arg, i = _read_group(src, i)
            out.append(latex_to_html(arg))
        elif c in " \n\t":
            if out and not out[-1].endswith(" "):
                out.append(" ")
            i += 1
        else:
            out.append(html.escape(c))
            i += 1
    text = "".join(out)
    text = re.sub(r" {2,}", " ", text)
    return text.replace("- ", "− ").replace(" -", " −").strip()


class MathStash:
    """Replace $...$ / $$...$$ by opaque placeholders before Markdown parsing.

    Markdown would otherwise treat the underscores of d_k as emphasis markers.
    """

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def _key(self, kind: str) -> str:
        return f"MATH{kind}{len(self.items):04d}Z"

    def stash(self, text: str) -> str:
        def display(m: re.Match) -> str:
            key = self._key("D")
            self.items[key] = f'<p class="eq">{latex_to_html(m.group(1))}</p>'
            return f"\n\n{key}\n\n"

        def inline(m: re.Match) -> str:
            key = self._key("I")
            self.items[key] = f"<i>{latex_to_html(m.group(1))}</i>"
            return key

        # Protect fenced code blocks, which may legitimately contain "$".
        fences: list[str] = []

        def keep_fence(m: re.Match) -> str:
            fences.append(m.group(0))
            return f"FENCE{len(fences) - 1:04d}Z"

        text = FENCE_RE.sub(keep_fence, text)
        text = DISPLAY_MATH_RE.sub(display, text)
        text = INLINE_MATH_RE.sub(inline, text)
        return re.sub(r"FENCE(\d{4})Z", lambda m: fences[int(m.group(1))], text)

    def restore(self, html_text: str) -> str:
        for key, value in self.items.items():
            if key.startswith("MATHD"):
                html_text = html_text.replace(f"<p>{key}</p>", value)
            html_text = html_text.replace(key, value)
        return html_text


def format_date(value: object) -> str:
    if isinstance(value, _dt.date):
        return f"{value.day} {value:%B %Y}"
    return str(value or "")


def format_authors(value: object) -> str:
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return str(value or "")


@dataclass
class RenderedDoc:
    title: str
    authors: str
    keywords: str
    front_html: str  # title block (+ abstract, for the two-column layout)
    body_html: str


def markdown_to_html(path: Path, spec: PdfSpec) -> RenderedDoc:
    """Turn one corpus Markdown file into HTML fragments for pymupdf.Story."""
    meta, body = split_front_matter(path.read_text(encoding="utf-8"))
    body = strip_site_artifacts(body)

    # Title: front matter, else the first level-1 heading. Drop an H1 that
    # merely repeats the title (the title block renders it).
    title = str(meta.get("title") or "")
    h1 = re.search(r"^# (.+)$", body, flags=re.MULTILINE)
    if h1 and (not title or h1.group(1).strip() == title):
        title = title or h1.group(1).strip()
        body = body[: h1.start()] + body[h1.end() :]
    authors = format_authors(meta.get("authors"))
    keywords = ", ".join(str(t) for t in meta.get("tags") or [])

    # Images become figure captions; the (nonexistent) image files are not shown.
    fig_no = 0

    def caption(m: re.Match) -> str:
        nonlocal fig_no
        fig_no += 1
        return f'<p class="caption">Figure {fig_no}: {html.escape(m.group(1))}.</p>'

    body = IMAGE_RE.sub(caption, body)
    # U+2581 (SentencePiece's space marker) has no glyph in MuPDF's built-in fonts.
    body = body.replace("▁", "_")

    stash = MathStash()
    body = stash.stash(body)
    md = MarkdownIt("commonmark", {"html": True, "typographer": False}).enable("table")
    body_html = stash.restore(md.render(body))
    body_html = format_references(body_html)

    # The two-column layout lifts the abstract into the full-width title block.
    abstract_html = ""
    m = re.search(r"<h2>Abstract</h2>\s*(.*?)(?=<h2>)", body_html, flags=re.DOTALL)
    if spec.layout == "two-column" and m:
        abstract_html = (
            '<p class="abstract-title">Abstract</p>'
            + m.group(1).replace("<p>", '<p class="abstract">')
        )
        body_html = body_html[: m.start()] + body_html[m.end() :]

    front = [f"<h1>{html.escape(title)}</h1>"]
    if authors:
        front.append(f'<p class="authors">{html.escape(authors)}</p>')
    if meta.get("date"):
        front.append(f'<p class="date">{format_date(meta.get("date"))}</p>')
    front_html = "\n".join(front) + abstract_html

    if spec.decompose_diacritics:
        # Mimic PDFs whose text layer stores accents as separate combining marks.
        front_html = unicodedata.normalize("NFD", front_html)
        cut = body_html.find("<h2>References</h2>")
        if cut >= 0:
            body_html = body_html[:cut] + unicodedata.normalize("NFD", body_html[cut:])
    return RenderedDoc(title, authors, keywords, front_html, body_html)


def format_references(body_html: str) -> str:
    """Render the reference list as "[n] ..." paragraphs, as papers do."""
    m = re.search(r"(<h2>References</h2>\s*)<ol>(.*?)</ol>", body_html, flags=re.DOTALL)
    if not m:
        return body_html
    items = re.findall(r"<li>(.*?)</li>", m.group(2), flags=re.DOTALL)
    refs = "".join(f'<p class="ref">[{n}] {item.strip()}</p>\n' for n, item in enumerate(items, 1))
    return body_html[: m.start()] + m.group(1) + refs + body_html[m.end() :]


# --------------------------------------------------------------------------
# HTML -> PDF
# --------------------------------------------------------------------------


def _small_story(text: str, align: str, size: float) -> pymupdf.Story:
    # Note: pass the size as ``em``.  With an inline "font-size: 9pt" instead,
    # MuPDF reports that this one-line paragraph does not fit a 22 pt high box
    # (place() returns more=1) and nothing is drawn.
    return pymupdf.Story(
        f'<p style="text-align:{align}; margin:0">{html.escape(text)}</p>',
        user_css="body { font-family: serif; }",
        em=size,
    )


KEEP_TOGETHER_RE = re.compile(r"<(table|pre|h2|h3)>")
COLUMN_GAP = 18.0  # gutter between the two columns, in points


def render_pdf(doc_html: RenderedDoc, spec: PdfSpec) -> bytes:
    """Lay out the HTML on pages and return PDF bytes (before finishing).

    MuPDF's HTML engine ignores ``page-break-inside: avoid``, so tables and code
    blocks would happily straddle a column or page break, and headings could
    be left alone at the bottom of a column.  We emulate "keep together": lay
    the document out, find such blocks that cross the bottom of their column,
    give them a top margin that pushes them into the next column (MuPDF drops
    the margin at the top of the new column), and repeat.
    """
    counter = iter(range(10_000))
    body_html = KEEP_TOGETHER_RE.sub(
        lambda m: f'<{m.group(1)} id="keep-{m.group(1)}-{next(counter)}">', doc_html.body_html
    )
    pushes: dict[str, float] = {}
    for _ in range(20):
        html_now = body_html
        for block_id, push in pushes.items():
            style = f'style="margin-top:{push:.0f}pt"'
            html_now = html_now.replace(f'id="{block_id}">', f'id="{block_id}" {style}>')
        pdf, straddling = _layout(doc_html.front_html, html_now, spec)
        new = {k: v for k, v in straddling.items() if k not in pushes}
        if not new:
            return pdf
        log.debug("%s: pushing %s to the next column", spec.output, sorted(new))
        pushes.update(new)
    raise RuntimeError(f"{spec.output}: could not keep tables/code blocks together")


def _block_heights(body_html: str, css: str, em: float, width: float) -> dict[str, float]:
    """Natural height of every keep-together block when laid out at ``width``.

    Headings count as two and a half lines taller, so that a heading never
    ends up alone at the bottom of a column ("keep with next").
    """
    story = pymupdf.Story(body_html, user_css=css, em=em)
    more, _ = story.place(pymupdf.Rect(0, 0, width, 100_000))
    if more:
        raise RuntimeError("document too long to measure")
    heights: dict[str, float] = {}

    def record(pos) -> None:
        if (pos.id or "").startswith("keep-") and pos.open_close & 1:
            extra = 2.5 * 1.2 * em if pos.id.startswith("keep-h") else 0.0
            heights[pos.id] = pymupdf.Rect(pos.rect).height + extra

    story.element_positions(record)
    return heights


def _layout(front_html: str, body_html: str, spec: PdfSpec) -> tuple[bytes, dict[str, float]]:
    """One layout pass. Returns the PDF and {block id: push needed} for blocks
    that cross the bottom of their column."""
    page = pymupdf.paper_rect(spec.paper)
    left, right = spec.margin, page.width - spec.margin
    top, bottom = spec.top_margin, page.height - spec.margin
    header_rect = pymupdf.Rect(left, top - 34, right, top - 12)
    footer_rect = pymupdf.Rect(left, bottom + 16, right, bottom + 40)
    small = max(7.5, spec.font_size * 0.8)

    css = CSS + (TWO_COLUMN_CSS if spec.layout == "two-column" else "")
    front = pymupdf.Story(front_html, user_css=CSS, em=spec.font_size)
    body = pymupdf.Story(body_html, user_css=css, em=spec.font_size)

    straddling: dict[str, float] = {}
    current_column = pymupdf.Rect()
    column_width = (right - left - COLUMN_GAP) / 2 if spec.layout == "two-column" else right - left
    heights = _block_heights(body_html, css, spec.font_size, column_width)

    def check_position(pos) -> None:
        # Called after each place() for elements with an id (and headings).
        # The reported rect only covers the part inside the current column, so
        # compare against the block's natural height instead.
        if (pos.id or "").startswith("keep-") and pos.open_close & 1:
            y0, height = pymupdf.Rect(pos.rect).y0, heights.get(pos.id, 0.0)
            if y0 + height > current_column.y1 + 0.5 and height < current_column.height:
                straddling[pos.id] = current_column.y1 - y0 + 2

    buf = io.BytesIO()
    writer = pymupdf.DocumentWriter(buf)
    page_no = 0
    more = True
    while more:
        page_no += 1
        device = writer.begin_page(page)
        # 1. running header (drawn first, as most typesetters do)
        header = _small_story(spec.short_title, "center", small)
        if header.place(header_rect)[0]:
            raise RuntimeError(f"{spec.output}: running header does not fit")
        header.draw(device)
        # 2. body
        y0 = top
        if page_no == 1:
            more_front, filled = front.place(pymupdf.Rect(left, top, right, bottom))
            if more_front:
                raise RuntimeError(f"{spec.output}: title block does not fit on one page")
            front.draw(device)
            y0 = pymupdf.Rect(filled).y1 + spec.font_size
        if spec.layout == "two-column":
            columns = [
                pymupdf.Rect(left, y0, left + column_width, bottom),
                pymupdf.Rect(right - column_width, y0, right, bottom),
            ]
        else:
            columns = [pymupdf.Rect(left, y0, right, bottom)]
        for column in columns:  # left column top-to-bottom, then the right one
            current_column = column
            more, _ = body.place(column)
            body.element_positions(check_position)
            body.draw(device)
            if not more:
                break
        # 3. page number footer
        footer = _small_story(str(page_no), "center", small)
        if footer.place(footer_rect)[0]:
            raise RuntimeError(f"{spec.output}: page number does not fit")
        footer.draw(device)
        writer.end_page()
        if page_no > 50:
            raise RuntimeError(f"{spec.output}: runaway layout")
    writer.close()
    return buf.getvalue(), straddling


def finish_pdf(doc: pymupdf.Document, metadata: dict[str, str], subset: bool = True) -> bytes:
    """Subset fonts, set fixed metadata and serialise deterministically.

    ``no_new_id`` matters: every save without it writes a fresh random /ID into
    the trailer, and a later save keeps whatever /ID it finds.
    """
    if subset:
        doc.subset_fonts()
    doc.set_metadata(
        {
            "format": "PDF 1.7",
            "title": metadata.get("title", ""),
            "author": metadata.get("author", ""),
            "subject": metadata.get("subject", ""),
            "keywords": metadata.get("keywords", ""),
            "creator": metadata.get("creator", CREATOR),
            "producer": "PyMuPDF " + pymupdf.VersionBind,
            "creationDate": "",
            "modDate": "",
            "trapped": "",
        }
    )
    doc.del_xml_metadata()
    return doc.tobytes(garbage=4, deflate=True, deflate_images=True, deflate_fonts=True, no_new_id=True)


def scan_pdf(pdf: bytes, metadata: dict[str, str]) -> bytes:
    """Simulate a scanner: rasterise every page and keep only the images.

    Pages are rendered in grayscale at SCAN_DPI, rotated by a small angle onto
    off-white "paper", slightly blurred and JPEG-compressed.  The result has no
    text layer at all, so the ingester has to fall back to OCR.
    """
    src = pymupdf.open("pdf", pdf)
    out = pymupdf.open()
    for page in src:
        pix = page.get_pixmap(dpi=SCAN_DPI, colorspace=pymupdf.csGRAY, alpha=False)
        img = Image.frombytes("L", (pix.width, pix.height), pix.samples)
        # Darken the paper a little, then tilt the sheet.
        img = img.point(lambda v: round(v * SCAN_PAPER_GRAY / 255))
        img = img.rotate(
            SCAN_ROTATION_DEG, resample=Image.Resampling.BICUBIC, fillcolor=SCAN_PAPER_GRAY
        )
        img = img.filter(ImageFilter.GaussianBlur(SCAN_BLUR_RADIUS))
        jpeg = io.BytesIO()
        img.save(jpeg, format="JPEG", quality=SCAN_JPEG_QUALITY, optimize=True, progressive=True)
        new_page = out.new_page(width=page.rect.width, height=page.rect.height)
        new_page.insert_image(new_page.rect, stream=jpeg.getvalue())
    src.close()
    result = finish_pdf(out, metadata, subset=False)
    out.close()
    return result


def build_pdf(spec: PdfSpec) -> bytes:
    doc_html = markdown_to_html(CORPUS_DIR / spec.source, spec)
    raw = render_pdf(doc_html, spec)
    metadata = {
        "title": doc_html.title,
        "author": doc_html.authors,
        "subject": "papertune sample corpus",
        "keywords": doc_html.keywords,
    }
    if spec.scanned:
        metadata["creator"] = SCAN_CREATOR
        return scan_pdf(raw, metadata)
    return finish_pdf(pymupdf.open("pdf", raw), metadata)


# --------------------------------------------------------------------------
# Verification (``--verify``)
# --------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    return re.findall(r"[a-z0-9]+", text.lower())


def verify_pdf(path: Path, spec: PdfSpec) -> list[str]:
    """Return a list of problems found in one generated PDF (empty = fine)."""
    problems: list[str] = []
    size = path.stat().st_size
    if size > MAX_PDF_BYTES:
        problems.append(f"{size} bytes > {MAX_PDF_BYTES}")
    doc = pymupdf.open(path)
    if doc.page_count < 3:
        problems.append(f"only {doc.page_count} pages")
    log.info("  %s: %d pages, %.0f KB, %s", path.name, doc.page_count, size / 1024, spec.layout)

    if spec.scanned:
        for page in doc:
            if page.get_text().strip():
                problems.append(f"page {page.number + 1} has a text layer")
            if not page.get_images():
                problems.append(f"page {page.number + 1} has no image")
        problems += _ocr_spot_check(doc, spec)
        return problems

    for page in doc:
        lines = [ln.strip() for ln in page.get_text(sort=True).splitlines() if ln.strip()]
        if not lines or lines[0] != spec.short_title:
            problems.append(f"page {page.number + 1}: running header missing")
        if not lines or lines[-1] != str(page.number + 1):
            problems.append(f"page {page.number + 1}: page number missing")

    if spec.layout == "two-column":
        problems += _check_two_columns(doc)
    problems += _check_complete(path, spec)
    return problems


def _check_two_columns(doc: pymupdf.Document) -> list[str]:
    """Body blocks must sit in two columns, left column first in stream order."""
    problems = []
    mid = doc[0].rect.width / 2
    for page in doc:
        blocks = [b for b in page.get_text("blocks") if b[6] == 0]  # stream order
        sides = ["L" if b[2] < mid else "R" if b[0] > mid else "W" for b in blocks]
        order = "".join(side for side in sides if side != "W")  # W: full width
        if "L" not in order or (page.number < doc.page_count - 1 and "R" not in order):
            problems.append(f"page {page.number + 1}: expected two columns")
        if "RL" in order:
            problems.append(f"page {page.number + 1}: right-column text precedes left-column text")
    return problems


def _check_complete(path: Path, spec: PdfSpec) -> list[str]:
    """All text of the source must appear in the PDF, in order.

    Guards against MuPDF silently dropping content at a column break.
    """
    doc_html = markdown_to_html(CORPUS_DIR / spec.source, spec)
    source_html = doc_html.front_html + doc_html.body_html
    source_html = re.sub(r"</?(?:sub|sup|i|b|em|strong|code|a)\b[^>]*>", "", source_html)  # inline
    source_text = html.unescape(re.sub(r"<[^>]+>", " ", source_html))  # block boundaries
    pdf_text = "\n".join(page.get_text() for page in pymupdf.open(path))
    src_words, pdf_words = _words(source_text), _words(pdf_text)
    matcher = difflib.SequenceMatcher(a=src_words, b=pdf_words, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    missing = len(src_words) - matched
    log.info("  text completeness: %d of %d source words found in order", matched, len(src_words))
    return [f"{missing} source words missing from the PDF"] if missing > 0 else []


def _ocr_spot_check(doc: pymupdf.Document, spec: PdfSpec) -> list[str]:
    """OCR the first page of a scanned PDF and compare with the source text."""
    try:
        import pytesseract
    except ImportError:
        log.warning("  pytesseract not installed; skipping OCR spot check")
        return []
    page = doc[0]
    pix = page.get_pixmap(dpi=SCAN_DPI, colorspace=pymupdf.csGRAY)
    img = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    try:
        text = pytesseract.image_to_string(img, lang="eng")
    except pytesseract.TesseractNotFoundError:
        log.warning("  tesseract binary not found; skipping OCR spot check")
        return []
    # Reference: the text layer of the (unscanned) rendering of the same page.
    reference = pymupdf.open("pdf", render_pdf(markdown_to_html(CORPUS_DIR / spec.source, spec), spec))
    ref_words = _words(reference[0].get_text())
    ocr_words = _words(text)
    ratio = difflib.SequenceMatcher(a=ref_words, b=ocr_words, autojunk=False).ratio()
    log.info("  OCR spot check (page 1): word similarity %.3f", ratio)
    log.info("  OCR excerpt: %r", " ".join(text.split())[:300])
    return [] if ratio >= 0.9 else [f"OCR word similarity only {ratio:.3f}"]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _display(path: Path) -> Path:
    """Path relative to the repository root where possible, for log messages."""
    path = path.resolve()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_PDF_DIR, help="output folder (default: %(default)s)"
    )
    parser.add_argument("--verify", action="store_true", help="sanity-check the generated PDFs")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any PDF is missing or stale"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.verbose:  # only our own logger; markdown-it is very chatty at DEBUG
        log.setLevel(logging.DEBUG)

    out_dir: Path = args.out_dir
    if not args.check:
        out_dir.mkdir(parents=True, exist_ok=True)
    stale = 0
    for spec in PDF_SPECS:
        target = out_dir / spec.output
        data = build_pdf(spec)
        current = target.read_bytes() if target.exists() else None
        if current == data:
            log.info("unchanged  %s (%d bytes)", _display(target), len(data))
            continue
        stale += 1
        if args.check:
            log.error("stale      %s", _display(target))
        else:
            target.write_bytes(data)
            log.info("wrote      %s (%d bytes)", _display(target), len(data))

    expected = {spec.output for spec in PDF_SPECS}
    for extra in sorted(out_dir.glob("*.pdf")) if out_dir.exists() else []:
        if extra.name not in expected:
            log.warning("unexpected PDF not produced by this script: %s", extra)

    if args.check:
        return 1 if stale else 0

    if args.verify:
        log.info("verifying %s", out_dir)
        failures = 0
        for spec in PDF_SPECS:
            problems = verify_pdf(out_dir / spec.output, spec)
            for problem in problems:
                log.error("  %s: %s", spec.output, problem)
            failures += len(problems)
        if failures:
            log.error("%d problem(s) found", failures)
            return 1
        log.info("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

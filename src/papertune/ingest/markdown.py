"""Markdown blogs and docs -> clean paragraphs with their section.

The text is parsed with markdown-it (CommonMark plus tables, front matter and dollar math) rather than
stripped with regular expressions, so code blocks, tables and math are whole tokens that are either
kept as text or dropped, never half-mangled. Site-generator syntax that is not Markdown (Jekyll/Liquid
``{% ... %}`` and ``{{ ... }}``, kramdown ``{: ...}`` attribute lists) is removed before parsing.
Text inside HTML blocks is Markdown again once the tags are gone, and is read as such. Files that are
not UTF-8 are decoded with charset detection (charset-normalizer).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from charset_normalizer import from_bytes
from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.front_matter import front_matter_plugin

from papertune.config import IngestConfig
from papertune.errors import DocumentError
from papertune.ingest.clean import (clean_paragraph, is_cite_this, is_references_heading, normalize_unicode,
                                    squash_whitespace)
from papertune.ingest.document import Paragraph, ReadDocument

_LIQUID_BLOCK = re.compile(r"\{%-?\s*(raw|comment)\s*-?%\}.*?\{%-?\s*end\1\s*-?%\}", re.DOTALL)
_LIQUID_TAG = re.compile(r"\{%.*?%\}", re.DOTALL)
_LIQUID_OUTPUT = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_KRAMDOWN_IAL = re.compile(r"\{:[^}\n]*\}")
_HTML_TAG = re.compile(r"<[^>]+>")
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)  # unclosed, it hides the rest of its block
# Elements whose text is not prose: footnote marks, scripts, styles.
_HIDDEN_ELEMENT = re.compile(r"<(sup|script|style)\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_HIDDEN_OPEN = re.compile(r"<(sup|script|style)\b")
_HIDDEN_CLOSE = re.compile(r"</(sup|script|style)\s*>")


def _parser() -> MarkdownIt:
    return (
        MarkdownIt("commonmark", {"html": True})
        .enable("table")
        .enable("strikethrough")
        .use(front_matter_plugin)
        .use(dollarmath_plugin, allow_labels=True, allow_space=True, double_inline=True)
    )


_MD = _parser()


# Among encodings that read a file equally cleanly, the Western European one: Windows-1252, which is also
# what browsers take "latin-1" to mean. (On short texts, charset detection's language guess is noise.)
_TIE_BREAK_ENCODING = "cp1252"


def decode_markdown(data: bytes, source: str) -> tuple[str, str]:
    """Bytes -> (text, encoding): UTF-8, else the encoding that charset detection (charset-normalizer) finds.

    Refuses binaries, and files whose encoding is unsure: no encoding reads them cleanly, or two read
    them into different text equally well; the message says what to do.
    """
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{source}: looks like a binary file, not Markdown text (it contains NUL bytes)")
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
    matches = from_bytes(data)
    best = matches.best()
    advice = f"convert it to UTF-8, e.g. iconv -f ENCODING -t utf-8 {source} -o fixed.md"
    if best is None:
        raise DocumentError(f"{source}: not valid UTF-8 ({where}) and no known text encoding reads it cleanly; {advice}")
    cleanest = [m for m in matches if m.chaos == best.chaos]
    western = next((m for m in cleanest if _TIE_BREAK_ENCODING in m.could_be_from_charset), None)
    if western is not None:
        return str(western), _TIE_BREAK_ENCODING
    rivals = [m for m in cleanest if m.coherence == best.coherence and str(m) != str(best)]
    if rivals:
        names = ", ".join([best.encoding, *(m.encoding for m in rivals)])
        raise DocumentError(
            f"{source}: not valid UTF-8 ({where}), and its encoding is unsure: {names} read it equally well "
            f"into different text; {advice}"
        )
    return str(best), best.encoding


def _strip_site_syntax(text: str) -> str:
    text = _LIQUID_BLOCK.sub("", text)
    text = _LIQUID_TAG.sub("", text)
    text = _LIQUID_OUTPUT.sub("", text)
    return _KRAMDOWN_IAL.sub("", text)


def _inline_text(token: Token, cfg: IngestConfig) -> str:
    """Plain text of an inline token: link text kept, link targets, images and HTML dropped."""
    parts: list[str] = []
    hidden = 0  # inside <sup>...</sup> (footnote marks) or similar, text is dropped
    for child in token.children or []:
        kind = child.type
        if kind == "html_inline":
            tag = child.content.lower()
            if _HIDDEN_OPEN.match(tag):
                hidden += 1
            elif _HIDDEN_CLOSE.match(tag):
                hidden = max(0, hidden - 1)
            elif tag.startswith("<br"):
                parts.append(" ")
            continue
        if hidden:
            continue
        if kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif kind == "math_inline" or kind == "math_inline_double":
            if cfg.math == "keep":
                parts.append(f"${child.content}$")
        elif kind == "image":
            continue  # alt text describes a picture the model never sees
    return "".join(parts)


def _html_block_markdown(content: str) -> str:
    """An HTML block without its tags, comments, scripts and footnote marks: the Markdown inside it.

    A "<" left over (a tag never closed) is escaped, so the result never parses as HTML again.
    """
    text = _HTML_COMMENT.sub("", content)
    text = _HIDDEN_ELEMENT.sub("", text)
    return _HTML_TAG.sub("", text).replace("<", "&lt;")


def _without_html_blocks(tokens: list[Token]) -> list[Token]:
    """Replace each HTML block by the Markdown inside it, parsed ("<a name='qa' />" then a paragraph)."""
    out: list[Token] = []
    for tok in tokens:
        if tok.type != "html_block":
            out.append(tok)
            continue
        out.extend(_MD.parse(_html_block_markdown(tok.content)))
    return out


def read_markdown(path: Path, source: str, cfg: IngestConfig) -> ReadDocument:
    raw, encoding = decode_markdown(path.read_bytes(), source)
    tokens = _without_html_blocks(_MD.parse(_strip_site_syntax(raw)))

    title: str | None = None
    front = next((t for t in tokens if t.type == "front_matter"), None)
    if front is not None:
        try:
            meta = yaml.safe_load(front.content) or {}
        except yaml.YAMLError:
            meta = {}
        if isinstance(meta, dict) and meta.get("title"):
            title = squash_whitespace(normalize_unicode(str(meta["title"])))

    paragraphs: list[Paragraph] = []
    headings: dict[int, str] = {}  # level -> text, the current heading path
    title_level: int | None = None

    def section() -> str | None:
        path = [headings[level] for level in sorted(headings) if level != title_level]
        return " > ".join(path) or None

    def emit(text: str, *, clean: bool = True) -> None:
        text = clean_paragraph(text, citations=cfg.citations) if clean else text.strip()
        if text:
            paragraphs.append(Paragraph(text=text, section=section()))

    citing = False  # inside a "how to cite this" block
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open":
            level = int(tok.tag[1])
            text = squash_whitespace(normalize_unicode(_inline_text(tokens[i + 1], cfg)))
            if cfg.drop_references and is_references_heading(text):
                break  # the reference list and everything after it
            citing = cfg.drop_references and is_cite_this(text)  # "how to cite this" up to the next heading
            if level == 1 and title is None and not paragraphs:
                title, title_level = text, 1
            elif level == 1 and title is not None and text == title and not paragraphs:
                title_level = 1
            for deeper in [lvl for lvl in headings if lvl >= level]:
                del headings[deeper]
            if level != title_level:
                headings[level] = text
            i += 3
            continue
        if citing:  # its lines, quotes and code are left out
            i += 1
            continue
        if tok.type == "inline":
            text = _inline_text(tok, cfg)
            citing = cfg.drop_references and is_cite_this(squash_whitespace(text))
            if not citing:
                emit(text)
        elif tok.type in ("fence", "code_block"):
            if cfg.code == "keep" and tok.content.strip():
                # Code keeps its lines: it is one paragraph of its own, not prose to re-flow.
                paragraphs.append(Paragraph(text=tok.content.rstrip(), section=section()))
        elif tok.type in ("math_block", "math_block_label"):
            if cfg.math == "keep":
                emit(f"$${tok.content.strip()}$$", clean=False)
        elif tok.type == "table_open":
            i = _read_table(tokens, i, cfg, emit)
            continue
        i += 1
    warnings = [] if encoding == "utf-8" else [f"not UTF-8: decoded as {encoding}"]
    return ReadDocument(title=title or path.stem, paragraphs=paragraphs, encoding=encoding, warnings=warnings)


def _read_table(tokens: list[Token], i: int, cfg: IngestConfig, emit) -> int:
    """Consume a table; when kept, each body row becomes "Header: value; Header: value."."""
    header: list[str] = []
    rows: list[list[str]] = []
    row: list[str] = []
    in_head = False
    while tokens[i].type != "table_close":
        tok = tokens[i]
        if tok.type == "thead_open":
            in_head = True
        elif tok.type == "thead_close":
            in_head = False
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline":
            row.append(squash_whitespace(_inline_text(tok, cfg)))
        elif tok.type == "tr_close":
            if in_head:
                header = row
            else:
                rows.append(row)
        i += 1
    if cfg.tables == "keep":
        for cells in rows:
            pairs = [f"{h}: {c}" if h else c for h, c in zip(header or [""] * len(cells), cells) if c]
            if pairs:
                emit("; ".join(pairs) + ".")
    return i + 1

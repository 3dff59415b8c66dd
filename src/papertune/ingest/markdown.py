"""Markdown blogs and docs -> clean paragraphs with their section.

The text is parsed with markdown-it (CommonMark plus tables, front matter and dollar math) rather than
stripped with regular expressions, so code blocks, tables and math are whole tokens that are either
kept as text or dropped, never half-mangled. Site-generator syntax that is not Markdown (Jekyll/Liquid
``{% ... %}`` and ``{{ ... }}``, kramdown ``{: ...}`` attribute lists) is removed before parsing.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.front_matter import front_matter_plugin

from papertune.config import IngestConfig
from papertune.errors import DocumentError
from papertune.ingest.clean import clean_paragraph, is_references_heading, normalize_unicode, squash_whitespace
from papertune.ingest.document import Paragraph, ReadDocument

_LIQUID_BLOCK = re.compile(r"\{%-?\s*(raw|comment)\s*-?%\}.*?\{%-?\s*end\1\s*-?%\}", re.DOTALL)
_LIQUID_TAG = re.compile(r"\{%.*?%\}", re.DOTALL)
_LIQUID_OUTPUT = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_KRAMDOWN_IAL = re.compile(r"\{:[^}\n]*\}")
_HTML_TAG = re.compile(r"<[^>]+>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
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


def decode_markdown(data: bytes, source: str) -> str:
    """Bytes -> text, refusing binaries and non-UTF-8 files with a message that says what to do."""
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{source}: looks like a binary file, not Markdown text (it contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{source}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"convert it, e.g. iconv -f latin1 -t utf-8 {source} -o fixed.md"
        ) from exc


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


def _html_block_text(content: str) -> str:
    text = _HTML_COMMENT.sub("", content)
    text = _HTML_TAG.sub(" ", text)
    return html.unescape(text)


def read_markdown(path: Path, source: str, cfg: IngestConfig) -> ReadDocument:
    raw = decode_markdown(path.read_bytes(), source)
    tokens = _MD.parse(_strip_site_syntax(raw))

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

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open":
            level = int(tok.tag[1])
            text = squash_whitespace(normalize_unicode(_inline_text(tokens[i + 1], cfg)))
            if cfg.drop_references and is_references_heading(text):
                break  # the reference list and everything after it
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
        if tok.type == "inline":
            emit(_inline_text(tok, cfg))
        elif tok.type in ("fence", "code_block"):
            if cfg.code == "keep" and tok.content.strip():
                # Code keeps its lines: it is one paragraph of its own, not prose to re-flow.
                paragraphs.append(Paragraph(text=tok.content.rstrip(), section=section()))
        elif tok.type in ("math_block", "math_block_label"):
            if cfg.math == "keep":
                emit(f"$${tok.content.strip()}$$", clean=False)
        elif tok.type == "html_block":
            emit(_html_block_text(tok.content))
        elif tok.type == "table_open":
            i = _read_table(tokens, i, cfg, emit)
            continue
        i += 1
    return ReadDocument(title=title or path.stem, paragraphs=paragraphs)


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

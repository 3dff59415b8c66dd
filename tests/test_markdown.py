from __future__ import annotations

import random
from pathlib import Path

import pytest

from papertune.config import IngestConfig
from papertune.errors import DocumentError
from papertune.ingest.markdown import read_markdown

DOC = """---
title: "Notes on LoRA"
tags: [peft]
---

# Notes on LoRA

{% include figure.html src="lora.png" %}

Intro text about adapters [3] with a [link](https://example.org/lora) and ![a figure](fig.png) inline.
It continues on a second line<sup>1</sup> with <b>bold html</b>.{: .lead}

<!-- a hidden comment that must not appear -->

## Method

LoRA writes the update as $BA$ with rank $r$ (Hu et al., 2021).

$$
h = W_0 x + BAx
$$

```python
model = get_peft_model(base, config)
```

| Method | Memory |
|--------|--------|
| LoRA   | 16 GB  |
| QLoRA  | 6 GB   |

<div class="note">A note inside an HTML block, served from {{ site.baseurl }}.</div>

### Rank choice

Small ranks such as 8 work well.

## References

[1] Hu et al. LoRA. 2021.
"""


def read(tmp_path: Path, text: str = DOC, name: str = "doc.md", **cfg) -> tuple[str, list]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    doc = read_markdown(path, name, IngestConfig(**cfg))
    return doc.title, doc.paragraphs


def all_text(paragraphs) -> str:
    return "\n".join(p.text for p in paragraphs)


def test_artifacts_removed_and_text_kept(tmp_path: Path):
    title, paragraphs = read(tmp_path)
    text = all_text(paragraphs)
    assert title == "Notes on LoRA"
    assert paragraphs[0].text == (
        "Intro text about adapters with a link and inline. It continues on a second line with bold html."
    )
    for artifact in ["{%", "%}", "{{", "{:", "https://", "fig.png", "hidden comment", "<", "tags:", "[3]", "Hu et al."]:
        assert artifact not in text, artifact
    assert "A note inside an HTML block, served from." in text


def test_headings_become_sections_and_title_is_not_a_section(tmp_path: Path):
    _, paragraphs = read(tmp_path)
    sections = [p.section for p in paragraphs]
    assert sections[0] is None
    assert "Method" in sections
    assert sections[-1] == "Method > Rank choice"
    assert paragraphs[-1].text == "Small ranks such as 8 work well."
    assert all(p.page_start is None for p in paragraphs)


def test_references_section_dropped_by_default(tmp_path: Path):
    _, paragraphs = read(tmp_path)
    assert "Hu et al. LoRA" not in all_text(paragraphs)
    _, kept = read(tmp_path, drop_references=False)
    assert "Hu et al. LoRA. 2021." in all_text(kept)


CITE_THIS = """# Sparse experts

Each token is routed to two experts.

---
Cited as:

> Doe, Jane. (May 2024). Sparse experts. Blog. https://example.org/moe/.

Or

```
@article{doe2024moe, title = "Sparse experts", author = "Doe, Jane", year = "2024"}
```

## Further reading

A survey of routing follows.

## How to cite this post

Doe, Jane. Sparse experts. 2024.

## Appendix

The router is a linear layer.
"""


def test_a_how_to_cite_block_is_dropped_up_to_the_next_heading(tmp_path: Path):
    _, paragraphs = read(tmp_path, CITE_THIS, code="keep")
    assert [p.text for p in paragraphs] == ["Each token is routed to two experts.", "A survey of routing follows.",
                                            "The router is a linear layer."]
    _, kept = read(tmp_path, CITE_THIS, drop_references=False)
    assert "Cited as:" in all_text(kept) and "Doe, Jane. Sparse experts. 2024." in all_text(kept)


def test_code_tables_math_by_config(tmp_path: Path):
    _, default = read(tmp_path)
    text = all_text(default)
    assert "get_peft_model" not in text  # code dropped by default
    assert "Method: LoRA; Memory: 16 GB." in text and "Method: QLoRA; Memory: 6 GB." in text
    assert "$BA$" in text and "$$h = W_0 x + BAx$$" in text

    _, other = read(tmp_path, code="keep", tables="drop", math="drop")
    text = all_text(other)
    assert "model = get_peft_model(base, config)" in text
    assert "16 GB" not in text
    assert "$" not in text and "LoRA writes the update as with rank" in text


def test_title_falls_back_to_h1_then_file_name(tmp_path: Path):
    title, paragraphs = read(tmp_path, "# Big Title\n\nBody.\n\n## Part\n\nMore.\n")
    assert title == "Big Title"
    assert [p.section for p in paragraphs] == [None, "Part"]
    title, _ = read(tmp_path, "Just text.\n", name="plain-note.md")
    assert title == "plain-note"


def test_latin1_markdown_is_decoded_and_its_encoding_reported(tmp_path: Path):
    path = tmp_path / "latin.md"
    path.write_bytes("# Caf\xe9 notes\n\nThe model was trained in Z\xfcrich on a na\xefve baseline.\n".encode("latin-1"))
    doc = read_markdown(path, "latin.md", IngestConfig())
    assert doc.title == "Caf\xe9 notes"
    assert doc.paragraphs[0].text == "The model was trained in Z\xfcrich on a na\xefve baseline."
    assert doc.encoding == "cp1252" and doc.warnings == ["not UTF-8: decoded as cp1252"]


def test_utf8_markdown_reports_utf8_without_a_warning(tmp_path: Path):
    path = tmp_path / "u.md"
    path.write_text("Caf\xe9 au lait.\n", encoding="utf-8")
    doc = read_markdown(path, "u.md", IngestConfig())
    assert doc.encoding == "utf-8" and doc.warnings == []


def test_markdown_of_unsure_encoding_is_refused_with_advice(tmp_path: Path):
    path = tmp_path / "noise.md"
    path.write_bytes(bytes(b or 1 for b in random.Random(0).randbytes(400)))  # no NUL: not "binary"
    with pytest.raises(DocumentError, match=r"noise.md: not valid UTF-8 \(byte 0x.. at offset \d+\) and no known "
                                            r"text encoding reads it cleanly; convert it to UTF-8, e.g. iconv"):
        read_markdown(path, "noise.md", IngestConfig())


def test_markdown_inside_html_blocks_is_cleaned_like_the_rest(tmp_path: Path):
    text = (
        "# Post\n\n"
        "<a name='qa' />\n"
        "We evaluate on [SQuAD](https://rajpurkar.github.io/SQuAD-explorer/) with **exact match**.\n\n"
        "<div class=\"note\">\n"
        "A note citing [the paper](https://arxiv.org/abs/1606.05250) &amp; more.<sup>2</sup>\n"
        "<script>var tracking = 1;</script>\n"
        "</div>\n\n"
        "<div\nwith a [broken](https://example.org) tag.\n\n"
        "<!-- never closed, hides the rest\n\nNot shown.\n"
    )
    _, paragraphs = read(tmp_path, text)
    assert [p.text for p in paragraphs] == [
        "We evaluate on SQuAD with exact match.",
        "A note citing the paper & more.",
        "<div with a broken tag.",
    ]


def test_binary_file_named_md_is_refused(tmp_path: Path):
    path = tmp_path / "blob.md"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DocumentError, match="blob.md: looks like a binary file"):
        read_markdown(path, "blob.md", IngestConfig())


def test_utf8_bom_is_accepted(tmp_path: Path):
    path = tmp_path / "bom.md"
    path.write_bytes("\ufeff# T\n\nHello there.\n".encode("utf-8"))
    doc = read_markdown(path, "bom.md", IngestConfig())
    assert doc.title == "T" and doc.paragraphs[0].text == "Hello there."


def test_markdown_read_equally_well_by_several_encodings_is_refused(tmp_path: Path):
    path = tmp_path / "tiny.md"
    path.write_bytes("Привет".encode("cp1251"))  # six bytes: many East Asian encodings read them as well
    with pytest.raises(DocumentError, match=r"tiny.md: not valid UTF-8 \(byte 0xcf at offset 0\), and its encoding is "
                                            r"unsure: .* read it equally well into different text; convert it"):
        read_markdown(path, "tiny.md", IngestConfig())

from __future__ import annotations

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


def test_non_utf8_markdown_is_refused_with_advice(tmp_path: Path):
    path = tmp_path / "latin.md"
    path.write_bytes("Caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin.md: not valid UTF-8 \(byte 0xe9 at offset 3\).*iconv"):
        read_markdown(path, "latin.md", IngestConfig())


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

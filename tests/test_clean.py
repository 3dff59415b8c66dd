from __future__ import annotations

import pytest

from papertune.ingest.clean import (
    clean_paragraph,
    document_vocabulary,
    drop_citations,
    fix_diacritics,
    is_references_heading,
    join_hyphenated,
    normalize_unicode,
    printable_ratio,
)


@pytest.mark.parametrize(
    ("broken", "fixed"),
    [
        ("Montr\u00b4eal", "Montréal"),
        ("G\u00a8odel", "Gödel"),
        ("Universit\u00e0", "Università"),
        ("Universit`a di Pisa", "Università di Pisa"),
        ("na\u00a8\u0131ve", "naïve"),
    ],
)
def test_broken_diacritics_are_recombined(broken: str, fixed: str):
    assert normalize_unicode(broken) == fixed


def test_diacritic_repair_leaves_code_backticks_alone():
    assert fix_diacritics("run `pip install` now") == "run `pip install` now"


def test_ligatures_and_invisible_characters():
    assert normalize_unicode("e\ufb03cient \ufb01ne-tuning") == "efficient fine-tuning"
    assert normalize_unicode("soft\u00adhyphen zero\u200bwidth") == "softhyphen zerowidth"


def test_footnote_marks_removed_but_exponents_kept():
    assert normalize_unicode("the model\u00b9 was trained\u2020, then 10\u00b2 steps") == "the model was trained, then 10^2 steps"


def test_hyphenated_line_breaks_are_joined():
    assert join_hyphenated("trans-\nformer and state-\nof-the-art") == "transformer and state-of-the-art"
    assert join_hyphenated("GPT-\n4 stays") == "GPT-\n4 stays"  # next line is not a lower-case word


@pytest.mark.parametrize(
    ("split", "mended"),
    [
        # Words split at a line end in real papers, none of them used elsewhere in the paragraph.
        ("lay-\ners", "layers"), ("accu-\nracy", "accuracy"), ("overcapac-\nity", "overcapacity"),
        ("pro-\ngressively", "progressively"), ("per-\nformance", "performance"), ("compres-\nsion", "compression"),
        ("in-\ntroducing", "introducing"), ("sys-\ntems", "systems"), ("en-\ntities", "entities"),
        ("an-\nother", "another"), ("token-\nizer", "tokenizer"),
        # Real compounds keep their hyphen; a suspended hyphen keeps its space too.
        ("held-\nout", "held-out"), ("fine-\ntuning", "fine-tuning"), ("encoder-\ndecoder", "encoder-decoder"),
        ("global-\nand local-level", "global- and local-level"), ("3-\nlayer", "3-layer"),
    ],
)
def test_line_end_hyphens_told_apart_with_word_frequencies(split: str, mended: str):
    assert join_hyphenated(split) == mended


def test_the_documents_own_words_come_before_word_frequencies():
    # "fine-tuning" is a compound in English at large, but this document writes "finetuning".
    assert join_hyphenated("fine-\ntuning", {"finetuning"}) == "finetuning"
    assert join_hyphenated("lay-\ners", {"lay-ers"}) == "lay-ers"
    assert document_vocabulary(["The lay-\ners of a fine-tuning run", "LAYERS"]) >= {"layers", "fine-tuning", "fine"}
    assert "lay" not in document_vocabulary(["The lay-\ners"])  # a split word does not vouch for its halves


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LoRA [12] works.", "LoRA works."),
        ("as shown [1, 4] and [2-5] or [7\u20139].", "as shown and or."),
        ("LoRA (Hu et al., 2021) works.", "LoRA works."),
        ("(Smith and Jones, 2020; Lee, 2019a) agree.", " agree."),
        ("values in [0, 1] stay", "values in [0, 1] stay"),
        ("Hu et al. (2021) proposed it", "Hu et al. (2021) proposed it"),
        ("we use (see Vaswani et al., 2017) attention", "we use attention"),
    ],
)
def test_citation_markers_dropped(text: str, expected: str):
    assert drop_citations(text) == expected


def test_citations_kept_when_configured():
    text = "LoRA [12] (Hu et al., 2021) works."
    assert clean_paragraph(text, citations="keep") == text
    assert clean_paragraph(text, citations="drop") == "LoRA works."


def test_whitespace_normalised():
    assert clean_paragraph("  a   b\n\tc ,  d  .") == "a b c, d."


@pytest.mark.parametrize("heading", ["References", "REFERENCES", "7 References", "Bibliography", "VI. References"])
def test_references_headings(heading: str):
    assert is_references_heading(heading)


@pytest.mark.parametrize("heading", ["Referenced work", "On references in papers", "3 Method"])
def test_not_references_headings(heading: str):
    assert not is_references_heading(heading)


def test_printable_ratio_flags_garbage_text_layers():
    assert printable_ratio("Attention is all you need.") == 1.0
    assert printable_ratio("\ufffd\ufffd\ufffd\ue000\ue001 ab") < 0.5
    assert printable_ratio("") == 0.0

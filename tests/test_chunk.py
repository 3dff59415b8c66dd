from __future__ import annotations

import pytest

from papertune.errors import ConfigError
from papertune.ingest.chunk import Sentence, chunk_sentences, get_token_counter, sentences_of, text_hash
from papertune.ingest.document import Paragraph

COUNT = get_token_counter("qwen2.5")


def sents(texts: list[str], section: str | None = "S", page: int | None = 1) -> list[Sentence]:
    return [Sentence(t, section, page, page, False) for t in texts]


def test_qwen_tokenizer_is_the_real_one():
    # Known Qwen2.5 ids: "Hello world" -> [9707, 1879]; the count is what matters here.
    assert COUNT(["Hello world", " attention"]) == [2, 1]
    assert COUNT(["LoRA fine-tuning with 4-bit NF4"])[0] > 5


def test_chunks_respect_budget_and_counts_are_exact():
    texts = [f"Sentence number {i} talks about low-rank adapters and quantized weights." for i in range(40)]
    chunks = chunk_sentences(sents(texts), COUNT, budget=64)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.n_tokens <= 64
        # Per-sentence counts (with the joining space) add up to the chunk's real count, +-1 for its start.
        assert abs(COUNT([chunk.text])[0] - chunk.n_tokens) <= 1
    assert " ".join(c.text for c in chunks) == " ".join(texts)  # nothing lost, nothing repeated


def test_overlap_repeats_last_sentences():
    texts = [f"Fact {i} is stated here in a sentence of moderate length." for i in range(12)]
    chunks = chunk_sentences(sents(texts), COUNT, budget=50, overlap=1)
    for prev, nxt in zip(chunks, chunks[1:]):
        last = prev.text.split(". ")[-1]
        assert nxt.text.startswith(last.rstrip("."))


def test_chunks_never_straddle_sections_and_keep_pages():
    s = sents(["Alpha one is here.", "Alpha two is here."], "A", 1) + sents(["Beta is on page two."], "B", 2)
    chunks = chunk_sentences(s, COUNT, budget=500)
    assert [(c.section, c.page_start, c.page_end) for c in chunks] == [("A", 1, 1), ("B", 2, 2)]


def test_long_sentence_is_split_between_words():
    long = " ".join(f"word{i}" for i in range(300)) + "."
    chunks = chunk_sentences(sents([long]), COUNT, budget=64)
    assert len(chunks) > 2
    assert all(c.n_tokens <= 64 for c in chunks)
    assert " ".join(c.text for c in chunks) == long


def test_tiny_chunk_merged_into_previous():
    s = sents(["A reasonably long sentence about attention heads and their keys."], "A") + sents(["Short."], "B")
    chunks = chunk_sentences(s, COUNT, budget=200, min_tokens=5)
    assert len(chunks) == 1 and chunks[0].text.endswith("Short.")


def test_sentences_of_maps_pages_through_page_breaks():
    text = "First sentence on page one. Second sentence on page two."
    para = Paragraph(text, "S", 1, 2, page_breaks=[(text.index("Second"), 2)])
    out = sentences_of([para], "nupunkt")
    assert [(s.text, s.page_start, s.page_end) for s in out] == [
        ("First sentence on page one.", 1, 1),
        ("Second sentence on page two.", 2, 2),
    ]


def test_text_hash_ignores_case_and_spacing():
    assert text_hash("Attention  is\nall") == text_hash("attention is all")
    assert text_hash("a") != text_hash("b")


def test_local_tokenizer_folder(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    count = get_token_counter(str(tmp_path))
    assert count(["hello world", "hello"]) == [2, 1]


def test_unloadable_tokenizer_names_the_setting():
    with pytest.raises(ConfigError, match="ingest.tokenizer='/no/such/tokenizer' could not be loaded"):
        get_token_counter("/no/such/tokenizer")

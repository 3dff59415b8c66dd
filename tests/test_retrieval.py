"""Retrieval over ``RUN/chunks.jsonl``: BM25, embeddings, and both fused by reciprocal rank."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers import CHUNKS, bag_of_words, write_chunks
from papertune.chat import strip_citations
from papertune.config import RetrievalConfig, load_config
from papertune.errors import InputError
from papertune.index import ChunkIndex, text_windows
from papertune.retrieval import Passage, Retriever, lexical_text

# A stand-in for a sentence embedder that knows synonyms: words of one concept share a dimension, so a
# paraphrase with no word in common with its chunk still lands on it.
CONCEPTS = {
    "routing": {"routes", "route", "dispatches", "dispatch", "gating", "sends"},
    "experts": {"experts", "expert", "specialists", "specialist"},
    "lowrank": {"low", "rank", "adaptation", "adapters", "small"},
    "weights": {"weights", "parameters", "matrices"},
    "datatype": {"data", "type", "format", "normalfloat4"},
}


def concept_embedder(texts, spec, setting="retrieval.embedding_model"):
    out = np.zeros((len(texts), len(CONCEPTS) + 1), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            for dim, words in enumerate(CONCEPTS.values()):
                out[row, dim] += word in words
        out[row, -1] = 0.01  # no text is the zero vector
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def embedded(monkeypatch):
    """Counts the texts embedded (chunks and queries) with :func:`concept_embedder`."""
    calls = []

    def embed(texts, spec, setting="retrieval.embedding_model"):
        calls.append((spec, len(texts)))
        return concept_embedder(texts, spec, setting)

    monkeypatch.setattr("papertune.index.embed_texts", embed)
    return calls


def retriever(tmp_path, method="hybrid", chunks=CHUNKS, **settings):
    run = tmp_path / "run"
    write_chunks(run, chunks)
    return Retriever.for_run(run, RetrievalConfig(method=method, embedding_model="concepts", **settings))


def ids(passages: list[Passage]) -> list[str]:
    return [p.chunk_id for p in passages]


def test_bm25_finds_the_lexical_match_and_ranks_only_chunks_sharing_a_word(tmp_path, embedded):
    found = retriever(tmp_path, "bm25").search("What is the GLUE result of RoBERTa?", k=4)
    assert ids(found) == ["lora.pdf#0001"]  # the only chunk with a word of the question
    assert embedded == []  # method bm25 loads no embedding model
    # Stemming: "routed" and "experts" find "routes" and "experts".
    assert ids(retriever(tmp_path, "bm25").search("tokens routed to an expert", k=1)) == ["moe.pdf#0002"]


def test_embeddings_find_the_paraphrase_bm25_misses(tmp_path, embedded):
    question = "Which component dispatches each word to specialists?"
    assert retriever(tmp_path, "bm25").search(question) == []  # no word in common with any chunk
    assert ids(retriever(tmp_path, "embedding").search(question, k=1)) == ["moe.pdf#0002"]
    assert ids(retriever(tmp_path, "hybrid").search(question, k=1)) == ["moe.pdf#0002"]


def test_hybrid_fuses_by_reciprocal_rank(tmp_path, embedded):
    cfg = {"rrf_k": 60}
    # Top in both rankers: first, with the fused score of rank 1 twice.
    top = retriever(tmp_path, **cfg).search("low-rank adaptation trains small matrices", k=4)
    assert top[0].chunk_id == "lora.pdf#0000" and top[0].score == pytest.approx(2 / 61)
    assert [p.n for p in top] == [1, 2, 3, 4] and len({p.chunk_id for p in top}) == 4  # numbered from 1
    assert all(a.score >= b.score for a, b in zip(top, top[1:]))
    # Rankers that disagree: BM25 alone prefers the chunk with the rare word, embeddings alone the paraphrase;
    # fused, a chunk ranked by both beats one ranked by a single ranker.
    question = "NormalFloat4 dispatches specialists"
    assert ids(retriever(tmp_path, "bm25").search(question)) == ["qlora.md#0000"]
    assert ids(retriever(tmp_path, "embedding").search(question, k=1)) == ["moe.pdf#0002"]
    fused = retriever(tmp_path).search(question, k=4)
    by_id = {p.chunk_id: p.score for p in fused}
    assert by_id["qlora.md#0000"] > by_id["lora.pdf#0001"]  # ranked by both beats ranked by embeddings only
    assert set(by_id) == {c["id"] for c in CHUNKS}


def test_excluded_documents_and_chunks_are_never_returned(tmp_path, embedded):
    run = tmp_path / "run"
    write_chunks(run)
    cfg = RetrievalConfig(embedding_model="concepts")
    question = "low-rank adaptation of the weights on GLUE"
    whole = Retriever.for_run(run, cfg, exclude_sources={"lora.pdf"})
    assert len(whole) == 2 and not any(p.chunk["source"] == "lora.pdf" for p in whole.search(question, k=4))
    full = Retriever.for_run(run, cfg)
    assert len(full) == 4
    per_query = full.search_many([question, question, question], k=4,
                                 exclude_ids=[{"lora.pdf#0000"}, set(), set()],
                                 exclude_sources=[set(), {"lora.pdf", "moe.pdf"}, set()])
    assert "lora.pdf#0000" not in ids(per_query[0]) and len(per_query[0]) == 3
    assert ids(per_query[1]) == ["qlora.md#0000"]
    assert len(per_query[2]) == 4 and per_query[2][0].chunk["source"] == "lora.pdf"
    assert [p.n for p in per_query[0]] == [1, 2, 3]  # numbered from 1 after the exclusions


def test_rank_many_orders_given_chunks_as_search_would(tmp_path, embedded):
    """RAFT's ``retrieval`` order: given chunks come back in the order search ranks them, whatever their
    given order; a chunk the retriever does not hold comes last."""
    r = retriever(tmp_path)
    question = "low-rank adaptation trains small matrices"
    searched = ids(r.search(question, k=4))
    given = list(reversed(searched))
    assert r.rank_many([question], [given]) == [searched]
    assert r.rank_many([question, question], [["elsewhere#1", searched[2], searched[0]], []]) == [
        [searched[0], searched[2], "elsewhere#1"], []]
    whole = Retriever.for_run(tmp_path / "run", RetrievalConfig(embedding_model="concepts"),
                              exclude_sources={c["source"] for c in CHUNKS})
    assert whole.rank_many([question], [["b", "a"]]) == [["b", "a"]]  # no chunks: the given order


@pytest.mark.parametrize("query", ["", "   ", "the of and is", "???"])
def test_empty_and_stopword_only_queries_do_not_crash(tmp_path, embedded, query):
    assert retriever(tmp_path, "bm25").search(query) == []
    hybrid = retriever(tmp_path).search(query, k=2)
    assert len(hybrid) == 2 and [p.n for p in hybrid] == [1, 2]  # the embeddings still rank every chunk


def test_no_chunks_left_gives_no_passages(tmp_path, embedded):
    run = tmp_path / "run"
    write_chunks(run)
    empty = Retriever.for_run(run, RetrievalConfig(embedding_model="concepts"),
                              exclude_sources={c["source"] for c in CHUNKS})
    assert len(empty) == 0 and empty.search("low-rank adaptation") == []
    assert empty.search_many([]) == []


def test_passage_label_and_json(tmp_path, embedded):
    passage = retriever(tmp_path).search("GLUE RoBERTa full fine-tuning", k=1)[0]
    assert passage.label() == "lora.pdf, page 7-8 [Results]"
    assert passage.to_json() == {"n": 1, "chunk_id": "lora.pdf#0001", "source": "lora.pdf", "section": "Results",
                                 "page_start": 7, "page_end": 8, "score": round(passage.score, 6)}
    json.dumps(passage.to_json())  # numpy floats would not serialise


def test_top_k_is_the_default_k(tmp_path, embedded):
    assert len(retriever(tmp_path, top_k=2).search("low-rank weights")) == 2
    assert len(retriever(tmp_path, top_k=2).search("low-rank weights", k=3)) == 3


def test_the_index_is_reused_and_rebuilt_when_chunks_or_model_change(tmp_path, embedded):
    run = tmp_path / "run"
    write_chunks(run)
    cfg = RetrievalConfig(embedding_model="concepts")
    Retriever.for_run(run, cfg)
    assert embedded == [("concepts", 4)]
    assert json.loads((run / "index" / "meta.json").read_text())["embedding_model"] == "concepts"
    again = Retriever.for_run(run, cfg)
    assert not again.index.built and embedded == [("concepts", 4)]  # loaded from RUN/index, nothing embedded
    # chunks.jsonl changed: rebuilt, and the new chunk is found.
    extra = {"id": "moe.pdf#0003", "source": "moe.pdf", "section": "Routing", "page_start": 13, "page_end": 13,
             "text": "Switch routing sends each token to a single expert."}
    write_chunks(run, CHUNKS + [extra])
    grown = Retriever.for_run(run, cfg)
    assert grown.index.built and embedded[-1] == ("concepts", 5) and len(grown) == 5
    assert grown.search("switch single expert", k=1)[0].chunk_id == "moe.pdf#0003"
    # Another embedding model: rebuilt with it.
    other = Retriever.for_run(run, RetrievalConfig(embedding_model="other"))
    assert other.index.built and embedded[-1] == ("other", 5)


def test_bm25_needs_no_embedding_model(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("method bm25 embedded a text")

    monkeypatch.setattr("papertune.index.embed_texts", refuse)
    run = tmp_path / "run"
    write_chunks(run)
    found = Retriever.for_run(run, RetrievalConfig(method="bm25", embedding_model="")).search("NormalFloat4")
    assert ids(found) == ["qlora.md#0000"] and not (run / "index").exists()


def test_missing_chunks_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="run `papertune ingest"):
        Retriever.for_run(tmp_path / "nothing", RetrievalConfig(method="bm25"))


def test_retrieval_settings_are_checked():
    from papertune.errors import ConfigError

    with pytest.raises(ConfigError, match="retrieval.top_k"):
        load_config(None, ["retrieval.top_k=0"])
    with pytest.raises(ConfigError, match="retrieval.embedding_model is empty"):
        load_config(None, ["retrieval.embedding_model="])
    assert load_config(None, ["retrieval.embedding_model=", "retrieval.method=bm25"]).retrieval.method == "bm25"
    with pytest.raises(ConfigError, match="retrieval.window_words must be >= 0"):
        load_config(None, ["retrieval.window_words=-1"])


def test_text_windows_overlap_and_cover_the_text():
    words = [f"w{i}" for i in range(10)]
    assert text_windows(" ".join(words), 6) == [" ".join(words[0:6]), " ".join(words[4:10])]  # stride 4
    long = [f"w{i}" for i in range(25)]
    windows = text_windows(" ".join(long), 9)  # stride 6; the last window ends with the text
    assert [w.split()[0] for w in windows] == ["w0", "w6", "w12", "w16"] and windows[-1].endswith("w24")
    assert all(len(w.split()) == 9 for w in windows)
    assert text_windows("a  b\nc", 3) == ["a  b\nc"]  # no longer than a window: the text as it is
    assert text_windows(" ".join(long), 0) == [" ".join(long)]


def test_a_long_chunk_scores_as_its_best_window(tmp_path, embedded):
    """The words of a question at the end of a long chunk: the chunk's whole-text embedding is diluted by the
    rest (and a real model would not read that far); its last window is not."""
    filler = " ".join(["format"] * 60)  # the datatype concept, far from the question's
    chunks = [{"id": "long.md#0000", "source": "long.md",
               "text": filler + " the gating network routes tokens to experts"},
              {"id": "short.md#0000", "source": "short.md", "text": "weights and matrices routes"}]
    question = "Which network routes tokens to experts?"
    windowed = retriever(tmp_path, "embedding", chunks, window_words=8)
    assert windowed.index.embeddings.shape[0] == 12 and windowed.index.starts.tolist() == [0, 11]  # 67 words: 11
    assert ids(windowed.search(question, k=1)) == ["long.md#0000"]
    scores = windowed.index.scores(windowed.index.embed([question]))
    by_window = windowed.index.embeddings @ windowed.index.embed([question])[0]
    assert scores[0].tolist() == pytest.approx([by_window[:11].max(), by_window[11]])
    whole = retriever(tmp_path / "whole", "embedding", chunks, window_words=0)
    assert whole.index.embeddings.shape[0] == 2 and ids(whole.search(question, k=1)) == ["short.md#0000"]


def test_the_index_is_rebuilt_when_the_window_changes(tmp_path, embedded):
    run = tmp_path / "run"
    write_chunks(run)
    Retriever.for_run(run, RetrievalConfig(embedding_model="concepts", window_words=5))
    assert not Retriever.for_run(run, RetrievalConfig(embedding_model="concepts", window_words=5)).index.built
    rebuilt = Retriever.for_run(run, RetrievalConfig(embedding_model="concepts", window_words=0))
    assert rebuilt.index.built and rebuilt.index.embeddings.shape[0] == len(CHUNKS)


def test_bm25_reads_the_document_title_and_section(tmp_path, embedded):
    """A question naming the system finds its document's chunk whose text only says "the model"."""
    chunks = [{"id": "a.md#0003", "source": "a.md", "title": "Switch Transformers", "section": "Routing",
               "text": "The model sends each token to one expert."},
              {"id": "b.md#0001", "source": "b.md", "title": "Mixtral", "section": "Routing",
               "text": "The model sends each token to two experts."}]
    assert lexical_text(chunks[0]) == "Switch Transformers Routing\nThe model sends each token to one expert."
    assert lexical_text({"source": "c.pdf", "text": "x"}) == "c.pdf\nx"  # no title: the file name
    assert ids(retriever(tmp_path, "bm25", chunks).search("How does Switch Transformers route a token?", k=1)) == [
        "a.md#0003"]


def test_bag_of_words_index_is_loaded_not_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    run = tmp_path / "run"
    write_chunks(run)
    first = ChunkIndex.load_or_build(run, "bag-of-words")
    second = ChunkIndex.load_or_build(run, "bag-of-words")
    assert first.built and not second.built
    np.testing.assert_array_equal(first.embeddings, second.embeddings)


def test_a_query_scores_the_same_alone_as_in_a_batch(tmp_path):
    """ask embeds one question, evaluate a batch: BLAS sums a batch in another order, so near ties could fall
    either way; scoring each query on its own makes a question's ranking the same in both."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((300, 64)).astype(np.float32)
    starts = np.arange(0, 300, 3, dtype=np.int64)
    ids = [f"d.md#{i:04d}" for i in range(len(starts))]
    index = ChunkIndex(tmp_path, embeddings, starts, ids, {i: {"id": i, "text": ""} for i in ids}, "m", built=False)
    queries = rng.standard_normal((9, 64)).astype(np.float32)
    batch = index.scores(queries)
    assert batch.shape == (9, 100)
    for row, query in zip(batch, queries, strict=True):
        np.testing.assert_array_equal(index.scores(query[None, :])[0], row)  # bit for bit
    np.testing.assert_allclose(batch, np.maximum.reduceat(queries @ embeddings.T, starts, axis=1), atol=1e-5)
    assert index.scores(np.zeros((0, 64), dtype=np.float32)).shape == (0, 100)


@pytest.mark.slow
def test_hybrid_with_all_minilm_finds_the_chunk_a_question_comes_from(tmp_path):
    run = tmp_path / "run"
    write_chunks(run)
    found = Retriever.for_run(run, load_config().retrieval)
    assert found.index.built and found.index.embeddings.shape == (4, 384)
    for chunk in CHUNKS:
        question = "What does the paper say about " + " ".join(chunk["text"].split()[:7]) + "?"
        assert found.search(question, 3)[0].chunk_id == chunk["id"], question
    assert not Retriever.for_run(run, load_config().retrieval).index.built


def test_a_citation_is_moved_to_the_passage_that_holds_the_answer(tmp_path, embedded):
    found = retriever(tmp_path, "bm25")
    passages = found.search("low-rank adaptation GLUE RoBERTa NormalFloat4 weights", k=4)
    numbers = {p.chunk_id: p.n for p in passages}
    lora, glue, nf4 = numbers["lora.pdf#0000"], numbers["lora.pdf#0001"], numbers["qlora.md#0000"]
    answer = f"It freezes the pretrained weights and trains two small matrices per layer [{glue}]."
    assert found.check_citations(answer, passages) == answer.replace(f"[{glue}]", f"[{lora}]")
    # A citation of a passage holding (nearly) as much of the answer stands; so does a citation while no
    # passage holds any of the answer's words. An answer citing nothing cites the passage that holds most of
    # it, unless no passage holds any of its words.
    right = f"NormalFloat4 is an information-theoretically optimal data type [{nf4}]."
    assert found.check_citations(right, passages) == right
    assert found.check_citations(strip_citations(right), passages) == right
    uncited = "It freezes the pretrained weights"
    assert found.check_citations(uncited, passages) == f"{uncited} [{lora}]"
    assert found.check_citations(f"Zebras graze [{lora}].", passages) == f"Zebras graze [{lora}]."
    assert found.check_citations("Zebras graze.", passages) == "Zebras graze."
    assert found.check_citations(answer, []) == answer
    # Rare words weigh more: "RoBERTa" (one chunk) outweighs two words that three chunks share.
    assert found.rarity["roberta"] > found.rarity["weights"]


def test_an_answer_no_passage_supports_becomes_the_decline(tmp_path, embedded):
    from papertune.chat import ABSTAIN

    found = retriever(tmp_path, "bm25")
    passages = found.search("low-rank adaptation weights matrices", k=2)
    asked = "How does low-rank adaptation train?"
    supported = "It freezes the pretrained weights and trains two small matrices per layer [1]."
    assert found.check_answer(asked, supported, passages) == supported
    assert found.support_share(supported, passages) == pytest.approx(1.0)
    invented = "It distils a teacher into a student with temperature scaling [1]."  # no word in a passage
    assert found.support_share(invented, passages) == 0.0
    assert found.check_answer(asked, invented, passages) == ABSTAIN
    # Less than half supported by rarity: "weights" is in three chunks, the rest in none.
    half = "The weights are distilled with temperature [1]."
    assert 0 < found.support_share(half, passages) < 0.5 and found.check_answer(asked, half, passages) == ABSTAIN
    # A question about something no passage mentions: the decline, however well the answer copies a passage.
    elsewhere = "What does BADGE select for annotation?"
    assert found.support_share(elsewhere, passages) == 0.0
    assert found.check_answer(elsewhere, supported, passages) == ABSTAIN
    # A decline in the model's own words, and an answer without content words, stand as they are.
    own = "The passages don't mention distillation."
    assert found.check_answer(asked, own, passages) == own
    assert found.check_answer(asked, "Yes [1].", passages) == "Yes [1]."
    # Both shares 0: the check only moves citations.
    lenient = retriever(tmp_path, "bm25", min_support=0.0, min_question_support=0.0)
    assert lenient.check_answer(elsewhere, invented, passages) == invented


def test_the_support_thresholds_are_checked():
    from papertune.errors import ConfigError

    for name in ("min_support", "min_question_support"):
        with pytest.raises(ConfigError, match=f"retrieval.{name} must be in"):
            load_config(None, [f"retrieval.{name}=1.5"])

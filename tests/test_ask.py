"""``papertune ask`` / ``chat``: streamed answers with the training prompt, and the --cite chunk index."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import CHUNKS, FAST_EVAL, bag_of_words, tiny_overrides, write_chunks
from papertune import ask, cli
from papertune.config import load_config
from papertune.errors import InputError
from papertune.index import ChunkIndex, format_citations


def config_for(run: Path, model: Path, *extra: str):
    return load_config(None, tiny_overrides(run, model, max_steps=4) + FAST_EVAL + ["evaluate.max_new_tokens=8",
                                                                                    *extra])


@pytest.fixture
def word_embedder(monkeypatch):
    """A deterministic bag-of-words embedder standing in for all-MiniLM; counts the texts it embeds."""
    calls = []

    def embed(texts, spec, setting="evaluate.embedding_model"):
        calls.append(len(texts))
        return bag_of_words(texts, spec, setting)

    monkeypatch.setattr("papertune.index.embed_texts", embed)
    return calls


# --- answers ---------------------------------------------------------------------------------------


class Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_ask_streams_the_answer_with_the_training_prompt(trained_run, tiny_model, monkeypatch):
    from datasets import load_from_disk

    row = load_from_disk(str(trained_run / "dataset"))["test"][0]
    assistant = ask.Assistant(config_for(trained_run, tiny_model))
    assert "adapter" in assistant.description
    seen = {}
    original = type(assistant.model).generate

    def spy(self, *args, **kwargs):
        seen["input_ids"] = kwargs["input_ids"][0].tolist()
        seen["stopping_criteria"] = kwargs.get("stopping_criteria")  # streams the text as it comes
        seen["do_sample"] = kwargs["do_sample"]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(assistant.model), "generate", spy)
    stream = Recorder()
    result = assistant.answer(row["question"], stream)
    # Exactly the ids the model was trained on for this question: the dataset's prompt, no added specials.
    assert seen["input_ids"] == assistant.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    assert seen["stopping_criteria"] is not None and seen["do_sample"] is False
    assert stream.writes and "".join(stream.writes).strip() == result["answer"]
    assert result["sources"] == []


def test_cli_ask_prints_the_answer_and_is_deterministic(trained_run, tiny_model, capsys):
    sets = [x for o in tiny_overrides(trained_run, tiny_model) + FAST_EVAL for x in ("--set", o)]
    assert cli.main(["ask", "-q", "What is the role of attention heads?", "--max-new-tokens", "6", *sets]) == 0
    tuned = capsys.readouterr().out
    assert tuned.endswith("\n")  # the streamed answer (the tiny model's may be only whitespace) and a newline
    # Greedy: the same question gives the same answer again.
    assert cli.main(["ask", "-q", "What is the role of attention heads?", "--max-new-tokens", "6", *sets]) == 0
    assert capsys.readouterr().out == tuned
    assert cli.main(["ask", "-q", "Hi", "--merged", str(trained_run / "nothing"), *sets]) == 2


def test_cli_ask_base_only_prints_the_base_models_greedy_answer(tmp_path, talking_model, capsys):
    config = config_for(tmp_path / "run", talking_model)
    sets = [x for o in tiny_overrides(tmp_path / "run", talking_model) + FAST_EVAL + ["evaluate.max_new_tokens=8"]
            for x in ("--set", o)]
    assert cli.main(["ask", "-q", "What is LoRA?", "--base-only", *sets]) == 0
    expected = transformers_greedy_answer(talking_model, "What is LoRA?", config)
    assert expected and capsys.readouterr().out == expected + "\n"


def transformers_greedy_answer(model_dir: Path, question: str, config) -> str:
    """The greedy answer computed with transformers alone: the training prompt's ids, ``generate``, the new
    tokens decoded without special tokens and stripped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papertune.chat import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer(render_prompt(tokenizer, question, config.build.system_prompt), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), do_sample=False,
                         max_new_tokens=config.evaluate.max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_missing_adapter_is_a_clear_error(tmp_path, tiny_model, talking_model):
    from papertune.errors import InputError as Err

    with pytest.raises(Err, match="run `papertune train"):
        ask.ask(config_for(tmp_path / "run", tiny_model), "What is LoRA?", stream=io.StringIO())
    # --base-only needs no adapter: the streamed text is the answer, the base model's greedy answer (talking_model
    # answers in visible words, where tiny_model's answers strip to "").
    config = config_for(tmp_path / "run", talking_model)
    stream = io.StringIO()
    result = ask.ask(config, "What is LoRA?", stream=stream, base_only=True)
    assert isinstance(result["answer"], str) and result["answer"].strip()
    assert stream.getvalue() == result["answer"] + "\n"
    assert result["answer"] == transformers_greedy_answer(talking_model, "What is LoRA?", config)


def test_chat_answers_each_line_until_exit(tmp_path, talking_model):
    config = config_for(tmp_path / "run", talking_model)
    stream = io.StringIO()
    lines = ["What is LoRA?\n", "\n", "Why quantize?\n", "exit\n", "never asked\n"]
    assert ask.chat(config, lines, stream=stream, base_only=True) == 2
    # One streamed answer per question, each the greedy answer `papertune ask` gives; blank lines skipped.
    expected = [transformers_greedy_answer(talking_model, q, config) for q in ("What is LoRA?", "Why quantize?")]
    assert all(expected) and stream.getvalue() == "".join(f"{a}\n" for a in expected)


def test_cli_chat_reads_stdin(tmp_path, talking_model, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is LoRA?\nWhy quantize?\n"))
    config = config_for(tmp_path / "run", talking_model)
    sets = [x for o in tiny_overrides(tmp_path / "run", talking_model) + FAST_EVAL + ["evaluate.max_new_tokens=8"]
            for x in ("--set", o)]
    assert cli.main(["chat", "-q", "--base-only", *sets]) == 0
    expected = [transformers_greedy_answer(talking_model, q, config) for q in ("What is LoRA?", "Why quantize?")]
    assert capsys.readouterr().out == "".join(f"{a}\n" for a in expected)  # one answer per line, EOF ends


# --- --cite ------------------------------------------------------------------------------------------


def test_index_is_built_once_reused_and_rebuilt_when_chunks_change(tmp_path, word_embedder):
    run = tmp_path / "run"
    write_chunks(run)
    first = ChunkIndex.load_or_build(run, "fake-model")
    assert first.built and word_embedder == [4]
    assert (run / "index" / "embeddings.npy").is_file() and json.loads((run / "index" / "ids.json").read_text()) == [
        c["id"] for c in CHUNKS]
    second = ChunkIndex.load_or_build(run, "fake-model")
    assert not second.built and word_embedder == [4]  # loaded, nothing embedded
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    hits = second.search(CHUNKS[3]["text"], 2)
    assert hits[0][0]["id"] == "moe.pdf#0002" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[1][1] < hits[0][1]
    # chunks.jsonl changed: rebuilt, and the new chunk is found.
    extra = {"id": "dpo.md#0000", "source": "dpo.md", "section": "Loss", "page_start": None, "page_end": None,
             "text": "Direct preference optimization turns a reward model objective into a classification loss."}
    write_chunks(run, CHUNKS + [extra])
    third = ChunkIndex.load_or_build(run, "fake-model")
    assert third.built and word_embedder[-1] == 5
    assert third.search("direct preference optimization classification loss", 1)[0][0]["id"] == "dpo.md#0000"
    # Another embedding model: rebuilt as well.
    assert ChunkIndex.load_or_build(run, "other-model").built


def test_ask_cite_lists_documents_and_pages(trained_run, tiny_model, word_embedder):
    write_chunks(trained_run)
    stream = io.StringIO()
    result = ask.ask(config_for(trained_run, tiny_model, "evaluate.cite_top_k=2", "evaluate.embedding_model=fake"),
                     "How does a gating network route every token to the top two experts?", stream=stream, cite=True)
    assert [s["chunk_id"] for s in result["sources"]][0] == "moe.pdf#0002" and len(result["sources"]) == 2
    text = stream.getvalue()
    assert "Sources" in text and "[1] moe.pdf, page 12 [Routing] (score " in text
    assert text.index(result["answer"]) < text.index("Sources")
    # Pages of a range, and Markdown without pages.
    assert "lora.pdf, page 7-8" in format_citations([(CHUNKS[1], 0.5)])
    assert "qlora.md [NF4]" in format_citations([(CHUNKS[2], 0.5)])


def test_cite_without_chunks_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="run `papertune ingest"):
        ChunkIndex.load_or_build(tmp_path / "nothing", "fake-model")


@pytest.mark.slow
def test_cite_with_all_minilm_finds_the_chunk_a_question_comes_from(tmp_path):
    run = tmp_path / "run"
    write_chunks(run)
    index = ChunkIndex.load_or_build(run, load_config().evaluate.embedding_model)
    assert index.built and index.embeddings.shape == (4, 384)
    for chunk in CHUNKS:
        # A question made of a piece of the chunk's sentence.
        question = "What does the paper say about " + " ".join(chunk["text"].split()[:7]) + "?"
        hits = index.search(question, 3)
        assert hits[0][0]["id"] == chunk["id"], (question, hits)
        assert hits[0][1] > hits[1][1]
    again = ChunkIndex.load_or_build(run, load_config().evaluate.embedding_model)
    assert not again.built

"""``papertune ask`` / ``chat``: streamed answers with the training prompt, grounded in retrieved passages by
default, closed-book with ``--closed-book``."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from helpers import CHUNKS, FAST_EVAL, VERIFYING, bag_of_words, tiny_overrides, write_chunks
from papertune import ask, cli
from papertune.chat import ABSTAIN, render_prompt, render_verify_prompt
from papertune.config import load_config
from papertune.errors import InputError
from papertune.inference import Completion

CLOSED_BOOK = "retrieval.grounded=false"


def config_for(run: Path, model: Path, *extra: str):
    return load_config(None, tiny_overrides(run, model, max_steps=4) + FAST_EVAL + ["evaluate.max_new_tokens=8",
                                                                                    *extra])


def cli_sets(run: Path, model: Path, *extra: str) -> list[str]:
    return [x for o in tiny_overrides(run, model) + FAST_EVAL + ["evaluate.max_new_tokens=8", *extra]
            for x in ("--set", o)]


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


def test_closed_book_ask_streams_the_answer_with_the_training_prompt(trained_run, tiny_model, monkeypatch):
    from datasets import load_from_disk

    row = load_from_disk(str(trained_run / "dataset"))["test"][0]
    assistant = ask.Assistant(config_for(trained_run, tiny_model, CLOSED_BOOK))
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
    assert result["passages"] == [] and result["cited"] == [] and result["abstained"] is False
    assert not result["grounded"] and assistant.retriever is None  # no chunks needed, none retrieved


def test_cli_ask_prints_the_answer_and_is_deterministic(trained_run, tiny_model, capsys):
    sets = [x for o in tiny_overrides(trained_run, tiny_model) + FAST_EVAL for x in ("--set", o)]
    question = ["ask", "-q", "What is the role of attention heads?", "--closed-book", "--max-new-tokens", "6"]
    assert cli.main([*question, *sets]) == 0
    tuned = capsys.readouterr().out
    assert tuned.endswith("\n")  # the streamed answer (the tiny model's may be only whitespace) and a newline
    # Greedy: the same question gives the same answer again.
    assert cli.main([*question, *sets]) == 0
    assert capsys.readouterr().out == tuned
    assert cli.main(["ask", "-q", "Hi", "--closed-book", "--merged", str(trained_run / "nothing"), *sets]) == 2


def test_cli_ask_closed_book_prints_the_base_models_greedy_answer(tmp_path, talking_model, capsys):
    config = config_for(tmp_path / "run", talking_model)
    assert cli.main(["ask", "-q", "What is LoRA?", "--base-only", "--closed-book",
                     *cli_sets(tmp_path / "run", talking_model)]) == 0
    expected = transformers_greedy_answer(talking_model, "What is LoRA?", config)
    assert expected and capsys.readouterr().out == expected + "\n"  # the answer alone: no sources


def transformers_greedy_answer(model_dir: Path, question: str, config, passages=None) -> str:
    """The greedy answer computed with transformers alone: the training prompt's ids (grounded in the chunks
    ``passages``, when given), ``generate``, the new tokens decoded without special tokens and stripped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer(render_prompt(tokenizer, question, config.build.system_prompt, passages), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), do_sample=False,
                         max_new_tokens=config.evaluate.max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_missing_adapter_is_a_clear_error(tmp_path, tiny_model, talking_model):
    from papertune.errors import InputError as Err

    with pytest.raises(Err, match="run `papertune train"):
        ask.ask(config_for(tmp_path / "run", tiny_model, CLOSED_BOOK), "What is LoRA?", stream=io.StringIO())
    # --base-only needs no adapter: the streamed text is the answer, the base model's greedy answer (talking_model
    # answers in visible words, where tiny_model's answers strip to "").
    config = config_for(tmp_path / "run", talking_model, CLOSED_BOOK)
    stream = io.StringIO()
    result = ask.ask(config, "What is LoRA?", stream=stream, base_only=True)
    assert isinstance(result["answer"], str) and result["answer"].strip()
    assert stream.getvalue() == result["answer"] + "\n"
    assert result["answer"] == transformers_greedy_answer(talking_model, "What is LoRA?", config)


def test_chat_answers_each_line_until_exit(tmp_path, talking_model):
    config = config_for(tmp_path / "run", talking_model, CLOSED_BOOK)
    stream = io.StringIO()
    lines = ["What is LoRA?\n", "\n", "Why quantize?\n", "exit\n", "never asked\n"]
    assert ask.chat(config, lines, stream=stream, base_only=True) == 2
    # One streamed answer per question, each the greedy answer `papertune ask` gives; blank lines skipped.
    expected = [transformers_greedy_answer(talking_model, q, config) for q in ("What is LoRA?", "Why quantize?")]
    assert all(expected) and stream.getvalue() == "".join(f"{a}\n" for a in expected)


def test_cli_chat_reads_stdin(tmp_path, talking_model, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is LoRA?\nWhy quantize?\n"))
    config = config_for(tmp_path / "run", talking_model)
    assert cli.main(["chat", "-q", "--base-only", "--closed-book", *cli_sets(tmp_path / "run", talking_model)]) == 0
    expected = [transformers_greedy_answer(talking_model, q, config) for q in ("What is LoRA?", "Why quantize?")]
    assert capsys.readouterr().out == "".join(f"{a}\n" for a in expected)  # one answer per line, EOF ends


# --- grounded (the default) ---------------------------------------------------------------------------

QUESTION = "How does a gating network route every token to the top two experts?"


def grounded_config(run: Path, model: Path, *extra: str):
    write_chunks(run)
    return config_for(run, model, "retrieval.embedding_model=fake", "retrieval.top_k=3", *extra)


def test_grounded_ask_puts_the_retrieved_passages_into_the_prompt(tmp_path, talking_model, word_embedder):
    config = grounded_config(tmp_path / "run", talking_model)
    stream = io.StringIO()
    result = ask.ask(config, QUESTION, stream=stream, base_only=True)
    ids = [p["chunk_id"] for p in result["passages"]]
    assert ids[0] == "moe.pdf#0002" and len(ids) == 3 and [p["n"] for p in result["passages"]] == [1, 2, 3]
    assert result["grounded"] and word_embedder == [4, 1]  # the chunks once, then the question
    # The model saw exactly the grounded training prompt over those passages, in that order.
    chunks = {c["id"]: c for c in CHUNKS}
    expected = transformers_greedy_answer(talking_model, QUESTION, config, [chunks[i] for i in ids])
    assert expected and result["answer"] == expected
    # The answer, then the sources numbered as in the prompt, with document, page and section.
    text = stream.getvalue()
    assert text.startswith(expected + "\n")
    assert "Sources (* cited in the answer):\n" in text and "  [1] moe.pdf, page 12 [Routing]\n" in text
    assert text.index("[1] moe.pdf") < text.index("[2] ") < text.index("[3] ")


def fake_model_answer(monkeypatch, answer: str) -> list[list[int]]:
    """The model's answer is ``answer`` whatever it is asked; returns the prompt ids it was given."""
    seen = []

    def generate(model, tokenizer, requests, **kwargs):
        seen.append(list(requests[0].prompt_ids))
        if requests[0].on_text is not None:
            requests[0].on_text(answer)
        return [Completion(answer, [], "stop", len(requests[0].prompt_ids), 3)]

    monkeypatch.setattr("papertune.ask.generate_batch", generate)
    return seen


def test_sources_the_answer_cites_are_marked(tmp_path, talking_model, word_embedder, monkeypatch, capsys):
    config = grounded_config(tmp_path / "run", talking_model)
    seen = fake_model_answer(monkeypatch, "The gating network sends each token to two experts [1], see also [9].")
    assistant = ask.Assistant(config, base_only=True)
    result = assistant.answer(QUESTION, io.StringIO())
    assert result["cited"] == [1] and not result["abstained"]  # [9] is no passage of the prompt
    passages = [{c["id"]: c for c in CHUNKS}[p["chunk_id"]] for p in result["passages"]]
    prompt = render_prompt(assistant.tokenizer, QUESTION, config.build.system_prompt, passages)
    assert seen == [assistant.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    # Through the command line: --top-k sets retrieval.top_k; the cited source is marked with *.
    assert cli.main(["ask", "-q", QUESTION, "--base-only", "--top-k", "2",
                     *cli_sets(tmp_path / "run", talking_model, "retrieval.embedding_model=fake")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The gating network sends each token to two experts [1], see also [9].\n")
    assert "* [1] moe.pdf, page 12 [Routing]\n" in out and out.count("\n  [") == 1  # two sources, one cited


def test_an_answer_that_abstains_is_reported_plainly(tmp_path, talking_model, word_embedder, monkeypatch):
    config = grounded_config(tmp_path / "run", talking_model)
    fake_model_answer(monkeypatch, ABSTAIN)
    stream = io.StringIO()
    result = ask.ask(config, "Which optimizer did the DPO paper use?", stream=stream, base_only=True)
    assert result["abstained"] and result["cited"] == [] and result["answer"] == ABSTAIN
    assert ask.DECLINED in stream.getvalue() and "Sources" in stream.getvalue()
    # The same words from a closed-book model are its answer, not a declined grounded one.
    closed = ask.ask(config_for(tmp_path / "run", talking_model, CLOSED_BOOK), "Which optimizer?",
                     stream=io.StringIO(), base_only=True)
    assert not closed["abstained"]


def test_closed_book_cite_lists_the_retrieved_sources_below_the_answer(tmp_path, talking_model, word_embedder,
                                                                       monkeypatch):
    config = grounded_config(tmp_path / "run", talking_model, CLOSED_BOOK, "retrieval.top_k=2")
    seen = fake_model_answer(monkeypatch, "Two experts.")
    assistant = ask.Assistant(config, base_only=True, cite=True)
    stream = io.StringIO()
    result = assistant.answer(QUESTION, stream)
    # The prompt is today's closed-book prompt: the question alone.
    prompt = render_prompt(assistant.tokenizer, QUESTION, config.build.system_prompt)
    assert seen == [assistant.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    assert [p["chunk_id"] for p in result["passages"]][0] == "moe.pdf#0002" and len(result["passages"]) == 2
    text = stream.getvalue()
    assert text.startswith("Two experts.\n") and "[1] moe.pdf, page 12 [Routing] (score " in text
    assert result["cited"] == [] and not result["abstained"]


def test_grounded_ask_without_chunks_is_a_clear_error_before_loading_the_model(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("papertune.ask.load_for_answering", no_model)
    with pytest.raises(InputError, match="run `papertune ingest"):
        ask.ask(config_for(tmp_path / "run", Path("unused")), "What is LoRA?", stream=io.StringIO())


def test_an_answer_the_passages_do_not_support_is_reported_as_declined(tmp_path, talking_model, word_embedder,
                                                                       monkeypatch):
    config = grounded_config(tmp_path / "run", talking_model)
    fake_model_answer(monkeypatch, "Zebras graze on the savanna at dawn [1].")
    stream = io.StringIO()
    result = ask.ask(config, QUESTION, stream=stream, base_only=True)
    assert result["answer"] == "Zebras graze on the savanna at dawn [1]." and result["checked_answer"] == ABSTAIN
    assert result["abstained"] and result["cited"] == []
    assert ask.UNSUPPORTED in stream.getvalue() and ask.DECLINED not in stream.getvalue()
    # Supported, with the citation on the wrong passage: the check moves it, and the sources mark that one.
    fake_model_answer(monkeypatch, "It routes every token to the top two experts [3].")
    moved = ask.ask(config, QUESTION, stream=io.StringIO(), base_only=True)
    assert moved["passages"][0]["chunk_id"] == "moe.pdf#0002"
    assert moved["checked_answer"] == "It routes every token to the top two experts [1]." and moved["cited"] == [1]
    assert not moved["abstained"]
    # Supported and citing nothing: it cites the passage that holds most of it, and the stream says so.
    fake_model_answer(monkeypatch, "It routes every token to the top two experts.")
    stream = io.StringIO()
    added = ask.ask(config, QUESTION, stream=stream, base_only=True)
    assert added["checked_answer"] == "It routes every token to the top two experts [1]." and added["cited"] == [1]
    assert f"({ask.CITED_NOTE} {added['checked_answer']})" in stream.getvalue()
    assert ask.CHECKED_NOTE not in stream.getvalue()
    # A quoting reply: the quote found in passage [1] is the evidence shown, and the answer cites that passage;
    # a quote found in no passage is said to be none.
    fake_model_answer(monkeypatch, 'Quote [3]: "A gating network routes every token to the top two experts"\n'
                                   'Answer: It routes every token to the top two experts [3].')
    stream = io.StringIO()
    quoted = ask.ask(config, QUESTION, stream=stream, base_only=True)
    assert quoted["checked_answer"] == "It routes every token to the top two experts [1]." and quoted["cited"] == [1]
    assert quoted["quote"] == {"n": 1, "text": "A gating network routes every token to the top two experts"}
    fake_model_answer(monkeypatch, 'Quote [1]: "Experts are chosen by a coin"\n'
                                   'Answer: It routes every token to the top two experts [1].')
    stream = io.StringIO()
    invented = ask.ask(config, QUESTION, stream=stream, base_only=True)
    assert invented["checked_answer"] == "It routes every token to the top two experts [1]." and "quote" not in invented
    assert ask.QUOTE_NOT_FOUND in stream.getvalue()


def test_chat_grounds_every_question(tmp_path, talking_model, word_embedder, monkeypatch):
    config = grounded_config(tmp_path / "run", talking_model, "retrieval.min_support=0")
    seen = fake_model_answer(monkeypatch, "An answer [2].")
    stream = io.StringIO()
    assert ask.chat(config, [QUESTION + "\n", "What is NormalFloat4?\n"], stream=stream, base_only=True) == 2
    assert len(seen) == 2 and stream.getvalue().count("Sources (* cited in the answer):") == 2
    assert stream.getvalue().count("* [2] ") == 2


def fake_model_replies(monkeypatch, *replies: str) -> list[list[int]]:
    """The model's replies, in turn (the answer, then the verification reply); returns the prompt ids."""
    seen, queue = [], list(replies)

    def generate(model, tokenizer, requests, **kwargs):
        out = []
        for request in requests:  # a batch (the other passages, with a retry) takes one reply each
            seen.append(list(request.prompt_ids))
            text = queue.pop(0)
            if request.on_text is not None:
                request.on_text(text)
            out.append(Completion(text, [], "stop", len(request.prompt_ids), 1))
        return out

    monkeypatch.setattr("papertune.ask.generate_batch", generate)
    return seen


def test_verify_asks_the_model_about_the_cited_passage_and_a_no_declines(tmp_path, talking_model, word_embedder,
                                                                         monkeypatch, caplog):
    """retrieval.verify: after an answer passes the check, the model is asked whether the passage the checked
    answer cites contains the answer (the verification prompt build trains on); "no" is the decline."""
    config = grounded_config(tmp_path / "run", talking_model, *VERIFYING)
    answer = "It routes every token to the top two experts [3]."  # the check moves the citation to [1]
    seen = fake_model_replies(monkeypatch, answer, "No")
    assistant = ask.Assistant(config, merged=talking_model)  # the tuned model, merged
    stream = io.StringIO()
    result = assistant.answer(QUESTION, stream)
    assert result["verify_reply"] == "No" and result["checked_answer"] == ABSTAIN and result["abstained"]
    assert ask.NOT_VERIFIED.format(n=1) in stream.getvalue() and result["cited"] == []
    first = {c["id"]: c for c in CHUNKS}[result["passages"][0]["chunk_id"]]
    prompt = render_verify_prompt(assistant.tokenizer, QUESTION, first, config.build.system_prompt)
    assert len(seen) == 2 and seen[1] == assistant.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # "yes" lets the checked answer stand; a declined answer is not verified; verify off asks nothing more.
    fake_model_replies(monkeypatch, answer, "yes")
    kept = assistant.answer(QUESTION, io.StringIO())
    assert kept["checked_answer"] == "It routes every token to the top two experts [1]." and not kept["abstained"]
    seen = fake_model_replies(monkeypatch, ABSTAIN)
    assert "verify_reply" not in assistant.answer(QUESTION, io.StringIO()) and len(seen) == 1
    seen = fake_model_replies(monkeypatch, answer)
    plain = ask.Assistant(grounded_config(tmp_path / "run", talking_model), base_only=True).answer(QUESTION, io.StringIO())
    assert "verify_reply" not in plain and not plain["abstained"] and len(seen) == 1
    # The base model is never asked: it was not trained to judge (the log says so once, when it loads).
    seen = fake_model_replies(monkeypatch, answer, "No")
    with caplog.at_level(logging.INFO, logger="papertune.verify"):
        base = ask.Assistant(config, base_only=True)
    assert "the base model's answers get the answer check only" in caplog.text
    result = base.answer(QUESTION, io.StringIO())
    assert "verify_reply" not in result and not result["abstained"] and len(seen) == 1



def test_verify_retry_answers_again_from_the_passage_the_model_says_holds_the_answer(tmp_path, talking_model,
                                                                                    word_embedder, monkeypatch):
    """retrieval.verify_retry: after the model's "no", it is asked about the other passages; the first it says
    yes to moves to [1] and the question is answered again (checked, verified), cited as the sources are shown."""
    config = grounded_config(tmp_path / "run", talking_model, *VERIFYING, "retrieval.verify_retry=true")
    assistant = ask.Assistant(config, merged=talking_model)
    passages = assistant.retriever.search(QUESTION)
    third = passages[2].chunk
    again = f"{third['text'].rstrip('.')} [1]."  # the model answers from the passage moved to [1]
    seen = fake_model_replies(monkeypatch, "It routes every token to the top two experts [1].", "No", "No", "Yes",
                              again, "Yes")
    stream = io.StringIO()
    result = assistant.answer(QUESTION, stream)
    shown = f"{third['text'].rstrip('.')} [3]."
    assert result["checked_answer"] == shown and result["cited"] == [3] and not result["abstained"]
    assert result["retry"] == {"passage": 3, "answer": shown, "verify_reply": "Yes"}
    assert ask.RETRIED.format(n=1, m=3, answer=shown) in stream.getvalue()
    assert "* [3] " in stream.getvalue()
    moved = [third] + [p.chunk for p in passages[:2]]
    prompt = render_prompt(assistant.tokenizer, QUESTION, config.build.system_prompt, moved)
    assert len(seen) == 6 and seen[4] == assistant.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # No other passage said to hold it: declined, as without the retry.
    fake_model_replies(monkeypatch, "It routes every token to the top two experts [1].", "No", "No", "No")
    stream = io.StringIO()
    declined = assistant.answer(QUESTION, stream)
    assert declined["abstained"] and "retry" not in declined and ask.NOT_VERIFIED.format(n=1) in stream.getvalue()

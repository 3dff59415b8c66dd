"""The evaluate stage: scoring functions on known strings, and base vs tuned on a tiny trained model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import FAST_EVAL, REPO, VERIFYING, bag_of_words, built_run, qa_rows, tiny_overrides, write_rows
from papertune import build, evaluate, train
from papertune.config import SMOLLM2_PACKAGED, load_config
from papertune.errors import ConfigError, InputError
from papertune.inference import attach_adapter, load_base


def eval_config(run: Path, model: Path, *extra: str):
    return load_config(None, tiny_overrides(run, model, max_steps=4) + FAST_EVAL + list(extra))


# --- scoring ---------------------------------------------------------------------------------------


def test_squad_normalisation_exact_match_and_f1():
    assert evaluate.normalize_answer("The  LoRA adapter, a low-rank update!") == "lora adapter lowrank update"
    assert evaluate.exact_match("The LoRA.", "lora") == 1.0
    assert evaluate.exact_match("LoRA adapters", "LoRA") == 0.0
    # pred "low rank adapter" vs ref "a low rank update": common {low, rank} -> P 2/3, R 2/3
    assert evaluate.token_f1("low rank adapter", "a low rank update") == pytest.approx(2 / 3)
    # pred 4 tokens, ref 2, all of ref present: P 2/4, R 1 -> F1 2/3
    assert evaluate.token_f1("attention is all needed", "attention needed") == pytest.approx(2 / 3)
    assert evaluate.token_f1("nothing shared", "entirely different") == 0.0
    assert evaluate.token_f1("", "") == 1.0 and evaluate.token_f1("the", "x") == 0.0
    assert evaluate.token_f1("x b b", "b b c") == pytest.approx(2 / 3)  # counts, not sets
    assert evaluate.token_f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article: P 1, R 2/3


def test_rouge_l_on_known_strings():
    assert evaluate.rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS of "the cat sat" and "the dog sat" is 2 of 3 words: P = R = F = 2/3
    assert evaluate.rouge_l("the cat sat", "the dog sat") == pytest.approx(2 / 3)
    assert evaluate.rouge_l("", "something") == 0.0
    assert evaluate.rouge_l("adapters", "adapter") == pytest.approx(1.0)  # stemmed


def test_judge_replies_are_parsed_robustly():
    parse = evaluate.parse_judge_reply
    assert parse('{"correctness": 4, "groundedness": 5}') == {"correctness": 4.0, "groundedness": 5.0}
    assert parse('Sure!\n```json\n{"Correctness": "3", "groundedness": 2}\n```') == {"correctness": 3.0,
                                                                                     "groundedness": 2.0}
    assert parse("correctness: 2, groundedness = 1") == {"correctness": 2.0, "groundedness": 1.0}
    assert parse('{"correctness": 9, "groundedness": 5}') is None  # out of range
    assert parse('{"correctness": 4}') is None
    assert parse("I cannot grade this.") is None and parse(None) is None and parse("") is None


def test_a_correct_answer_says_what_the_reference_says_beyond_the_question():
    """Answers from the model-scale run, which a 1.5B judge all scored 5: a generic answer that repeats the
    question's terms agrees with nothing, the right one does; numbers the reference holds count (lone digits
    do not), citation markers are not words."""
    agree = evaluate.reference_agreement
    question = "What is the main idea behind the soft sliding window technique?"
    reference = "Soft sliding window assigns less weight to more distant words when pairing the words within the window."
    generic = ("The main idea behind the soft sliding window technique is to use a sliding window to capture and "
               "analyze data in real-time.")
    right = "It gives less weight to distant words when it pairs words inside the window [2]."
    assert agree(question, reference, generic) < 0.2 <= agree(question, reference, right)
    scale_q = "What is the recommended initialization scale parameter $s$ for transformer weights?"
    scale_ref = "They also recommended reducing the transformer initialization scale parameter $s=1$ to $s=0.1$."
    assert agree(scale_q, scale_ref, "It is 0.1.") == 1.0
    assert agree(scale_q, scale_ref, "It is 0.5.") == 0.0
    z_question = "What is a common assumption about the partition function $Z(w)$ in the loss function of NCE?"
    z_reference = "A common assumption is $Z(w) ≈ 1$ given that we expect the softmax output layer to be normalized."
    z_wrong = ("The partition function $Z(w)$ in the loss function of NCE is a common assumption that is used to "
               "normalize the loss function. It is defined as:\n\n\\[ Z(w) = \\frac{1}{w} \\]\n\nThis "
               "assumption is often used in the context of NCE, where the loss function is a weighted sum of the "
               "probabilities of the true label and the noise labels.")
    assert agree(z_question, z_reference, z_wrong) < 0.2  # "1" of "1/w" proves nothing


def test_citation_markers_are_stripped_before_scoring():
    assert evaluate.strip_citations("QLoRA quantizes to NF4 [2].") == "QLoRA quantizes to NF4."
    assert evaluate.strip_citations("A [1] and B [3][4]") == "A and B"
    assert evaluate.token_f1(evaluate.strip_citations("NF4 [2]."), "NF4") == 1.0


def test_citations_are_renumbered_in_place():
    from papertune.chat import renumber_citations

    assert renumber_citations("A [1] and B [3][4], C [12].", {3: 2, 12: 1}) == "A [1] and B [2][4], C [1]."


def test_a_passage_contains_an_answer_with_most_of_its_content_words():
    # content words of the reference: {quantizes, weights, nf4} ("it", "to" are function words)
    assert evaluate.content_words("It quantizes the weights to NF4.") == {"quantizes", "weights", "nf4"}
    assert evaluate.passage_contains("QLoRA quantizes frozen weights to 4-bit NF4.", "It quantizes weights to NF4")
    assert evaluate.passage_contains("NF4 stores weights.", "It quantizes weights to NF4")  # 2/3 >= 0.6
    assert not evaluate.passage_contains("NF4 is a data type.", "It quantizes weights to NF4")  # 1/3
    assert not evaluate.passage_contains("anything", "the of to")  # no content words: contained nowhere


def test_recall_at_k_counts_source_chunks_among_the_retrieved():
    sources = ["a#1", "b#2", "c#3", None]
    retrieved = [["x", "a#1"], ["b#1", "b#3"], ["c#3"], ["a#1"]]
    assert evaluate.recall_at_k(sources, retrieved) == pytest.approx(2 / 4)
    assert evaluate.recall_at_k([], []) is None
    with pytest.raises(ValueError):
        evaluate.recall_at_k(["a"], [])


PASSAGES = [{"id": "lora#1", "text": "LoRA trains two low-rank matrices per layer."},
            {"id": "qlora#4", "text": "QLoRA quantizes the frozen weights to NF4."},
            {"id": "moe#2", "text": "A router sends each token to two experts."}]


def test_citation_accuracy_on_hand_made_answers():
    correct = evaluate.citation_correct
    assert correct("It uses NF4 [2].", PASSAGES, "qlora#4", "NF4") is True  # cites the source chunk
    assert correct("It uses NF4 [1].", PASSAGES, "qlora#4", "NF4") is False  # cites another passage
    assert correct("Both [1][2].", PASSAGES, "qlora#4", "NF4") is True  # one of the cited is the source
    # Not the source chunk, but a passage that contains the reference answer.
    assert correct("Two experts [3].", PASSAGES, "moe#9", "each token goes to two experts") is True
    assert correct("It uses NF4 [7].", PASSAGES, "qlora#4", "NF4") is False  # no passage 7
    assert correct("It uses NF4.", PASSAGES, "qlora#4", "NF4") is None  # cites nothing


def test_system_summary_counts_citations_and_declines():
    from papertune.chat import ABSTAIN, abstains, cited_numbers
    from papertune.evaluate.metrics import answer_summary

    def row(answer, f1, correct):
        return {"cited": cited_numbers(answer), "abstained": abstains(answer),
                "scores": {"f1": f1, "citation_correct": correct}}

    rows = [row("NF4 [2].", 1.0, True), row("NF4 [1].", 0.5, False), row("NF4 [2][3].", 1.0, True),
            row(ABSTAIN, 0.0, None)]
    grounded = answer_summary(rows, answerable=True, retrieval=True)
    assert grounded["questions"] == 4 and grounded["f1"] == pytest.approx(0.625)
    assert grounded["citation_rate"] == pytest.approx(3 / 4)
    assert grounded["citation_accuracy"] == pytest.approx(2 / 3)  # of the answers that cite
    assert grounded["abstention_rate"] == pytest.approx(1 / 4)
    assert grounded["quote_rate"] == 0.0  # no answer came with a quote
    rows[0]["quote"] = {"n": 2, "text": "NF4 is optimal."}
    assert answer_summary(rows, answerable=True, retrieval=True)["quote_rate"] == pytest.approx(1 / 3)  # of 3 answered
    closed = answer_summary(rows, answerable=True, retrieval=False)
    assert closed["citation_rate"] is None and closed["citation_accuracy"] is None and closed["quote_rate"] is None
    outside = answer_summary(rows, answerable=False, retrieval=True)  # declining is the right answer there
    assert outside["f1"] is None and outside["citation_accuracy"] is None and outside["abstention_rate"] == 0.25


def test_outside_questions_count_as_answered_by_the_index_only_on_a_quote_that_says_the_reference():
    """An outside question counts as answered by the index only when the judge quotes a retrieved passage's
    sentence that carries half of what the reference adds to its question (as in the model-scale run: "What
    is RLHF?" asked of a post outside the index, defined by an indexed one)."""
    from papertune.evaluate import outside

    question, reference = "What is RLHF?", "RLHF (Reinforcement Learning from Human Feedback) is a common method."
    passages = ["Reward hacking is common. Reinforcement learning from human feedback (RLHF) has become the de "
                "facto approach for alignment training of language models.", "Distillation trains a small model."]
    said = "Reinforcement learning from human feedback (RLHF) has become the de facto approach for alignment"

    def read(quote, refs=reference):
        return outside.read_reply(question, refs, passages, json.dumps({"quote": quote}))

    assert read(said).in_index and read(said).quote_match == 1.0
    # A quote that is not a passage's words (the reference itself, as a judge shown it copied it), or that says
    # nothing of what the reference adds, or no quote, does not count.
    assert not read(reference).in_index
    assert not read("RLHF is a method that learns from human feedback with reinforcement learning").in_index
    assert not read("Distillation trains a small model.").in_index
    assert not read("").in_index
    # A reference that adds nothing to its question cannot be found: its question stays one to decline.
    assert not read(said, refs="RLHF is RLHF.").in_index
    # A number the reference adds must be in the quote.
    assert outside.reference_held("How big?", "It has 7B parameters.", "It has 13B parameters.") == 0.0
    assert outside.read_reply(question, reference, passages, "no JSON here") is None
    assert outside.parse_check_reply('```json\n{"quote": "a \\\\alpha"}\n```') == "a \\alpha"
    conversation = outside.check_conversation(question, passages)
    assert "[1] Reward hacking" in conversation[1]["content"] and "[2] Distillation" in conversation[1]["content"]
    assert reference not in conversation[1]["content"]  # the judge finds the answer without being shown it
    assert "not instructions" in conversation[0]["content"]


def test_judge_prompt_shows_the_source_and_is_fair_to_citations_and_declines():
    messages = evaluate.judge_conversation("Which data type?", "NF4", "NF4 [2].", "QLoRA quantizes to NF4.")
    system, user = messages[0]["content"], messages[1]["content"]
    assert "[1], [2]" in system and "ignore these markers" in system
    assert "declines" in system and "correctness 1" in system
    assert "QLoRA quantizes to NF4." in user and "Reference answer: NF4" in user and "Answer to grade: NF4 [2]." in user


def _independent_loss(model, tokenizer, rows) -> float:
    """Token-weighted loss via the model's own loss (mean over label tokens), example by example."""
    from papertune.train.data import tokenize_example

    total, tokens = 0.0, 0
    for row in rows:
        ex = tokenize_example(tokenizer, row["prompt"], row["completion"])
        labels = torch.tensor([ex["labels"]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ex["input_ids"]]), labels=labels).loss.item()
        n = int((labels[0, 1:] != -100).sum())
        total, tokens = total + loss * n, tokens + n
    return total / tokens


# --- the stage on a tiny model -----------------------------------------------------------------------

CLOSED_BOOK = "evaluate.modes=[closed_book]"
FOUR = ["base closed-book", "tuned closed-book", "base + retrieval", "tuned + retrieval"]


@pytest.fixture
def word_embedder(monkeypatch):
    """A deterministic bag-of-words embedder standing in for all-MiniLM wherever retrieval embeds."""
    import papertune.retrieval

    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    if hasattr(papertune.retrieval, "embed_texts"):
        monkeypatch.setattr(papertune.retrieval, "embed_texts", bag_of_words)


def _chunk_for(rows: list[dict]) -> dict:
    first = rows[0]
    return {"id": first["chunk_id"], "source": first["source"], "section": "S", "page_start": 2, "page_end": 2,
            "text": first["question"] + " " + " ".join(dict.fromkeys(r["answer"] for r in rows))}


def grounded_copy(tmp_path: Path, trained_run: Path, *, splits: bool = True) -> Path:
    """trained_run's dataset and adapter with a chunks.jsonl holding every source chunk; with ``splits`` also a
    ``heldout`` split (document held.md, in the index) and an ``outside`` split (away.md: its chunk is in
    chunks.jsonl, and the build report lists it as outside the index)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    run = tmp_path / "grounded"
    shutil.copytree(trained_run / "dataset", run / "dataset")
    shutil.copytree(trained_run / "train", run / "train")
    ds = load_from_disk(str(trained_run / "dataset"))
    by_chunk: dict[str, list[dict]] = {}
    for row in ds["train"].to_list() + ds["test"].to_list():
        by_chunk.setdefault(row["chunk_id"], []).append(row)
    if splits:
        test = ds["test"].to_list()
        heldout = [{**r, "source": "held.md", "chunk_id": "held.md#0000", "id": f"held-{i}",
                    "question": f"Which trick does the held-out paper use for task {i}?",
                    "answer": f"The held-out paper uses gradient trick {i}."} for i, r in enumerate(test[:3])]
        outside = [{**r, "source": "away.md", "chunk_id": "away.md#0000", "id": f"away-{i}",
                    "question": f"What does the outside paper say about sparse routing {i}?",
                    "answer": f"The outside paper routes sparsely {i}."} for i, r in enumerate(test[:2])]
        by_chunk["held.md#0000"], by_chunk["away.md#0000"] = heldout, outside
        shutil.rmtree(run / "dataset")
        DatasetDict({"train": ds["train"], "test": ds["test"], "heldout": Dataset.from_list(heldout),
                     "outside": Dataset.from_list(outside)}).save_to_disk(str(run / "dataset"))
        (run / "build").mkdir()
        (run / "build" / "report.json").write_text(json.dumps(
            {"mode": "closed_book", "documents": {"train": sorted(set(ds["train"]["source"])),
                                                  "heldout": ["held.md"], "outside": ["away.md"]}}))
    (run / "chunks.jsonl").write_text("".join(json.dumps(_chunk_for(rows)) + "\n" for rows in by_chunk.values()))
    return run


def _read_answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


def test_answers_are_kept_as_they_are_generated_and_not_generated_again(tmp_path, trained_run, tiny_model,
                                                                       word_embedder, monkeypatch):
    """A rerun (another metric, another judge, or a run stopped after answering) generates nothing again; a
    run stopped by a missing scorer stops before answering anything."""
    import importlib.util

    import papertune.evaluate.stage as stage
    from papertune.inference import Completion

    run = grounded_copy(tmp_path, trained_run)
    generated: list[str] = []

    def counting(model, tokenizer, batch, decoding, *, batch_size=1, progress=None, engine="auto"):
        generated.extend(batch)
        return [Completion(f"answer {len(generated) - len(batch) + i}", [], "stop", 0, 0) for i in range(len(batch))]

    monkeypatch.setattr(stage, "generate", counting)
    cfg = eval_config(run, tiny_model, "evaluate.max_questions=3", "retrieval.top_k=2")
    first = _read_answers(evaluate.run(cfg))
    assert generated and len(generated) == len(first)

    def failing(*args, **kwargs):
        raise AssertionError("nothing should be generated again")

    monkeypatch.setattr(stage, "generate", failing)
    again = _read_answers(evaluate.run(cfg))
    assert [a["answer"] for a in again] == [a["answer"] for a in first]
    # Another decoding setting is another answer: generated anew.
    with pytest.raises(AssertionError, match="nothing should be generated again"):
        evaluate.run(eval_config(run, tiny_model, "evaluate.max_questions=3", "retrieval.top_k=2",
                                 "evaluate.max_new_tokens=17"))

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rouge_score" else real_find_spec(name, *a))
    with pytest.raises(InputError, match="pip install rouge-score"):
        evaluate.run(cfg)


def test_four_systems_answer_every_question_set(tmp_path, trained_run, tiny_model, word_embedder, monkeypatch):
    """Scripted answers through the real prompts: retrieval answers cite passage [1] or [2] (or decline on
    outside documents), closed-book answers do neither; every score follows from them."""
    import papertune.evaluate.stage as stage
    from papertune.chat import ABSTAIN, GROUNDED_INSTRUCTION, cited_numbers, render_prompt
    from papertune.inference import Completion
    from papertune.retrieval import Retriever

    run = grounded_copy(tmp_path, trained_run)
    prompts: list[str] = []
    reference_of = {}

    def scripted(model, tokenizer, batch, decoding, *, batch_size=1, progress=None, engine="auto"):
        prompts.extend(batch)
        replies = []
        for prompt in batch:
            # The question asked ends nearest the end of the prompt (passages before it may quote others).
            question = max((q for q in reference_of if q in prompt), key=lambda q: (prompt.rfind(q) + len(q), len(q)))
            reference, source = reference_of[question]
            grounded = GROUNDED_INSTRUCTION in prompt
            if source == "away.md":
                replies.append(ABSTAIN if grounded else "Sparse routing, I believe.")
            else:
                cite = 1 + len(question) % 2  # [1] (mostly the source) or [2] (mostly not)
                replies.append(f"{reference} [{cite}]" if grounded else "I believe so.")
        return [Completion(r, [], "stop", 0, 0) for r in replies]

    from datasets import load_from_disk

    ds = load_from_disk(str(run / "dataset"))
    for split in ("test", "heldout", "outside"):
        for r in ds[split]:
            reference_of[r["question"]] = (r["answer"], r["source"])
    monkeypatch.setattr(stage, "generate", scripted)
    cfg = eval_config(run, tiny_model, "evaluate.max_questions=4", "retrieval.top_k=2")
    out = evaluate.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())

    assert [s["label"] for s in metrics["systems"]] == FOUR
    assert list(metrics["sets"]) == ["test", "heldout", "outside"]
    assert {k: v["questions"] for k, v in metrics["sets"].items()} == {"test": 4, "heldout": 3, "outside": 2}
    answers = _read_answers(out)
    assert len(answers) == 4 * (4 + 3 + 2)

    # The outside document is in chunks.jsonl but not in the evaluation's index.
    assert metrics["retrieval"]["outside_documents"] == ["away.md"]
    assert metrics["retrieval"]["outside_answer_in_index"] == []
    retrieved = [p for a in answers if a["passages"] for p in a["passages"]]
    assert retrieved and all(p["source"] != "away.md" for p in retrieved)
    # Retrieval prompts are the ones ask and serve send: render_prompt with the retrieved chunks.
    _, tokenizer = load_base(cfg)
    chunks = {json.loads(line)["id"]: json.loads(line) for line in (run / "chunks.jsonl").read_text().splitlines()}
    for a in answers:
        passages = None if a["mode"] == "closed_book" else [chunks[p["chunk_id"]] for p in a["passages"]]
        assert len(passages or []) == (0 if a["mode"] == "closed_book" else 2)
        assert render_prompt(tokenizer, a["question"], cfg.build.system_prompt, passages) in prompts

    # recall@k: the share of questions whose source chunk was retrieved (same hits as the retriever gives).
    retriever = Retriever.for_run(run, cfg.retrieval, exclude_sources={"away.md"})
    for set_name in ("test", "heldout"):
        rows = [a for a in answers if a["set"] == set_name and a["system"] == "base_retrieval"]
        hits = [[p.chunk_id for p in retriever.search(a["question"])] for a in rows]
        assert [[p["chunk_id"] for p in a["passages"]] for a in rows] == hits
        expected = sum(a["chunk_id"] in h for a, h in zip(rows, hits)) / len(rows)
        assert metrics["retrieval"]["recall_at_k"][set_name] == pytest.approx(expected)
    assert metrics["retrieval"]["recall_at_k"]["outside"] is None
    # Left in, the outside document's chunk would be the first hit for its questions.
    everything = Retriever.for_run(run, cfg.retrieval)
    assert all(everything.search(a["question"])[0].chunk_id == "away.md#0000"
               for a in answers if a["set"] == "outside")

    for set_name in ("test", "heldout"):
        results = metrics["results"][set_name]
        for system in ("base_retrieval", "tuned_retrieval"):
            rows = [a for a in answers if a["set"] == set_name and a["system"] == system]
            assert all(cited_numbers(a["model_answer"]) == [1 + len(a["question"]) % 2] and not a["abstained"]
                       for a in rows)
            # The answer scored is the model's with its citations checked, as ask and serve show it.
            assert all(a["answer"] == retriever.check_answer(a["question"], a["model_answer"],
                                                             retriever.search(a["question"]))
                       and a["cited"] == cited_numbers(a["answer"]) for a in rows)
            # F1 of "<reference> [1]" against the reference: the marker is left out.
            assert results[system]["f1"] == pytest.approx(1.0) and results[system]["citation_rate"] == 1.0

            def accuracy(numbers_of):
                cited = [chunks[a["passages"][numbers_of(a)[0] - 1]["chunk_id"]] for a in rows]
                return sum(c["id"] == a["chunk_id"] or evaluate.passage_contains(c["text"], a["reference"])
                           for c, a in zip(cited, rows)) / len(rows)

            assert results[system]["citation_accuracy"] == pytest.approx(accuracy(lambda a: a["cited"]))
            assert results[system]["model_citation_accuracy"] == pytest.approx(
                accuracy(lambda a: cited_numbers(a["model_answer"])))
            assert results[system]["abstention_rate"] == 0.0
        for system in ("base_closed_book", "tuned_closed_book"):
            assert results[system]["citation_rate"] is None and results[system]["citation_accuracy"] is None
            assert results[system]["f1"] == 0.0
    outside = metrics["results"]["outside"]
    assert outside["tuned_retrieval"]["abstention_rate"] == 1.0
    assert outside["base_closed_book"]["abstention_rate"] == 0.0
    assert all(outside[s]["f1"] is None and outside[s]["judge_correct"] is None for s in outside)
    assert all(a["scores"] == {} for a in answers if a["set"] == "outside")

    report = (out / "report.md").read_text()
    table = report.split("## Four-way comparison")[1].split("\n\n")[2]
    assert table.splitlines()[0] == "| question set | metric | " + " | ".join(FOUR) + " |"
    for text in ("test split (4)", "held-out documents (3)", "documents outside the index (2)",
                 "declines (declining is right)", "recall@2", "citation accuracy", "(four_way.png)"):
        assert text in report, text
    for png in ("four_way.png", "metrics.png", "per_document.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_verify_asks_each_retrieval_answer_about_its_cited_passage(tmp_path, trained_run, tiny_model, word_embedder,
                                                                   monkeypatch):
    """retrieval.verify: each tuned retrieval answer that passes the check is followed by the verification prompt
    of the passage it cites (as ask and serve send it); "no" makes the scored answer the decline. The base model's
    answers are only checked: it was never trained to judge."""
    import papertune.evaluate.stage as stage
    from papertune.chat import ABSTAIN, VERIFY_INSTRUCTION, render_verify_prompt
    from papertune.inference import Completion

    run = grounded_copy(tmp_path, trained_run)
    from datasets import load_from_disk

    ds = load_from_disk(str(run / "dataset"))
    reference_of = {r["question"]: r["answer"] for split in ("test", "heldout", "outside") for r in ds[split]}
    asked: list[str] = []

    def scripted(model, tokenizer, batch, decoding, *, batch_size=1, progress=None, engine="auto"):
        replies = []
        for prompt in batch:
            question = max((q for q in reference_of if q in prompt), key=lambda q: (prompt.rfind(q) + len(q), len(q)))
            if VERIFY_INSTRUCTION in prompt:
                asked.append(prompt)
                assert decoding.max_new_tokens == 2 and decoding.temperature == 0
                replies.append("No." if len(question) % 2 else "Yes")
            else:
                replies.append(f"{reference_of[question]} [1]")
        return [Completion(r, [], "stop", 0, 0) for r in replies]

    monkeypatch.setattr(stage, "generate", scripted)
    cfg = eval_config(run, tiny_model, "evaluate.max_questions=4", "retrieval.top_k=2", *VERIFYING)
    out = evaluate.run(cfg)
    answers = _read_answers(out)
    verify = json.loads((out / "metrics.json").read_text())["retrieval"]["verify"]
    rows = [a for a in answers if a["system"] == "tuned_retrieval"]
    assert verify == {"tuned_retrieval": {"asked": sum(a["verify_reply"] is not None for a in rows),
                                          "declined": sum(a["verify_reply"] == "No." for a in rows)}}
    assert all(a["verify_reply"] is None for a in answers if a["model"] == "base")
    report = (out / "report.md").read_text()
    assert "Verification (`retrieval.verify`)" in report
    assert f"tuned + retrieval asked {verify['tuned_retrieval']['asked']}, declined " in report
    _, tokenizer = load_base(cfg)
    chunks = {json.loads(line)["id"]: json.loads(line) for line in (run / "chunks.jsonl").read_text().splitlines()}
    grounded = [a for a in answers if a["mode"] == "retrieval" and a["model"] == "tuned"]
    checked = [a for a in grounded if a["verify_reply"] is not None]
    assert checked and len(asked) == len(checked)
    assert all(a["verify_reply"] is None for a in answers if a["mode"] == "closed_book")
    for a in grounded:
        if a["verify_reply"] is None:  # not asked: the check had declined it
            assert a["answer"] == ABSTAIN
            continue
        expected_no = bool(len(a["question"]) % 2)
        assert a["verify_reply"] == ("No." if expected_no else "Yes") and a["abstained"] == expected_no
        assert (a["answer"] == ABSTAIN) == expected_no and a["model_answer"].endswith("[1]")
        passage = chunks[a["passages"][0]["chunk_id"]]  # the answer cites [1]
        assert render_verify_prompt(tokenizer, a["question"], passage, cfg.build.system_prompt) in asked
    assert any(a["abstained"] for a in checked) and not all(a["abstained"] for a in checked)


def test_verify_retry_answers_again_and_counts_it(tmp_path, trained_run, tiny_model, word_embedder, monkeypatch):
    """retrieval.verify_retry: a "no" about the cited passage asks about the other one; a "yes" answers the
    question again with that passage first, and answers, metrics and report say how many were answered again.
    The scripted model says no to the passage holding the reference and yes to the other, and answers from
    whichever passage comes first."""
    import papertune.evaluate.stage as stage
    from papertune.chat import VERIFY_INSTRUCTION
    from papertune.inference import Completion

    run = grounded_copy(tmp_path, trained_run)
    from datasets import load_from_disk

    ds = load_from_disk(str(run / "dataset"))
    reference_of = {r["question"]: r["answer"] for split in ("test", "heldout", "outside") for r in ds[split]}
    texts = [json.loads(line)["text"] for line in (run / "chunks.jsonl").read_text().splitlines()]

    def scripted(model, tokenizer, batch, decoding, *, batch_size=1, progress=None, engine="auto"):
        replies = []
        for prompt in batch:
            question = max((q for q in reference_of if q in prompt), key=lambda q: (prompt.rfind(q) + len(q), len(q)))
            first = min((t for t in texts if t.strip() in prompt), key=lambda t: prompt.index(t.strip()),
                        default="")  # closed book: none
            if VERIFY_INSTRUCTION in prompt:
                replies.append("No." if reference_of[question] in first else "Yes")
            else:
                replies.append(f"{reference_of[question]} [1]" if not first or reference_of[question] in first
                               else f"{first.strip()} [1]")
        return [Completion(r, [], "stop", 0, 0) for r in replies]

    monkeypatch.setattr(stage, "generate", scripted)
    cfg = eval_config(run, tiny_model, "evaluate.max_questions=4", "retrieval.top_k=2", *VERIFYING,
                      "retrieval.verify_retry=true", "evaluate.base=false")
    out = evaluate.run(cfg)
    answers = [a for a in _read_answers(out) if a["mode"] == "retrieval"]
    verify = json.loads((out / "metrics.json").read_text())["retrieval"]["verify"]["tuned_retrieval"]
    asked = [a for a in answers if a["verify_reply"] is not None]
    retried = [a for a in answers if a["retry"] is not None]
    assert asked and retried == asked and all(a["verify_reply"] == "No." for a in asked)
    assert verify == {"asked": len(asked), "said_no": len(asked), "answered_again": len(asked), "kept": len(asked),
                      "declined": 0}
    chunks = {c["id"]: c["text"] for c in map(json.loads, (run / "chunks.jsonl").read_text().splitlines())}
    for a in retried:  # answered from the second passage, cited as the passages are listed
        other = chunks[a["passages"][1]["chunk_id"]].strip()
        assert a["retry"] == {"passage": 2, "answer": f"{other} [2]", "verify_reply": "Yes"}
        assert a["answer"] == f"{other} [2]" and a["cited"] == [2] and not a["abstained"]
    assert "answered again" in (out / "report.md").read_text()


def test_evaluate_writes_metrics_answers_report_and_charts(tmp_path, trained_run, tiny_model, word_embedder):
    """Real generation on an older dataset (train and test only): four systems on the test split."""
    from datasets import load_from_disk

    run = grounded_copy(tmp_path, trained_run, splits=False)
    out = evaluate.run(eval_config(run, tiny_model, "evaluate.max_questions=3"))
    metrics = json.loads((out / "metrics.json").read_text())
    test = load_from_disk(str(run / "dataset"))["test"].to_list()
    assert metrics["models"] == ["base", "tuned"] and metrics["test_rows"] == len(test)
    assert list(metrics["sets"]) == ["test"] and metrics["retrieval"]["outside_documents"] == []
    assert [s["label"] for s in metrics["systems"]] == FOUR
    assert metrics["questions"] == 3 and metrics["generation"]["greedy"] is True
    for name in ("base", "tuned"):
        loss = metrics["loss"][name]
        assert loss["examples"] == len(test) and loss["tokens"] > 0
        assert loss["perplexity"] == pytest.approx(math.exp(loss["loss"]), rel=1e-9)
    for system in metrics["results"]["test"].values():
        for metric in ("rouge_l", "f1", "exact_match", "abstention_rate"):
            assert 0.0 <= system[metric] <= 1.0
        assert system["embedding_cosine"] is None  # switched off
    assert metrics["loss"]["base"]["loss"] != metrics["loss"]["tuned"]["loss"]  # the adapter changed something

    # The losses are the same numbers the model's own loss gives, token-weighted over the split.
    base, tokenizer = load_base(eval_config(run, tiny_model))
    assert metrics["loss"]["base"]["loss"] == pytest.approx(_independent_loss(base, tokenizer, test), rel=1e-4)
    tuned = attach_adapter(base, run / "train" / "adapter")
    assert metrics["loss"]["tuned"]["loss"] == pytest.approx(_independent_loss(tuned, tokenizer, test), rel=1e-4)

    answers = _read_answers(out)
    assert len(answers) == 4 * 3
    by_question = {r["question"]: r for r in test}
    for row in answers:
        assert {"system", "set", "question", "reference", "answer", "passages", "cited", "abstained", "scores",
                "source", "page", "group"} <= set(row)
        assert row["reference"] == by_question[row["question"]]["answer"]
        assert row["scores"]["f1"] == pytest.approx(evaluate.token_f1(evaluate.strip_citations(row["answer"]),
                                                                      row["reference"]))
        assert (row["passages"] is None) == (row["mode"] == "closed_book")
    tuned_rows = [a for a in answers if a["system"] == "tuned_retrieval"]
    assert metrics["results"]["test"]["tuned_retrieval"]["rouge_l"] == pytest.approx(
        sum(r["scores"]["rouge_l"] for r in tuned_rows) / 3)

    report = (out / "report.md").read_text()
    for section in ("## Four-way comparison", "## Validation loss and perplexity", "## In-domain vs held-out documents",
                    "## Per document", "## 5 best tuned + retrieval answers", "## 5 worst tuned + retrieval answers",
                    "## Training", "../train/loss_curve.png", "(metrics.png)", "(per_document.png)", "(four_way.png)"):
        assert section in report, section
    assert (out / "four_way.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").is_file() and (out / "versions.json").is_file()


def test_evaluate_engine_vllm_answers_the_base_and_the_adapter_in_one_engine(tmp_path, trained_run, tiny_model,
                                                                             monkeypatch):
    """evaluate.engine=vllm: one engine on train.model with room for the adapter's rank and the longest prompt;
    the base systems ask it alone, the tuned ones with the adapter; the prompts are the token ids transformers
    would be given; the engine is released before scoring; its answers are cached apart from transformers';
    PyTorch's cached GPU memory (the losses' logits) is handed back before the engine starts."""
    from transformers import AutoTokenizer

    import papertune.evaluate.stage as stage
    from papertune.chat import render_prompt
    from papertune.inference import Completion

    made, calls, released, events = [], [], [], []

    class Engine:
        def __init__(self, spec, **settings):
            made.append((spec, settings))
            events.append("engine")

        def generate(self, prompts, decoding, *, json_schema=None, adapter=None):
            calls.append((prompts, adapter, decoding.max_new_tokens))
            return [Completion(f"{'tuned' if adapter else 'base'} {i}", [], "stop", 0, 0) for i in range(len(prompts))]

        def release(self):
            released.append(True)

    def transformers_generate(model, tokenizer, batch, decoding, **kwargs):
        return [Completion("from transformers", [], "stop", 0, 0) for _ in batch]

    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    monkeypatch.setattr(stage, "VLLMEngine", Engine)
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: events.append("empty_cache"))
    monkeypatch.setattr(stage, "generate", lambda *a, **k: pytest.fail("transformers should not answer"))
    run = grounded_copy(tmp_path, trained_run)
    adapter = run / "train" / "adapter"
    cfg = eval_config(run, tiny_model, "evaluate.max_questions=3", "retrieval.top_k=2", "evaluate.engine=vllm",
                      "evaluate.memory_share=0.25", "retrieval.min_support=0",  # the answers are stand-ins
                      "retrieval.min_question_support=0")
    rows = [json.loads(line) for line in (evaluate.run(cfg) / "answers.jsonl").read_text().splitlines()]

    (spec, settings), = made
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
    longest = max(len(p) for prompts, _, _ in calls for p in prompts)
    assert spec == str(tiny_model) and settings["lora_rank"] == rank and settings["memory_share"] == 0.25
    assert settings["max_model_len"] >= longest + cfg.evaluate.max_new_tokens
    assert [a for _, a, _ in calls] == [None, None, adapter, adapter]  # base twice, then tuned twice
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = rows[0]
    assert calls[0][0][0] == tokenizer(render_prompt(tokenizer, first["question"], cfg.build.system_prompt),
                                       add_special_tokens=False)["input_ids"]
    assert {r["answer"].split()[0] for r in rows if r["model"] == "tuned"} == {"tuned"}
    assert {r["answer"].split()[0] for r in rows if r["model"] == "base"} == {"base"}
    assert released == [True]
    assert events == ["empty_cache", "engine"]
    # A rerun finds every answer in the cache: vLLM is not even loaded.
    evaluate.run(cfg)
    assert len(made) == 1 and len(calls) == 4
    # Answers of another engine are not vLLM's: transformers answers them anew.
    monkeypatch.setattr(stage, "generate", transformers_generate)
    again = evaluate.run(eval_config(run, tiny_model, "evaluate.max_questions=3", "retrieval.top_k=2",
                                     "retrieval.min_support=0", "retrieval.min_question_support=0"))
    assert {json.loads(line)["answer"] for line in (again / "answers.jsonl").read_text().splitlines()} == {
        "from transformers"}


def test_closed_book_mode_alone_gives_two_systems_and_needs_no_chunks(trained_run, tiny_model):
    assert not (trained_run / "chunks.jsonl").exists()
    out = evaluate.run(eval_config(trained_run, tiny_model, CLOSED_BOOK, "evaluate.max_questions=2"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["label"] for s in metrics["systems"]] == ["base closed-book", "tuned closed-book"]
    assert metrics["retrieval"] is None and list(metrics["results"]["test"]) == ["base_closed_book",
                                                                                "tuned_closed_book"]
    assert "recall@" not in (out / "report.md").read_text()
    assert {a["system"] for a in _read_answers(out)} == {"base_closed_book", "tuned_closed_book"}


def test_retrieval_without_chunks_is_a_clear_error(tmp_path, trained_run, tiny_model):
    run = tmp_path / "nochunks"
    shutil.copytree(trained_run / "dataset", run / "dataset")
    with pytest.raises(InputError, match="no chunks in"):
        evaluate.run(eval_config(run, tiny_model, "evaluate.tuned=false"))


def test_greedy_answers_match_unbatched_generation(trained_run, tiny_model):
    """Batched, left-padded generation gives each question the answer it gets alone."""
    from papertune.ask import generate_answer

    cfg = eval_config(trained_run, tiny_model)
    model, tokenizer = load_base(cfg)
    # The tiny model's tied embeddings make it repeat the prompt's last token (a newline): every answer would
    # strip to "", and the comparison would prove nothing. A random untied head gives real, distinct answers.
    torch.manual_seed(0)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 2)
    questions = ["What is LoRA?", "Why do attention heads matter for experiment 3 and its results?", "Hi"]
    batched = evaluate.generate_answers(model, tokenizer, questions, cfg.build.system_prompt, batch_size=3,
                                        max_new_tokens=6)
    alone = [generate_answer(model, tokenizer, q, cfg.build.system_prompt, max_new_tokens=6) for q in questions]
    assert all(answer.strip() for answer in alone) and len(set(alone)) == len(alone), alone
    assert batched == alone


def test_judge_scores_and_counts_unparseable(tmp_path, trained_run, tiny_model, word_embedder, monkeypatch):
    import papertune.evaluate.outside
    import papertune.llm

    run = grounded_copy(tmp_path, trained_run)
    seen, outside_seen = [], []

    class FakeJudge:
        name = "fake"

        def chat(self, conversations, *, max_new_tokens=None, temperature=None, json_schema=None):
            if json_schema["required"] == ["quote"]:  # where do the passages answer an outside question?
                outside_seen.extend(conversations)
                # away-0: a quote of its first passage's opening words; away-1: words of no passage.
                first = conversations[0][1]["content"].split("[1] ", 1)[1].split()[:8]
                return [json.dumps({"quote": " ".join(first)}),
                        json.dumps({"quote": "sparse routing sends each token to two experts"})]
            # Backends that can constrain the reply are asked for the two integer scores.
            assert json_schema["required"] == ["correctness", "groundedness"]
            replies = ['{"correctness": 4, "groundedness": 5}',
                       "```json\n{\"correctness\": 2, \"groundedness\": 3}\n```", "no idea"]
            start = len(seen)
            seen.extend(conversations)
            return [replies[(start + i) % 3] for i in range(len(conversations))]

    monkeypatch.setattr(papertune.llm, "make_chat_model", lambda cfg, setting: FakeJudge())
    # The fixture's outside references say nothing beyond their questions: let a quote stand on its words alone.
    monkeypatch.setattr(papertune.evaluate.outside, "QUOTE_HOLDS_REFERENCE", 0.0)
    out = evaluate.run(eval_config(run, tiny_model, "evaluate.max_questions=3", "evaluate.tuned=false",
                                   "evaluate.judge_enabled=true"))
    metrics = json.loads((out / "metrics.json").read_text())
    answers = _read_answers(out)
    judged = [a for a in answers if a["set"] != "outside"]
    # Every answer to an answerable question is judged (test and held-out, both systems); outside ones are not.
    assert len(seen) == len(judged) == 2 * (3 + 3)
    assert metrics["judge"]["unparseable"] == {"base_closed_book": 2, "base_retrieval": 2}
    assert metrics["judge"]["passages_found"] == len({a["chunk_id"] for a in judged})
    for set_name in ("test", "heldout"):
        for system in ("base_closed_book", "base_retrieval"):
            rows = [a for a in judged if a["set"] == set_name and a["system"] == system]
            graded = [a for a in rows if "judge_correctness" in a["scores"]]
            scores = [a["scores"]["judge_correctness"] for a in graded]
            assert metrics["results"][set_name][system]["judge_correctness"] == pytest.approx(sum(scores) / len(scores))
            # Correct: the judge's 4 or more, and the answer says what the reference says beyond the question.
            for a in graded:
                assert a["scores"]["reference_agreement"] == evaluate.reference_agreement(
                    a["question"], a["reference"], a["answer"])
            assert metrics["results"][set_name][system]["judge_correct"] == pytest.approx(
                sum(a["scores"]["judge_correctness"] >= 4 and a["scores"]["reference_agreement"] >= 0.2
                    for a in graded) / len(graded))
    assert all("judge_correctness" not in a["scores"] for a in answers if a["set"] == "outside")
    # The judge saw question, reference, the answer as given and the source chunk.
    chunks = {json.loads(line)["id"]: json.loads(line) for line in (run / "chunks.jsonl").read_text().splitlines()}
    for a, conversation in zip(judged, seen):
        user = conversation[1]["content"]
        assert a["question"] in user and f"Reference answer: {a['reference']}" in user
        assert chunks[a["chunk_id"]]["text"] in user and f"Answer to grade: {a['answer']}" in user
    report = (out / "report.md").read_text()
    assert "judged correct" in report and "judge correctness (1-5)" in report
    # Each outside question was read against the passages retrieved for it; the one whose quote is a passage's
    # words is left out of the declines, and named; the one quoting words of no passage stays.
    outside = [a for a in answers if a["set"] == "outside" and a["system"] == "base_retrieval"]
    assert [c[1]["content"].count("\n[") for c in outside_seen] == [len(a["passages"]) for a in outside]
    for a, conversation in zip(outside, outside_seen):
        assert a["question"] in conversation[1]["content"] and a["reference"] not in conversation[1]["content"]
    checked = metrics["retrieval"]["outside_judged_in_index"]
    assert (checked["checked"], checked["quoted"], checked["quote_in_passage"]) == (2, 2, 1)
    assert [e["id"] for e in checked["left_out"]] == ["away-0"]
    assert {a["id"] for a in answers if a.get("answer_in_index")} == {"away-0"}
    assert {s: r["questions"] for s, r in metrics["results"]["outside"].items()} == {
        "base_closed_book": 1, "base_retrieval": 1}
    assert "1 answered there" in report and "away-0" in report


def test_held_out_documents_are_reported_apart(tmp_path, trained_run, tiny_model):
    # Chunk-grouped (the trained run): every test document also feeds training.
    metrics = json.loads((evaluate.run(eval_config(trained_run, tiny_model, "evaluate.tuned=false", CLOSED_BOOK,
                                                   "evaluate.max_questions=2")) / "metrics.json").read_text())
    assert metrics["split"].startswith("chunk-grouped")
    assert metrics["groups"]["in_domain"]["test_rows"] == metrics["test_rows"]
    assert metrics["groups"]["held_out_document"]["test_rows"] == 0
    assert metrics["groups"]["held_out_document"]["loss"]["base"]["loss"] is None

    # Document-grouped: everything is a held-out document.
    run = tmp_path / "bydoc"
    write_rows(run, qa_rows(n_chunks=9))
    cfg = load_config(None, tiny_overrides(run, tiny_model) + ["build.group_by=document", "evaluate.tuned=false",
                                                               CLOSED_BOOK] + FAST_EVAL)
    build.run(cfg)
    metrics = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
    assert metrics["split"].startswith("document-grouped")
    held = metrics["groups"]["held_out_document"]
    assert held["test_rows"] == metrics["test_rows"] and metrics["groups"]["in_domain"]["test_rows"] == 0
    assert held["loss"]["base"]["loss"] == pytest.approx(metrics["loss"]["base"]["loss"])
    assert all(d["group"] == "held_out_document" for d in metrics["per_document"].values())

    # Mixed: a test row from a document the training split never saw is counted apart.
    from datasets import load_from_disk

    ds = load_from_disk(str(trained_run / "dataset"))
    mixed = tmp_path / "mixed"
    shutil.copytree(trained_run / "dataset", mixed / "dataset")
    test = ds["test"].to_list()
    test[0]["source"] = "unseen.pdf"
    from datasets import Dataset, DatasetDict

    shutil.rmtree(mixed / "dataset")
    DatasetDict({"train": ds["train"], "test": Dataset.from_list(test)}).save_to_disk(str(mixed / "dataset"))
    metrics = json.loads((evaluate.run(eval_config(mixed, tiny_model, "evaluate.tuned=false", CLOSED_BOOK))
                          / "metrics.json").read_text())
    assert metrics["split"].startswith("mixed")
    assert metrics["groups"]["held_out_document"]["test_rows"] == 1
    assert metrics["per_document"]["unseen.pdf"]["group"] == "held_out_document"


def test_missing_inputs_are_clear_errors(tmp_path, tiny_model):
    with pytest.raises(InputError, match="run `papertune build"):
        evaluate.run(eval_config(tmp_path / "empty", tiny_model))
    run = built_run(tmp_path, tiny_model, n_chunks=4)
    with pytest.raises(InputError, match=r"run `papertune train .*evaluate.tuned=false"):
        evaluate.run(eval_config(run, tiny_model))


def test_adapter_of_another_base_model_is_refused(tmp_path, trained_run, tiny_model):
    from papertune import cli

    other = tmp_path / "adapter"
    shutil.copytree(trained_run / "train" / "adapter", other)
    config_file = other / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    config_file.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        evaluate.run(eval_config(trained_run, tiny_model, f"evaluate.adapter={other}"))
    assert "HuggingFaceTB/SmolLM2-360M-Instruct" in str(err.value) and str(tiny_model) in str(err.value)
    sets = [x for o in tiny_overrides(trained_run, tiny_model) + [f"evaluate.adapter={other}"] for x in ("--set", o)]
    assert cli.main(["evaluate", "-q", *sets]) == 2


def test_an_adapter_trained_on_another_copy_of_the_same_model_is_accepted(tmp_path, trained_run, tiny_model):
    """Two conversions of one GGUF file (another virtual environment, another cache folder name) are the same
    model: same config.json and weights. A copy with other weights is not."""
    from papertune.inference import check_adapter

    copy = tmp_path / "copy-of-base"
    shutil.copytree(tiny_model, copy)
    other = tmp_path / "adapter"
    shutil.copytree(trained_run / "train" / "adapter", other)
    config_file = other / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data["base_model_name_or_path"] = str(copy)
    config_file.write_text(json.dumps(data))
    check_adapter(other, eval_config(trained_run, tiny_model))
    weights = sorted(copy.glob("*.safetensors"))[0]
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="was trained on"):
        check_adapter(other, eval_config(trained_run, tiny_model))


def test_evaluate_config_is_validated():
    with pytest.raises(ConfigError, match="evaluate.max_questions must be >= 0"):
        load_config(None, ["evaluate.max_questions=-1"])
    with pytest.raises(ConfigError, match="evaluate.base and evaluate.tuned are both false"):
        load_config(None, ["evaluate.base=false", "evaluate.tuned=false"])
    with pytest.raises(ConfigError, match="evaluate.judge.batch_size must be >= 1"):
        load_config(None, ["evaluate.judge_enabled=true", "evaluate.judge.batch_size=0"])
    cpu = load_config(REPO / "configs" / "cpu.yaml")
    assert cpu.evaluate.max_questions > 0 and cpu.evaluate.temperature == 0


@pytest.mark.slow
def test_cpu_profile_evaluates_smollm2(tmp_path):
    """The real 135M model, tuned a few steps, against itself untuned, closed-book and with retrieval (BM25
    and all-MiniLM); answers scored with all-MiniLM."""
    run = tmp_path / "run"
    rows = qa_rows(n_chunks=5)
    write_rows(run, rows)
    by_chunk: dict[str, list[dict]] = {}
    for row in rows:
        by_chunk.setdefault(row["chunk_id"], []).append(row)
    (run / "chunks.jsonl").write_text("".join(json.dumps(_chunk_for(c)) + "\n" for c in by_chunk.values()))
    overrides = [f"run_dir={run}", f"build.model={SMOLLM2_PACKAGED}", "build.num_proc=1",
                 f"train.model={SMOLLM2_PACKAGED}", "train.max_steps=2", "train.eval_strategy=steps",
                 "train.eval_steps=2", "train.learning_rate=1e-3", "train.per_device_train_batch_size=2",
                 "train.gradient_accumulation_steps=1", "evaluate.max_questions=2", "evaluate.max_new_tokens=8",
                 "evaluate.batch_size=2"]
    cfg = load_config(REPO / "configs" / "cpu.yaml", overrides)
    build.run(cfg)
    train.run(cfg)
    out = evaluate.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"]["tuned"]["loss"] < metrics["loss"]["base"]["loss"]
    assert [s["label"] for s in metrics["systems"]] == FOUR
    for system in metrics["results"]["test"].values():
        assert -1.0 <= system["embedding_cosine"] <= 1.0
    assert 0.0 <= metrics["retrieval"]["recall_at_k"]["test"] <= 1.0
    answers = _read_answers(out)
    assert len(answers) == 4 * 2 and all(a["answer"] for a in answers)
    assert "embedding cosine" in (out / "report.md").read_text()


def test_loss_batches_are_capped_by_tokens_and_give_the_same_losses(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papertune.evaluate import metrics

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * 2 + list(range(7, 5 + n))}
                for n in (12, 30, 7, 19, 25)]
    one_by_one = metrics.example_losses(model, tokenizer, examples, batch_size=1)
    shapes = []
    real_forward = model.forward

    def forward(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    monkeypatch.setattr(metrics, "LOSS_BATCH_TOKENS", 60)
    capped = metrics.example_losses(model, tokenizer, examples, batch_size=64)
    assert all(rows * width <= 60 for rows, width in shapes) and len(shapes) > 1
    assert sum(rows for rows, _ in shapes) == len(examples)
    for (loss_a, n_a), (loss_b, n_b) in zip(one_by_one, capped, strict=True):
        assert n_a == n_b and loss_b == pytest.approx(loss_a, rel=1e-4)


def test_four_way_table_shows_the_quote_rate_only_for_a_model_that_quotes():
    from papertune.evaluate.report import four_way_table

    def metrics(quote_rate):
        row = {"judge_correct": 0.5, "abstention_rate": 0.1, "quote_rate": quote_rate}
        return {"systems": [{"name": "tuned_retrieval", "label": "tuned + retrieval", "mode": "retrieval"}],
                "retrieval": None, "sets": {"heldout": {"answerable": True, "questions": 10}},
                "results": {"heldout": {"tuned_retrieval": row}}}

    assert not any("quote" in line for line in four_way_table(metrics(0.0)))
    assert not any("quote" in line for line in four_way_table(metrics(None)))
    assert "|  | answers with a quote found in a passage | 0.900 |" in four_way_table(metrics(0.9))


def test_an_outside_question_an_indexed_chunk_answers_is_left_out(tmp_path, trained_run, tiny_model, word_embedder,
                                                                    monkeypatch):
    """An outside question whose answer an indexed chunk says word for word (another post repeating it) is
    no question about a document in no index: it is left out of the outside set, named, and counted."""
    from datasets import Dataset, DatasetDict, load_from_disk

    import papertune.evaluate.stage as stage
    from papertune.chat import ABSTAIN
    from papertune.evaluate.sets import answered_in_index
    from papertune.inference import Completion

    run = grounded_copy(tmp_path, trained_run)
    ds = load_from_disk(str(run / "dataset"))
    outside = ds["outside"].to_list()
    outside[1]["answer"] = ds["heldout"][0]["answer"]  # held.md's chunk, in the index, says it
    DatasetDict({**{name: ds[name] for name in ds}, "outside": Dataset.from_list(outside)}).save_to_disk(
        str(run / "dataset.new"))
    shutil.rmtree(run / "dataset")
    (run / "dataset.new").rename(run / "dataset")
    chunk_texts = [json.loads(line)["text"] for line in (run / "chunks.jsonl").read_text().splitlines()]
    assert answered_in_index(outside, chunk_texts) == [0, 1]  # away.md's own chunk says both
    assert answered_in_index(outside, [t for t in chunk_texts if "outside paper" not in t]) == [1]

    monkeypatch.setattr(stage, "generate", lambda model, tokenizer, batch, decoding, **kw: [
        Completion(ABSTAIN, [], "stop", 0, 0) for _ in batch])
    out = evaluate.run(eval_config(run, tiny_model, "evaluate.base=false", "evaluate.modes=[retrieval]",
                                   "retrieval.top_k=2"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["retrieval"]["outside_answer_in_index"] == [outside[1]["id"]]
    assert metrics["sets"]["outside"] == {"rows": 2, "questions": 1, "answerable": False}
    assert [a["id"] for a in _read_answers(out) if a["set"] == "outside"] == [outside[0]["id"]]
    assert f"1 of their questions left out too, as an indexed chunk says their answer ({outside[1]['id']})" in (
        out / "report.md").read_text()

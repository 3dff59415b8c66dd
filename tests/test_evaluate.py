"""The evaluate stage: scoring functions on known strings, and base vs tuned on a tiny trained model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import FAST_EVAL, REPO, built_run, qa_rows, tiny_overrides, write_rows
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


# --- the stage on a tiny model -----------------------------------------------------------------------


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


def test_evaluate_writes_metrics_answers_report_and_charts(trained_run, tiny_model):
    from datasets import load_from_disk

    out = evaluate.run(eval_config(trained_run, tiny_model, "evaluate.max_questions=3"))
    metrics = json.loads((out / "metrics.json").read_text())
    test = load_from_disk(str(trained_run / "dataset"))["test"].to_list()
    assert metrics["models"] == ["base", "tuned"] and metrics["test_rows"] == len(test)
    assert metrics["questions"] == 3 and metrics["generation"]["greedy"] is True
    for name in ("base", "tuned"):
        loss = metrics["loss"][name]
        assert loss["examples"] == len(test) and loss["tokens"] > 0
        assert loss["perplexity"] == pytest.approx(math.exp(loss["loss"]), rel=1e-9)
        for metric in ("rouge_l", "f1", "exact_match"):
            assert 0.0 <= metrics["answers"][name][metric] <= 1.0
        assert metrics["answers"][name]["embedding_cosine"] is None  # switched off
    assert metrics["loss"]["base"]["loss"] != metrics["loss"]["tuned"]["loss"]  # the adapter changed something

    # The losses are the same numbers the model's own loss gives, token-weighted over the split.
    base, tokenizer = load_base(eval_config(trained_run, tiny_model))
    assert metrics["loss"]["base"]["loss"] == pytest.approx(_independent_loss(base, tokenizer, test), rel=1e-4)
    tuned = attach_adapter(base, trained_run / "train" / "adapter")
    assert metrics["loss"]["tuned"]["loss"] == pytest.approx(_independent_loss(tuned, tokenizer, test), rel=1e-4)

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3
    by_question = {r["question"]: r for r in test}
    for row in answers:
        assert {"question", "reference", "base_answer", "tuned_answer", "scores", "source", "page", "group"} <= set(row)
        assert row["reference"] == by_question[row["question"]]["answer"]
        assert row["scores"]["tuned"]["f1"] == pytest.approx(evaluate.token_f1(row["tuned_answer"], row["reference"]))
        assert row["scores"]["base"]["exact_match"] == evaluate.exact_match(row["base_answer"], row["reference"])
    assert metrics["answers"]["tuned"]["rouge_l"] == pytest.approx(
        sum(r["scores"]["tuned"]["rouge_l"] for r in answers) / 3)

    report = (out / "report.md").read_text()
    for section in ("## Validation loss and perplexity", "## Answer quality", "## In-domain vs held-out documents",
                    "## Per document", "## 5 best tuned answers", "## 5 worst tuned answers", "## Training",
                    "../train/loss_curve.png", "(metrics.png)", "(per_document.png)"):
        assert section in report, section
    for png in ("metrics.png", "per_document.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (out / "config.yaml").is_file() and (out / "versions.json").is_file()


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


def test_judge_scores_and_counts_unparseable(trained_run, tiny_model, monkeypatch):
    import papertune.llm
    from datasets import load_from_disk

    test = load_from_disk(str(trained_run / "dataset"))["test"].to_list()
    chunks = {r["chunk_id"]: {"id": r["chunk_id"], "text": f"Passage of {r['chunk_id']}.", "source": r["source"]}
              for r in test}
    (trained_run / "chunks.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks.values()))
    seen = []

    class FakeJudge:
        name = "fake"

        def chat(self, conversations, *, max_new_tokens=None, temperature=None, json_schema=None):
            # Backends that can constrain the reply are asked for the two integer scores.
            assert json_schema["required"] == ["correctness", "groundedness"]
            seen.extend(conversations)
            replies = ['{"correctness": 4, "groundedness": 5}', "```json\n{\"correctness\": 2, \"groundedness\": 3}\n```",
                       "no idea"]
            return [replies[i % 3] for i in range(len(conversations))]

    monkeypatch.setattr(papertune.llm, "make_chat_model", lambda cfg, setting: FakeJudge())
    out = evaluate.run(eval_config(trained_run, tiny_model, "evaluate.max_questions=3", "evaluate.tuned=false",
                                   "evaluate.judge_enabled=true"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"] == ["base"]
    assert metrics["judge"]["unparseable"] == {"base": 1} and metrics["judge"]["passages_found"] == 3
    assert metrics["answers"]["base"]["judge_correctness"] == pytest.approx(3.0)
    assert metrics["answers"]["base"]["judge_groundedness"] == pytest.approx(4.0)
    # The judge saw question, reference, answer and the source passage.
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    first = seen[0][1]["content"]
    assert answers[0]["question"] in first and answers[0]["reference"] in first
    assert f"Passage of {answers[0]['chunk_id']}." in first and "Answer to grade:" in first
    assert "judge correctness (1-5)" in (out / "report.md").read_text()


def test_held_out_documents_are_reported_apart(tmp_path, trained_run, tiny_model):
    # Chunk-grouped (the trained run): every test document also feeds training.
    metrics = json.loads((evaluate.run(eval_config(trained_run, tiny_model, "evaluate.tuned=false",
                                                   "evaluate.max_questions=2")) / "metrics.json").read_text())
    assert metrics["split"].startswith("chunk-grouped")
    assert metrics["groups"]["in_domain"]["test_rows"] == metrics["test_rows"]
    assert metrics["groups"]["held_out_document"]["test_rows"] == 0
    assert metrics["groups"]["held_out_document"]["loss"]["base"]["loss"] is None

    # Document-grouped: everything is a held-out document.
    run = tmp_path / "bydoc"
    write_rows(run, qa_rows(n_chunks=9))
    cfg = load_config(None, tiny_overrides(run, tiny_model) + ["build.group_by=document", "evaluate.tuned=false"]
                      + FAST_EVAL)
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
    metrics = json.loads((evaluate.run(eval_config(mixed, tiny_model, "evaluate.tuned=false"))
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
    """The real 135M model, tuned a few steps, against itself untuned; answers scored with all-MiniLM."""
    run = tmp_path / "run"
    write_rows(run, qa_rows(n_chunks=5))
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
    for name in ("base", "tuned"):
        assert -1.0 <= metrics["answers"][name]["embedding_cosine"] <= 1.0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all(a["base_answer"] for a in answers)
    assert "embedding cosine" in (out / "report.md").read_text()

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from papertune import augment
from papertune.augment import Adversary, Grammar, Lexicon, Paraphraser, TermGroup, wordnet_data
from papertune.cli import main
from papertune.config import load_config
from papertune.errors import ConfigError, InputError
from papertune.rundir import read_jsonl
from papertune.text import normalize

CHUNK_FIELDS = ("chunk_id", "source", "title", "section", "page_start", "page_end", "generator", "model")

QUESTIONS = [
    ("What is LoRA?", "A method that trains low-rank matrices added to frozen weights."),
    ("How does LoRA reduce memory usage?", "LoRA trains two small matrices per layer, so LoRA needs far less memory."),
    ("Why is the attention mechanism expensive for long sequences?", "Its cost grows with the square of the length."),
    ("What is the purpose of gradient checkpointing?", "It trades compute for memory by recomputing activations."),
    ("How does QLoRA quantize the base model?", "To 4-bit NormalFloat with double quantization."),
    ("What are the main advantages of parameter-efficient fine-tuning?", "Less memory and small checkpoints."),
    ("Does fine-tuning improve accuracy on small datasets?", "Yes, fine-tuning helps when the data matches the task."),
    ("What are large language models used for?", "Large language models answer questions and write text."),
    ("How is the learning rate scheduled during training?", "With a linear warm-up and cosine decay."),
    ("What happens when the batch size is increased?", "Each step sees more examples and uses more memory."),
    ("Which optimizer does the paper propose for Transformer models?", "AdamW with 8-bit states for Transformer models."),
    ("How many parameters does the model have?", "About 3 billion."),
]


def pair(i: int, question: str, answer: str) -> dict:
    return {
        "id": f"doc{i % 3}.pdf#{i:04d}-q0", "question": question, "answer": answer,
        "chunk_id": f"doc{i % 3}.pdf#{i:04d}", "source": f"doc{i % 3}.pdf", "title": f"Doc {i % 3}",
        "section": "Method", "page_start": i, "page_end": i + 1, "generator": "rules", "model": None,
        "parent_id": None, "augmentation": None,
    }


ROWS = [pair(i, q, a) for i, (q, a) in enumerate(QUESTIONS)]
OFF = {"paraphrase_rate": 0, "noise_rate": 0, "entity_replacement_rate": 0, "adversarial_rate": 0,
       "alternative_answer_rate": 0}


def write_curated(run_dir: Path, rows: list[dict], extra_lines: list[str] = ()) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (run_dir / "qa_curated.jsonl").write_text("\n".join(lines) + "\n")


def config(run_dir: Path, **settings: object):
    return load_config(None, [f"run_dir={run_dir}"] + [f"augment.{k}={v}" for k, v in settings.items()])


def output(run_dir: Path) -> tuple[list[dict], dict]:
    rows = list(read_jsonl(run_dir / "qa_augmented.jsonl"))
    report = json.loads((run_dir / "augment" / "report.json").read_text())
    return rows, report


def variants_of(rows: list[dict], technique: str) -> list[dict]:
    return [r for r in rows if r["augmentation"] == technique]


@pytest.fixture(scope="module")
def wn():
    return augment.wordnet()


# ---------------------------------------------------------------------------------------------
# the stage


def test_every_variant_points_at_its_original_and_keeps_chunk_fields(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    out = augment.run(config(tmp_path, paraphrase_rate=1, noise_rate=1, entity_replacement_rate=1, adversarial_rate=1))
    assert out == tmp_path / "qa_augmented.jsonl"
    rows, report = output(tmp_path)
    originals = {r["id"]: r for r in ROWS}
    assert [r for r in rows if r["augmentation"] is None] == ROWS
    variants = [r for r in rows if r["augmentation"] is not None]
    assert len(variants) == report["variants"] == len(rows) - len(ROWS)
    assert len({r["id"] for r in rows}) == len(rows)  # ids unique
    for v in variants:
        parent = originals[v["parent_id"]]
        assert v["id"] == f"{parent['id']}~{v['augmentation']}"
        assert v["augmentation"] in augment.TECHNIQUES
        for key in CHUNK_FIELDS:
            assert v[key] == parent[key], key
        assert v["question"] != parent["question"]
        if v["augmentation"] != "entity_replacement":
            assert v["answer"] == parent["answer"]
    # Each original is followed by its own variants.
    for i, row in enumerate(rows):
        if row["augmentation"] is not None:
            assert rows[i - 1]["id"] in (row["parent_id"], f"{row['parent_id']}~{rows[i - 1]['augmentation']}")
    tech = report["techniques"]
    for name in ("paraphrase", "noise", "entity_replacement", "adversarial"):
        assert tech[name]["made"] == len(variants_of(rows, name)), name
        assert tech[name]["target"] == len(ROWS)
    assert tech["noise"]["made"] == len(ROWS)  # noise always applies
    # Entity replacement needs a lexicon term in the question; the one pair without one is skipped.
    assert tech["entity_replacement"]["skipped"] == {"no_lexicon_term_in_question": 1, "not_enough_applicable_pairs": 1}
    assert tech["alternative_answer"] == {"rate": 0.0, "target": 0, "made": 0, "skipped": {}, "details": {}}
    assert report["input"] == len(ROWS) and report["malformed_lines"] == 0
    assert sum(tech["adversarial"]["details"].values()) == tech["adversarial"]["made"]
    assert (tmp_path / "augment" / "config.yaml").is_file()


def test_rates_pick_that_share_of_pairs(tmp_path: Path):
    rows = [pair(i, f"How does method number {i} change the training loss?", "It lowers it.") for i in range(40)]
    write_curated(tmp_path, rows)
    augment.run(config(tmp_path, **{**OFF, "noise_rate": 0.25}))
    out, report = output(tmp_path)
    assert len(variants_of(out, "noise")) == 10 == report["techniques"]["noise"]["made"]
    assert len(out) == 50


def test_rates_of_zero_switch_techniques_off(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    augment.run(config(tmp_path, **OFF))
    rows, report = output(tmp_path)
    assert rows == ROWS and report["variants"] == 0
    assert all(t["made"] == 0 and t["target"] == 0 for t in report["techniques"].values())
    augment.run(config(tmp_path, **{**OFF, "entity_replacement_rate": 1}))
    rows, _ = output(tmp_path)
    assert {r["augmentation"] for r in rows} == {None, "entity_replacement"}


def test_deterministic_under_the_seed(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    settings = {"paraphrase_rate": 0.5, "noise_rate": 0.5, "entity_replacement_rate": 0.5, "adversarial_rate": 0.5}
    augment.run(config(tmp_path, **settings))
    first = (tmp_path / "qa_augmented.jsonl").read_bytes()
    augment.run(config(tmp_path, **settings))
    assert (tmp_path / "qa_augmented.jsonl").read_bytes() == first
    augment.run(config(tmp_path, **settings, seed=7))
    assert (tmp_path / "qa_augmented.jsonl").read_bytes() != first


def test_malformed_lines_are_reported_and_skipped(tmp_path: Path, caplog):
    write_curated(tmp_path, ROWS[:2], extra_lines=["{not json", json.dumps({"id": "x", "question": "Why?"}),
                                                   json.dumps(ROWS[0])])
    with caplog.at_level("WARNING"):
        augment.run(config(tmp_path, **OFF))
    rows, report = output(tmp_path)
    assert rows == ROWS[:2]
    source = tmp_path / "qa_curated.jsonl"
    assert report["malformed_lines"] == 3
    assert report["malformed"][0].startswith(f"{source}:3: not valid JSON")
    assert report["malformed"][1] == f"{source}:4: empty or missing answer; line skipped"
    assert "occurs more than once" in report["malformed"][2]
    assert f"{source}:3:" in caplog.text


def test_rows_with_fields_of_the_wrong_type_are_skipped_naming_file_and_line(tmp_path: Path):
    write_curated(tmp_path, ROWS[:2], extra_lines=[json.dumps({**ROWS[2], "question": 3.5}),
                                                   json.dumps({**ROWS[3], "answer": ["a", "list"]}),
                                                   json.dumps({**ROWS[4], "id": 5})])
    assert main(["augment", "--run-dir", str(tmp_path), "-q", *(f"--set=augment.{k}={v}" for k, v in OFF.items())]) == 0
    rows, report = output(tmp_path)
    assert rows == ROWS[:2] + [{**ROWS[4], "id": "5"}]  # an integer id is read as a string
    source = tmp_path / "qa_curated.jsonl"
    assert report["malformed"] == [f"{source}:3: question must be a string, got a number; line skipped",
                                   f"{source}:4: answer must be a string, got a list; line skipped"]


def test_missing_input_says_to_run_curate(tmp_path: Path):
    with pytest.raises(InputError, match="papertune curate"):
        augment.run(config(tmp_path))
    assert main(["augment", "--run-dir", str(tmp_path), "-q"]) == 2


def test_cli(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    assert main(["augment", "--run-dir", str(tmp_path), "-q", "--set", "augment.paraphrase_rate=0"]) == 0
    rows, report = output(tmp_path)
    assert report["techniques"]["noise"]["made"] == round(0.2 * len(ROWS))


def test_config_validation():
    with pytest.raises(ConfigError, match="augment.noise_rate must be between 0 and 1"):
        load_config(None, ["augment.noise_rate=1.5"])
    with pytest.raises(ConfigError, match="augment.paraphrase_backend must be one of"):
        load_config(None, ["augment.paraphrase_backend=thesaurus"])


# ---------------------------------------------------------------------------------------------
# noise


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_typos_follow_the_configured_rate():
    text = " ".join(q for q, _ in QUESTIONS)
    letters = sum(c.isalpha() for c in text)
    for prob in (0.02, 0.05, 0.1):
        typos = [augment.add_typos(text, prob, random.Random(seed))[1] for seed in range(20)]
        rate = sum(typos) / (20 * letters)
        assert abs(rate - prob) < prob * 0.15, (prob, rate)
        noisy, n = augment.add_typos(text, prob, random.Random(1))
        assert n <= levenshtein(text, noisy) <= 2 * n  # a swap is two edits, every other typo one
    assert augment.add_typos(text, 0.0, random.Random(1)) == (text, 0)
    digits = "GPT-4 has 175 billion parameters and 96 layers" * 5
    noisy, _ = augment.add_typos(digits, 0.5, random.Random(2))
    assert re.findall(r"\d+", noisy) == re.findall(r"\d+", digits)


def test_noise_changes_only_the_question(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    augment.run(config(tmp_path, **{**OFF, "noise_rate": 1, "noise_char_prob": 0.05}))
    rows, report = output(tmp_path)
    originals = {r["id"]: r for r in ROWS}
    noisy = variants_of(rows, "noise")
    assert len(noisy) == len(ROWS)
    for v in noisy:
        parent = originals[v["parent_id"]]
        assert v["answer"] == parent["answer"]
        assert v["question"] != parent["question"]
        # Noise is small: the question is still recognisably the same one.
        assert levenshtein(v["question"].lower(), parent["question"].lower()) <= 0.35 * len(parent["question"])
    assert report["techniques"]["noise"]["details"]["typos"] >= len(ROWS) // 2
    kinds = set(report["techniques"]["noise"]["details"])
    assert {"typos"} < kinds  # punctuation, casing or a grammatical slip too


def test_grammatical_slips():
    text, kind = augment.grammatical_slip("Why is the attention mechanism expensive?", random.Random(0))
    assert kind in ("drop_article", "agreement")
    assert text in ("Why is attention mechanism expensive?", "Why are the attention mechanism expensive?")
    assert augment.grammatical_slip("Explain LoRA.", random.Random(0)) == ("Explain LoRA.", None)


# ---------------------------------------------------------------------------------------------
# entity replacement


def test_lexicon_is_packaged_and_well_formed():
    lexicon = augment.load_lexicon()
    assert len(lexicon.groups) >= 40
    terms = [t for g in lexicon.groups for t in g.terms]
    assert "Transformer models" in terms and "sequence models" in terms and "LoRA" in terms
    assert {g.kind for g in lexicon.groups} <= set(lexicon.generic)


def test_entity_replacement_is_consistent_in_question_and_answer():
    lexicon = augment.load_lexicon()
    q, a, detail = augment.replace_entities(
        "How does LoRA reduce memory?", "LoRA trains two small matrices, and LoRA keeps the base frozen.",
        lexicon, random.Random(0))
    assert detail == "LoRA -> low-rank adaptation"
    assert q == "How does low-rank adaptation reduce memory?"
    assert a == "Low-rank adaptation trains two small matrices, and low-rank adaptation keeps the base frozen."
    # Case-insensitive terms keep the case they were written in; the report's own example.
    q, a, _ = augment.replace_entities("Why do Transformer models need positional information?",
                                       "Unlike RNNs, transformer models see a set of tokens.", lexicon,
                                       random.Random(0))
    assert q == "Why do sequence models need positional information?"
    assert a == "Unlike RNNs, sequence models see a set of tokens."
    q, a, _ = augment.replace_entities("Why does fine-tuning help?", "Fine-tuning adapts the weights.",
                                       lexicon, random.Random(0))
    assert (q, a) == ("Why does adaptation help?", "Adaptation adapts the weights.")
    assert augment.replace_entities("How many parameters does the model have?", "3B", lexicon, random.Random(0)) is None


def test_entity_replacement_whole_words_and_articles():
    lexicon = Lexicon([TermGroup("method", ("LoRA", "low-rank adaptation")),
                       TermGroup("model", ("large language model", "LLM"))],
                      augment.load_lexicon().generic, set())
    q, a, _ = augment.replace_entities("How does LoRA differ from QLoRA?", "QLoRA quantizes; LoRA does not.",
                                       Lexicon([lexicon.groups[0]], lexicon.generic, set()), random.Random(0))
    assert q == "How does low-rank adaptation differ from QLoRA?"
    assert a == "QLoRA quantizes; low-rank adaptation does not."
    q, a, _ = augment.replace_entities("Why is a large language model slow?", "A large language model is big.",
                                       Lexicon([lexicon.groups[1]], lexicon.generic, set()), random.Random(0))
    assert (q, a) == ("Why is an LLM slow?", "An LLM is big.")
    # Acronyms match only as written: "llm" in lower case is not the term.
    assert lexicon.find("the llm and the LLM")[0].text == "LLM"


def test_entity_variants_in_the_stage(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    augment.run(config(tmp_path, **{**OFF, "entity_replacement_rate": 1}))
    rows, report = output(tmp_path)
    lexicon = augment.load_lexicon()
    originals = {r["id"]: r for r in ROWS}
    for v in variants_of(rows, "entity_replacement"):
        parent = originals[v["parent_id"]]
        old_terms = {m.term for m in lexicon.find(parent["question"])}
        new_terms = {m.term for m in lexicon.find(v["question"])}
        swapped_out = old_terms - new_terms
        assert len(swapped_out) == 1
        (gone,) = swapped_out
        # Consistent: the term swapped out of the question is gone from the answer too.
        assert gone not in {m.term for m in lexicon.find(v["answer"])}
    details = report["techniques"]["entity_replacement"]["details"]
    assert sum(details.values()) == len(variants_of(rows, "entity_replacement")) == len(ROWS) - 1
    assert all(" -> " in d for d in details)


# ---------------------------------------------------------------------------------------------
# paraphrase (WordNet)


def test_wordnet_folder_is_set_up_once(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PAPERTUNE_CACHE", str(tmp_path / "cache"))
    root = augment.wordnet_data_dir()
    lexnames = (root / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[-1] == "44\tadj.ppl\t3"
    assert (root / "corpora" / "wordnet" / "data.noun").is_file()
    assert augment.wordnet_data_dir() == root


def test_missing_wordnet_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PAPERTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wordnet_data, "WORDNET_SYSTEM_DIR", tmp_path / "no-wordnet")
    with pytest.raises(ConfigError, match="apt-get install wordnet-base wordnet-sense-index"):
        augment.wordnet_data_dir()
    write_curated(tmp_path, ROWS)
    with pytest.raises(ConfigError, match="augment.paraphrase_backend"):
        augment.run(config(tmp_path, **{**OFF, "paraphrase_rate": 1}))
    # Adversarial phrasings only use WordNet when it is there.
    augment.run(config(tmp_path, **{**OFF, "adversarial_rate": 1}))
    assert len(variants_of(output(tmp_path)[0], "adversarial")) == len(ROWS)


def protected_terms(text: str) -> set[str]:
    return augment.key_terms(text, augment.load_lexicon())


def test_wordnet_paraphrase_is_different_readable_and_keeps_terms(wn):
    lexicon = augment.load_lexicon()
    para = Paraphraser(lexicon, Grammar(wn))
    made = 0
    for question, _ in QUESTIONS:
        for seed in range(3):
            result = para.paraphrase(question, random.Random(seed))
            if result is None:
                continue
            made += 1
            text, done = result
            assert done and set(done) <= {"synonyms", "rewrite"}
            assert normalize(text) != normalize(question)
            assert text[0].isupper() and text[-1] in "?." and "  " not in text
            assert abs(len(text.split()) - len(question.split())) <= 6
            for term in protected_terms(question):  # AI terms, acronyms and numbers survive unchanged
                assert term in text.lower(), (term, text)
    assert made >= 0.8 * 3 * len(QUESTIONS)


def test_syntactic_rewrites(wn):
    para = Paraphraser(augment.load_lexicon(), Grammar(wn))
    assert "Could you explain what LoRA is?" in para.rewrites("What is LoRA?")
    assert "In what way does LoRA work?" in para.rewrites("How does LoRA work?")
    assert "Could you explain how LoRA reduces memory?" in para.rewrites("How does LoRA reduce memory?")
    assert "What purpose does gradient checkpointing serve?" in para.rewrites("What is the purpose of gradient checkpointing?")
    assert "How does BERT differ from GPT-2?" in para.rewrites("What is the difference between BERT and GPT-2?")
    assert "Can you tell me whether QLoRA uses 4-bit NormalFloat?" in para.rewrites("Does QLoRA use 4-bit NormalFloat?")


def test_synonyms_touch_content_words_only(wn):
    para = Paraphraser(augment.load_lexicon(), Grammar(wn))
    question = "What is the main purpose of 4-bit quantization in QLoRA and how does it affect the model?"
    text, n = para.substitute(question, random.Random(0), max_words=5)
    assert n >= 1
    changed = [(a, b) for a, b in zip(question.split(), text.split()) if a != b]
    assert changed and all(a.strip("?") in ("main", "purpose") for a, _ in changed), changed
    assert "4-bit quantization in QLoRA" in text and "the model?" in text
    assert para.synonym("purpose", "the") == "intention"
    assert para.synonym("attention", "the") is None  # protected: WordNet's "attention" is not the field's


def test_paraphrase_stage(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    augment.run(config(tmp_path, **{**OFF, "paraphrase_rate": 1}))
    rows, report = output(tmp_path)
    paraphrases = variants_of(rows, "paraphrase")
    tally = report["techniques"]["paraphrase"]
    assert len(paraphrases) == tally["made"] >= len(ROWS) - 2
    assert tally["made"] + tally["skipped"].get("not_enough_applicable_pairs", 0) == len(ROWS)
    assert set(tally["details"]) <= {"synonyms", "rewrite"}


# ---------------------------------------------------------------------------------------------
# adversarial


def test_adversarial_phrasings(wn):
    adversary = Adversary(augment.load_lexicon(), Grammar(wn))
    rng = random.Random(0)
    q = "How does LoRA reduce memory usage?"
    assert adversary.is_it_true(q, rng) in {
        "Is it true that nobody really knows how LoRA reduces memory usage?",
        "Is it true that the literature never explains how LoRA reduces memory usage?",
        "Is it true that it is still unclear how LoRA reduces memory usage?",
    }
    vague = adversary.vague_scope(q, rng)
    assert "LoRA" not in vague and vague.startswith("How does ") and vague.endswith(" reduce memory usage?")
    assert adversary.pronoun(q, rng) in ("How does it reduce memory usage?", "And how does it reduce memory usage?",
                                         "So how does it reduce memory usage?")
    assert adversary.pronoun("Can Transformer models handle long documents?", random.Random(3)).lower().endswith(
        "can they handle long documents?")
    assert adversary.pronoun("What is LoRA?", rng) is None  # "What is it?" asks nothing
    assert adversary.vague_scope("How many parameters does the model have?", rng) is None
    leading = adversary.leading("What is the purpose of gradient checkpointing?", random.Random(1))
    assert leading.endswith("what is the purpose of gradient checkpointing?") and len(leading) > 60


def test_adversarial_stage_keeps_the_answer(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    augment.run(config(tmp_path, **{**OFF, "adversarial_rate": 1}))
    rows, report = output(tmp_path)
    originals = {r["id"]: r for r in ROWS}
    adversarial = variants_of(rows, "adversarial")
    assert len(adversarial) == len(ROWS)
    for v in adversarial:
        assert v["answer"] == originals[v["parent_id"]]["answer"]
    assert set(report["techniques"]["adversarial"]["details"]) <= set(augment.ADVERSARIAL_KINDS)
    assert len(report["techniques"]["adversarial"]["details"]) >= 3


# ---------------------------------------------------------------------------------------------
# LLM-written variants, with a fake chat model


class FakeChat:
    name = "fake"

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[list[list[dict]]] = []

    def chat(self, conversations, *, max_new_tokens=None, temperature=None):
        self.calls.append(list(conversations))
        return [self.reply(c) for c in conversations]


def _user(conversation) -> str:
    return conversation[-1]["content"]


def test_llm_paraphrase(tmp_path: Path):
    write_curated(tmp_path, ROWS)

    def reply(conversation):
        question = _user(conversation).split("Question: ", 1)[1].split("\n", 1)[0]
        if "LoRA" in question and "QLoRA" not in question:
            return question  # unchanged: not a paraphrase
        if "QLoRA" in question:
            return "Yes, it does."  # an answer, not a paraphrase
        if "gradient checkpointing" in question:
            return "What is the purpose of this trick?"  # loses the term the question is about
        return f'Paraphrase: "In other words, {question[0].lower()}{question[1:]}"\nSome chatter.'

    fake = FakeChat(reply)
    augment.run(config(tmp_path, **{**OFF, "paraphrase_rate": 1, "paraphrase_backend": "llm"}), chat_model=fake)
    rows, report = output(tmp_path)
    assert len(fake.calls) == 1 and len(fake.calls[0]) == len(ROWS)
    assert fake.calls[0][0][0]["role"] == "system"
    paraphrases = variants_of(rows, "paraphrase")
    assert len(paraphrases) == len(ROWS) - 4
    assert report["techniques"]["paraphrase"]["skipped"] == {"llm_reply_unusable": 3, "llm_reply_lost_terms": 1}
    # The prompt shows one worked example before the real question.
    assert [m["role"] for m in fake.calls[0][0]] == ["system", "user", "assistant", "user"]
    assert all(p["question"].startswith("In other words, ") and p["question"].endswith("?") for p in paraphrases)


def test_llm_alternative_answers(tmp_path: Path):
    write_curated(tmp_path, ROWS)
    fake = FakeChat(lambda c: "Put differently: " + _user(c).split("Answer: ", 1)[1].split("\n", 1)[0])
    augment.run(config(tmp_path, **{**OFF, "alternative_answer_rate": 0.5}), chat_model=fake)
    rows, report = output(tmp_path)
    originals = {r["id"]: r for r in ROWS}
    answers = variants_of(rows, "alternative_answer")
    assert len(answers) == 6 == report["techniques"]["alternative_answer"]["made"]
    for v in answers:
        parent = originals[v["parent_id"]]
        assert v["question"] == parent["question"]
        assert v["answer"] == "Put differently: " + parent["answer"]
    # Which pairs were chosen follows the seed.
    first = {v["parent_id"] for v in answers}
    augment.run(config(tmp_path, **{**OFF, "alternative_answer_rate": 0.5, "seed": 1}), chat_model=fake)
    assert {v["parent_id"] for v in variants_of(output(tmp_path)[0], "alternative_answer")} != first


def test_llm_that_cannot_be_built_is_a_clear_error(tmp_path: Path, monkeypatch):
    import papertune.llm

    def broken(cfg, setting):
        raise NotImplementedError("no backend")

    monkeypatch.setattr(papertune.llm, "make_chat_model", broken)
    write_curated(tmp_path, ROWS)
    with pytest.raises(ConfigError, match=r"augment.alternative_answer_rate needs an instruct model.*augment.llm"):
        augment.run(config(tmp_path, **{**OFF, "alternative_answer_rate": 0.5}))
    with pytest.raises(ConfigError, match=r"augment.paraphrase_backend=llm needs .*augment.llm.*no backend"):
        augment.run(config(tmp_path, **{**OFF, "paraphrase_rate": 0.5, "paraphrase_backend": "llm"}))
    # With both rates at 0 no model is needed.
    augment.run(config(tmp_path, **OFF))


def test_clean_reply():
    assert augment.clean_reply('Paraphrase: "How is LoRA trained?"', "What trains LoRA?", question=True) == (
        "How is LoRA trained?")
    assert augment.clean_reply("LoRA is trained with Adam.", "What trains LoRA?", question=True) is None
    assert augment.clean_reply("Yes, it is?", "Is LoRA trained?", question=True) is None
    assert augment.clean_reply("What trains LoRA?", "Adam.", question=False) is None
    assert augment.clean_reply("", "What?", question=True) is None
    assert augment.clean_reply("What trains LoRA?", "What trains LoRA?", question=True) is None
    assert augment.clean_reply("Answer: It is small.\nMore.", "Small.", question=False) == "It is small."

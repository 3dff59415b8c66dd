from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import qa_rows, write_rows
from papertune import build
from papertune.config import load_config
from papertune.errors import InputError
from papertune.models import QWEN2_5_TOKENIZER


def cfg_for(run_dir: Path, **build_settings):
    overrides = {"model": QWEN2_5_TOKENIZER, "num_proc": 1, **build_settings}
    return load_config(None, [f"run_dir={run_dir}"] + [f"build.{k}={v}" for k, v in overrides.items()])


def test_build_writes_grouped_split_without_leakage(tmp_path: Path):
    from datasets import load_dataset, load_from_disk

    run = tmp_path / "run"
    rows = qa_rows()
    write_rows(run, rows)
    out = build.run(cfg_for(run))
    ds = load_from_disk(str(out))
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) + len(ds["test"]) == len(rows)
    # Grouped: no chunk on both sides, and every variant sits with its original.
    train_chunks, test_chunks = set(list(ds["train"]["chunk_id"])), set(list(ds["test"]["chunk_id"]))
    assert not train_chunks & test_chunks
    side = {r["id"]: name for name in ds for r in ds[name]}
    for name in ds:
        for r in ds[name]:
            if r["parent_id"]:
                assert side[r["parent_id"]] == name
    report = json.loads((run / "build" / "report.json").read_text())
    assert report["leakage"]["grouped"] == {"test_rows_with_near_duplicate_in_train": 0,
                                            "test_rows_sharing_a_chunk_with_train": 0}
    # The report's plain random split puts variants and their originals on both sides.
    assert report["leakage"]["random"]["test_rows_sharing_a_chunk_with_train"] > 0
    assert 0.1 <= report["test_share"] <= 0.35
    # output.json loads the way the training report loads it.
    loaded = load_dataset("json", data_files=str(run / "output.json"))["train"]
    assert len(loaded) == len(rows) and set(loaded["split"]) == {"train", "test"}


def test_split_is_deterministic_and_seeded(tmp_path: Path):
    from datasets import load_from_disk

    rows = qa_rows()
    ids = []
    for name, seed in (("a", 3407), ("b", 3407), ("c", 1)):
        write_rows(tmp_path / name, rows)
        ds = load_from_disk(str(build.run(cfg_for(tmp_path / name, seed=seed))))
        ids.append(sorted(ds["test"]["id"]))
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_chat_template_formatting_is_exact(tmp_path: Path):
    from datasets import load_from_disk

    run = tmp_path / "run"
    write_rows(run, qa_rows(n_chunks=3, variants=False))
    ds = load_from_disk(str(build.run(cfg_for(run, system_prompt="Be brief."))))
    row = ds["train"][0]
    assert row["prompt"] == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{row['question']}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert row["completion"] == f"{row['answer']}<|im_end|>"
    assert row["text"] == row["prompt"] + row["completion"]
    assert row["messages"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": row["question"]},
                               {"role": "assistant", "content": row["answer"]}]
    assert row["n_tokens"] > 10
    assert row["passage_ids"] == [] and row["source_passage"] == 0


def test_overlength_dropped_or_truncated(tmp_path: Path):
    from datasets import load_from_disk

    rows = qa_rows(n_chunks=5, variants=False)
    rows[0]["answer"] = "word " * 400
    for action in ("drop", "truncate"):
        run = tmp_path / action
        write_rows(run, rows)
        ds = load_from_disk(str(build.run(cfg_for(run, max_seq_length=128, overlength=action))))
        report = json.loads((run / "build" / "report.json").read_text())
        assert report["overlength"] == 1
        total = len(ds["train"]) + len(ds["test"])
        lengths = list(ds["train"]["n_tokens"]) + list(ds["test"]["n_tokens"])
        assert max(lengths) <= 128
        assert total == (len(rows) - 1 if action == "drop" else len(rows))


def test_group_by_document(tmp_path: Path):
    from datasets import load_from_disk

    run = tmp_path / "run"
    write_rows(run, qa_rows(n_chunks=9))
    ds = load_from_disk(str(build.run(cfg_for(run, group_by="document"))))
    assert not set(ds["train"]["source"]) & set(ds["test"]["source"])


def test_card_and_histograms(tmp_path: Path):
    run = tmp_path / "run"
    write_rows(run, qa_rows())
    build.run(cfg_for(run))
    card = (run / "dataset_card.md").read_text()
    assert "| after augmentation (`qa_augmented.jsonl`) | 40 |" in card
    assert "augmentation: noise" in card and "plain random rows" in card
    png = (run / "build" / "lengths.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_malformed_rows_reported_and_skipped(tmp_path: Path, caplog):
    run = tmp_path / "run"
    rows = qa_rows(n_chunks=4, variants=False)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    text += "{not json\n" + json.dumps({**rows[0], "id": "x", "question": " "}) + "\n"
    run.mkdir()
    (run / "qa_curated.jsonl").write_text(text)
    build.run(cfg_for(run))
    assert f"{run / 'qa_curated.jsonl'}:13: not valid JSON" in caplog.text
    assert f"{run / 'qa_curated.jsonl'}:14: empty or missing question" in caplog.text
    assert "qa_augmented.jsonl not found, building from qa_curated.jsonl" in caplog.text
    report = json.loads((run / "build" / "report.json").read_text())
    assert report["malformed_lines"] == 2 and report["train"] + report["test"] == len(rows)


def test_rows_with_fields_of_the_wrong_type_are_skipped_naming_file_and_line(tmp_path: Path, caplog):
    """augment passes rows through as they are: a number for a question or an object for an answer reaches
    build, which skips them like any bad line."""
    from papertune.cli import main

    run = tmp_path / "run"
    rows = qa_rows(n_chunks=4, variants=False)
    bad = [{**rows[0], "id": "n", "question": 42}, {**rows[1], "id": "o", "answer": {"text": "An object."}},
           {**rows[2], "id": 7, "chunk_id": ["not", "an", "id"]}]
    write_rows(run, rows + bad)
    assert main(["build", "--run-dir", str(run), "-q", "--set", f"build.model={QWEN2_5_TOKENIZER}",
                 "--set", "build.num_proc=1"]) == 0
    source = run / "qa_augmented.jsonl"
    assert f"{source}:13: question must be a string, got an integer; line skipped" in caplog.text
    assert f"{source}:14: answer must be a string, got an object; line skipped" in caplog.text
    assert f"{source}:15: chunk_id must be a string or an integer, got a list; line skipped" in caplog.text
    report = json.loads((run / "build" / "report.json").read_text())
    assert report["malformed_lines"] == 3 and report["train"] + report["test"] == len(rows)


def test_no_input_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InputError, match="run `papertune generate"):
        build.run(cfg_for(tmp_path / "empty"))


# --- documents kept out of training, and RAFT examples ---------------------------------------------

VOCAB = ("gradient attention adapter quantile router expert token reward policy loss optimizer kernel cache "
         "tensor batch layer norm embedding vocabulary decoder encoder softmax dropout warmup schedule rank "
         "matrix precision memory throughput latency sample preference margin baseline benchmark metric").split()


def corpus(n_docs: int = 10, chunks_per_doc: int = 3, twin: bool = True) -> tuple[list[dict], list[dict]]:
    """Chunks of ``n_docs`` documents of random words (one unique term each), two pairs per chunk plus a noise
    variant of the first; with ``twin``, doc0.pdf holds doc0.md's text again (the same paper in two files)."""
    import random

    chunks, rows = [], []
    for d in range(n_docs):
        for j in range(chunks_per_doc):
            rng = random.Random(f"{d}-{j}")
            term = f"term{d}x{j}"
            words = rng.sample(VOCAB, 18)
            chunks.append({"id": f"doc{d}.md#{j:04d}", "source": f"doc{d}.md", "section": f"Part {j}",
                           "page_start": None, "page_end": None, "text": f"The {term} method combines "
                           + " ".join(words) + "."})
            for k in range(2):
                rid = f"doc{d}.md#{j:04d}::rules::{k}"
                rows.append({"id": rid, "question": f"How does {term} use {words[2 * k]} and {words[2 * k + 1]}?",
                             "answer": f"It applies {words[4 + k]} to {words[6 + k]}.", "chunk_id": f"doc{d}.md#{j:04d}",
                             "source": f"doc{d}.md", "generator": "rules", "parent_id": None, "augmentation": None})
                if k == 0:
                    rows.append({**rows[-1], "id": rid + "::noise", "question": rows[-1]["question"].replace("How", "Hwo"),
                                 "parent_id": rid, "augmentation": "noise"})
    if twin:
        for chunk in [c for c in chunks if c["source"] == "doc0.md"]:
            chunks.append({**chunk, "id": chunk["id"].replace(".md", ".pdf"), "source": "doc0.pdf", "page_start": 1,
                           "page_end": 1, "text": chunk["text"] + " Page 1."})
            rows.append({**rows[0], "id": chunk["id"].replace(".md", ".pdf") + "::rules::0",
                         "question": f"Which method is {chunk['id'][-1]} in the PDF copy?", "chunk_id": chunk["id"].replace(".md", ".pdf"),
                         "source": "doc0.pdf"})
    return chunks, rows


def write_corpus(run: Path, chunks: list[dict], rows: list[dict]) -> None:
    write_rows(run, rows)
    (run / "chunks.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks))


@pytest.fixture(scope="module")
def raft_run(tmp_path_factory) -> Path:
    """One RAFT build with held-out and outside documents, retrieval on a bag-of-words embedder."""
    from helpers import bag_of_words

    run = tmp_path_factory.mktemp("raft") / "run"
    write_corpus(run, *corpus())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("papertune.index.embed_texts", bag_of_words)
        build.run(cfg_for(run, mode="raft", heldout_documents=0.2, outside_documents=0.1))
    return run


def raft_variant(run: Path, monkeypatch, **settings):
    """The raft_run build again in ``run`` with more build settings: its dataset and chunks by id."""
    from datasets import load_from_disk

    from helpers import bag_of_words

    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    write_corpus(run, *corpus())
    ds = load_from_disk(str(build.run(cfg_for(run, mode="raft", heldout_documents=0.2, outside_documents=0.1,
                                              **settings))))
    return ds, {c["id"]: c for c in map(json.loads, (run / "chunks.jsonl").read_text().splitlines())}


def test_documents_kept_out_are_seeded_disjoint_and_keep_their_twins_and_variants(tmp_path: Path):
    from datasets import load_from_disk

    chunks, rows = corpus()
    documents = []
    for name, seed in (("a", 3407), ("b", 3407), ("c", 7)):
        write_corpus(tmp_path / name, chunks, rows)
        build.run(cfg_for(tmp_path / name, seed=seed, heldout_documents=0.2, outside_documents=0.1))
        documents.append(json.loads((tmp_path / name / "build" / "report.json").read_text())["documents"])
    ds = load_from_disk(str(tmp_path / "a" / "dataset"))
    assert documents[0] == documents[1] and documents[0] != documents[2]
    docs = documents[0]
    # 11 documents, the twins counted once: 10 groups -> 2 held out, 1 outside; each list disjoint from the others.
    assert len(docs["heldout"]) >= 2 and len(docs["outside"]) >= 1
    assert not set(docs["heldout"]) & set(docs["outside"])
    assert not (set(docs["heldout"]) | set(docs["outside"])) & set(docs["train"])
    assert sorted(docs["train"] + docs["heldout"] + docs["outside"]) == sorted({r["source"] for r in rows})
    roles = {d: role for role, names in docs.items() for d in names}
    assert roles["doc0.md"] == roles["doc0.pdf"]  # the same text in two files is drawn as one document
    assert set(ds) == {"train", "test", "heldout", "outside"}
    for split in ("heldout", "outside"):
        assert set(ds[split]["source"]) == set(docs[split])
        assert sorted(ds[split]["id"]) == sorted(r["id"] for r in rows if r["source"] in docs[split])  # variants too
        assert all(not ids for ids in ds[split]["passage_ids"])
    assert set(ds["train"]["source"]) | set(ds["test"]["source"]) <= set(docs["train"])
    card = (tmp_path / "a" / "dataset_card.md").read_text()
    assert all(f"`{d}`" in card for d in docs["heldout"] + docs["outside"])


def test_keeping_every_document_out_is_a_clear_error(tmp_path: Path):
    run = tmp_path / "run"
    write_corpus(run, *corpus(n_docs=2, twin=False))
    with pytest.raises(InputError, match="leaving nothing to train on"):
        build.run(cfg_for(run, heldout_documents=0.5, outside_documents=0.4))
    with pytest.raises(InputError, match="no chunks in"):
        write_rows(tmp_path / "bare", corpus(n_docs=3)[1])
        build.run(cfg_for(tmp_path / "bare", heldout_documents=0.3))


def test_raft_rows_hold_their_source_at_the_recorded_position_among_distractors_of_other_documents(raft_run):
    from datasets import load_from_disk

    from papertune.chat import ABSTAIN, cited_answer, passage_label

    ds = load_from_disk(str(raft_run / "dataset"))
    chunks = {c["id"]: c for c in map(json.loads, (raft_run / "chunks.jsonl").read_text().splitlines())}
    with_source = 0
    for split in ("train", "test"):
        for row in ds[split]:
            ids, n = row["passage_ids"], row["source_passage"]
            assert len(ids) == 4 and len(set(ids)) == 4
            assert row["answer"] == next(r["answer"] for r in corpus()[1] if r["id"] == row["id"])  # plain reference
            if n:
                with_source += 1
                assert ids[n - 1] == row["chunk_id"]
                assert row["completion"] == cited_answer(row["answer"], n) + "<|im_end|>"
            else:
                assert row["chunk_id"] not in ids
                assert row["completion"] == ABSTAIN + "<|im_end|>"
            same_document = {row["source"], row["source"].replace(".pdf", ".md"), row["source"].replace(".md", ".pdf")}
            for cid in ids:  # other documents only, and not the same paper in another file
                assert cid == row["chunk_id"] or chunks[cid]["source"] not in same_document
            # Never the same text twice (the source's twin file, or two twins as distractors).
            assert len({chunks[cid]["text"].removesuffix(" Page 1.") for cid in ids + [row["chunk_id"]]}) == len(
                set(ids + [row["chunk_id"]]))
            blocks = [f"[{m}] {passage_label(chunks[cid])}\n{chunks[cid]['text']}" for m, cid in enumerate(ids, 1)]
            assert all(block in row["prompt"] for block in blocks)
    report = json.loads((raft_run / "build" / "report.json").read_text())
    assert report["mode"] == "raft"
    raft = report["raft"]
    assert raft["with_source"] == with_source and raft["passages_per_row"] == 4
    assert raft["with_source"] + raft["without_source"] == len(ds["train"]) + len(ds["test"])
    assert raft["dropped_for_length"] == 0
    first = sum(1 for split in ("train", "test") for row in ds[split] if row["source_passage"] == 1)
    assert (raft["order"], raft["source_first"]) == ("random", first)
    card = (raft_run / "dataset_card.md").read_text()
    assert f"Passages in random order: the source is passage 1 in {first} of the {with_source} rows" in card


def test_raft_never_shows_a_test_chunk_or_a_kept_out_document_in_training(raft_run):
    from datasets import load_from_disk

    ds = load_from_disk(str(raft_run / "dataset"))
    docs = json.loads((raft_run / "build" / "report.json").read_text())["documents"]
    chunks = [json.loads(line) for line in (raft_run / "chunks.jsonl").read_text().splitlines()]
    kept_out = {c["id"] for c in chunks if c["source"] in docs["heldout"] + docs["outside"]}
    assert kept_out
    test_chunks = set(ds["test"]["chunk_id"])
    train_passages = {cid for ids in ds["train"]["passage_ids"] for cid in ids}
    test_passages = {cid for ids in ds["test"]["passage_ids"] for cid in ids}
    assert not train_passages & test_chunks
    assert not train_passages & kept_out
    assert not test_passages & kept_out
    assert test_chunks <= test_passages | test_chunks  # test rows may show their own chunk
    for split in ("heldout", "outside"):
        for row in ds[split]:
            assert row["passage_ids"] == [] and row["source_passage"] == 0
            assert row["completion"] == row["answer"] + "<|im_end|>" and "passages" not in row["prompt"]


def test_raft_rebuild_gives_identical_examples(raft_run, tmp_path: Path, monkeypatch):
    from datasets import load_from_disk

    from helpers import bag_of_words

    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    run = tmp_path / "again"
    write_corpus(run, *corpus())
    again = load_from_disk(str(build.run(cfg_for(run, mode="raft", heldout_documents=0.2, outside_documents=0.1))))
    first = load_from_disk(str(raft_run / "dataset"))
    for split in first:
        assert again[split]["text"] == first[split]["text"]
        assert again[split]["passage_ids"] == first[split]["passage_ids"]


def test_raft_decline_copies_ask_train_pairs_again_without_their_source(raft_run, tmp_path: Path, monkeypatch):
    """Decline copies are added rows: every train pair keeps its row (with the source: share 1.0), and about
    half of them are asked again with distractors only, answered with the decline; never a test pair."""
    from datasets import load_from_disk

    from helpers import bag_of_words
    from papertune.chat import ABSTAIN

    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    run = tmp_path / "copies"
    write_corpus(run, *corpus())
    ds = load_from_disk(str(build.run(cfg_for(run, mode="raft", heldout_documents=0.2, outside_documents=0.1,
                                              raft_source_share=1.0, raft_decline_copies=0.5))))
    first = load_from_disk(str(raft_run / "dataset"))
    copies = [r for r in ds["train"] if r["id"].endswith("::decline")]
    originals = {r["id"]: r for r in ds["train"] if not r["id"].endswith("::decline")}
    assert set(originals) == set(first["train"]["id"]) and ds["test"]["id"] == first["test"]["id"]
    assert all(r["source_passage"] for r in originals.values())
    assert 0.25 * len(originals) <= len(copies) <= 0.75 * len(originals)
    for copy in copies:
        pair = originals[copy["parent_id"]]
        assert copy["id"] == pair["id"] + "::decline" and copy["question"] == pair["question"]
        assert copy["source_passage"] == 0 and pair["chunk_id"] not in copy["passage_ids"]
        assert copy["completion"] == ABSTAIN + "<|im_end|>"
    raft = json.loads((run / "build" / "report.json").read_text())["raft"]
    assert (raft["decline_copies"], raft["without_source"]) == (len(copies), len(copies))
    assert f"({len(copies)} of them a train pair asked again without its source)" in (run / "dataset_card.md").read_text()


def test_raft_verify_rows_teach_yes_for_the_source_and_no_for_a_distractor(raft_run, tmp_path: Path, monkeypatch):
    """Verification rows are added train rows: for each train pair with its source, the source passage alone
    answered "yes" and a distractor that does not hold the answer answered "no", in chat.verify_turn's
    prompt; the pairs' own rows and the test split are as without them."""
    from datasets import load_from_disk

    from papertune.chat import VERIFY_INSTRUCTION, verify_turn
    from papertune.raft import holds_answer

    run = tmp_path / "verify"
    ds, chunks = raft_variant(run, monkeypatch, raft_verify_rows=True)
    first = load_from_disk(str(raft_run / "dataset"))
    checks = [r for r in ds["train"] if r["verify"]]
    pairs = {r["id"]: r for r in ds["train"] if not r["verify"]}
    assert set(pairs) == set(first["train"]["id"]) and ds["test"]["text"] == first["test"]["text"]
    assert [pairs[i]["text"] for i in first["train"]["id"]] == first["train"]["text"]
    yes = [r for r in checks if r["verify"] == "yes"]
    no = [r for r in checks if r["verify"] == "no"]
    assert len(yes) == sum(1 for r in pairs.values() if r["source_passage"]) and 0 < len(no) <= len(yes)
    for row in checks:
        pair = pairs[row["parent_id"]]
        assert row["id"] == f"{pair['id']}::verify-{row['verify']}" and row["question"] == pair["question"]
        [cid] = row["passage_ids"]
        if row["verify"] == "yes":
            assert cid == pair["chunk_id"] and row["source_passage"] == 1
        else:
            assert cid in pair["passage_ids"] and cid != pair["chunk_id"] and row["source_passage"] == 0
            assert not holds_answer(chunks[cid]["text"], pair["answer"])
        assert row["completion"] == row["verify"] + "<|im_end|>"
        assert verify_turn(row["question"], chunks[cid]) in row["prompt"] and VERIFY_INSTRUCTION in row["prompt"]
    raft = json.loads((run / "build" / "report.json").read_text())["raft"]
    assert raft["verify_rows"] == len(checks)
    assert f"{len(checks)} train rows teach verification" in (run / "dataset_card.md").read_text()


def test_raft_quote_targets_quote_the_source_sentence_then_answer(raft_run, tmp_path: Path, monkeypatch):
    """build.raft_quote: each row that holds its source (train and test) answers 'Quote [n]: "..."' with a
    sentence of the source chunk, then the target it had without the quote; the prompts are unchanged."""
    from datasets import load_from_disk

    from papertune.chat import split_quote
    from papertune.text import normalize

    run = tmp_path / "quote"
    ds, chunks = raft_variant(run, monkeypatch, raft_quote=True)
    first = load_from_disk(str(raft_run / "dataset"))
    quoted = 0
    for split in ("train", "test"):
        assert ds[split]["prompt"] == first[split]["prompt"]
        for row, plain in zip(ds[split], first[split], strict=True):
            if not row["source_passage"]:
                assert row["completion"] == plain["completion"] and row["quote"] is None
                continue
            quote, n, answer = split_quote(row["completion"].removesuffix("<|im_end|>"))
            assert answer + "<|im_end|>" == plain["completion"]
            if quote is not None:
                quoted += 1
                assert quote == row["quote"] and n == row["source_passage"]
                assert normalize(quote) in normalize(chunks[row["chunk_id"]]["text"])
    assert quoted > 0
    raft = json.loads((run / "build" / "report.json").read_text())["raft"]
    assert raft["quoted"] == quoted
    assert f"{quoted} of the rows that hold the source first quote" in (run / "dataset_card.md").read_text()


def test_supporting_quote_is_the_sentence_that_carries_the_answer():
    from papertune.raft import QUOTE_MAX_WORDS, supporting_quote

    chunk = ("QLoRA fine-tunes quantized models.  It stores the base weights in 4-bit NormalFloat "
             "and computes in bfloat16. Paged optimizers absorb memory spikes. Gradients flow into the adapters.")
    assert supporting_quote(chunk, "The base weights are stored in 4-bit NormalFloat.", "nupunkt") == (
        "It stores the base weights in 4-bit NormalFloat and computes in bfloat16.")
    # Two adjacent sentences when each carries only half of the answer.
    assert supporting_quote(chunk, "Paged optimizers absorb spikes while gradients flow into adapters.",
                            "nupunkt") == "Paged optimizers absorb memory spikes. Gradients flow into the adapters."
    assert supporting_quote(chunk, "Mixture-of-experts routing uses a gating network.", "nupunkt") is None
    # A wrong number is carried by no sentence.
    assert supporting_quote(chunk, "The base weights are stored in 8-bit NormalFloat.", "nupunkt") is None
    long = " ".join(["NormalFloat"] * (QUOTE_MAX_WORDS + 1)) + "."
    assert supporting_quote(long, "NormalFloat.", "nupunkt") is None


class _NoHits:
    """A retriever that finds nothing: every distractor comes from the seeded random fill."""

    def __init__(self, chunks: dict[str, dict]) -> None:
        self.ids, self.chunks = list(chunks), chunks

    def search_many(self, queries, k=None, *, exclude_ids=None, exclude_sources=None):
        return [[] for _ in queries]


def test_raft_source_share_targets_and_random_fill():
    from papertune.chat import ABSTAIN
    from papertune.config import BuildConfig
    from papertune.raft import assign_passages, raft_target
    from papertune.split import SAME_TEXT_THRESHOLD, NearDuplicates

    chunks, _ = corpus(n_docs=20, twin=False)
    by_id = {c["id"]: c for c in chunks}
    rows = [{"id": f"q{i}", "question": f"question {i}", "answer": f"answer {i}", "chunk_id": chunks[i % len(chunks)]["id"],
             "source": chunks[i % len(chunks)]["source"]} for i in range(1000)]
    near = NearDuplicates([c["text"] for c in chunks], SAME_TEXT_THRESHOLD)
    cfg = BuildConfig(raft_source_share=0.8)
    assigned, stats = assign_passages(rows, ["train"] * len(rows), by_id, near, {}, _NoHits(by_id), cfg, 3)
    assert 0.76 <= stats["with_source"] / len(rows) <= 0.84
    assert stats["distractor_fallbacks"] == 2 * stats["with_source"] + 3 * stats["without_source"]
    assert all(len(a.passage_ids) == 3 for a in assigned)
    again, _ = assign_passages(rows, ["train"] * len(rows), by_id, near, {}, _NoHits(by_id), cfg, 3)
    assert again == assigned  # seeded per row
    twins = {"doc0.md": frozenset({"doc0.md", "doc1.md"}), "doc1.md": frozenset({"doc0.md", "doc1.md"})}
    doc0 = [r for r in rows if r["source"] == "doc0.md"]
    assigned, _ = assign_passages(doc0, ["train"] * len(doc0), by_id, near, twins, _NoHits(by_id), cfg, 3)
    shown = {by_id[cid]["source"] for a, r in zip(assigned, doc0) for cid in a.passage_ids if cid != r["chunk_id"]}
    assert shown and not shown & {"doc0.md", "doc1.md"}  # never a distractor from the same text in another file
    assert raft_target("It is NF4.", 2, "abstain") == "It is NF4 [2]."
    assert raft_target("It is NF4.", 0, "abstain") == ABSTAIN
    assert raft_target("It is NF4.", 0, "answer") == "It is NF4."


class _Ranked:
    """A retriever that ranks chunks in a fixed order and honours what it is told to leave out."""

    def __init__(self, chunks: dict[str, dict], order: list[str]) -> None:
        self.ids, self.chunks, self.order = list(chunks), chunks, order

    def search_many(self, queries, k=None, *, exclude_ids=None, exclude_sources=None):
        from types import SimpleNamespace

        return [[SimpleNamespace(chunk_id=cid) for cid in self.order
                 if cid not in ids and self.chunks[cid]["source"] not in sources][:k]
                for _, ids, sources in zip(queries, exclude_ids, exclude_sources)]


def _lora_question(neighbour: str) -> tuple[dict[str, str], dict[str, dict], dict]:
    """Chunks of two documents and a question about the first chunk; ``neighbour`` is the source's next chunk
    (a.md#1), the best retrieval hit for the question."""
    texts = {
        "a.md#0": "LoRA freezes the pretrained weights and trains two low-rank matrices per layer.",
        "a.md#1": neighbour,
        "a.md#2": "The rank of the matrices is a hyperparameter chosen on a validation set.",
        "b.md#0": "Dropout randomly zeroes activations during training.",
        "b.md#1": "Batch normalization rescales activations per mini-batch.",
    }
    chunks = {cid: {"id": cid, "source": cid.split("#")[0], "text": text} for cid, text in texts.items()}
    row = {"id": "q", "question": "What does LoRA train?", "answer": "Two low-rank matrices per layer.",
           "chunk_id": "a.md#0", "source": "a.md"}
    return texts, chunks, row


def test_raft_distractors_as_retrieved_come_from_the_source_document_but_never_hold_the_answer():
    """``retrieved`` mirrors what the model sees when it answers (the source's neighbours rank first); a
    neighbour that says the answer too is passed over and counted. ``other_documents`` never shows them."""
    from papertune.config import BuildConfig
    from papertune.raft import assign_passages, holds_answer
    from papertune.split import SAME_TEXT_THRESHOLD, NearDuplicates

    texts, chunks, row = _lora_question(
        "In short, LoRA keeps pretrained weights frozen and trains two low-rank matrices in each layer.")
    assert holds_answer(texts["a.md#1"], row["answer"]) and not holds_answer(texts["a.md#2"], row["answer"])
    near = NearDuplicates(list(texts.values()), SAME_TEXT_THRESHOLD)
    retriever = _Ranked(chunks, ["a.md#1", "a.md#2", "b.md#0", "b.md#1"])
    picked = {}
    for mode in ("retrieved", "other_documents"):
        cfg = BuildConfig(raft_source_share=1.0, raft_distractors=mode)
        (passages,), stats = assign_passages([row], ["train"], chunks, near, {}, retriever, cfg, 3)
        assert passages.passage_ids[passages.source_passage - 1] == "a.md#0"
        picked[mode] = set(passages.passage_ids) - {"a.md#0"}
        assert stats["distractors"] == mode
        assert stats["passed_over_holding_the_answer"] == (mode == "retrieved")
    assert picked["retrieved"] == {"a.md#2", "b.md#0"}
    assert picked["other_documents"] == {"b.md#0", "b.md#1"}


def test_a_row_that_teaches_declining_never_holds_a_chunk_saying_the_answer():
    """Without its source, a row's target is the decline: a chunk of another document that says the answer
    would make that target wrong, so it is passed over (it may stand beside the source)."""
    from papertune.config import BuildConfig
    from papertune.raft import assign_passages
    from papertune.split import SAME_TEXT_THRESHOLD, NearDuplicates

    texts, chunks, row = _lora_question("The rank of the adapter is small.")
    chunks["b.md#0"]["text"] = "Like LoRA, it trains two low-rank matrices per layer."
    near = NearDuplicates(list(texts.values()), SAME_TEXT_THRESHOLD)
    retriever = _Ranked(chunks, ["b.md#0", "b.md#1", "a.md#1", "a.md#2"])
    for share, holding_shown in ((1.0, True), (0.0, False)):
        cfg = BuildConfig(raft_source_share=share, raft_distractors="other_documents")
        (passages,), stats = assign_passages([row], ["train"], chunks, near, {}, retriever, cfg, 2)
        assert ("b.md#0" in passages.passage_ids) == holding_shown
        assert stats["passed_over_holding_the_answer"] == (not holding_shown)


def test_raft_distractors_mixed_are_retrieved_beside_the_source_and_from_other_documents_without_it():
    """``mixed``: a row holding its source sees what retrieval returns (the source's neighbours); a row that
    teaches declining sees only other documents, so no neighbour saying the answer in other words is in it."""
    from papertune.config import BuildConfig
    from papertune.raft import assign_passages
    from papertune.split import SAME_TEXT_THRESHOLD, NearDuplicates

    texts, chunks, row = _lora_question(
        "Adapters of this kind are merged into the weights after training, at no inference cost.")
    near = NearDuplicates(list(texts.values()), SAME_TEXT_THRESHOLD)
    retriever = _Ranked(chunks, ["a.md#1", "a.md#2", "b.md#0", "b.md#1"])
    shown = {}
    for share in (1.0, 0.0):
        cfg = BuildConfig(raft_source_share=share, raft_distractors="mixed")
        (passages,), stats = assign_passages([row], ["train"], chunks, near, {}, retriever, cfg, 2)
        assert stats["distractors"] == "mixed" and stats["with_source"] == int(share)
        shown[share] = set(passages.passage_ids) - {"a.md#0"}
    assert shown[1.0] == {"a.md#1"}  # the best retrieval hit, from the source's document
    assert shown[0.0] == {"b.md#0", "b.md#1"}  # declining: other documents only


class _RankedOrder(_Ranked):
    """:class:`_Ranked` that also orders given chunks by its ranking (``Retriever.rank_many``)."""

    def rank_many(self, queries, id_lists):
        return [sorted(ids, key=self.order.index) for ids in id_lists]


def test_raft_order_retrieval_puts_the_passages_in_retrieval_order_and_cites_the_source_there():
    """``raft_order: retrieval``: the prompt's passages come in the order retrieval ranks them (as when the
    model answers), the source where it ranks; ``random`` keeps the seeded random position."""
    from papertune.config import BuildConfig
    from papertune.raft import assign_passages
    from papertune.split import SAME_TEXT_THRESHOLD, NearDuplicates

    texts, chunks, _ = _lora_question("Adapters are merged into the weights after training.")
    near = NearDuplicates(list(texts.values()), SAME_TEXT_THRESHOLD)
    rows = [{"id": f"q{i}", "question": "What does LoRA train?", "answer": "Two low-rank matrices per layer.",
             "chunk_id": "a.md#0", "source": "a.md"} for i in range(40)]
    order = ["b.md#1", "a.md#0", "b.md#0", "a.md#1", "a.md#2"]
    by_mode = {}
    for mode in ("retrieval", "random"):
        cfg = BuildConfig(raft_source_share=0.5, raft_order=mode)
        assigned, stats = assign_passages(rows, ["train"] * len(rows), chunks, near, {},
                                          _RankedOrder(chunks, order), cfg, 3)
        assert stats["order"] == mode
        for a in assigned:
            assert (a.source_passage == 0) == ("a.md#0" not in a.passage_ids)
            if a.source_passage:
                assert a.passage_ids[a.source_passage - 1] == "a.md#0"
        by_mode[mode] = assigned
    assert all(a.passage_ids == sorted(a.passage_ids, key=order.index) for a in by_mode["retrieval"])
    with_source = [a for a in by_mode["retrieval"] if a.source_passage]
    assert with_source and all(a.source_passage == 2 for a in with_source)  # after b.md#1, as ranked
    assert len({a.source_passage for a in by_mode["random"] if a.source_passage}) > 1
    # The same rows hold the source and the same passages in either order.
    assert [sorted(a.passage_ids) for a in by_mode["retrieval"]] == [sorted(a.passage_ids) for a in by_mode["random"]]


def test_raft_rows_over_the_length_limit_are_dropped_and_counted(tmp_path: Path, monkeypatch, caplog):
    from helpers import bag_of_words

    monkeypatch.setattr("papertune.index.embed_texts", bag_of_words)
    run = tmp_path / "run"
    write_corpus(run, *corpus(n_docs=4, twin=False))
    build.run(cfg_for(run, mode="raft", max_seq_length=249))
    report = json.loads((run / "build" / "report.json").read_text())
    dropped = report["raft"]["dropped_for_length"]
    assert 0 < dropped < report["raft"]["with_source"] + report["raft"]["without_source"]
    assert dropped == report["dropped_for_length"]["train"] + report["dropped_for_length"]["test"]
    assert report["train"] + report["test"] + dropped == report["raft"]["with_source"] + report["raft"]["without_source"]
    assert "RAFT examples" in caplog.text and "Raise build.max_seq_length and train.max_seq_length" in caplog.text

"""``papertune run``: fingerprints, skipping, reruns downstream of a change, resume, summary and exit codes."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from helpers import tiny_overrides, write_pdf
import papertune
from papertune import fingerprint, pipeline
from papertune.cli import main
from papertune.config import load_config
from papertune.errors import ExitCode
from papertune.profiles import profile_path
from papertune.rundir import STAGE_FINGERPRINT, read_jsonl

# --- a tiny corpus: sentences the rules generator turns into pairs -------------------------------------

MARKDOWN = {
    "lora.md": """# Low-Rank Adaptation

## Method

Low-Rank Adaptation (LoRA) is a parameter-efficient fine-tuning method that trains two small matrices per layer.
The rank of the update is a hyperparameter that controls how many parameters the adapter has.
LoRA reduces the number of trainable parameters by several orders of magnitude.
The scaling factor alpha is a constant that multiplies the low-rank update before it is added.
QLoRA is a method that fine-tunes a 4-bit quantized model through low-rank adapters.
Paged optimizers move optimizer states to CPU memory when the GPU runs out of memory.

## Results

A LoRA adapter for a 7B model has about 20 million parameters.
Double quantization reduces the memory of the quantization constants by 3 times.
""",
    "attention.md": """# Attention

## Scaled dot-product attention

Self-attention is a mechanism that relates every position of a sequence to every other position.
Multi-head attention is an extension that runs several attention functions in parallel.
The transformer base model has 8 attention heads in every layer.
Rotary position embedding (RoPE) is a position encoding that rotates query and key vectors.
The key-value cache stores the keys and values of earlier tokens during generation.
Grouped-query attention is a variant that shares each key head among several query heads.

## Efficiency

FlashAttention reduces memory traffic between GPU high-bandwidth memory and on-chip memory.
Sliding window attention is a pattern that limits each token to a fixed window of earlier tokens.
""",
    "notes/evaluation.md": """# Evaluating language models

## Metrics

Perplexity is the exponential of the average negative log-likelihood per token.
ROUGE-L is a metric that measures the longest common subsequence between two texts.
Exact match is a strict metric that counts answers identical to the reference after normalisation.
Token F1 is the harmonic mean of token precision and token recall.
A held-out test set is a split of the data that the model never sees during training.
Data contamination is the presence of test examples in the training data.

## Judges

An LLM judge is a language model that grades answers against a reference.
Position bias is the tendency of a judge to prefer the first of two answers.
""",
}
PDF_PAGES = [
    "Mixture of Experts (MoE) is an architecture that routes each token to a few expert networks. "
    "The router is a small linear layer that scores every expert for every token. "
    "Mixtral 8x7B has 8 experts in every MoE layer. "
    "Load balancing loss is an auxiliary loss that spreads tokens evenly across experts.",
    "Expert parallelism is a scheme that places different experts on different GPUs. "
    "Top-2 routing is a rule that sends each token to its two highest-scoring experts. "
    "Capacity factor is a setting that limits how many tokens one expert processes in a batch. "
    "Switch Transformer is a sparse model that routes each token to a single expert.",
]


def write_corpus(docs: Path) -> Path:
    for name, text in MARKDOWN.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    write_pdf(docs / "moe.pdf", [[((56, 72, 556, 400), text)] for text in PDF_PAGES], title="Mixture of Experts")
    return docs


def overrides(run: Path, docs: Path, model: Path, *extra: str) -> list[str]:
    """Fast settings: small chunks (more of them), no OCR, the offline rules writing every chunk's pairs and no
    judge (the llamacpp backend is tested in test_llamacpp.py), the tiny model, few steps, 4-token
    answers."""
    return (tiny_overrides(run, model, max_steps=6, early_stopping_patience=0)
            + ["generate.generators={rules: 1}", "generate.max_chunks=0", "curate.judge_enabled=false"]
            + [f"ingest.docs_dir={docs}", "ingest.workers=1", "ingest.ocr=false", "ingest.chunk_tokens=64",
               "ingest.min_chunk_tokens=8", "evaluate.embedding_model=", "evaluate.max_new_tokens=4",
               "evaluate.batch_size=4", "evaluate.max_questions=4"]
            + list(extra))


def run_pipeline(run: Path, docs: Path, model: Path, *extra: str, **options) -> pipeline.PipelineResult:
    """The pipeline with the cpu profile, as ``papertune run`` without a config picks it on this machine."""
    config = load_config(profile_path("cpu"), overrides(run, docs, model, *extra))
    return pipeline.run_pipeline(config, **options)


def statuses(result: pipeline.PipelineResult) -> dict[str, str]:
    return {row["stage"]: row["status"] for row in result.summary["stages"]}


def stage_files(run: Path) -> dict[str, int]:
    """mtime of every file in the run directory except the summary (rewritten by every run)."""
    return {p.relative_to(run).as_posix(): p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and p.name not in (pipeline.SUMMARY_JSON, pipeline.SUMMARY_MD)}


# --- fingerprints (fast) ---------------------------------------------------------------------------


def _fingerprint(stage: str, run: Path, *settings: str) -> fingerprint.Fingerprint:
    return fingerprint.compute_fingerprint(pipeline.STAGE_BY_NAME[stage], load_config(None, [f"run_dir={run}", *settings]))


def test_fingerprint_follows_input_content_and_the_stage_settings(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "qa_curated.jsonl").write_text('{"id": "a", "question": "Q?", "answer": "A."}\n')
    first = _fingerprint("augment", run)
    assert first.value == _fingerprint("augment", run).value  # deterministic
    assert set(first.inputs) == {"qa_curated.jsonl"} and all(k.startswith("augment.") for k in first.settings)
    # Settings of other stages, speed-only settings and the run directory itself do not count.
    assert _fingerprint("augment", run, "curate.min_support=0.9", "train.learning_rate=0.1",
                        "augment.llm.concurrency=1").value == first.value
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert _fingerprint("augment", moved).value == first.value
    # A setting of the stage's own section, or the content of an input file, does.
    assert _fingerprint("augment", run, "augment.noise_rate=0.5").value != first.value
    (run / "qa_curated.jsonl").write_text('{"id": "a", "question": "Q?", "answer": "B."}\n')
    assert _fingerprint("augment", run).value != first.value


def test_fingerprint_of_cross_section_settings_and_folders(tmp_path):
    run = tmp_path / "run"
    (run / "dataset" / "train").mkdir(parents=True)
    (run / "dataset" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (run / "dataset" / "train" / "data.arrow").write_bytes(b"rows")
    (run / "dataset" / "train" / "cache-123.arrow").write_bytes(b"cache")
    (run / "chunks.jsonl").write_text("{}\n")
    gen = _fingerprint("generate", run)
    assert gen.value != _fingerprint("generate", run, "ingest.segmenter=nltk").value  # rules split sentences with it
    assert gen.value == _fingerprint("generate", run, "ingest.chunk_tokens=100").value  # chunks.jsonl carries that
    # evaluate: the dataset folder (not datasets' cache files), the adapter, train.model but not train.learning_rate;
    # with retrieval (the default), the chunks and build's report (which documents are outside the index).
    ev = _fingerprint("evaluate", run)
    assert set(ev.inputs) == {"dataset/dataset_dict.json", "dataset/train/data.arrow", "train/adapter",
                              "chunks.jsonl", "build/report.json"}
    assert "chunks.jsonl" not in _fingerprint("evaluate", run, "evaluate.modes=[closed_book]").inputs
    assert ev.inputs["train/adapter"] == "missing"
    assert ev.value == _fingerprint("evaluate", run, "train.learning_rate=0.1").value
    assert ev.value != _fingerprint("evaluate", run, "train.model=other/model").value
    # what ranks the passages, checks the answers and verifies them; not ask's and serve's default mode
    for setting in ("retrieval.window_words=40", "retrieval.min_support=0.7", "retrieval.min_question_support=0.1"):
        assert ev.value != _fingerprint("evaluate", run, setting).value, setting
    trained_to_verify = ("build.mode=raft", "build.raft_verify_rows=true")  # as retrieval.verify requires
    verified = _fingerprint("evaluate", run, *trained_to_verify, "retrieval.verify=true").value
    assert verified != _fingerprint("evaluate", run, *trained_to_verify).value
    assert verified != _fingerprint("evaluate", run, *trained_to_verify, "retrieval.verify=true",
                                    "retrieval.verify_retry=true").value
    assert ev.value == _fingerprint("evaluate", run, "retrieval.grounded=false").value
    assert _fingerprint("build", run).value != _fingerprint("build", run, "retrieval.window_words=40").value
    assert "train/adapter" not in _fingerprint("evaluate", run, "evaluate.tuned=false").inputs
    # train: dataloader workers collate the same batches, so they neither rerun nor block a resume.
    tr = _fingerprint("train", run)
    assert tr.value == _fingerprint("train", run, "train.dataloader_workers=4").value
    assert tr.value != _fingerprint("train", run, "train.fused_kernels=auto").value
    from papertune.train.data import run_fingerprint

    config = load_config(None, [f"run_dir={run}"]).train
    workers = load_config(None, [f"run_dir={run}", "train.dataloader_workers=4"]).train
    assert run_fingerprint(config, run, "hf") == run_fingerprint(workers, run, "hf")
    (run / "dataset" / "train" / "cache-123.arrow").write_bytes(b"other cache")
    assert _fingerprint("evaluate", run).value == ev.value
    (run / "dataset" / "train" / "data.arrow").write_bytes(b"other rows")
    assert _fingerprint("evaluate", run).value != ev.value
    # ingest: the documents by content, and not the number of workers.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nText.\n")
    ing = _fingerprint("ingest", run, f"ingest.docs_dir={docs}")
    assert set(ing.inputs) == {"docs/a.md"}
    assert ing.value == _fingerprint("ingest", run, f"ingest.docs_dir={docs}", "ingest.workers=4").value
    (docs / "a.md").write_text("# A\n\nOther text.\n")
    assert _fingerprint("ingest", run, f"ingest.docs_dir={docs}").value != ing.value


def test_why_a_stage_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "qa_curated.jsonl").write_text("{}\n")
    stage = pipeline.STAGE_BY_NAME["augment"]
    fp = _fingerprint("augment", run)
    (run / "qa_augmented.jsonl").write_text("{}\n")
    done = {"state": "done", "fingerprint": fp.value, "papertune": papertune.__version__,
            "settings": fp.settings, "inputs": fp.inputs, "extra": {},
            "outputs": fingerprint.output_hashes(run, stage)}
    (run / "qa_augmented.jsonl").unlink()
    assert fingerprint.why_stale(run, stage, fp, None) == "no earlier run"
    assert fingerprint.why_stale(run, stage, fp, {**done, "state": "running"}) == "the last run stopped before it finished"
    assert fingerprint.why_stale(run, stage, fp, done) == "outputs missing: qa_augmented.jsonl"
    (run / "qa_augmented.jsonl").write_text("{}\n")
    assert fingerprint.why_stale(run, stage, fp, done) is None
    (run / "qa_augmented.jsonl").write_text('{"edited": "by hand"}\n')
    assert fingerprint.why_stale(run, stage, fp, done) == "outputs changed since the stage wrote them: qa_augmented.jsonl"
    (run / "qa_augmented.jsonl").write_text("{}\n")
    changed = _fingerprint("augment", run, "augment.seed=1")
    assert fingerprint.why_stale(run, stage, changed, done) == "settings changed: augment.seed"
    (run / "qa_curated.jsonl").write_text("{}\n{}\n")
    assert fingerprint.why_stale(run, stage, _fingerprint("augment", run), done) == "inputs changed: qa_curated.jsonl"


def test_an_output_edited_by_hand_reruns_its_stage_and_each_file_is_hashed_once(tmp_path, tiny_model, monkeypatch):
    docs, run = write_corpus(tmp_path / "docs"), tmp_path / "run"
    assert statuses(run_pipeline(run, docs, tiny_model, to_stage="generate"))["generate"] == "ran"
    qa = run / "qa.jsonl"
    written = qa.read_bytes()
    qa.write_bytes(written.splitlines(keepends=True)[0])  # a hand edit: one pair kept
    result = run_pipeline(run, docs, tiny_model, to_stage="generate")
    assert statuses(result)["ingest"] == "skipped" and statuses(result)["generate"] == "ran"
    assert result.summary["stages"][1]["reason"] == "outputs changed since the stage wrote them: qa.jsonl"
    assert qa.read_bytes() == written
    hashed: list[str] = []
    sha256_file = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda path: hashed.append(str(path)) or sha256_file(path))
    result = run_pipeline(run, docs, tiny_model, to_stage="generate")
    assert set(statuses(result).values()) == {"skipped", "not run"}
    assert str(run / "chunks.jsonl") in hashed and len(hashed) == len(set(hashed))  # ingest's output, generate's input


def test_stage_selection():
    names = list(pipeline.STAGE_NAMES)
    assert pipeline.select_stages(None, None, None) == (names, set())
    assert pipeline.select_stages("augment", None, None) == (names, {"augment", "build", "train", "evaluate"})
    assert pipeline.select_stages(None, "build", None) == (names[:5], set())
    assert pipeline.select_stages(None, None, "train") == (["train"], {"train"})
    with pytest.raises(Exception, match="not a stage; use one of ingest, generate"):
        pipeline.select_stages("tune", None, None)
    with pytest.raises(Exception, match="comes after"):
        pipeline.select_stages("train", "build", None)


def test_the_command_keeps_jax_from_taking_the_gpus_memory(monkeypatch):
    """A GPU stack may install JAX beside torch; initialised by any library, it would take 75% of the GPU's
    memory (the evaluation's judge ran out of memory that way on an H200). The command line sets JAX's
    switch before anything runs, and keeps a user's own."""
    import os

    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert (os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"], os.environ["JAX_PLATFORMS"]) == ("false", "cpu")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


def test_every_stage_is_known_through_its_spec():
    from papertune.cli import build_parser

    assert pipeline.STAGE_NAMES == ("ingest", "generate", "curate", "augment", "build", "train", "evaluate")
    parser = build_parser()
    for stage in pipeline.STAGES:
        assert stage.outputs and all(not Path(name).is_absolute() for name in stage.outputs)
        assert parser.parse_args([stage.name]).command == stage.name  # a command of its own, from its spec
    assert parser.parse_args(["export"]).command == "export"


def test_the_loss_table_is_the_same_in_train_and_the_summary_after_a_resume(tmp_path):
    from papertune.summary import collect_summary
    from papertune.train.losses import render_loss_table

    metrics = tmp_path / "train" / "metrics.jsonl"
    metrics.parent.mkdir()
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.6},
            {"step": 3, "loss": 9.0},  # the run died here; it resumes from step 2's checkpoint
            {"step": 3, "loss": 2.0}, {"step": 4, "loss": 1.5}, {"step": 4, "eval_loss": 1.75}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = collect_summary(tmp_path)["loss_table"]
    assert table == [{"step": 2, "train_loss": 2.5, "val_loss": 2.6}, {"step": 4, "train_loss": 1.5, "val_loss": 1.75}]
    assert render_loss_table(table).splitlines() == [
        "| Step | Training Loss | Validation Loss |", "|------|---------------|-----------------|",
        "| 2 | 2.500000 | 2.600000 |", "| 4 | 1.500000 | 1.750000 |"]


def test_a_folder_is_replaced_only_when_its_new_content_is_complete(tmp_path):
    from papertune.rundir import atomic_dir, data_files

    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists() and tmp.parent == tmp_path and tmp.name.startswith(".")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("save failed")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert [p.name for p in data_files(target)] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary or old folder left


def test_a_failing_stage_is_named_with_its_exit_code(tmp_path, caplog):
    run = tmp_path / "run"
    code = main(["run", "--run-dir", str(run), "--docs", str(tmp_path / "no-such-folder"), "--set", "ingest.ocr=false"])
    assert code == ExitCode.USAGE
    assert "stage ingest failed: documents folder" in caplog.text
    summary = json.loads((run / pipeline.SUMMARY_JSON).read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == "ingest" and summary["exit_code"] == 2
    assert {s["stage"]: s["status"] for s in summary["stages"]}["generate"] == "not run"
    assert "**Stage ingest failed:**" in (run / pipeline.SUMMARY_MD).read_text()


# --- the whole pipeline on the tiny corpus (slow) --------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("pipeline")
    docs = write_corpus(root / "docs")
    run = root / "run"
    result = run_pipeline(run, docs, tiny_model)
    return run, docs, result


def copy_of(first_run, tmp_path: Path) -> Path:
    run, _docs, _result = first_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.slow
def test_every_artifact_of_a_full_run(first_run, tiny_model):
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, docs, result = first_run
    assert result.exit_code == 0 and set(statuses(result).values()) == {"ran"}
    summary = json.loads((run / pipeline.SUMMARY_JSON).read_text())
    assert summary == json.loads(json.dumps(result.summary))

    # Chunks: traceable to their document and page, text taken from it.
    chunks = list(read_jsonl(run / "chunks.jsonl"))
    by_id = {c["id"]: c for c in chunks}
    assert {c["source"] for c in chunks} == {"lora.md", "attention.md", "notes/evaluation.md", "moe.pdf"}
    for chunk in chunks:
        assert chunk["page_start"] in (None, 1, 2) and (chunk["page_start"] is None) == chunk["source"].endswith(".md")
        first_words = " ".join(chunk["text"].split()[:4])
        source_text = MARKDOWN.get(chunk["source"]) or " ".join(PDF_PAGES)
        assert first_words in " ".join(source_text.split()), chunk
    assert {c["page_start"] for c in chunks if c["source"] == "moe.pdf"} == {1, 2}

    # Pairs: generated from existing chunks; curated a subset; variants point at a curated original.
    generated = list(read_jsonl(run / "qa.jsonl"))
    assert generated and all(p["chunk_id"] in by_id for p in generated)
    for pair in generated:  # rules answers are spans of their chunk
        assert " ".join(pair["answer"].lower().split()[:3]) in by_id[pair["chunk_id"]]["text"].lower(), pair
    curated = list(read_jsonl(run / "qa_curated.jsonl"))
    generated_ids = {p["id"]: p for p in generated}
    assert curated and all(generated_ids[p["id"]]["question"] == p["question"] for p in curated)
    dropped = list(read_jsonl(run / "qa_dropped.jsonl"))
    assert len(curated) + len(dropped) == len(generated)
    augmented = list(read_jsonl(run / "qa_augmented.jsonl"))
    curated_ids = {p["id"] for p in curated}
    originals = [p for p in augmented if p["parent_id"] is None]
    variants = [p for p in augmented if p["parent_id"] is not None]
    assert {p["id"] for p in originals} == curated_ids and variants
    assert all(v["parent_id"] in curated_ids and v["augmentation"] for v in variants)

    # Dataset: the splits add up to output.json, and no chunk (group) is on both sides.
    output = list(read_jsonl(run / "output.json"))
    assert len(output) == len(augmented)
    dataset = load_from_disk(str(run / "dataset"))
    assert len(dataset["train"]) + len(dataset["test"]) == len(output)
    assert sorted(dataset["train"]["id"]) == sorted(r["id"] for r in output if r["split"] == "train")
    assert not set(dataset["train"]["chunk_id"]) & set(dataset["test"]["chunk_id"])

    # Training: finite losses that go down, and an adapter that loads over the base model.
    metrics = list(read_jsonl(run / "train" / "metrics.jsonl"))
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(losses) == 6 and len(evals) == 3 and all(math.isfinite(x) for x in losses + evals)
    assert min(losses[-2:]) < losses[0] and evals[-1] < evals[0]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "train" / "adapter")

    # Evaluation: base and tuned, on the test split.
    eval_metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert eval_metrics["models"] == ["base", "tuned"] and eval_metrics["test_rows"] == len(dataset["test"])
    for name in ("base", "tuned"):
        assert math.isfinite(eval_metrics["loss"][name]["loss"])
        assert eval_metrics["results"]["test"][f"{name}_closed_book"]["questions"] == 4

    # The summary's numbers are the files' numbers.
    ingest_report = json.loads((run / "ingest" / "report.json").read_text())
    assert summary["documents"] == {"documents": 4, "pages": 2, "ocr_pages": 0, "failed": []}
    assert ingest_report["documents"] == 4
    assert summary["counts"] == {"chunks": len(chunks), "generated": len(generated), "curated": len(curated),
                                 "dropped": len(dropped), "augmented": len(augmented), "variants": len(variants),
                                 "dataset_rows": len(output), "train": len(dataset["train"]),
                                 "test": len(dataset["test"])}
    train_report = json.loads((run / "train" / "report.json").read_text())
    assert summary["training"]["global_steps"] == 6 and summary["training"]["tokens_per_s"] == train_report["tokens_per_s"] > 0
    assert [r["step"] for r in summary["loss_table"]] == [2, 4, 6]
    assert [r["val_loss"] for r in summary["loss_table"]] == evals
    assert summary["evaluation"]["loss"]["tuned"]["loss"] == eval_metrics["loss"]["tuned"]["loss"]
    assert summary["evaluation"]["results"]["test"]["base_closed_book"]["f1"] == \
        eval_metrics["results"]["test"]["base_closed_book"]["f1"]
    for name in ("chunks", "adapter", "dataset", "eval report", "loss curve"):
        assert Path(summary["artifacts"][name]).exists()
    text = (run / pipeline.SUMMARY_MD).read_text()
    assert "| Step | Training Loss | Validation Loss |" in text and f"| chunks | {len(chunks)} |" in text
    # Each stage recorded what it was run from.
    for stage in pipeline.STAGES:
        record = json.loads((run / stage.directory / STAGE_FINGERPRINT).read_text())
        assert record["state"] == "done" and record["outputs"]
        assert record["fingerprint"] == next(s for s in summary["stages"] if s["stage"] == stage.name)["fingerprint"]


@pytest.mark.slow
def test_a_second_run_skips_every_stage(first_run, tiny_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="papertune")
    run = copy_of(first_run, tmp_path)  # a copy: fingerprints hash content, so they hold in another folder too
    before = stage_files(run)
    args = [x for o in overrides(run, first_run[1], tiny_model) for x in ("--set", o)]
    assert main(["run", "cpu", *args]) == 0
    summary = json.loads((run / pipeline.SUMMARY_JSON).read_text())
    assert {s["stage"]: s["status"] for s in summary["stages"]} == {name: "skipped" for name in pipeline.STAGE_NAMES}
    assert stage_files(run) == before
    assert summary["counts"] == first_run[2].summary["counts"]  # the summary still describes the outputs
    assert "run: train skipped: outputs current" in caplog.text


@pytest.mark.slow
def test_a_changed_setting_reruns_its_stage_and_everything_downstream(first_run, tiny_model, tmp_path):
    run = copy_of(first_run, tmp_path)
    before = stage_files(run)
    result = run_pipeline(run, first_run[1], tiny_model, "augment.noise_rate=0.9")
    assert statuses(result) == {"ingest": "skipped", "generate": "skipped", "curate": "skipped", "augment": "ran",
                                "build": "ran", "train": "ran", "evaluate": "ran"}
    reasons = {row["stage"]: row["reason"] for row in result.summary["stages"]}
    assert reasons["augment"] == "settings changed: augment.noise_rate"
    assert reasons["build"] == "inputs changed: qa_augmented.jsonl"
    after = stage_files(run)
    for name in ("chunks.jsonl", "qa.jsonl", "qa_curated.jsonl"):
        assert after[name] == before[name]
    noised = [p for p in read_jsonl(run / "qa_augmented.jsonl") if p["augmentation"] == "noise"]
    assert len(noised) > result.summary["counts"]["curated"] // 2
    train_report = json.loads((run / "train" / "report.json").read_text())
    assert train_report["resumed_from"] is None  # other data: training started over


@pytest.mark.slow
def test_a_deleted_adapter_is_rebuilt_from_the_last_checkpoint(first_run, tiny_model, tmp_path):
    run = copy_of(first_run, tmp_path)
    shutil.rmtree(run / "train" / "adapter")
    result = run_pipeline(run, first_run[1], tiny_model)
    got = statuses(result)
    assert got["train"] == "ran" and all(got[s] == "skipped" for s in ("ingest", "generate", "curate", "augment", "build"))
    assert result.summary["stages"][5]["reason"].startswith("outputs missing: train/adapter/")
    report = json.loads((run / "train" / "report.json").read_text())
    # Resumed from the last checkpoint rather than trained again (transformers then takes one more step at
    # learning rate 0 past max_steps, so global_steps is not asserted here).
    assert report["resumed_from"].endswith("checkpoint-6")
    assert (run / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "train" / STAGE_FINGERPRINT).read_text())["state"] == "done"


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_last_checkpoint(first_run, tiny_model, tmp_path, monkeypatch):
    run = copy_of(first_run, tmp_path)
    # Train again from scratch and stop at step 5 (after the checkpoint of step 4), as a crash would.
    monkeypatch.setenv("PAPERTUNE_FAULT_NAN_AT_STEP", "5")
    with pytest.raises(pipeline.StageFailedError, match="stage train failed: .*nan at step 5") as err:
        run_pipeline(run, first_run[1], tiny_model, from_stage="train")
    assert err.value.exit_code == ExitCode.NONFINITE_LOSS
    summary = json.loads((run / pipeline.SUMMARY_JSON).read_text())
    assert summary["failed_stage"] == "train" and summary["exit_code"] == 4
    assert {s["stage"]: s["status"] for s in summary["stages"]}["evaluate"] == "not run"
    monkeypatch.delenv("PAPERTUNE_FAULT_NAN_AT_STEP")

    result = run_pipeline(run, first_run[1], tiny_model)
    got = statuses(result)
    assert got["train"] == "ran" and got["evaluate"] in ("ran", "skipped") and got["build"] == "skipped"
    assert result.summary["stages"][5]["reason"] == "the last run stopped before it finished"
    report = json.loads((run / "train" / "report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-4") and report["global_steps"] == 6
    assert result.exit_code == 0


@pytest.mark.slow
def test_failed_documents_continue_the_run_and_exit_3(tmp_path, caplog):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text(MARKDOWN["lora.md"], encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"this is not a PDF at all")
    run = tmp_path / "run"
    args = ["run", "--docs", str(docs), "--run-dir", str(run), "--to", "curate",
            "--set", "ingest.ocr=false", "--set", "ingest.workers=1"]
    assert main(args) == ExitCode.PARTIAL
    summary = json.loads((run / pipeline.SUMMARY_JSON).read_text())
    assert summary["status"] == "partial" and summary["exit_code"] == 3
    assert {s["stage"]: s["status"] for s in summary["stages"]} == {
        "ingest": "partial", "generate": "ran", "curate": "ran", "augment": "not run", "build": "not run",
        "train": "not run", "evaluate": "not run"}
    assert [d["source"] for d in summary["documents"]["failed"]] == ["broken.pdf"]
    assert "broken.pdf" in summary["documents"]["failed"][0]["reason"]
    assert summary["counts"]["generated"] == len(list(read_jsonl(run / "qa.jsonl"))) > 0
    assert "- `broken.pdf`:" in (run / pipeline.SUMMARY_MD).read_text()
    # Again: ingest retries the failed document (the others come from its cache); the rest is current.
    assert main(args) == ExitCode.PARTIAL
    summary = json.loads((run / pipeline.SUMMARY_JSON).read_text())
    assert [s["status"] for s in summary["stages"][:3]] == ["partial", "skipped", "skipped"]


def test_every_stage_of_a_run_gives_its_vllm_engines_back_even_when_it_fails(tmp_path, monkeypatch):
    """A vLLM engine holds its share of the GPU until released: run_stage releases them after each stage."""
    import types

    from papertune.config import load_config

    released = []
    monkeypatch.setattr(pipeline, "release_engines", lambda: released.append(True))
    stage = pipeline.STAGE_BY_NAME["evaluate"]

    def failing(config, **options):
        raise RuntimeError("the stage failed")

    monkeypatch.setitem(pipeline._MODULES, "evaluate", types.SimpleNamespace(run=failing))
    config = load_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match="the stage failed"):
        pipeline.run_stage(stage, config, None, None, True)
    assert released == [True]

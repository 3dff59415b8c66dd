"""Plain helpers and constants the test modules share: small inputs written in the test, and the settings of
a tiny real run. Fixtures live in conftest.py; the fake OpenAI-compatible servers in helpers_openai.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from papertune import build
from papertune.config import PapertuneConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO / "samples" / "corpus"

HAS_TESSERACT = shutil.which("tesseract") is not None
needs_tesseract = pytest.mark.skipif(
    not HAS_TESSERACT and not os.environ.get("CI"),
    reason="Tesseract not installed (apt-get install tesseract-ocr tesseract-ocr-eng); CI installs it",
)


# --- documents ---------------------------------------------------------------------------------------


def make_config(run_dir: Path, docs_dir: Path | None = None, **ingest: object) -> PapertuneConfig:
    overrides = [f"run_dir={run_dir}"]
    if docs_dir is not None:
        overrides.append(f"ingest.docs_dir={docs_dir}")
    overrides += [f"ingest.{k}={v}" for k, v in ingest.items()]
    return load_config(None, overrides)


def write_pdf(path: Path, pages: list[list[tuple]], *, fontsize: float = 10, title: str = "") -> Path:
    """A born-digital PDF: each page is a list of (rect, text[, fontname]) boxes, written in that order.

    Font names are PDF base-14 ones: "helv" (regular), "hebo" (bold), "cour" (monospaced).
    """
    import pymupdf  # here, not at the top: the GPU tests load these helpers where PyMuPDF is not installed

    doc = pymupdf.open()
    for boxes in pages:
        page = doc.new_page(width=612, height=792)
        for rect, text, *font in boxes:
            rc = page.insert_textbox(pymupdf.Rect(*rect), text, fontsize=fontsize, fontname=font[0] if font else "helv")
            assert rc >= 0, f"text did not fit in {rect}: {text[:40]!r}"
    if title:
        doc.set_metadata({"title": title})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def write_scanned_pdf(path: Path, lines_per_page: list[str], dpi: int = 200) -> Path:
    """An image-only PDF: text is drawn, rendered to a bitmap, and only the bitmap is kept."""
    import pymupdf

    src = pymupdf.open()
    for text in lines_per_page:
        page = src.new_page(width=612, height=792)
        assert page.insert_textbox(pymupdf.Rect(72, 72, 540, 720), text, fontsize=13, fontname="helv") >= 0
    out = pymupdf.open()
    for page in src:
        pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
        new = out.new_page(width=page.rect.width, height=page.rect.height)
        new.insert_image(new.rect, stream=pix.tobytes("png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


# --- chunks to cite ----------------------------------------------------------------------------------

CHUNKS = [
    {"id": "lora.pdf#0000", "source": "lora.pdf", "section": "Method", "page_start": 3, "page_end": 3,
     "text": "Low-rank adaptation freezes the pretrained weights and trains two small matrices per layer."},
    {"id": "lora.pdf#0001", "source": "lora.pdf", "section": "Results", "page_start": 7, "page_end": 8,
     "text": "On GLUE the adapted RoBERTa matches full fine-tuning with far fewer trainable parameters."},
    {"id": "qlora.md#0000", "source": "qlora.md", "section": "NF4", "page_start": None, "page_end": None,
     "text": "NormalFloat4 is an information-theoretically optimal data type for normally distributed weights."},
    {"id": "moe.pdf#0002", "source": "moe.pdf", "section": "Routing", "page_start": 12, "page_end": 12,
     "text": "A gating network routes every token to the top two experts and adds a load-balancing loss."},
]


def write_chunks(run: Path, chunks=CHUNKS) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "chunks.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks))


def bag_of_words(texts, spec, setting="evaluate.embedding_model"):
    """A deterministic stand-in for all-MiniLM (the signature of ``embed_texts``): hashed word counts, unit
    length, the same in every run."""
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[row, zlib.crc32(word.encode()) % 512] += 1.0  # not hash(): the same buckets in every process
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# --- Q&A rows and a tiny real run --------------------------------------------------------------------

TOPICS = ["attention heads", "low-rank adapters", "NF4 quantization", "reward models", "perplexity",
          "byte-pair encoding", "expert routing", "KV caches", "paged optimizers", "DPO losses"]

# Evaluate settings that keep a tiny run fast: no embedding model, four new tokens, batches of four.
FAST_EVAL = ["evaluate.embedding_model=", "evaluate.max_new_tokens=4", "evaluate.batch_size=4"]
# The model checks its own answers: retrieval.verify, for a model trained to (build.raft_verify_rows).
VERIFYING = ["build.mode=raft", "build.raft_verify_rows=true", "retrieval.verify=true"]


def qa_rows(n_chunks: int = 10, per_chunk: int = 3, variants: bool = True) -> list[dict]:
    rows = []
    for c in range(n_chunks):
        topic = TOPICS[c % len(TOPICS)]
        for k in range(per_chunk):
            rid = f"doc{c % 3}.md#{c:04d}::rules::{k}"
            question = [f"What is the role of {topic} in chapter {c}?", f"How many {topic} are used in setup {c}?",
                        f"Why do {topic} matter for experiment {c} and its results?"][k]
            rows.append({"id": rid, "question": question, "answer": f"Answer {k} about {topic} for chunk {c}.",
                         "chunk_id": f"doc{c % 3}.md#{c:04d}", "source": f"doc{c % 3}.md", "title": "T",
                         "section": "S", "page_start": None, "page_end": None, "generator": "rules",
                         "model": None, "parent_id": None, "augmentation": None})
            if variants and k == 0:
                rows.append({**rows[-1], "id": rid + "::noise", "question": question.replace("role", "rlole"),
                             "parent_id": rid, "augmentation": "noise"})
    return rows


def write_rows(run_dir: Path, rows: list[dict], name: str = "qa_augmented.jsonl") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny_overrides(run: Path, model: Path, **train_settings) -> list[str]:
    settings = {"model": model, "load_in_4bit": "false", "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 2, "num_train_epochs": 2, "learning_rate": 1e-3, "logging_steps": 1,
                "gradient_checkpointing": "false", "eval_strategy": "steps", "eval_steps": 2, "save_total_limit": 10,
                **train_settings}
    return ([f"run_dir={run}", f"build.model={model}", "build.num_proc=1"]
            + [f"train.{k}={v}" for k, v in settings.items()])


def built_run(tmp_path: Path, model: Path, name: str = "run", n_chunks: int = 5) -> Path:
    run = tmp_path / name
    write_rows(run, qa_rows(n_chunks=n_chunks))
    build.run(load_config(None, tiny_overrides(run, model)))
    return run

"""Benchmark the ingest stage against raw PyMuPDF extraction, and OCR with 1 vs 2 workers.

    python benchmarks/bench_ingest.py [--copies 40] [--ocr-copies 4] [--repeat 3]

Both sides run in this process, on the same files, in the same run, so the ratio is what counts:
- born-digital: pages/s of the whole `papertune ingest` stage (one worker, fresh run directory each
  time: hashing, worker process, extraction, layout, cleaning, segmentation, tokenization, chunking,
  writing) vs pages/s of plain `page.get_text()` over the same PDFs. Target: the stage costs <= 2x.
- OCR: pages/s of the stage on scanned PDFs with 1 and 2 workers. Target: 2 workers >= 1.7x one.
The corpus is the bundled sample PDFs copied many times (copies are enough: nothing is cached).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pymupdf

from papertune import ingest
from papertune.config import load_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PDFS = REPO / "samples" / "corpus" / "pdf"


def make_corpus(dest: Path, sources: list[Path], copies: int) -> tuple[Path, int]:
    dest.mkdir(parents=True)
    pages = 0
    for i in range(copies):
        for src in sources:
            shutil.copy(src, dest / f"{src.stem}-{i:03d}.pdf")
            pages += pymupdf.open(src).page_count
    return dest, pages


def time_raw(folder: Path) -> float:
    start = time.perf_counter()
    for path in sorted(folder.glob("*.pdf")):
        with pymupdf.open(path) as doc:
            for page in doc:
                page.get_text()
    return time.perf_counter() - start


def time_stage(folder: Path, workers: int, ocr: bool, tmp: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    cfg = load_config(
        None,
        [f"run_dir={run_dir}", f"ingest.docs_dir={folder}", f"ingest.workers={workers}", f"ingest.ocr={str(ocr).lower()}"],
    )
    start = time.perf_counter()
    ingest.run(cfg)
    elapsed = time.perf_counter() - start
    if ingest.failed_documents(run_dir):
        sys.exit(f"benchmark run had failures: {ingest.failed_documents(run_dir)}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=40, help="copies of each born-digital sample PDF")
    parser.add_argument("--ocr-copies", type=int, default=4, help="copies of the scanned sample PDF")
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (median reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    digital = sorted(p for p in SAMPLE_PDFS.glob("*.pdf") if "scanned" not in p.name)
    scanned = sorted(p for p in SAMPLE_PDFS.glob("*.pdf") if "scanned" in p.name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder, pages = make_corpus(tmp / "digital", digital, args.copies)
        time_raw(folder)  # warm the page cache and imports
        raw, stage = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both sides alike
            raw.append(time_raw(folder))
            stage.append(time_stage(folder, 1, False, tmp))
        raw_s, stage_s = statistics.median(raw), statistics.median(stage)
        rows.append(("born-digital: raw page.get_text()", pages, raw_s, "1.00x"))
        rows.append(("born-digital: papertune ingest, 1 worker", pages, stage_s, f"{stage_s / raw_s:.2f}x cost (target <= 2x)"))

        ocr_folder, ocr_pages = make_corpus(tmp / "scanned", scanned, args.ocr_copies)
        one = statistics.median(time_stage(ocr_folder, 1, True, tmp) for _ in range(max(1, args.repeat - 2)))
        two = statistics.median(time_stage(ocr_folder, 2, True, tmp) for _ in range(max(1, args.repeat - 2)))
        rows.append(("OCR: papertune ingest, 1 worker", ocr_pages, one, "1.00x"))
        rows.append(("OCR: papertune ingest, 2 workers", ocr_pages, two, f"{one / two:.2f}x speed-up (target >= 1.7x)"))

    print("\n| measurement | pages | seconds | pages/s | ratio |\n|---|---|---|---|---|")
    for name, n, seconds, ratio in rows:
        print(f"| {name} | {n} | {seconds:.2f} | {n / seconds:.1f} | {ratio} |")


if __name__ == "__main__":
    main()

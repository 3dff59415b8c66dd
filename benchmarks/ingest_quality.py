"""How well the PDF reader mends words split across lines, measured on a folder of real papers.

Usage: ``python benchmarks/ingest_quality.py FOLDER [--show]``

For every PDF in FOLDER, each line of the text layer that ends in ``word-`` and is followed by a line
starting with a lower-case letter is a line-end hyphen split. After ``read_pdf`` the split is either
joined ("lay-|ers" -> "layers"), kept as a compound ("held-|out" -> "held-out"), left split ("lay- ers",
the failure counted here) or absent (in a dropped part such as the references). Prints one row per paper
and a total; ``--show`` also lists what was kept and what was left split.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

from papertune.config import IngestConfig
from papertune.ingest.pdf import read_pdf

_SPLIT = re.compile(r"([A-Za-z]+)-\n([a-z][A-Za-z]*)")


@dataclass
class Row:
    paper: str
    pages: int
    found: int = 0
    joined: int = 0
    kept: int = 0
    left: int = 0
    kept_words: list[str] = field(default_factory=list)
    left_words: list[str] = field(default_factory=list)

    @property
    def per_50_pages(self) -> float:
        return 50 * self.left / self.pages if self.pages else 0.0


def line_end_splits(path: Path) -> tuple[int, Counter[tuple[str, str]]]:
    """Pages and the (head, tail) pairs of every line-end hyphen split in the PDF's text layer."""
    splits: Counter[tuple[str, str]] = Counter()
    with pymupdf.open(path) as doc:
        for page in doc:
            lines = [line.strip() for line in page.get_text("text").splitlines()]
            splits.update(_SPLIT.findall("\n".join(lines)))
        return doc.page_count, splits


def measure(path: Path, cfg: IngestConfig) -> Row:
    pages, splits = line_end_splits(path)
    text = " ".join(p.text for p in read_pdf(path, path.name, cfg).paragraphs)
    row = Row(path.name, pages)
    for (head, tail), n in sorted(splits.items()):
        row.found += n
        # "global- and local-level": a suspended hyphen keeps its space, a compound kept as it should.
        spaced = len(re.findall(rf"\b{head}-\s+{tail}\b", text))
        left = 0 if tail in {"and", "or", "nor"} else min(n, spaced)
        kept_spaced = min(n, spaced) - left
        kept = min(n - left, kept_spaced + len(re.findall(rf"\b{head}-{tail}\b", text)))
        joined = min(n - left - kept, len(re.findall(rf"\b{head}{tail}\b", text)))
        row.left += left
        row.kept += kept
        row.joined += joined
        row.left_words += [f"{head}- {tail}"] * left
        row.kept_words += [f"{head}-{tail}"] * kept
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of research-paper PDFs")
    parser.add_argument("--show", action="store_true", help="list the words kept as compounds and left split")
    args = parser.parse_args(argv)
    papers = sorted(args.folder.glob("*.pdf"))
    if not papers:
        print(f"no PDFs in {args.folder}", file=sys.stderr)
        return 2
    cfg = IngestConfig(ocr=False)
    rows = [measure(path, cfg) for path in papers]
    total = Row(f"TOTAL ({len(rows)} papers)", sum(r.pages for r in rows))
    for r in rows:
        total.found, total.joined, total.kept, total.left = (
            total.found + r.found, total.joined + r.joined, total.kept + r.kept, total.left + r.left)
    width = max(len(r.paper) for r in [*rows, total])
    header = f"{'paper':<{width}}  pages  splits  joined  kept  left  left/50p"
    print(header)
    print("-" * len(header))
    for r in [*rows, total]:
        print(f"{r.paper:<{width}}  {r.pages:>5}  {r.found:>6}  {r.joined:>6}  {r.kept:>4}  {r.left:>4}  {r.per_50_pages:>8.2f}")
    if args.show:
        for r in rows:
            if r.kept_words or r.left_words:
                print(f"\n{r.paper}\n  kept: {', '.join(r.kept_words)}\n  left split: {', '.join(r.left_words)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

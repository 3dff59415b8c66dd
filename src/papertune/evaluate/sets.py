"""The question sets evaluate answers, and the systems that answer them.

Question sets are splits of ``RUN/dataset`` (built by ``papertune build``):
- ``test``: pairs of chunks training never saw (``build.group_by`` decides whether their documents feed
  training too);
- ``heldout``: pairs of documents kept out of training but in the retrieval index;
- ``outside``: pairs of documents in no index: the right answer from passages is to decline. A question
  whose answer an indexed chunk says all the same (:func:`answered_in_index`: another post that repeats the
  sentence; with the judge, also :mod:`papertune.evaluate.outside`: a retrieved passage that says it in
  other words) is no such question and is left out, counted.
An older dataset with only ``train`` and ``test`` evaluates on ``test`` alone.

A system is a model (``base``, ``tuned``) answering in a mode (``closed_book``: the question alone;
``retrieval``: the question after the retrieved passages, as ``ask`` and ``serve`` answer).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from papertune.config import EVAL_MODES
from papertune.errors import InputError
from papertune.rundir import BUILD_REPORT, DATASET
from papertune.text import answer_words, carried, held_words

QUESTION_SETS = ("test", "heldout", "outside")
ANSWERABLE_SETS = ("test", "heldout")  # their answers are in an indexed document
SET_LABELS = {"test": "test split", "heldout": "held-out documents", "outside": "documents outside the index"}
_COLUMNS = {"question", "answer", "prompt", "completion"}
# An indexed chunk holding this share of an outside answer's content words (stemmed), and all its numbers,
# says that answer: nearly word for word, as a post quoting another does (text.carried_share).
ANSWER_IN_INDEX = 0.9


@dataclass(frozen=True)
class System:
    """A model answering in a mode: ``base_closed_book``, ``tuned_retrieval``, ..."""

    model: str  # base | tuned
    mode: str  # closed_book | retrieval

    @property
    def name(self) -> str:
        return f"{self.model}_{self.mode}"

    @property
    def label(self) -> str:
        return f"{self.model} closed-book" if self.mode == "closed_book" else f"{self.model} + retrieval"


def systems_for(models: list[str], modes: list[str]) -> list[System]:
    """Every model in every mode, closed-book systems first (base, tuned, base + retrieval, tuned + retrieval)."""
    return [System(model, mode) for mode in EVAL_MODES if mode in modes for model in models]


def _load_dataset(run_dir: Path):
    from datasets import load_from_disk

    path = run_dir / DATASET
    if not (path / "dataset_dict.json").is_file():
        raise InputError(f"no dataset in {path}: run `papertune build --run-dir {run_dir}` first")
    ds = load_from_disk(str(path))
    for split in ("train", "test"):
        if split not in ds or not _COLUMNS <= set(ds[split].column_names):
            raise InputError(f"{path} has no {split} split with question/answer/prompt/completion columns; "
                             "rebuild it with papertune build")
    return ds


def load_test_split(run_dir: Path) -> tuple[list[dict], set[str]]:
    """The rows of ``RUN/dataset``'s test split, and the documents (``source``) its train split holds."""
    sets, train_sources = load_question_sets(run_dir)
    return sets["test"], train_sources


def load_question_sets(run_dir: Path) -> tuple[dict[str, list[dict]], set[str]]:
    """The rows of each question set ``RUN/dataset`` holds (``test`` always; ``heldout`` and ``outside`` when
    built with them, in that order), and the documents (``source``) the train split holds."""
    ds = _load_dataset(run_dir)
    sets = {name: ds[name].to_list() for name in QUESTION_SETS if name in ds}
    if not sets["test"]:
        raise InputError(f"{run_dir / DATASET}: the test split is empty; nothing to evaluate")
    for name, rows in sets.items():
        if rows and not {"question", "answer"} <= set(rows[0]):
            raise InputError(f"{run_dir / DATASET}: the {name} split has no question/answer columns; "
                             "rebuild it with papertune build")
    train_sources = {s for s in ds["train"]["source"] if s} if "source" in ds["train"].column_names else set()
    return sets, train_sources


def outside_documents(run_dir: Path, outside_rows: list[dict]) -> set[str]:
    """The documents left out of the evaluation's index: ``documents.outside`` of ``RUN/build/report.json``
    and the documents of the outside split's questions."""
    documents = {r["source"] for r in outside_rows if r.get("source")}
    report = run_dir / BUILD_REPORT
    if report.is_file():
        try:
            listed = json.loads(report.read_text(encoding="utf-8")).get("documents", {}).get("outside", [])
        except (ValueError, AttributeError) as exc:
            raise InputError(f"{report} is not a build report ({exc}); rebuild it with papertune build") from exc
        documents |= set(listed)
    if outside_rows and not documents:
        raise InputError(f"{run_dir / DATASET}: the outside split names no documents (no source column, and "
                         f"{report} lists none); rebuild it with papertune build")
    return documents


def answered_in_index(rows: list[dict], chunk_texts: list[str]) -> list[int]:
    """The rows (indices) whose answer one of ``chunk_texts`` holds at :data:`ANSWER_IN_INDEX`."""
    held = [held_words(text) for text in chunk_texts]
    wanted = [answer_words(row["answer"]) for row in rows]
    return [i for i, words in enumerate(wanted) if any(carried(words, text) >= ANSWER_IN_INDEX for text in held)]


def pick_questions(n: int, cap: int, seed: int) -> list[int]:
    """Which of ``n`` rows are answered: all when ``cap`` is 0 or at least ``n``, else a seeded sample."""
    if cap == 0 or n <= cap:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), cap))

"""The augment stage: ``RUN/qa_curated.jsonl`` -> ``RUN/qa_augmented.jsonl`` and ``RUN/augment/report.json``.

Each technique makes one variant for its rate's share of the original pairs, chosen in a seeded order
that depends on each pair's id alone; the output lists every original followed by its variants.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papertune.augment.adversarial import Adversary
from papertune.augment.answers import alternative_answer_prompt, build_chat_model, clean_reply
from papertune.augment.entities import Lexicon, keeps_terms, load_lexicon, replace_entities
from papertune.augment.grammar import Grammar
from papertune.augment.noise import noisy_question
from papertune.augment.paraphrase import Paraphraser, paraphrase_prompt
from papertune.augment.wordnet_data import optional_wordnet, wordnet
from papertune.config import AugmentConfig, PapertuneConfig
from papertune.errors import InputError, PapertuneError
from papertune.rundir import (
    AUGMENT_DIR,
    AUGMENT_REPORT,
    QA_AUGMENTED,
    QA_CURATED,
    read_pairs,
    record_stage,
    write_json_atomic,
    write_jsonl_atomic,
)
from papertune.stage import StageSpec, run_files

log = logging.getLogger(__name__)

INPUT_FILE = QA_CURATED
OUTPUT_FILE = QA_AUGMENTED
REPORT_FILE = AUGMENT_REPORT

TECHNIQUES = ("paraphrase", "alternative_answer", "noise", "entity_replacement", "adversarial")
_RATE_SETTING = {t: f"{t}_rate" for t in TECHNIQUES}
_MAX_PROBLEMS_IN_REPORT = 100


def _rank(rows: list[dict[str, Any]], seed: int, technique: str) -> list[int]:
    """Row positions in a seeded order that depends on each row's id only (stable across runs)."""
    def key(i: int) -> str:
        return hashlib.sha256(f"{seed}:{technique}:{rows[i]['id']}".encode()).hexdigest()

    return sorted(range(len(rows)), key=key)


def _rng(seed: int, technique: str, row_id: str) -> random.Random:
    return random.Random(f"{seed}:{technique}:{row_id}")


def _variant(row: dict[str, Any], technique: str, **changes: str) -> dict[str, Any]:
    """A variant of ``row``; the curate judge's record stays with the original (it judged that wording)."""
    fields = {k: v for k, v in row.items() if k != "judge"}
    return {**fields, **changes, "id": f"{row['id']}~{technique}", "parent_id": row["id"], "augmentation": technique}


@dataclass
class _Tally:
    rate: float
    target: int
    made: int = 0
    skipped: Counter = field(default_factory=Counter)
    details: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "target": self.target, "made": self.made,
                "skipped": dict(sorted(self.skipped.items())), "details": dict(sorted(self.details.items()))}


def _rule_based(rows, technique, cfg, tally, make) -> dict[str, dict[str, Any]]:
    """Walk the seeded order, making variants until the rate's share is reached; returns id -> variant."""
    out: dict[str, dict[str, Any]] = {}
    if tally.target == 0:
        return out
    for i in _rank(rows, cfg.seed, technique):
        row = rows[i]
        result = make(row, _rng(cfg.seed, technique, row["id"]))
        if isinstance(result, str):
            tally.skipped[result] += 1
            continue
        variant, detail = result
        for d in detail:
            tally.details[d] += 1
        out[row["id"]] = variant
        tally.made += 1
        if tally.made == tally.target:
            break
    if tally.made < tally.target:
        tally.skipped["not_enough_applicable_pairs"] = tally.target - tally.made
    return out


def _llm_based(rows, technique, cfg, tally, chat_model, prompt, apply) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if tally.target == 0:
        return out
    chosen = [rows[i] for i in _rank(rows, cfg.seed, technique)[:tally.target]]
    log.info("augment: %s for %d pairs with %s", technique, len(chosen), getattr(chat_model, "name", "the LLM"))
    replies = chat_model.chat([prompt(r) for r in chosen], max_new_tokens=cfg.llm.max_new_tokens)
    if len(replies) != len(chosen):
        raise PapertuneError(f"augment.llm returned {len(replies)} replies for {len(chosen)} prompts")
    for row, reply in zip(chosen, replies):
        variant = apply(row, reply)
        if isinstance(variant, str):
            tally.skipped[variant] += 1
            continue
        out[row["id"]] = variant
        tally.made += 1
    return out


def augment_rows(rows: list[dict[str, Any]], cfg: AugmentConfig, *, chat_model: Any = None,
                 lexicon: Lexicon | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Originals followed each by its variants (in technique order), and per-technique tallies."""
    lexicon = lexicon or load_lexicon()
    n = len(rows)
    tallies = {t: _Tally(getattr(cfg, _RATE_SETTING[t]), int(getattr(cfg, _RATE_SETTING[t]) * n + 0.5))
               for t in TECHNIQUES}
    needs_llm = (cfg.paraphrase_backend == "llm" and tallies["paraphrase"].target > 0) or tallies[
        "alternative_answer"].target > 0
    if needs_llm and chat_model is None:
        why = ("augment.alternative_answer_rate" if tallies["alternative_answer"].target > 0
               else "augment.paraphrase_backend=llm")
        chat_model = build_chat_model(cfg, why)
    wn = None
    if cfg.paraphrase_backend == "wordnet" and tallies["paraphrase"].target > 0:
        wn = wordnet()  # required: a clear error if it is missing
    elif tallies["adversarial"].target > 0:
        wn = optional_wordnet()
    grammar = Grammar(wn)
    variants: dict[str, dict[str, dict[str, Any]]] = {}

    # paraphrase
    tally = tallies["paraphrase"]
    if cfg.paraphrase_backend == "wordnet":
        para = Paraphraser(lexicon, grammar) if tally.target else None

        def make_paraphrase(row, rng):
            result = para.paraphrase(row["question"], rng)
            if result is None:
                return "no_synonym_or_rewrite"
            return _variant(row, "paraphrase", question=result[0]), result[1]

        variants["paraphrase"] = _rule_based(rows, "paraphrase", cfg, tally, make_paraphrase)
    else:
        def apply_paraphrase(row, reply):
            text = clean_reply(reply, row["question"], question=True)
            if text is None:
                return "llm_reply_unusable"
            if not keeps_terms(row["question"], text, lexicon):
                return "llm_reply_lost_terms"
            return _variant(row, "paraphrase", question=text)

        variants["paraphrase"] = _llm_based(rows, "paraphrase", cfg, tally, chat_model,
                                            lambda r: paraphrase_prompt(r["question"]), apply_paraphrase)

    # alternative answers
    def apply_answer(row, reply):
        text = clean_reply(reply, row["answer"], question=False, other=row["question"])
        if text is None:
            return "llm_reply_unusable"
        if not keeps_terms(row["answer"], text, lexicon):
            return "llm_reply_lost_terms"
        return _variant(row, "alternative_answer", answer=text)

    variants["alternative_answer"] = _llm_based(
        rows, "alternative_answer", cfg, tallies["alternative_answer"], chat_model,
        lambda r: alternative_answer_prompt(r["question"], r["answer"]), apply_answer)

    # noise
    def make_noise(row, rng):
        text, done = noisy_question(row["question"], cfg.noise_char_prob, rng)
        return _variant(row, "noise", question=text), done

    variants["noise"] = _rule_based(rows, "noise", cfg, tallies["noise"], make_noise)

    # entity replacement
    def make_entity(row, rng):
        result = replace_entities(row["question"], row["answer"], lexicon, rng)
        if result is None:
            return "no_lexicon_term_in_question"
        return _variant(row, "entity_replacement", question=result[0], answer=result[1]), [result[2]]

    variants["entity_replacement"] = _rule_based(rows, "entity_replacement", cfg, tallies["entity_replacement"],
                                                 make_entity)

    # adversarial
    adversary = Adversary(lexicon, grammar)

    def make_adversarial(row, rng):
        result = adversary.phrase(row["question"], rng)
        if result is None:
            return "no_phrasing_applies"
        return _variant(row, "adversarial", question=result[0]), [result[1]]

    variants["adversarial"] = _rule_based(rows, "adversarial", cfg, tallies["adversarial"], make_adversarial)

    out = []
    for row in rows:
        out.append({**row, "parent_id": row.get("parent_id"), "augmentation": row.get("augmentation")})
        out += [variants[t][row["id"]] for t in TECHNIQUES if row["id"] in variants[t]]
    return out, {t: tallies[t].as_dict() for t in TECHNIQUES}


SPEC = StageSpec(
    name="augment",
    directory=AUGMENT_DIR,
    help="paraphrases, noise, entity swaps, adversarial phrasings (RUN/qa_augmented.jsonl)",
    description="Add variants of the curated pairs, each switchable with a rate in the augment section; every "
    "variant carries the id of its original.",
    settings=("augment",),
    outputs=(QA_AUGMENTED, AUGMENT_REPORT),
    inputs=run_files(QA_CURATED),
)


def run(config: PapertuneConfig, *, chat_model: Any = None) -> Path:
    """Write ``RUN/qa_augmented.jsonl`` (originals and variants) from ``RUN/qa_curated.jsonl``; returns its path.

    ``chat_model`` (anything with ``.chat(conversations) -> replies``) replaces the model ``augment.llm``
    would build; it is only used by the ``llm`` paraphrase backend and alternative answers.
    """
    cfg = config.augment
    run_dir = Path(config.run_dir)
    source = run_dir / INPUT_FILE
    if not source.is_file():
        raise InputError(f"{source} not found: run `papertune curate --run-dir {run_dir}` first")
    started = time.perf_counter()
    unique, problems, duplicates = read_pairs(source)
    problems += duplicates
    record_stage(run_dir, "augment", config)
    out_rows, tallies = augment_rows(unique, cfg, chat_model=chat_model)

    out = run_dir / OUTPUT_FILE
    write_jsonl_atomic(out, out_rows)
    report = {
        "input": len(unique),
        "malformed_lines": len(problems),
        "malformed": problems[:_MAX_PROBLEMS_IN_REPORT],
        "variants": len(out_rows) - len(unique),
        "output": len(out_rows),
        "seed": cfg.seed,
        "paraphrase_backend": cfg.paraphrase_backend,
        "techniques": tallies,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(run_dir / REPORT_FILE, report)
    log.info("augment: %d originals + %d variants (%s) -> %s", len(unique), report["variants"],
             ", ".join(f"{t} {v['made']}" for t, v in tallies.items()), out)
    return out

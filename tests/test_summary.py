"""The run summary's "Pairs" section: chunks covered, pairs per chunk, the kind mix, drop reasons, the teacher's
and the judge's speed and verdicts, read from the generate and curate reports; quiet about what a run lacks."""

from __future__ import annotations

import json
from pathlib import Path

from papertune import curate, generate
from papertune.config import load_config
from papertune.summary import collect_pairs, collect_summary, render_pairs

GENERATE_REPORT = {
    "chunks": 10, "skipped_non_content": 2, "skipped_non_content_reasons": {"references": 2},
    "content_chunks_with_pairs": 6, "pairs_per_content_chunk": {"0": 2, "1": 3, "3": 3},
    "kinds": {"definition": 6, "mechanism": 4, "quantitative": 2},
    "dropped_total": {"duplicate": 0, "ungrounded": 3, "not_self_contained": 5},
    "teacher": {"model": "llamacpp:packaged:qwen2.5-coder-0.5b-instruct", "replies": 5, "seconds": 30.0,
                "reply_tokens": 1200, "reply_tokens_per_s": 40.0},
}
JUDGE = {
    "model": "llamacpp:packaged:qwen2.5-coder-0.5b-instruct", "pairs": 10, "passed": 7, "pass_rate": 0.7,
    "failed_checks": {"unparseable": 0, "rubric": 2, "quote_not_in_chunk": 1, "quote_without_answer": 0,
                      "blind_disagrees": 2},
    "unparseable": 0,
    "score_distribution": {"answerable": {"1": 1, "5": 9}, "correct": {"2": 2, "4": 8},
                           "self_contained": {"5": 10}, "useful": {"3": 1, "5": 9}},
    "judged_now": 8, "from_cache": 2, "seconds": 20.0, "reply_tokens": 900, "reply_tokens_per_s": 45.0,
}
CURATE_REPORT = {"input": 12, "kept": 6, "dropped": 6, "chunks_with_kept_pairs": 5,
                 "dropped_by_reason": {"exact_duplicate": 2, "judge": 3, "near_duplicate": 1, "injection": 0},
                 "judge": JUDGE,
                 "refill": {"rounds": 1, "chunks": 2, "asked": 2, "pairs": 3, "kept": 1, "chunks_recovered": 1}}

GOLDEN = [
    "- Chunks covered: 6 of 8 content chunks have a pair (2 more skipped as non-content: references 2).",
    "- Pairs per content chunk (pairs: chunks): 0: 2, 1: 3, 3: 3.",
    "- Kinds: definition 50%, mechanism 33%, quantitative 17% (of 12 pairs).",
    "- Dropped by generate: not_self_contained 5, ungrounded 3.",
    "- Teacher: llamacpp:packaged:qwen2.5-coder-0.5b-instruct, 5 replies in this run; 1,200 reply tokens at "
    "40.0 tokens/s.",
    "- Judge: llamacpp:packaged:qwen2.5-coder-0.5b-instruct passed 7 of 10 pairs (70.0%); failed checks: "
    "blind_disagrees 2, rubric 2, quote_not_in_chunk 1; scores 1/2/3/4/5: answerable 1/0/0/0/9; correct 0/2/0/8/0; "
    "self_contained 0/0/0/0/10; useful 0/0/1/0/9; 2 from its cache; 900 reply tokens at 45.0 tokens/s.",
    "- Curate kept 6 of 12 pairs (5 chunks have a kept pair); dropped: judge 3, exact_duplicate 2, near_duplicate 1.",
    "- Refill: 2 chunks that kept no pair were asked again, and 1 of them kept one (1 of 3 new pairs kept).",
]


def test_the_pairs_section_golden():
    assert render_pairs(collect_pairs(GENERATE_REPORT, CURATE_REPORT)) == GOLDEN


def test_a_run_without_a_judge_or_teacher_shows_no_line_for_them():
    lines = render_pairs(collect_pairs({**GENERATE_REPORT, "teacher": None}, {**CURATE_REPORT, "judge": None}))
    assert lines == [line for line in GOLDEN if not line.startswith(("- Teacher", "- Judge"))]
    # A judge whose replies all came from its cache has no speed to show.
    cached = {**JUDGE, "judged_now": 0, "from_cache": 10, "reply_tokens": 0, "reply_tokens_per_s": None}
    line = render_pairs(collect_pairs(None, {**CURATE_REPORT, "judge": cached}))[0]
    assert line.startswith("- Judge: ") and line.endswith("; 10 from its cache.")
    assert collect_pairs(None, None) is None


def test_the_summary_reads_the_reports_the_stages_write(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    texts = ["Perplexity is the exponential of the average negative log-likelihood per token. A perplexity of 10 "
             "means the model is as uncertain as a uniform choice among 10 tokens. Lower is better.",
             "Low-Rank Adaptation (LoRA) freezes the pretrained weights and trains two small low-rank matrices. "
             "LoRA is a parameter-efficient fine-tuning method.",
             "[1] A. Author. A paper. 2020.\n[2] B. Author. Another paper. 2021.\n[3] C. Author. A third. 2022."]
    with (run_dir / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"doc.md#{i}", "text": text, "source": "doc.md", "title": "T",
                                 "section": "References" if i == 2 else "S", "page_start": None, "page_end": None,
                                 "n_tokens": 30, "ocr": False, "hash": f"h{i}"}) + "\n")
    cfg = load_config(None, [f"run_dir={run_dir}"])
    generate.run(cfg)
    curate.run(cfg)
    pairs = collect_summary(run_dir)["pairs"]
    gen, cur = pairs["generate"], pairs["curate"]
    written = json.loads((run_dir / "generate" / "report.json").read_text())
    assert gen["content_chunks"] == 2 and gen["skipped_non_content"] == 1 and gen["content_chunks_with_pairs"] == 2
    assert sum(gen["kinds"].values()) == written["pairs"] > 0 and gen["teacher"] is None
    assert cur["judge"] is None and cur["input"] == written["pairs"]
    lines = render_pairs(pairs)
    assert lines[0] == "- Chunks covered: 2 of 2 content chunks have a pair (1 more skipped as non-content: " \
                       f"{next(iter(written['skipped_non_content_reasons']))} 1)."
    assert not any(line.startswith(("- Teacher", "- Judge")) for line in lines)

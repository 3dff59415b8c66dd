"""The grounded judge of curate (papertune.curate.judge): its checks, and the stage with a scripted judge
behind the OpenAI-compatible test server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers_openai import ChatServer
from papertune import curate
from papertune.config import CurateConfig, load_config
from papertune.curate.judge import (
    assess,
    BLIND_SCHEMA,
    GRADE_SCHEMA,
    GRADE_SYSTEM,
    carried_share,
    contained,
    content_f1,
    parse_reply,
)
from papertune.errors import ConfigError
from papertune.llm import LLMRequestError
from papertune.rundir import read_jsonl
from papertune.text import quote_match

CHUNK = {
    "id": "paper.pdf#0000",
    "text": "LoRA freezes the pretrained weights and trains two low-rank matrices per layer. This reduces the "
    "number of trainable parameters by a factor of ten thousand. QLoRA quantizes the base model to 4-bit "
    "NormalFloat.",
    "source": "paper.pdf", "title": "LoRA", "section": "Method", "page_start": 1, "page_end": 1,
}
FREEZE = "LoRA freezes the pretrained weights and trains two low-rank matrices per layer."
FACTOR = "This reduces the number of trainable parameters by a factor of ten thousand."
QUANT = "QLoRA quantizes the base model to 4-bit NormalFloat."


def pair(pid: str, question: str, answer: str) -> dict:
    return {"id": pid, "question": question, "answer": answer, "chunk_id": CHUNK["id"], "source": "paper.pdf",
            "title": "LoRA", "section": "Method", "page_start": 1, "page_end": 1, "generator": "rules",
            "model": None, "parent_id": None, "augmentation": None}


def grade(quote: str, correct: int = 5, verdict: str = "keep") -> str:
    return json.dumps({"quote": quote, "answerable": 5, "correct": correct, "self_contained": 4, "useful": 4,
                       "verdict": verdict})


def blind(quote: str, answer: str) -> str:
    return json.dumps({"quote": quote, "answer": answer})


# question -> (grade reply, blind reply). The grade replies agree with every pair, as a small model does.
SCRIPT = {
    "What does LoRA freeze during training?": (grade(FREEZE), blind(FREEZE, "the pretrained weights")),
    "How many low-rank matrices does LoRA train per layer?": (
        # An invented quote; the blind answer agrees only loosely, so it does not vouch for the pair.
        grade("LoRA trains exactly two matrices in every layer of the model."), blind("", "two")),
    "By what factor does LoRA cut trainable parameters?": (
        grade(QUANT), blind("", "by a factor of ten thousand")),
    # A planted wrong answer: the grade quote carries it, but the blind judge answers something else.
    "What does QLoRA quantize the base model to?": (
        grade(FREEZE), blind(QUANT, "4-bit NormalFloat")),
    "Which precision does QLoRA use for the base model?": ("Sure! The answer looks right to me.", blind(QUANT, "4-bit")),
    "What does LoRA reduce by a factor of ten thousand?": (
        grade(FACTOR, correct=2), blind(FACTOR, "the number of trainable parameters")),
}
PAIRS = [
    pair("good", "What does LoRA freeze during training?", "The pretrained weights."),
    pair("invented-quote", "How many low-rank matrices does LoRA train per layer?", "Two matrices per layer."),
    pair("quote-elsewhere", "By what factor does LoRA cut trainable parameters?", "By a factor of ten thousand."),
    pair("planted", "What does QLoRA quantize the base model to?", "Two low-rank matrices per layer."),
    pair("unreadable", "Which precision does QLoRA use for the base model?", "4-bit NormalFloat."),
    pair("low-score", "What does LoRA reduce by a factor of ten thousand?", "The number of trainable parameters."),
]
EXPECTED_FAILED = {
    "invented-quote": ["quote_not_in_chunk"],
    "quote-elsewhere": ["quote_without_answer"],
    "planted": ["blind_disagrees"],
    "unreadable": ["unparseable"],
    "low-score": ["rubric"],
}


class ScriptedJudge:
    """A chat model that replies from :data:`SCRIPT` by the question (and the conversation's kind);
    ``fail_on``: a question whose blind conversation raises."""

    name = "scripted-judge"

    def __init__(self, fail_on: str | None = None) -> None:
        self.conversations: list[list[dict[str, str]]] = []
        self.fail_on = fail_on

    def chat(self, conversations, *, max_new_tokens=None, temperature=None, json_schema=None) -> list[str]:
        replies = []
        for conversation in conversations:
            self.conversations.append(conversation)
            question = re.search(r"^Question: (.*)$", conversation[-1]["content"], flags=re.MULTILINE).group(1)
            graded, blinded = SCRIPT[question]
            if conversation[0]["content"] == GRADE_SYSTEM:
                replies.append(graded)
            elif question == self.fail_on:
                raise RuntimeError("the judge crashed")
            else:
                replies.append(blinded)
        return replies


def write_run(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "chunks.jsonl").write_text(json.dumps(CHUNK) + "\n")


def judged_config(run_dir: Path, server: ChatServer, *extra: str):
    return load_config(None, [f"run_dir={run_dir}", "curate.judge_enabled=true", "curate.judge.backend=openai",
                              f"curate.judge.base_url={server.url}", "curate.judge.model=scripted-judge",
                              "curate.judge.max_retries=0", "curate.judge.concurrency=2", *extra])


def outputs(run_dir: Path) -> tuple[list[dict], dict[str, dict], dict]:
    kept = list(read_jsonl(run_dir / "qa_curated.jsonl"))
    dropped = {d["id"]: d for d in read_jsonl(run_dir / "qa_dropped.jsonl")}
    return kept, dropped, json.loads((run_dir / "curate" / "report.json").read_text())


def test_checks_measure_quotes_and_answers():
    chunk = CHUNK["text"]
    assert quote_match(FREEZE, chunk) == 1.0
    assert quote_match("  lora FREEZES the pretrained\nweights, and trains two low-rank matrices per layer ", chunk) == 1.0
    assert quote_match(f"{QUANT} ... {FREEZE}", chunk) == 1.0  # sentences joined, in any order
    assert quote_match("LoRA trains exactly two matrices in every layer of the model.", chunk) < 0.5
    assert quote_match("", chunk) == 0.0
    # word endings do not matter: a judge that mends the chunk's grammar still quotes it
    assert quote_match("Diversity sampling intends to find samples that represent the whole distribution.",
                       "Diversity sampling intend to find samples that represent the whole distribution.") == 1.0
    assert quote_match("Diversity sampling intends to find samples that represent one narrow subset.",
                       "Diversity sampling intend to find samples that represent the whole distribution.") < 0.9
    assert carried_share("The pretrained weights.", FREEZE) == 1.0
    assert carried_share("By a factor of ten thousand.", QUANT) == 0.0
    assert carried_share("4-bit NormalFloat", QUANT) == 1.0
    assert carried_share("8-bit NormalFloat", QUANT) == 0.0  # a wrong number fails whatever else is shared
    assert content_f1("the pretrained weights", "The pretrained weights.") == 1.0
    assert content_f1("4-bit NormalFloat", "Two low-rank matrices per layer.") == 0.0
    assert 0 < content_f1("two matrices", "Two low-rank matrices per layer.") < 1
    # A long answer that says what a short blind answer says agrees with it; a one-word blind answer proves nothing.
    long_answer = "LoRA keeps the pretrained weights frozen, so only two small matrices per layer are trained."
    assert contained("The pretrained weights are frozen.", long_answer) == 1.0
    assert content_f1("The pretrained weights are frozen.", long_answer) < 0.6
    assert contained("LoRA", long_answer) == 0.0
    assert contained("It trains 8 small matrices per layer.", long_answer) == 0.0  # a number it does not say


def test_formulas_do_not_decide_whether_a_quote_is_in_the_chunk():
    """A judge held to JSON writes LaTeX without its backslashes (``\\int`` as ``int``, ``\\gamma`` as ``γ``, or
    ``\\(...\\)`` for ``$...$``): the words around the formulas decide; a quote that is only a formula is
    matched as written."""
    chunk = (r"KL divergence measures how one distribution $p$ diverges from $q$: $$D_{KL}(p \| q) = \int_x "
             r"p(x) \log \frac{p(x)}{q(x)} dx$$ Given a MDP $M = (S, A, P, R, \gamma)$ and a relation $B$, two "
             r"states are equal.")
    assert quote_match("KL divergence measures how one distribution $p$ diverges from $q$: "
                       "$$D_{KL}(p || q) = int_x p(x) log p(x) / q(x) dx$$", chunk) == 1.0
    assert quote_match("Given a MDP \\(M = (S, A, P, R, γ)\\) and a relation \\(B\\), two states are equal.", chunk) == 1.0
    assert quote_match("Given a MDP and a relation, three states differ.", chunk) < 0.9
    assert quote_match("$$D_{KL}(p \\| q)$$", chunk) == 1.0  # nothing but a formula: matched as written


def test_replies_are_read_against_their_schema():
    assert parse_reply(grade(FREEZE), GRADE_SCHEMA)["correct"] == 5
    fenced = "```json\n" + grade(FREEZE).replace('"correct": 5', '"correct": "4"') + "\n```"
    assert parse_reply(fenced, GRADE_SCHEMA)["correct"] == 4  # hf replies are not constrained: read leniently
    assert parse_reply(grade(FREEZE, correct=7), GRADE_SCHEMA) is None  # outside the enum
    assert parse_reply(grade(FREEZE, verdict="maybe"), GRADE_SCHEMA) is None
    assert parse_reply('{"quote": "x"}', BLIND_SCHEMA) is None  # a field missing
    assert parse_reply("yes", BLIND_SCHEMA) is None and parse_reply("", BLIND_SCHEMA) is None


def test_unconstrained_replies_may_leave_out_the_verdict_and_keep_latex():
    """What Qwen2.5-Coder-1.5B wrote through the hf backend (no schema): a fenced object without the closing
    verdict, and a quote with LaTeX backslashes that are no JSON escapes. 606 of 679 such replies were
    unreadable before."""
    no_verdict = ('```json\n{\n  "quote": "' + FREEZE + '",\n  "answerable": 5,\n  "correct": 5,\n'
                  '  "self_contained": 5,\n  "useful": 5\n}\n```')
    parsed = parse_reply(no_verdict, GRADE_SCHEMA)
    assert parsed is not None and parsed["verdict"] is None and parsed["correct"] == 5
    latex = '{"quote": "$$D_{KL}(p \\| q) = \\int_x p(x) \\log \\frac{p(x)}{q(x)} dx$$", "answer": "KL."}'
    assert parse_reply(latex, BLIND_SCHEMA)["quote"] == r"$$D_{KL}(p \| q) = \int_x p(x) \log \frac{p(x)}{q(x)} dx$$"
    # Left out, the verdict does not drop the pair: the rubric's scores decide; a written "drop" still drops.
    row = {"question": "What stays frozen during LoRA training?", "answer": "The pretrained weights."}
    chunk = FREEZE + " Two small matrices are trained."
    blind = json.dumps({"quote": FREEZE, "answer": "The pretrained weights."})
    assert assess(row, chunk, no_verdict, blind, CurateConfig()).passed
    assert not assess(row, chunk, grade(FREEZE, verdict="drop"), blind, CurateConfig()).passed


def test_curate_drops_what_the_judge_cannot_back_up(tmp_path: Path):
    write_run(tmp_path, PAIRS)
    scripted = ScriptedJudge()
    with ChatServer(scripted, model_name="scripted-judge") as server:
        curate.run(judged_config(tmp_path, server))
    kept, dropped, report = outputs(tmp_path)
    assert [r["id"] for r in kept] == ["good"]
    assert kept[0]["judge"]["passed"] and kept[0]["judge"]["scores"]["correct"] == 5
    assert kept[0]["judge"]["blind_answer"] == "the pretrained weights"
    assert {pid: d["drop_reason"] for pid, d in dropped.items()} == {pid: "judge" for pid in EXPECTED_FAILED}
    assert {pid: d["judge"]["failed"] for pid, d in dropped.items()} == EXPECTED_FAILED
    assert "quote_not_in_chunk" in dropped["invented-quote"]["drop_detail"]
    assert "curate.judge_min_agreement=0.4" in dropped["planted"]["drop_detail"]
    assert "'4-bit NormalFloat'" in dropped["planted"]["drop_detail"]  # what the judge answered blind
    assert dropped["unreadable"]["drop_detail"].startswith("unparseable: the judge's grade reply 'Sure!")
    assert "correct 2" in dropped["low-score"]["drop_detail"]
    # Two conversations per pair; the blind one never shows the pair's answer.
    assert len(scripted.conversations) == 2 * len(PAIRS)
    blind_prompts = [c[-1]["content"] for c in scripted.conversations if c[0]["content"] != GRADE_SYSTEM]
    assert len(blind_prompts) == len(PAIRS) and not any("Answer:" in p for p in blind_prompts)

    judge = report["judge"]
    assert report["dropped_by_reason"]["judge"] == 5 and report["kept"] == 1
    assert (judge["pairs"], judge["passed"], judge["pass_rate"], judge["unparseable"]) == (6, 1, round(1 / 6, 4), 1)
    assert judge["failed_checks"] == {"unparseable": 1, "rubric": 1, "quote_not_in_chunk": 1,
                                      "quote_without_answer": 1, "blind_disagrees": 1}
    assert judge["score_distribution"]["correct"] == {"2": 1, "5": 4}
    assert judge["judged_now"] == 6 and judge["from_cache"] == 0
    assert judge["reply_tokens"] > 0 and judge["reply_tokens_per_s"] > 0


def test_a_rerun_judges_only_new_or_changed_pairs(tmp_path: Path):
    write_run(tmp_path, PAIRS)
    scripted = ScriptedJudge()
    with ChatServer(scripted, model_name="scripted-judge") as server:
        curate.run(judged_config(tmp_path, server))
        first = (tmp_path / "qa_curated.jsonl").read_bytes(), (tmp_path / "qa_dropped.jsonl").read_bytes()
        curate.run(judged_config(tmp_path, server))
        assert len(scripted.conversations) == 2 * len(PAIRS)  # nothing judged again
        assert ((tmp_path / "qa_curated.jsonl").read_bytes(), (tmp_path / "qa_dropped.jsonl").read_bytes()) == first
        assert outputs(tmp_path)[2]["judge"]["from_cache"] == len(PAIRS)
        # Thresholds are applied to the cached replies: a laxer agreement keeps the planted pair, unjudged.
        curate.run(judged_config(tmp_path, server, "curate.judge_min_agreement=0"))
        assert len(scripted.conversations) == 2 * len(PAIRS)
        assert "planted" in [r["id"] for r in outputs(tmp_path)[0]]
        # A changed answer is judged again; the other pairs are not.
        changed = [dict(p, answer="The frozen pretrained weights.") if p["id"] == "good" else p for p in PAIRS]
        write_run(tmp_path, changed)
        curate.run(judged_config(tmp_path, server))
        assert len(scripted.conversations) == 2 * len(PAIRS) + 2
    assert [r["id"] for r in outputs(tmp_path)[0]] == ["good"]


def test_a_failed_judge_stops_the_stage_and_keeps_what_it_finished(tmp_path: Path):
    write_run(tmp_path, PAIRS)
    broken = ScriptedJudge(fail_on="What does LoRA reduce by a factor of ten thousand?")
    with ChatServer(broken, model_name="scripted-judge", max_batch=1) as server:
        with pytest.raises(LLMRequestError, match="curate.judge"):
            curate.run(judged_config(tmp_path, server, "curate.judge.concurrency=1"))
    assert not (tmp_path / "qa_curated.jsonl").exists()  # no pair passes unjudged
    # Every grade reply and the blind replies before the failure came back: those five pairs are cached.
    assert len(list(read_jsonl(tmp_path / "curate" / "judge_cache.jsonl"))) == len(PAIRS) - 1
    scripted = ScriptedJudge()
    with ChatServer(scripted, model_name="scripted-judge") as server:
        curate.run(judged_config(tmp_path, server))
    assert len(scripted.conversations) == 2  # only the pair whose blind reply failed
    assert [r["id"] for r in outputs(tmp_path)[0]] == ["good"]


def test_the_judge_is_off_by_default_and_its_settings_are_checked(tmp_path: Path):
    write_run(tmp_path, PAIRS[:1])
    curate.run(load_config(None, [f"run_dir={tmp_path}"]))
    kept, _, report = outputs(tmp_path)
    assert report["judge"] is None and "judge" not in kept[0]
    assert not (tmp_path / "curate" / "judge_cache.jsonl").exists()
    with pytest.raises(ConfigError, match="curate.judge_min_score"):
        load_config(None, ["curate.judge_min_score=6"])
    with pytest.raises(ConfigError, match="curate.judge_min_agreement"):
        load_config(None, ["curate.judge_min_agreement=1.5"])
    with pytest.raises(ConfigError, match="curate.judge.base_url"):
        load_config(None, ["curate.judge_enabled=true", "curate.judge.backend=openai", "curate.judge.base_url=localhost"])


def test_the_judge_reads_only_the_generators_it_is_given(tmp_path: Path):
    rows = [dict(p, generator="rules" if p["id"] in ("planted", "low-score") else "llm") for p in PAIRS]
    write_run(tmp_path, rows)
    scripted = ScriptedJudge()
    with ChatServer(scripted, model_name="scripted-judge") as server:
        curate.run(judged_config(tmp_path, server, "curate.judge_generators=[llm]"))
    kept, dropped, report = outputs(tmp_path)
    assert len(scripted.conversations) == 2 * (len(PAIRS) - 2)  # the rules' pairs were not sent
    assert {"planted", "low-score"} <= {r["id"] for r in kept}  # the lexical checks alone kept them, unjudged
    assert not any("judge" in r for r in kept if r["id"] in ("planted", "low-score"))
    assert report["judge"]["pairs"] == len(PAIRS) - 2
    with pytest.raises(ConfigError, match="curate.judge_generators: unknown generator 'teacher'"):
        judged_config(tmp_path, server, "curate.judge_generators=[teacher]")


def test_a_blind_answer_that_agrees_vouches_for_a_paraphrased_quote():
    """The judge paraphrased its quote (not in the chunk), but its blind reading, which never saw the
    answer, gave the same answer: kept at curate.judge_blind_vouches (0.95), dropped with it off; a blind
    answer that says a little more (agreement 0.89) vouches only at a laxer setting; one that disagrees never
    vouches."""
    row = {"question": "What stays frozen during LoRA training?", "answer": "The pretrained weights stay frozen."}
    chunk = FREEZE + " Two small matrices are trained."
    paraphrase = grade("During LoRA the weights that were pretrained do not change at all.")
    agreeing = json.dumps({"quote": "", "answer": "The pretrained weights stay frozen."})
    verdict = assess(row, chunk, paraphrase, agreeing, CurateConfig())
    assert verdict.passed and verdict.record["vouched_by_blind"]
    off = assess(row, chunk, paraphrase, agreeing, CurateConfig(judge_blind_vouches=0.0))
    assert not off.passed and off.failed == ["quote_not_in_chunk"]
    close = json.dumps({"quote": "", "answer": "The pretrained weights stay frozen during training."})
    verdict = assess(row, chunk, paraphrase, close, CurateConfig())
    assert verdict.failed == ["quote_not_in_chunk"] and verdict.record["agreement"] == 0.889
    assert assess(row, chunk, paraphrase, close, CurateConfig(judge_blind_vouches=0.8)).passed
    disagreeing = json.dumps({"quote": "", "answer": "Two small matrices per layer are trained."})
    assert not assess(row, chunk, paraphrase, disagreeing, CurateConfig()).passed


def test_a_blind_quote_that_carries_the_answer_backs_the_pair():
    """A small judge often "quotes" the pair's own answer in its grade reply. The blind reply quotes the chunk
    without having seen the answer: when that quote is in the chunk and carries the answer, the pair is backed;
    a blind quote that is in the chunk but says something else backs nothing."""
    row = {"question": "What does LoRA train?", "answer": "LoRA trains two low-rank matrices per layer."}
    copied = grade(row["answer"])  # not in the chunk: the judge copied the answer
    backing = blind(FREEZE, "Two low-rank matrices per layer.")
    verdict = assess(row, CHUNK["text"], copied, backing, CurateConfig(judge_blind_vouches=0.0))
    assert verdict.passed, verdict.detail
    elsewhere = blind(QUANT, "Two low-rank matrices per layer.")  # agrees, but its quote carries nothing
    verdict = assess(row, CHUNK["text"], copied, elsewhere, CurateConfig(judge_blind_vouches=0.0))
    assert verdict.failed == ["quote_not_in_chunk"]


def test_a_blind_quote_on_the_topic_does_not_back_an_answer_the_judge_only_copied():
    """A true sentence of the chunk given as the answer to another question (a planted answer): the judge
    "quotes" the answer itself, and the blind reading quotes a sentence that shares most of its words (the same
    topic) but answers otherwise. The blind quote's words then do not count as agreement: dropped. The same
    blind reply still backs a pair whose grade quote is no copy of the answer (a broken grade reply)."""
    row = {"question": "How many trainable parameters does LoRA save?",
           "answer": "The pretrained weights of LoRA are frozen for every layer."}
    copied, topical = grade(row["answer"]), blind(FREEZE, "By a factor of ten thousand.")
    verdict = assess(row, CHUNK["text"], copied, topical, CurateConfig())
    assert verdict.failed == ["blind_disagrees"], verdict.detail
    assert verdict.record["answers_agreement"] == 0.0 and verdict.record["quote_match"] < 0.5
    broken = grade("copy, word for word, the sentence or sentences of the passage that state the answer")
    assert assess(row, CHUNK["text"], broken, topical, CurateConfig()).passed


class TeacherAndJudge(ScriptedJudge):
    """The judge of :data:`SCRIPT`, and a teacher (generate's system prompt) whose every reply is one pair
    about what LoRA freezes; the temperatures the teacher was asked at are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher_temperatures: list[float | None] = []
        self.focused: list[str] = []  # questions the teacher was asked again on their own

    def chat(self, conversations, *, max_new_tokens=None, temperature=None, json_schema=None) -> list[str]:
        from papertune.generate.answers import ANSWER_SYSTEM_PROMPT
        from papertune.generate.prompt import SYSTEM_PROMPT

        if conversations[0][0]["content"] == ANSWER_SYSTEM_PROMPT:
            self.focused += [c[-1]["content"].rsplit("Question: ", 1)[1] for c in conversations]
            return [FREEZE] * len(conversations)
        if conversations[0][0]["content"] != SYSTEM_PROMPT:
            return super().chat(conversations, max_new_tokens=max_new_tokens, json_schema=json_schema)
        self.teacher_temperatures += [temperature] * len(conversations)
        reply = {"pairs": [{"kind": "definition", "question": "What does LoRA freeze during training?",
                            "answer": FREEZE}]}
        return [json.dumps(reply)] * len(conversations)


def test_a_chunk_that_kept_no_pair_is_asked_again_and_its_new_pair_judged(tmp_path: Path, monkeypatch):
    """curate.refill_rounds: the llm's only pair of the chunk is dropped by the judge, so the teacher is asked
    again, sampling (seeded apart from generate's retries); its new pair passes every check and the judge, and
    is kept under an id of its own. A rerun asks nobody."""
    from papertune.generate.llm import LLMGenerator

    write_run(tmp_path, [dict(PAIRS[3], generator="llm")])  # the planted wrong answer
    seeds, generate_pairs = [], LLMGenerator.generate

    def recording(self, chunks, temperature=None, seed=0):
        seeds.append(seed)
        return generate_pairs(self, chunks, temperature, seed)

    monkeypatch.setattr(LLMGenerator, "generate", recording)
    scripted = TeacherAndJudge()
    with ChatServer(scripted, model_name="scripted-judge") as server:
        cfg = judged_config(tmp_path, server, "curate.refill_rounds=2", "generate.llm.backend=openai",
                            f"generate.llm.base_url={server.url}", "generate.llm.model=scripted-judge",
                            "generate.llm_retry_temperature=0.9")
        curate.run(cfg)
    kept, dropped, report = outputs(tmp_path)
    assert [r["id"] for r in kept] == [f"{CHUNK['id']}::llm-refill1::0"]
    assert kept[0]["question"] == "What does LoRA freeze during training?" and kept[0]["judge"]["passed"]
    assert (kept[0]["generator"], kept[0]["source"], kept[0]["section"]) == ("llm", "paper.pdf", "Method")
    assert list(dropped) == ["planted"]
    assert scripted.teacher_temperatures == [0.9]  # one round: the chunk has a pair after it
    assert seeds == [1000]  # round 1's seeds, out of reach of generate's retries (1, 2, ...)
    refill = report["refill"]
    assert {k: refill[k] for k in ("rounds", "chunks", "asked", "pairs", "kept", "chunks_recovered")} == {
        "rounds": 2, "chunks": 1, "asked": 1, "pairs": 1, "kept": 1, "chunks_recovered": 1}
    assert refill["teacher"]["replies"] == 2  # the pair, and its question answered again on its own
    assert scripted.focused == ["What does LoRA freeze during training?"]
    assert report["judge"]["pairs"] == 2  # each pair judged once
    # A rerun takes the teacher's refill pairs (and the judge's replies) from their caches: nothing asked.
    first = (tmp_path / "qa_curated.jsonl").read_bytes()
    with ChatServer(scripted, model_name="scripted-judge") as server:
        curate.run(judged_config(tmp_path, server, "curate.refill_rounds=2", "generate.llm.backend=openai",
                                 f"generate.llm.base_url={server.url}", "generate.llm.model=scripted-judge",
                                 "generate.llm_retry_temperature=0.9"))
    assert scripted.teacher_temperatures == [0.9] and len(scripted.conversations) == 4
    assert (tmp_path / "qa_curated.jsonl").read_bytes() == first
    assert outputs(tmp_path)[2]["refill"]["teacher"] is None


def test_new_pairs_that_repeat_a_kept_question_are_dropped_as_duplicates():
    from papertune.curate.filters import curate_more

    kept = [dict(PAIRS[0], id="first")]
    new = [dict(PAIRS[0], id="again"), dict(PAIRS[2], id="other")]
    still, dropped = curate_more(new, kept, {CHUNK["id"]: CHUNK["text"]}, CurateConfig())
    assert [r["id"] for r in still] == ["other"]
    assert [(d["id"], d["drop_reason"]) for d in dropped] == [("again", "exact_duplicate")]


def test_a_refill_stopped_by_a_failed_request_keeps_what_arrived_and_a_rerun_asks_only_the_rest(tmp_path: Path):
    """The teacher fails on the second chunk: the first chunk's new pairs are in the refill cache already, and
    the rerun asks the teacher about the second chunk only."""
    from papertune.generate.prompt import SYSTEM_PROMPT

    second = {**CHUNK, "id": "paper.pdf#0001", "text": CHUNK["text"] + " Adapters are small."}
    off_topic = "Transformers use attention heads everywhere in modern vision models."  # unsupported: dropped
    write_run(tmp_path, [dict(PAIRS[0], id="a", answer=off_topic, generator="llm"),
                         dict(PAIRS[0], id="b", answer=off_topic, generator="llm", chunk_id=second["id"])])
    with (tmp_path / "chunks.jsonl").open("a") as fh:
        fh.write(json.dumps(second) + "\n")

    class Teacher(ScriptedJudge):
        def __init__(self, fail: bool) -> None:
            super().__init__()
            self.fail, self.asked = fail, []

        def chat(self, conversations, *, max_new_tokens=None, temperature=None, json_schema=None):
            if conversations[0][0]["content"] != SYSTEM_PROMPT:
                return super().chat(conversations, json_schema=json_schema)
            replies = []
            for conversation in conversations:
                on_second = "Adapters are small." in conversation[-1]["content"]
                self.asked.append("second" if on_second else "first")
                if on_second and self.fail:
                    raise RuntimeError("the teacher crashed")
                question, answer = (("What does QLoRA quantize the base model to?", QUANT) if on_second
                                    else ("What does LoRA freeze during training?", FREEZE))
                replies.append(json.dumps({"pairs": [{"kind": "definition", "question": question,
                                                      "answer": answer}]}))
            return replies

    def run(teacher: Teacher) -> None:
        with ChatServer(teacher, model_name="scripted-judge", max_batch=1) as server:
            curate.run(judged_config(tmp_path, server, "curate.refill_rounds=1", "generate.llm.backend=openai",
                                     f"generate.llm.base_url={server.url}", "generate.llm.model=scripted-judge",
                                     "generate.llm.max_retries=0", "generate.llm_retries=0"))

    failing = Teacher(fail=True)
    with pytest.raises(LLMRequestError, match="generate.llm"):
        run(failing)
    assert sorted(failing.asked) == ["first", "second"]
    cached = list(read_jsonl(tmp_path / "curate" / "refill_cache.jsonl"))
    assert [row["chunk_id"] for row in cached] == [CHUNK["id"]]
    working = Teacher(fail=False)
    run(working)
    assert working.asked == ["second"]
    kept = outputs(tmp_path)[0]
    assert sorted(r["id"] for r in kept) == [f"{CHUNK['id']}::llm-refill1::0", f"{second['id']}::llm-refill1::0"]

"""Settling a grounded answer (papertune.verify): the answer check, the model's own verification, the retry."""

from __future__ import annotations

import pytest

from helpers import CHUNKS, write_chunks
from papertune.chat import ABSTAIN, VERIFY_INSTRUCTION, cited_numbers
from papertune.config import load_config
from papertune.inference import Decoding
from papertune.retrieval import Passage, Retriever
from papertune.verify import moved_first, placed_quote, settle_answers

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
QUESTION = "What data type does QLoRA use for the weights?"
NF4 = "NormalFloat4 is an information-theoretically optimal data type for normally distributed weights"
MOE = "A gating network routes every token to the top two experts"


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def hits(tmp_path):
    write_chunks(tmp_path / "run", CHUNKS)
    retriever = Retriever.for_run(tmp_path / "run", load_config(None, ["retrieval.method=bm25"]).retrieval)
    # As retrieval might hand them over: the experts passage first, the NF4 one third.
    order = ["moe.pdf#0002", "lora.pdf#0000", "qlora.md#0000", "lora.pdf#0001"]
    chunk = {c["id"]: c for c in CHUNKS}
    return retriever, [Passage(n, chunk[cid], 1.0 / n) for n, cid in enumerate(order, 1)]


def scripted(says_yes: set[str], again: str, calls: list):
    """A model that says yes about the passages whose chunk ids are in ``says_yes`` and answers ``again``."""
    def generate(prompts: list[str], decoding: Decoding) -> list[str]:
        calls.append((prompts, decoding))
        out = []
        for prompt in prompts:
            if VERIFY_INSTRUCTION in prompt:
                assert decoding.max_new_tokens == 2 and decoding.temperature == 0
                holds = [c["id"] for c in CHUNKS if c["text"] in prompt]
                assert len(holds) == 1, "a verification prompt shows one passage"
                out.append("Yes" if holds[0] in says_yes else "No.")
            else:
                assert decoding == Decoding(max_new_tokens=64, temperature=0.3)
                out.append(again)
        return out
    return generate


def settle(config_overrides, retriever, passages, tokenizer, generate, answer, tuned=True):
    # A model trained to verify (build.raft_verify_rows), as retrieval.verify requires.
    config = load_config(None, ["retrieval.method=bm25", "build.mode=raft", "build.raft_verify_rows=true",
                                *config_overrides])
    return settle_answers([QUESTION], [answer], [passages], retriever=retriever, tokenizer=tokenizer, config=config,
                          generate=generate, answer_decoding=Decoding(max_new_tokens=64, temperature=0.3),
                          tuned=tuned)[0]


def test_moved_first_keeps_the_others_in_order_and_maps_numbers_back(hits):
    _, passages = hits
    moved, shown = moved_first(passages, 3)
    assert [p.n for p in moved] == [1, 2, 3, 4]
    assert [p.chunk_id for p in moved] == [passages[2].chunk_id, passages[0].chunk_id, passages[1].chunk_id,
                                           passages[3].chunk_id]
    assert shown == {1: 3, 2: 1, 3: 2, 4: 4}


def test_without_verify_the_answer_is_only_checked(hits, tokenizer):
    retriever, passages = hits
    calls: list = []
    moe = next(p.n for p in passages if p.chunk_id == "moe.pdf#0002")
    settled = settle([], retriever, passages, tokenizer, scripted(set(), "", calls), f"{MOE} [{moe}].")
    assert settled.answer == f"{MOE} [{moe}]." and settled.verify_reply is None and not calls


def test_the_base_model_is_never_asked_to_verify(hits, tokenizer):
    """Only the tuned model learned to judge (build.raft_verify_rows): a base model's answer is only checked,
    with verify and retry on."""
    retriever, passages = hits
    calls: list = []
    moe = next(p.n for p in passages if p.chunk_id == "moe.pdf#0002")
    settled = settle(["retrieval.verify=true", "retrieval.verify_retry=true"], retriever, passages, tokenizer,
                     scripted(set(), "", calls), f"{MOE} [{moe}].", tuned=False)
    assert (settled.answer, settled.verify_reply, settled.retry) == (f"{MOE} [{moe}].", None, None) and not calls


def test_a_no_declines_and_a_yes_keeps_the_answer(hits, tokenizer):
    retriever, passages = hits
    moe = next(p.n for p in passages if p.chunk_id == "moe.pdf#0002")
    calls: list = []
    no = settle(["retrieval.verify=true"], retriever, passages, tokenizer, scripted(set(), "", calls),
                f"{MOE} [{moe}].")
    assert (no.answer, no.verify_reply, no.verified, no.retry) == (ABSTAIN, "No.", moe, None)
    assert len(calls) == 1 and len(calls[0][0]) == 1 and MOE in calls[0][0][0]
    yes = settle(["retrieval.verify=true"], retriever, passages, tokenizer, scripted({"moe.pdf#0002"}, "", []),
                 f"{MOE} [{moe}].")
    assert (yes.answer, yes.verify_reply) == (f"{MOE} [{moe}].", "Yes")


def test_a_retry_answers_again_from_the_passage_the_model_says_holds_it(hits, tokenizer):
    retriever, passages = hits
    moe = next(p.n for p in passages if p.chunk_id == "moe.pdf#0002")
    nf4 = next(p.n for p in passages if p.chunk_id == "qlora.md#0000")
    calls: list = []
    generate = scripted({"qlora.md#0000"}, f"{NF4} [1].", calls)
    settled = settle(["retrieval.verify=true", "retrieval.verify_retry=true"], retriever, passages, tokenizer,
                     generate, f"{MOE} [{moe}].")
    # The cited passage, then the three others, then the second answer, then its passage: four calls.
    assert [len(prompts) for prompts, _ in calls] == [1, 3, 1, 1]
    second = calls[2][0][0]
    assert second.index(NF4) < min(second.index(c["text"]) for c in CHUNKS if c["id"] != "qlora.md#0000")
    assert NF4 in calls[3][0][0]
    # Numbered back as the passages were shown: the sources list and the citations agree.
    assert settled.answer == f"{NF4} [{nf4}]." and cited_numbers(settled.answer) == [nf4]
    assert settled.verify_reply == "No." and settled.verified == moe
    assert settled.retry == {"passage": nf4, "answer": f"{NF4} [{nf4}].", "verify_reply": "Yes"}


def test_a_retry_declines_when_no_passage_holds_it_or_the_second_answer_fails(hits, tokenizer):
    retriever, passages = hits
    moe = next(p.n for p in passages if p.chunk_id == "moe.pdf#0002")
    retry = ["retrieval.verify=true", "retrieval.verify_retry=true"]
    calls: list = []
    nowhere = settle(retry, retriever, passages, tokenizer, scripted(set(), "", calls), f"{MOE} [{moe}].")
    assert (nowhere.answer, nowhere.retry) == (ABSTAIN, None) and [len(p) for p, _ in calls] == [1, 3]
    # The model says yes to the NF4 passage, but answers from it about experts again: the verifier, asked about
    # the passage that answer cites, says no.
    calls = []
    wrong = settle(retry, retriever, passages, tokenizer, scripted({"qlora.md#0000"}, f"{MOE} [4].", calls),
                   f"{MOE} [{moe}].")
    assert wrong.answer == ABSTAIN and wrong.retry["verify_reply"] == "No."
    assert wrong.retry["answer"] != ABSTAIN and [len(p) for p, _ in calls] == [1, 3, 1, 1]


def test_a_quote_is_placed_in_the_passage_that_holds_it_and_the_answer_cites_that_one(hits, tokenizer):
    """A quoting reply (build.raft_quote): the quote is looked up in the passages (spacing and case aside);
    the answer cites the passage the quote is in, whatever number the model gave; a quote in no passage is
    dropped and the answer is checked as written."""
    retriever, passages = hits
    nf4 = next(p.n for p in passages if p.chunk_id == "qlora.md#0000")
    wrong = nf4 % 4 + 1
    answer = "NormalFloat4 is an optimal data type for normally distributed weights"
    reply = f'Quote [{wrong}]: "normalfloat4 is an  information-theoretically optimal data type"\nAnswer: {answer} [{wrong}].'
    assert placed_quote(reply, passages) == (
        f"{answer} [{nf4}].", {"n": nf4, "text": "normalfloat4 is an  information-theoretically optimal data type"})
    uncited = f'Quote [1]: "NormalFloat4 is an information-theoretically optimal data type"\nAnswer: {answer}.'
    assert placed_quote(uncited, passages)[0] == f"{answer} [{nf4}]."
    invented = f'Quote [{nf4}]: "NormalFloat4 was invented in 1990"\nAnswer: {answer} [{nf4}].'
    assert placed_quote(invented, passages) == (f"{answer} [{nf4}].", None)
    assert placed_quote(f"{answer} [{nf4}].", passages) == (f"{answer} [{nf4}].", None)

    settled = settle([], retriever, passages, tokenizer, scripted(set(), "", []), reply)
    assert settled.answer == f"{answer} [{nf4}]." and settled.quote["n"] == nf4
    # A quote is evidence for an answer: a declined answer shows none.
    declined = settle(["retrieval.verify=true"], retriever, passages, tokenizer, scripted(set(), "", []), reply)
    assert declined.answer == ABSTAIN and declined.quote is None


def test_a_retried_quote_is_numbered_as_the_passages_were_shown(hits, tokenizer):
    retriever, passages = hits
    moe = next(p.n for p in passages if p.chunk_id == "moe.pdf#0002")
    nf4 = next(p.n for p in passages if p.chunk_id == "qlora.md#0000")
    # Answered again from the NF4 passage, moved to [1] for the second answer.
    again = f'Quote [1]: "{NF4}."\nAnswer: {NF4} [1].'
    settled = settle(["retrieval.verify=true", "retrieval.verify_retry=true"], retriever, passages, tokenizer,
                     scripted({"qlora.md#0000"}, again, []), f"{MOE} [{moe}].")
    assert settled.answer == f"{NF4} [{nf4}]." and settled.quote == {"n": nf4, "text": f"{NF4}."}
    assert settled.retry["answer"] == f'Quote [{nf4}]: "{NF4}."\nAnswer: {NF4} [{nf4}].'


def test_a_quote_of_too_few_words_places_nothing(hits):
    _, passages = hits
    # Two words of the NF4 passage, once symbols are set aside: too few to say where the answer comes from.
    assert placed_quote('Quote [2]: "$NormalFloat4$ is"\nAnswer: NF4 [2].', passages) == ("NF4 [2].", None)
    three = placed_quote('Quote [2]: "$NormalFloat4$ is an"\nAnswer: NF4 [2].', passages)[1]
    assert three is not None and passages[three["n"] - 1].chunk_id == "qlora.md#0000"

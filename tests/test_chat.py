"""The one prompt format (papertune.chat): grounded and closed-book prompts, citations and abstentions."""

from __future__ import annotations

import pytest

from helpers import CHUNKS
from papertune.chat import (
    ABSTAIN,
    abstains,
    cited_answer,
    cited_numbers,
    grounded_question,
    passage_label,
    passage_to_verify,
    quoted_answer,
    render_example,
    render_prompt,
    render_verify_prompt,
    split_quote,
    verify_says_no,
)

# A tiny known chat template, so the whole prompt can be written out here.
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = TEMPLATE
    return tok


GOLDEN_GROUNDED = (
    "<system>Be brief.</system>\n"
    "<user>Answer the question from the numbered passages below and cite the passages you use as [1], [2], ... "
    'If the passages do not contain the answer, reply exactly: "The passages do not contain the answer."\n'
    "\n"
    "[1] qlora.md [NF4]\n"
    "NormalFloat4 is an information-theoretically optimal data type for normally distributed weights.\n"
    "\n"
    "[2] moe.pdf, page 12 [Routing]\n"
    "A gating network routes every token to the top two experts and adds a load-balancing loss.\n"
    "\n"
    "Question: What data type does QLoRA use?</user>\n"
    "<assistant>"
)


def test_grounded_prompt_is_the_golden_string(tokenizer):
    passages = [CHUNKS[2], CHUNKS[3]]
    prompt = render_prompt(tokenizer, "What data type does QLoRA use?", "Be brief.", passages)
    assert prompt == GOLDEN_GROUNDED


def test_closed_book_prompt_is_the_question_alone(tokenizer):
    assert render_prompt(tokenizer, "What is LoRA?", None) == "<user>What is LoRA?</user>\n<assistant>"
    # An empty list of passages is still grounded (the model must abstain), unlike None.
    assert render_prompt(tokenizer, "What is LoRA?", None, []) != render_prompt(tokenizer, "What is LoRA?", None)
    assert ABSTAIN in render_prompt(tokenizer, "What is LoRA?", None, [])


GOLDEN_VERIFY = (
    "<system>Be brief.</system>\n"
    "<user>Passage: moe.pdf, page 12 [Routing]\n"
    "A gating network routes every token to the top two experts and adds a load-balancing loss.\n"
    "\n"
    "Question: What data type does QLoRA use?\n"
    "\n"
    "Does the passage contain the answer to the question? Reply yes or no.</user>\n"
    "<assistant>"
)


def test_verification_prompt_is_the_golden_string_and_its_example_the_same_prompt(tokenizer):
    prompt = render_verify_prompt(tokenizer, "What data type does QLoRA use?", CHUNKS[3], "Be brief.")
    assert prompt == GOLDEN_VERIFY
    from papertune.chat import verify_turn

    example = render_example(tokenizer, "What data type does QLoRA use?", "no", "Be brief.",
                             user=verify_turn("What data type does QLoRA use?", CHUNKS[3]))
    assert example["prompt"] == prompt and example["completion"] == "no</assistant>"


@pytest.mark.parametrize("reply, no", [("no", True), ("No.", True), (" NO", True), ("no</s>", True), ("yes", False),
                                       ("Yes.", False), ("", False), ("not sure", False), ("nope", False)])
def test_only_a_reply_whose_first_word_is_no_declines(reply, no):
    assert verify_says_no(reply) is no


def test_the_passage_verified_is_the_first_cited_else_the_first():
    assert passage_to_verify("Two experts [3], see [1].", 4) == 3
    assert passage_to_verify("Two experts [9] and [2].", 4) == 2  # [9] is no passage
    assert passage_to_verify("Two experts.", 4) == 1
    assert passage_to_verify(ABSTAIN, 4) is None and passage_to_verify("Two experts [1].", 0) is None


@pytest.mark.parametrize("template", [TEMPLATE, None])  # None: SmolLM2's own template
def test_training_example_and_inference_prompt_are_byte_identical(tiny_model, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    if template:
        tok.chat_template = template
    passages = [CHUNKS[3], CHUNKS[2], CHUNKS[0]]
    answer = cited_answer("NormalFloat4 (NF4)", 2)
    for chosen in (passages, None):
        example = render_example(tok, "What data type does QLoRA use?", answer, "Be brief.", chosen)
        prompt = render_prompt(tok, "What data type does QLoRA use?", "Be brief.", chosen)
        assert example["prompt"] == prompt and example["text"] == prompt + example["completion"]
        assert example["completion"].startswith("NormalFloat4 (NF4) [2]")
    if template:
        assert example["completion"] == "NormalFloat4 (NF4) [2]</assistant>"


def test_passages_are_numbered_from_one_with_document_page_and_section():
    text = grounded_question("Q?", CHUNKS)
    for n, chunk in enumerate(CHUNKS, 1):
        assert f"[{n}] {passage_label(chunk)}\n{chunk['text']}" in text
    assert text.endswith("\n\nQuestion: Q?")
    assert passage_label(CHUNKS[1]) == "lora.pdf, page 7-8 [Results]"
    assert passage_label(CHUNKS[0]) == "lora.pdf, page 3 [Method]"
    assert passage_label({"source": "notes.md", "section": None, "page_start": None}) == "notes.md"


@pytest.mark.parametrize(("answer", "n", "expected"), [
    ("QLoRA quantizes the model to NF4.", 2, "QLoRA quantizes the model to NF4 [2]."),
    ("Is it NF4?", 1, "Is it NF4 [1]?"),
    ("NF4", 3, "NF4 [3]"),
    ("NF4.  \n", 1, "NF4 [1]."),
])
def test_cited_answer_puts_the_marker_before_the_final_stop(answer, n, expected):
    assert cited_answer(answer, n) == expected
    assert cited_numbers(cited_answer(answer, n)) == [n]


def test_cited_numbers_in_order_of_first_mention():
    assert cited_numbers("NF4 [2], as [1] and [2] say; see also [10].") == [2, 1, 10]
    assert cited_numbers("No citation here, only a list [a] and 2024.") == []
    assert cited_numbers(ABSTAIN) == []


@pytest.mark.parametrize("answer", [
    ABSTAIN,
    "the passages do not contain the answer",
    "The passage does not contain the answer.",  # Qwen2.5-0.5B's own words
    "The passages don't mention the learning rate.",
    "The passages don’t say which optimizer was used.",
    "The provided passages do not provide this information.",
    "There is no information about that in the passages.",
    "This question cannot be answered from the passages.",
    "The context does not specify the batch size.",
    "Not enough information.",
    "None of the passages says which optimizer was used.",
    "The learning rate is not mentioned in the passages.",
])
def test_abstains_on_abstain_and_its_rewordings(answer):
    assert abstains(answer)


@pytest.mark.parametrize("answer", [
    "QLoRA quantizes the base model to NF4 [1].",
    "LoRA does not update the pretrained weights; it trains two small matrices [2].",
    "The router is not trained separately: it learns with the experts [1].",
    "It is not a data type but an algorithm [3].",
    "Dropout is not used during inference [1].",
    "LoRA does not include the bias terms in the update [2].",
    "Quantizing to NF4 loses no information that matters for fine-tuning [1].",
    "The paper says the gate does not mention tokens twice.",
    "",
])
def test_real_answers_containing_not_are_not_abstentions(answer):
    assert not abstains(answer)


def test_a_quoting_target_is_the_golden_string_and_reads_back():
    quote = 'NF4 is an "optimal"\n  data type for normal weights.'
    target = quoted_answer(quote, 2, "QLoRA stores weights in NF4.")
    assert target == 'Quote [2]: "NF4 is an "optimal" data type for normal weights."\nAnswer: QLoRA stores weights in NF4 [2].'
    assert split_quote(target) == ('NF4 is an "optimal" data type for normal weights.', 2,
                                   "QLoRA stores weights in NF4 [2].")


@pytest.mark.parametrize("reply, expected", [
    ("QLoRA stores weights in NF4 [2].", (None, None, "QLoRA stores weights in NF4 [2].")),
    (ABSTAIN, (None, None, ABSTAIN)),
    ('Quote [3]: "NF4 is optimal."', ("NF4 is optimal.", 3, "NF4 is optimal [3].")),  # cut off before the answer
    ('Quote [3]: "NF4 is opti', (None, None, 'Quote [3]: "NF4 is opti')),  # cut off inside the quote
    ('Quote [1]: "NF4."\n\nNF4 [1].', ("NF4.", 1, "NF4 [1].")),  # the answer without its label
    ('Quote [1]: "NF4 is "optimal"." Answer: NF4 [1].', ('NF4 is "optimal".', 1, "NF4 [1].")),  # on one line
])
def test_split_quote_reads_replies_with_and_without_a_quote(reply, expected):
    assert split_quote(reply) == expected

"""Question quality: self-contained questions, kinds, non-content chunks, LaTeX-safe reply parsing, answer
checks, and how the generate stage reports them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from papertune import generate
from papertune.config import load_config
from papertune.generate.base import Grounding, content_words
from papertune.generate.content import SKIP_REASONS, non_content_reason
from papertune.generate.llm import (
    check_pair,
    copies_example,
    degenerate,
    finish_answer,
    is_fragment,
    pairs_from_reply,
    pairs_to_ask,
    unknown_names,
)
from papertune.generate.prompt import EXAMPLES, build_conversation, reply_schema
from papertune.generate.questions import (
    KINDS,
    answer_source_reference,
    context_dependence,
    guess_kind,
    is_self_contained,
    normalise_kind,
)
from papertune.generate.replies import parse_pairs
from papertune.jsonreply import keep_latex_backslashes
from papertune.llm import LLMRequestError
from papertune.text import changed_formula, curly_quotes, restore_latex, unfinished

# ---------------------------------------------------------------------------------------------
# self-contained questions


@pytest.mark.parametrize(
    "question",
    [
        "What does Fig. 6 show?",
        "What is reported in Table 2 for the base model?",
        "What is described in Section 3.2?",
        "What is the zero-shot accuracy reported in the table?",
        "What does the passage say about dropout?",
        "According to the text, why do GANs collapse?",
        "What do the authors propose?",
        "What is the main contribution of this paper?",
        "How does this method handle long sequences?",
        "What are the advantages of the proposed approach?",
        "Which models are mentioned above?",
        "What are the two losses described?",
        "What does Equation (4) minimise?",
        "What is the accuracy of our model on SQuAD?",
        "What do we propose to fix exposure bias?",
        "How does it compare to RNNs?",
        "Why is this important?",
        "What are their main advantages?",
        "Is it faster than beam search?",
        "In what way do they differ?",
        "What is the training process?",
        "What is the main idea?",
        "What is the role of the green part in the scoring function?",
        "What does the dashed line show for larger batches?",
        "What is the training setup called?",
        "What is the loss function?",
        "Which metric is used to measure the effect?",
    ],
)
def test_questions_that_need_their_source_are_caught(question):
    assert context_dependence(question) is not None
    assert not is_self_contained(question)


@pytest.mark.parametrize(
    "question",
    [
        "What is the zero-shot accuracy of GPT-3 on LAMBADA?",
        "Why does dropout reduce overfitting in large networks?",
        "How does LoRA reduce its memory footprint compared with full fine-tuning?",
        "What is an autoencoder?",
        "How can you choose the rank r when fine-tuning with LoRA?",
        "Which is faster per step, QLoRA or LoRA?",
        "How many experts does each MoE layer of Mixtral 8x7B have?",
        "What limitation of the Wasserstein GAN does gradient penalty address?",
        "What is the role of the discriminator in a GAN?",
        "How does the algorithm in PPO clip the probability ratio?",
        "What is the context window of GPT-3?",
        "Are there limitations of dropout in recurrent networks?",
        "When does the LSTM forget gate reset the cell state?",
        "How is $D_\\text{KL}(p \\| q)$ used in the VAE objective?",
        "How does the black box attack differ from a white-box one?",
        "What is the red team's role in testing language models?",
        "What is the learning rate of the AdamW optimizer?",
        "What loss function does a VAE minimize?",
        "What is the objective of RLHF?",
    ],
)
def test_self_contained_questions_pass(question):
    assert context_dependence(question) is None
    assert is_self_contained(question)


def test_kinds_are_normalised_or_guessed():
    assert normalise_kind("how-to", "x") == "how_to"
    assert normalise_kind("Quantitative result", "x") == "quantitative"
    assert normalise_kind("Limitations", "x") == "limitation"
    assert normalise_kind("definition", "How many?") == "definition"  # a valid tag wins over the wording
    assert normalise_kind(None, "Why does dropout help?") == "mechanism"
    assert normalise_kind("", "How many layers does BERT-base have?") == "quantitative"
    assert normalise_kind("poem", "What is X?") is None
    assert normalise_kind(3, "What is X?") is None
    # "quantitative" needs a number in the answer; otherwise the question's wording decides.
    question = "How do residual connections pass the input of one layer to a later layer?"
    assert normalise_kind("quantitative", question, "A shortcut adds the input to the output.") == "mechanism"
    assert normalise_kind("quantitative", "How deep is ResNet-152?", "ResNet-152 has 152 layers.") == "quantitative"
    guesses = {
        "What is an autoencoder?": "definition",
        "Why do residual connections ease optimisation?": "mechanism",
        "How can one choose the temperature in distillation?": "how_to",
        "How does PPO compare with TRPO in sample efficiency?": "comparison",
        "How many GPUs were used to train GPT-3?": "quantitative",
        "What is a limitation of beam search?": "limitation",
        "What is word2vec used for?": "application",
    }
    assert {q: guess_kind(q) for q in guesses} == guesses
    assert set(guesses.values()) == set(KINDS)


# ---------------------------------------------------------------------------------------------
# non-content chunks

REFERENCES = (
    "Barrat, A., Barthélemy, M. & Vespignani, A. Dynamical Processes on Complex Networks (Cambridge University "
    "Press, 2008). 8. Pastor-Satorras, R. & Vespignani, A. Epidemic spreading in scale-free networks. Phys. Rev. "
    "Lett. 86, 3200–3203 (2001). 9. Centola, D. The spread of behavior in an online social network experiment. "
    "Science 329, 1194–1197 (2010). 10. Weng, L., Flammini, A., Vespignani, A. & Menczer, F. Competition among "
    "memes in a world with limited attention. Sci. Rep. 2, 335 (2012)."
)
REFERENCES_BLOG = (
    'Ashish Vaswani, et al. "Attention is all you need." NIPS 2017. Rami Al-Rfou, et al. "Character-level '
    'language modeling with deeper self-attention." AAAI 2019. Zihang Dai, et al. "Transformer-XL: Attentive '
    'language models beyond a fixed-length context." ACL 2019. Nikita Kitaev, et al. "Reformer: The efficient '
    'transformer." ICLR 2020.'
)
ACKNOWLEDGMENTS = (
    "We thank Jane Doe and the anonymous reviewers for helpful discussions. This work was supported in part by "
    "the National Science Foundation under grant IIS-1234567 and by a Google faculty award."
)
AUTHORS = (
    "Tim Dettmers∗ Artidoro Pagnoni∗ Ari Holtzman Luke Zettlemoyer University of Washington "
    "{dettmers,artidoro,ahai,lsz}@cs.washington.edu Allen Institute for AI"
)
FRONT_MATTER = "arXiv:2305.14314v1 [cs.LG] 23 May 2023 Preprint. Under review. Copyright 2023 by the author(s)."
NUMBERS = "Model 7B 13B 33B 65B MMLU 35.1 46.9 57.8 63.4 GSM8K 11.0 17.8 35.6 50.9 HumanEval 10.5 15.8 21.7 23.7"
LINKS = ("Google Scholar: http://scholar.google.com arXiv cs section: https://arxiv.org/list/cs/recent "
         "Tensorflow Tutorials Data Science Weekly KDnuggets")
FORMULAS = ("$$\\begin{aligned}\n\\mathcal{L}_\\text{VLB} &= \\mathbb{E}_q \\Big[ \\log\\frac{q(\\mathbf{x}_{1:T}"
            "\\vert\\mathbf{x}_0)}{p_\\theta(\\mathbf{x}_{0:T})} \\Big] \\\\\n&= \\mathbb{E}_q \\Big[ -\\log "
            "p_\\theta(\\mathbf{x}_T) \\Big]\n\\end{aligned}$$")
PROSE_WITH_NUMBERS = (
    "QLoRA reduces the memory needed to fine-tune a 65B model from more than 780 GB to under 48 GB of GPU "
    "memory (Dettmers et al., 2023). Guanaco reaches 99.3% of the performance level of ChatGPT on the Vicuna "
    "benchmark after 24 hours of fine-tuning on a single GPU. In 2014, Srivastava et al. showed that dropout "
    "with p = 0.5 cuts the MNIST test error from 1.60% to 1.25%."
)
PROSE_WITH_MATH = (
    "Langevin dynamics is a concept from physics, developed for statistically modeling molecular systems. "
    "Combined with stochastic gradient descent, it can produce samples from a probability density $p(\\mathbf{x})$ "
    "using only the gradients $\\nabla_\\mathbf{x} \\log p(\\mathbf{x})$ in a Markov chain of updates: "
    "$$\\mathbf{x}_t = \\mathbf{x}_{t-1} + \\frac{\\epsilon}{2} \\nabla_\\mathbf{x} \\log p(\\mathbf{x}_{t-1}) "
    "+ \\sqrt{\\epsilon} \\mathbf{z}_t$$ where $\\epsilon$ is the step size."
)
TABLE_WITH_LABELS = ("Model: Mixtral 8x7B; Year: 2024; Experts per MoE layer: 8; Routing: top-2. "
                     "Model: Switch-C; Year: 2021; Experts per MoE layer: 2048; Routing: top-1.")


@pytest.mark.parametrize(
    ("text", "section", "reason"),
    [
        (REFERENCES, "OPEN", "references"),
        (REFERENCES_BLOG, "Citation", "references"),
        ("Some prose. It is long enough to look like a sentence of content.", "Paper > References", "references"),
        (ACKNOWLEDGMENTS, "Conclusion", "acknowledgments"),
        (AUTHORS, None, "authors"),
        (FRONT_MATTER, None, "front_matter"),
        (NUMBERS, "Results", "numbers_table"),
        (LINKS, "How to Learn? > Useful resources", "links"),
        (FORMULAS, "Reverse diffusion process", "formulas"),
    ],
)
def test_non_content_chunks_are_named(text, section, reason):
    assert reason in SKIP_REASONS
    assert non_content_reason(text, section) == reason


@pytest.mark.parametrize("text", [PROSE_WITH_NUMBERS, PROSE_WITH_MATH, TABLE_WITH_LABELS,
                                  "Method0 is a technique that improves training stability number 0. It works well."])
def test_prose_with_numbers_citations_or_formulas_is_content(text):
    assert non_content_reason(text, "Method") is None


# ---------------------------------------------------------------------------------------------
# replies: LaTeX backslashes survive, real escapes decode


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (r'"$D_\text{KL}(p \| q)$"', r"$D_\text{KL}(p \| q)$"),
        (r'"$\frac{1}{N}\sum_i \nabla_\theta \log \pi_\theta$"', r"$\frac{1}{N}\sum_i \nabla_\theta \log \pi_\theta$"),
        (r'"$\beta$, $\rho$, $\tau$, $\underline{x}$, $\alpha$, $\{a\}$, $\nu \neq \mu$"',
         r"$\beta$, $\rho$, $\tau$, $\underline{x}$, $\alpha$, $\{a\}$, $\nu \neq \mu$"),
        (r'"First sentence.\nSecond sentence."', "First sentence.\nSecond sentence."),
        (r'"a \"quoted\" word, a\\b path, caf\u00e9, a\/b"', 'a "quoted" word, a\\b path, café, a/b'),
        (r'"ends with a backslash \\"', "ends with a backslash \\"),
        # a backspace or form feed written where a backslash was meant: no answer holds one
        (r'"$p(\u0008mathbf{z}\u0008vert\u000Cmathbf{x})$"', r"$p(\mathbf{z}\vert\mathbf{x})$"),
    ],
)
def test_latex_backslashes_are_kept_and_json_escapes_decode(raw, decoded):
    assert json.loads(keep_latex_backslashes(raw)) == decoded


def test_real_looking_replies_parse_with_their_kinds_and_latex():
    constrained = (  # what a schema-constrained llama.cpp reply looks like: "\t" of "\text" is a valid escape
        '{"pairs": [{"kind": "definition", "question": "What does $D_\\text{KL}$ measure in a VAE?", '
        '"answer": "$D_\\text{KL}(q_\\phi(\\mathbf{z}|\\mathbf{x}) \\| p(\\mathbf{z}))$ measures how far the '
        'encoder distribution is from the prior.\\nIt acts as a regularizer."}, '
        '{"kind": "mechanism", "question": "How is the gradient $\\nabla_\\theta J(\\theta)$ estimated in REINFORCE?", '
        '"answer": "REINFORCE estimates $\\nabla_\\theta J(\\theta)$ as $\\mathbb{E}[G_t \\nabla_\\theta '
        '\\ln \\pi_\\theta(a|s)]$ from sampled episodes."}]}'
    )
    pairs = parse_pairs(constrained)
    assert [p.kind for p in pairs] == ["definition", "mechanism"]
    assert pairs[0].question == r"What does $D_\text{KL}$ measure in a VAE?"
    assert pairs[0].answer.startswith(r"$D_\text{KL}(q_\phi(\mathbf{z}|\mathbf{x}) \| p(\mathbf{z}))$ measures")
    assert pairs[0].answer.endswith("prior. It acts as a regularizer.")  # the newline was a real one
    assert r"\nabla_\theta J(\theta)" in pairs[1].question and r"\ln \pi_\theta(a|s)" in pairs[1].answer
    # A lenient (unconstrained) reply in a code fence with invalid escapes and a kind synonym.
    fenced = '```json\n[{"kind": "how-to", "question": "How is $\\alpha$ set?", "answer": "Set $\\alpha = 0.1$."}]\n```'
    assert parse_pairs(fenced) == [("How is $\\alpha$ set?", "Set $\\alpha = 0.1$.", "how-to", "")]
    # Cut off by the token limit inside the first object: fields are salvaged, LaTeX kept.
    cut = '{"pairs": [{"kind": "quantitative", "question": "What is $\\beta$ in beta-VAE?", "answer": "$\\beta = 4$ works. It'
    assert parse_pairs(cut) == [("What is $\\beta$ in beta-VAE?", "$\\beta = 4$ works.", "quantitative", "")]


def test_latex_a_json_constrained_teacher_left_out_is_put_back_from_the_chunk():
    """A reply held to JSON cannot write "\\mathbf" (no "\\m" escape), so the real 1.5B teacher wrote
    ``$P(hat{y}_i | mathbf{x}_i)$``. The backslashes the chunk writes are put back, inside formulas only."""
    chunk = (r"The base learner outputs a probability distribution: $P(\hat{y}_i \vert \mathbf{x}_i) = "
             r"g_\phi(\mathbf{x}_i)$ and the loss is the cross-entropy $\mathcal{L} = -\log g_\phi$. "
             r"The mathbf command in plain prose is left alone, as is the word log.")
    reply = json.dumps({"pairs": [{
        "kind": "mechanism",
        "question": "How does the base learner output $P(hat{y}_i | mathbf{x}_i)$?",
        "answer": "It outputs $P(hat{y}_i | mathbf{x}_i) = g_{phi}(mathbf{x}_i)$ and its loss is $mathcal{L} = -log "
                  "g_phi$, the log of the base learner's output.",
    }]})
    result = pairs_from_reply(reply, Grounding(chunk), 5, 0.3)
    assert result.dropped == {}, result.dropped
    question, answer = result.pairs[0]["question"], result.pairs[0]["answer"]
    assert question == r"How does the base learner output $P(\hat{y}_i | \mathbf{x}_i)$?"
    assert answer == (r"It outputs $P(\hat{y}_i | \mathbf{x}_i) = g_{\phi}(\mathbf{x}_i)$ and its loss is "
                      r"$\mathcal{L} = -\log g_\phi$, the log of the base learner's output.")


def test_formulas_a_json_constrained_teacher_had_to_change_are_taken_back_from_the_chunk():
    """llama.cpp holds a reply to JSON's escapes, so the 1.5B teacher wrote "\\beta" for the chunk's "\\gamma"
    (b is an escape, g is not), "\\rho" for "\\pi", "\\text{S}" for "\\mathcal{S}"; vLLM's teacher dropped
    "\\hat{...}" and "\\mathcal{...}" whole. A formula that is a chunk's formula but for its commands, braces and
    spaces becomes that formula; one the chunk does not hold, or holds in two forms, stays."""
    chunk = (r"The TD target is $R_{t+1} + \gamma V(S_{t+1})$ and an MDP is $M_i= \langle \mathcal{S}, \mathcal{A}, "
             r"P_i, R_i \rangle$. Estimate $q_\pi(s, a)$ by averaging; the generator gives $\hat{s}_i = "
             r"\mathcal{G}(s_i)$; both $x$ and $\mathbf{x}$ appear.")
    assert restore_latex(r"It moves towards $R_{t+1} + \beta V(S_{t+1})$.", chunk) == (
        r"It moves towards $R_{t+1} + \gamma V(S_{t+1})$.")
    assert restore_latex(r"$M_i= \text{\langle} \text{S}, \text{A}, P_i, R_i \text{\rangle}$ and $q_\rho(s, a)$",
                         chunk) == r"$M_i= \langle \mathcal{S}, \mathcal{A}, P_i, R_i \rangle$ and $q_\pi(s, a)$"
    assert restore_latex(r"The generator gives $s_i = G(s_i)$.", chunk) == (
        r"The generator gives $\hat{s}_i = \mathcal{G}(s_i)$.")
    assert restore_latex(r"$$R_{t+1} + \beta V(S_{t+1})$$", chunk) == r"$$R_{t+1} + \gamma V(S_{t+1})$$"
    # Left alone: a formula the chunk has as it is, a different formula, one the chunk writes two ways.
    for kept in (r"$q_\pi(s, a)$", r"$R_{t+2} + \beta V(S_{t+2})$", r"$\boldsymbol{x}$", r"$\beta$"):
        assert restore_latex(kept, chunk) == kept


def test_a_formula_is_held_by_its_source_when_it_shows_the_same_symbols():
    """``changed_formula`` finds the formula a teacher changed ($R_{t+1} + 4V(S_{t+1})$, a real 1.5B answer) and
    lets through the same symbols written another way: LaTeX against LaTeX (\\frac and /, \\vert and |,
    \\arg\\max), LaTeX against a PDF's text layer (a minus sign, a double bar, sub- and superscripts without
    their marks), and a part of a formula."""
    latex = (r"The TD target is $R_{t+1} + \gamma V(S_{t+1})$, the KL divergence $D_{KL}(p \| q) = \int_x p(x) "
             r"\log \frac{p(x)}{q(x)} dx$ and the policy $\pi_* = \arg\max_\pi V_\pi(s)$ of "
             r"$q_\phi(\mathbf{z}\vert\mathbf{x})$.")
    pdf = "The loss is L = −log p(x) + β · KL(q‖p), where ∑ i xi ≤ 1 and x2 + y2 = r2."
    for held, source in [(r"$R_{t+1} + \gamma V(S_{t+1})$", latex), (r"$V(S_{t+1})$", latex),
                         (r"$D_{KL}(p | q) = \int_x p(x) \log p(x) / q(x) dx$", latex),
                         (r"$\pi_{*} = argmax_{\pi} V_{\pi}(s)$ and $q_{\phi}(z|x)$", latex),
                         (r"$L = -\log p(x) + \beta \cdot KL(q \| p)$", pdf), (r"$\sum_i x_i \leq 1$", pdf),
                         (r"$x^2 + y^2 = r^2$", pdf), ("No formula at all.", pdf)]:
        assert changed_formula(held, source) is None, held
    assert changed_formula(r"It is $R_{t+1} + 4V(S_{t+1})$, or $x$.", latex) == r"$R_{t+1} + 4V(S_{t+1})$"
    assert changed_formula(r"$\pi_* = \arg\min_\pi V_\pi(s)$", latex) == r"$\pi_* = \arg\min_\pi V_\pi(s)$"
    assert changed_formula(r"$x^2 + y^2 = 2r$", pdf) == r"$x^2 + y^2 = 2r$"
    assert changed_formula(r"$R_{t+1} + \beta V(S_{t+1})$", latex) == r"$R_{t+1} + \beta V(S_{t+1})$"  # \gamma


def test_the_teacher_and_the_judge_read_straight_quotes_as_curly_ones():
    """A reply held to JSON ends a string at the first straight '"' the model copies: on 24 real chunks with
    quotes the 1.5B teacher cut 11 of 66 answers there; shown curly quotes, 0 of 63."""
    from papertune.curate.judge import blind_conversation, grade_conversation

    chunk = 'Two retrievers are common: TF-IDF features ("classic IR") or dense vectors ("neural IR"). A "lone one.'
    shown = 'Two retrievers are common: TF-IDF features (“classic IR”) or dense vectors (“neural IR”). A "lone one.'
    assert curly_quotes(chunk) == shown
    assert curly_quotes("No quotes here.") == "No quotes here."
    assert shown in build_conversation(chunk, 2)[-1]["content"]
    for conversation in (grade_conversation(chunk, "Q?", "A."), blind_conversation(chunk, "Q?")):
        assert shown in conversation[-1]["content"]


def test_worked_examples_show_different_kinds_and_question_forms():
    pairs = [p for example in EXAMPLES for p in example[3]]
    kinds = Counter(p["kind"] for p in pairs)
    assert set(kinds) <= set(KINDS) and len(kinds) >= 6 and max(kinds.values()) <= 2
    openers = Counter(" ".join(p["question"].split()[:2]) for p in pairs)
    assert len(openers) >= 5 and openers["What does"] <= 2
    for example in EXAMPLES:  # every example pair passes every check but the one against copying an example
        for pair in example[3]:
            assert check_pair(pair["question"], pair["answer"], Grounding(example[2]), 0.4) == "copies_example", pair
    system = build_conversation("x", 1)[0]["content"]
    assert 'Bad: "What does Fig. 6 show?" Good: "' in system  # a question that needs its source, rewritten
    assert all(kind in system for kind in KINDS)


def test_the_reply_schema_asks_for_kinds_from_the_enum():
    schema = reply_schema(4)
    items = schema["properties"]["pairs"]["items"]
    assert schema["required"] == ["pairs"] and schema["properties"]["pairs"]["maxItems"] == 4
    assert items["properties"]["kind"]["enum"] == list(KINDS)
    assert set(items["required"]) == {"question", "answer", "kind"}


# ---------------------------------------------------------------------------------------------
# answers and pairs


def test_answers_are_trimmed_to_three_sentences_and_fragments_are_caught():
    long = "LoRA freezes the weights. It trains two matrices. It merges them. It adds no latency. It is cheap."
    assert finish_answer(long) == "LoRA freezes the weights. It trains two matrices. It merges them."
    assert finish_answer("LoRA freezes the weights") == "LoRA freezes the weights."
    assert finish_answer("Ho et al. (2020) use 1,000 steps. Fewer steps hurt.") == (
        "Ho et al. (2020) use 1,000 steps. Fewer steps hurt.")
    # Cut off mid-sentence (a JSON-constrained reply ends its string at a '"' copied from the chunk): the
    # unfinished sentence is left out, and an answer that is nothing else becomes "" (dropped as a fragment).
    assert finish_answer("Two retrievers are common. The first depends on the classic TF-IDF features (") == (
        "Two retrievers are common.")
    assert finish_answer("The Wasserstein metric has a dual form according to the Kantorovich duality:") == ""
    assert finish_answer("It learns to learn. Meta-learning is also known as") == "It learns to learn."
    # Figure labels and image credits copied from the chunk are left out; a reference to a figure stays.
    assert finish_answer("Fig. 7. Task setup in MANN (Image source: Santoro et al., 2016). MANN memorizes the "
                         "input until its label comes.") == "Task setup in MANN. MANN memorizes the input until its label comes."
    assert finish_answer("Compute grew fast. (Image source: Brown et al., 2020).") == "Compute grew fast."
    assert finish_answer("The algorithm is shown in Fig. 7. It uses 0.5 of the batch.") == (
        "The algorithm is shown in Fig. 7. It uses 0.5 of the batch.")
    # Answers of the model-scale run: cut at a copied '"' (a full stop added after the cut does not finish
    # them) or not; a sentence may end on a preposition.
    for cut in ("Meta-learning, also known as.", "This embedding method is called.", "The retriever and reader models in the R^3 (",
                "Then the active learning problem can be redefined as:", "It implies that the number of.",
                "MAGiC selects the next token according to the following equation.", "The loss is defined as follows.",
                "The update is as shown below."):
        assert unfinished(cut), cut
    for whole in ("It should be easy to sample from.", "It is what it is.", "The value is between -1 and 1.",
                  "The loss is $L$.", "It is 0.1.", "The classifier is trained on.",
                  "The following two methods differ in their loss.", "The error stays below 1% as follows from Eq. 2 "
                  "and the bound."):
        assert not unfinished(whole), whole
    for fragment in ("training a model on a dataset", "by adding noise to the input.", "to reduce overfitting.",
                     "Yes.", "8"):
        assert is_fragment(fragment), fragment
    for sentence in ("word2vec learns embeddings from context.", "Two small low-rank matrices.",
                     "$\\beta = 4$ gives disentangled factors."):
        assert not is_fragment(sentence), sentence


CHUNK = ("Dropout is a regularization technique for large neural networks. Dropout randomly sets a fraction of activations to zero during training, so units cannot co-adapt. "
         "At test time the outputs are scaled by the keep probability. Dropout slows training by two to three times.")


def test_reply_checks_count_each_drop_reason():
    reply = json.dumps({"pairs": [
        {"kind": "mechanism", "question": "Why does dropout stop units from co-adapting?",
         "answer": "Dropout randomly sets a fraction of activations to zero during training, so units cannot "
                   "co-adapt. At test time the outputs are scaled by the keep probability. Dropout slows training. "
                   "Dropout is popular."},
        {"kind": "limitation", "question": "What does the passage say dropout costs?",
         "answer": "Dropout slows training by two to three times."},
        {"kind": "poem", "question": "How are dropout outputs scaled at test time?",
         "answer": "At test time the outputs are scaled by the keep probability."},
        {"kind": "definition", "question": "What does dropout do during training?", "answer": "zeroing activations"},
        {"question": "How much does dropout slow training?", "answer": "Dropout slows training by two to three times."},
    ]})
    result = pairs_from_reply(reply, Grounding(CHUNK), 5, 0.4)
    assert result.pairs == [
        {"question": "Why does dropout stop units from co-adapting?", "kind": "mechanism",
         "answer": "Dropout randomly sets a fraction of activations to zero during training, so units cannot "
                   "co-adapt. At test time the outputs are scaled by the keep probability. Dropout slows training."},
        {"question": "How much does dropout slow training?", "kind": "quantitative",
         "answer": "Dropout slows training by two to three times."},
    ]
    assert result.dropped == {"not_self_contained": 1, "bad_kind": 1, "answer_fragment": 1}


def test_questions_naming_what_the_chunk_never_mentions_are_ungrounded():
    # A small model copies its worked example: a LoRA question about a chunk on dropout.
    reply = json.dumps({"pairs": [
        {"kind": "comparison", "question": "How does LoRA differ from dropout in inference latency?",
         "answer": "Dropout randomly sets a fraction of activations to zero during training."},
        {"kind": "definition", "question": "What does Srivastava's dropout do during training?",
         "answer": "Dropout randomly sets a fraction of activations to zero during training."},
    ]})
    assert pairs_from_reply(reply, Grounding(CHUNK), 5, 0.4).dropped == {"ungrounded": 2}
    # A name from the document title is known.
    title_words = frozenset(content_words("Dropout: A Simple Way to Prevent Overfitting (Srivastava)"))
    result = pairs_from_reply(reply, Grounding(CHUNK), 5, 0.4, known_words=title_words)
    assert [p["question"] for p in result.pairs] == ["What does Srivastava's dropout do during training?"]
    assert unknown_names("Why does GPT-3 beat ResNet on ImageNet?", {"gpt", "3", "resnet"}) == ["ImageNet"]


def test_questions_that_fill_a_worked_example_template_are_dropped():
    copied = "What does a sequence model learn instead of updating a pretrained weight matrix?"
    assert copies_example(copied)
    assert not copies_example("How does LoRA differ from prefix tuning in the number of trainable parameters?")
    text = "A sequence model transforms an input sequence into an output sequence with a pretrained weight matrix."
    reply = json.dumps({"pairs": [{"kind": "definition", "question": copied, "answer": text}]})
    assert pairs_from_reply(reply, Grounding(text), 5, 0.4).dropped == {"copies_example": 1}



def test_answers_stuck_in_a_loop_and_answers_given_twice_are_dropped():
    """Seen in a sampled reply of the 1.5B teacher: a formula trailing off in "\\text{ }" pieces, and three
    questions about one topic given one answer word for word (it fits at most one of them)."""
    assert degenerate(r"The loss is $L = -\log D$ \text{ } \text{ } \text{ } \text{ } \text{ } \text{ } \text{ }")
    assert degenerate("Dropout the the the the the the the units.")
    assert not degenerate("Dropout slows training by 1000000 steps.") and not degenerate(CHUNK)
    # A longer loop, as a real teacher wrote it: six words said again and again, formulas between them.
    looped = "Preservation refers to how much $y$ preserves the original text of $x$, measured as" + (
        " $y$ preserves the original text of $x$, measured as" * 4) + "."
    assert degenerate(looped)
    # Naming one thing three times is no loop.
    assert not degenerate("When the temperature is low, the distribution of the embedding representation is close "
                          "to the categorical distribution of the embedding representation; when it is high, the "
                          "distribution of the embedding representation is uniform.")
    same = "Dropout randomly sets a fraction of activations to zero during training, so units cannot co-adapt."
    reply = json.dumps({"pairs": [
        {"kind": "definition", "question": "What does dropout do during training?", "answer": same},
        {"kind": "mechanism", "question": "How does dropout stop units from co-adapting?", "answer": same},
        {"kind": "quantitative", "question": "How much does dropout slow training?",
         "answer": "Dropout slows training by two to three times " + "\\text{ } " * 8 + "."},
    ]})
    result = pairs_from_reply(reply, Grounding(CHUNK), 5, 0.4)
    assert [p["question"] for p in result.pairs] == ["What does dropout do during training?"]
    assert result.dropped == {"same_answer": 1, "degenerate": 1}

def test_richer_chunks_are_asked_for_more_pairs():
    sentence = "The encoder maps each input token to a vector that the decoder attends to at every step. "
    assert pairs_to_ask(sentence, 5) == 1
    assert pairs_to_ask(sentence * 7, 5) == 3
    assert pairs_to_ask(sentence * 30, 5) == 5
    assert pairs_to_ask(sentence * 30, 2) == 2


# ---------------------------------------------------------------------------------------------
# the stage: non-content chunks skipped before any generator, kinds and pairs per chunk reported


class SchemaChat:
    """A ChatModel that answers every chunk with one pair and records what it was asked."""

    name = "schema-chat"

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.schemas: list[dict | None] = []

    def chat(self, conversations, *, max_new_tokens=None, temperature=None, json_schema=None, seed=0):
        self.prompts.extend(c[-1]["content"] for c in conversations)
        self.schemas.append(json_schema)
        return [json.dumps({"pairs": [{"kind": "mechanism", "question": "Why does dropout stop units from co-adapting?",
                                       "answer": "Dropout sets activations to zero during training, so units cannot "
                                                 "co-adapt."}]}) for _ in conversations]


def write_chunks(run_dir: Path, rows: list[tuple[str, str | None]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for i, (text, section) in enumerate(rows):
            fh.write(json.dumps({"id": f"paper.pdf#{i:04d}", "text": text, "source": "paper.pdf",
                                 "title": "Dropout: A Simple Way to Prevent Overfitting", "section": section}) + "\n")


@pytest.mark.parametrize("generator", ["llm", "rules"])
def test_the_stage_skips_non_content_and_reports_kinds(tmp_path, generator):
    run_dir = tmp_path / "run"
    write_chunks(run_dir, [(CHUNK, "Method > Dropout"), (REFERENCES, "References"), (ACKNOWLEDGMENTS, "Thanks"),
                           (CHUNK.replace("Dropout", "DropConnect"), "Method")])
    chat = SchemaChat()
    config = load_config(None, [f"run_dir={run_dir}", f"generate.generators={{{generator}: 1}}",
                                "generate.llm_focused_answers=false"])
    generate.run(config, chat_model=chat)
    data = json.loads((run_dir / "generate" / "report.json").read_text(encoding="utf-8"))
    assert data["skipped_non_content"] == 2
    assert data["skipped_non_content_reasons"] == {"acknowledgments": 1, "references": 1}
    assert data["content_chunks_with_pairs"] == 2 and data["chunks_without_pairs"] == 2
    assert sum(data["kinds"].values()) == data["pairs"] and set(data["kinds"]) <= set(KINDS)
    assert sum(data["pairs_per_content_chunk"].values()) == 2
    rows = [json.loads(line) for line in (run_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["chunk_id"] for r in rows} == {"paper.pdf#0000", "paper.pdf#0003"}
    assert all(r["kind"] in KINDS for r in rows)
    if generator == "llm":
        assert len(chat.prompts) == 2 and all("References" not in p for p in chat.prompts)  # never asked
        assert chat.prompts[0].startswith("Title: Dropout: A Simple Way to Prevent Overfitting\nSection: Method > Dropout\n")
        assert chat.schemas == [reply_schema(config.generate.pairs_per_chunk)] * len(chat.schemas)
        assert data["kinds"] == {"mechanism": 2}
    # Skipping can be turned off: then every chunk goes to the generator.
    generate.run(load_config(None, [f"run_dir={run_dir}", f"generate.generators={{{generator}: 1}}",
                                    "generate.skip_non_content=false"]), chat_model=SchemaChat())
    assert json.loads((run_dir / "generate" / "report.json").read_text(encoding="utf-8"))["skipped_non_content"] == 0


def test_a_failing_model_still_leaves_skipped_chunks_recorded(tmp_path):
    class Failing(SchemaChat):
        def chat(self, conversations, **kwargs):
            raise LLMRequestError("generate.llm: HTTP 500", reason="HTTP 500")

    run_dir = tmp_path / "run"
    write_chunks(run_dir, [(REFERENCES, "References"), (CHUNK, "Method")])
    with pytest.raises(LLMRequestError):
        generate.run(load_config(None, [f"run_dir={run_dir}", "generate.generators={llm: 1}"]), chat_model=Failing())
    progress = [json.loads(line) for line in (run_dir / "generate" / "progress.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in progress if r["kind"] == "chunk"] == ["references"]


def test_suggested_kinds_start_at_different_places_for_different_passages():
    from papertune.generate.questions import KINDS, suggest_kinds

    passages = [f"Method {i}, a kind of sparse layer, routes each token to two experts, which is cheaper than a "
                f"dense layer of {i * 7} "
                f"units; however it is unstable without a balancing loss." for i in range(60)]
    firsts = Counter(suggest_kinds(p, 1)[0] for p in passages)
    assert len(firsts) >= 4 and max(firsts.values()) <= 0.4 * len(passages)  # not one kind first everywhere
    kinds = suggest_kinds(passages[0], 3)
    assert kinds == suggest_kinds(passages[0], 3) and len(set(kinds)) == 3 and set(kinds) <= set(KINDS)
    assert set(suggest_kinds("Attention weighs tokens.", 7)) == {"mechanism", "definition"}  # no cue: no other kind


def test_definition_is_suggested_where_the_passage_defines_or_offers_little_else():
    from papertune.generate.questions import suggest_kinds

    rich = ("Mixture-of-experts layers route each token to 2 of 64 experts, which is cheaper than a dense layer; "
            "however routing is unstable, so in practice a balancing loss is used for training.")
    assert "definition" not in suggest_kinds(rich, 7)  # explains, compares, counts: no definition to ask for
    defining = rich + " A router is a small network that refers to the gate choosing the experts."
    assert "definition" in suggest_kinds(defining, 7)
    assert "definition" in suggest_kinds("Attention weighs tokens by similarity, since 2017.", 7)  # little else


@pytest.mark.parametrize(
    ("answer", "points_at"),
    [
        ("In the paper, they adopted a LSTM layer.", "the paper"),
        ("ODEs are the main form of differential equations used in this post.", "this post"),
        ("The form of Gaussian processes in the above process is called the NNGP.", "the above"),
        ("The NTK, as defined in the blue part, is a kernel.", "the blue part"),
        ("The filter is described above.", "described above"),
        ("The formula for the attack is given by the equation above.", "equation above"),
        ("As you can see both the methods above require the prediction to be a probability.", "both the methods above"),
        ("Interestingly, both works above found that uniform sampling is a strong benchmark.", "both works above"),
        ("My previous post on meta-learning has covered several classic algorithms.", "My previous post"),
        ("The red terms can be ignored according to Markov assumptions.", "The red terms"),
        # ML nouns and plain words that only look like references
        ("The text decoder attends causally to the text input.", None),
        ("Only replacements whose similarity is above a threshold are kept.", None),
        ("A black box attack sees only the outputs; a document encoder embeds each page.", None),
        ("The method works above a threshold, and models above 10B parameters follow my instructions.", None),
    ],
)
def test_answers_that_point_at_their_source(answer, points_at):
    assert answer_source_reference(answer) == points_at

"""The evaluate stage: up to four systems on every question set of ``RUN/dataset`` (``RUN/eval``).

- Systems: the base and the tuned model (``evaluate.base`` / ``evaluate.tuned``), each closed-book (the
  question alone) and with retrieval (the question after ``retrieval.top_k`` passages of
  ``papertune.retrieval``, in the prompt ``papertune.chat.render_prompt`` gives ask and serve too), as
  ``evaluate.modes`` lists: base closed-book, tuned closed-book, base + retrieval, tuned + retrieval.
- Question sets: the test split (``evaluate.max_questions`` of its rows), the held-out documents (in the
  index, never trained on) and the documents outside the index (the right answer is to decline), each when
  the dataset has it. The outside documents are left out of the evaluation's index; with the judge, an
  outside question a retrieved passage answers all the same is not counted (:mod:`.outside`).
- Scores per system and set: token F1, exact match, ROUGE-L and embedding cosine against the reference (on
  the answer without "[n]" markers), an optional LLM judge (correctness and groundedness in the source
  chunk, 1-5; judged correct at 4 or more), recall@k of the retrieval, citation rate and accuracy, and
  the share of answers that decline; on the outside set only the declines and citations.
- Validation loss and perplexity of each model on every test row, computed exactly like training, and
  the test rows per group (``in_domain`` / ``held_out_document``) and per document.

Layout of ``RUN/eval``: ``metrics.json``, ``answers.jsonl``, ``report.md``, ``four_way.png``,
``metrics.png``, ``per_document.png``, ``answers_cache.jsonl``, ``config.yaml``, ``versions.json``.

Modules: :mod:`.stage` (``run``), :mod:`.sets`, :mod:`.metrics`, :mod:`.judge`, :mod:`.outside`, :mod:`.report`,
:mod:`.answer_cache`.
"""

from papertune.chat import strip_citations
from papertune.evaluate.judge import judge_conversation, parse_judge_reply, reference_agreement
from papertune.evaluate.metrics import (
    ANSWER_METRICS,
    GROUPS,
    MODELS,
    aggregate_loss,
    citation_correct,
    content_words,
    embedding_cosines,
    exact_match,
    example_losses,
    normalize_answer,
    passage_contains,
    recall_at_k,
    rouge_l,
    token_f1,
)
from papertune.evaluate.sets import QUESTION_SETS, System, load_question_sets, load_test_split, systems_for
from papertune.evaluate.stage import EVAL_DIR, SPEC, generate_answers, run

__all__ = ["ANSWER_METRICS", "EVAL_DIR", "GROUPS", "MODELS", "QUESTION_SETS", "SPEC", "System",
           "aggregate_loss", "citation_correct", "content_words", "embedding_cosines", "exact_match",
           "example_losses", "generate_answers", "judge_conversation", "load_question_sets", "load_test_split",
           "normalize_answer", "parse_judge_reply", "passage_contains", "recall_at_k", "reference_agreement",
           "rouge_l", "run",
           "strip_citations", "systems_for", "token_f1"]

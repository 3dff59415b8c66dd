"""The evaluate stage: the base model against the tuned one on the held-out split (``RUN/eval``).

- Validation loss and perplexity of both models on every test row, computed exactly like training
  (``papertune.train.data.tokenize_example``: loss only on the answer and the end-of-turn token), as
  a token-weighted mean over the split.
- Answers to held-out questions (``evaluate.max_questions`` of the test rows), generated in batches
  (greedy unless ``evaluate.temperature`` > 0) from the prompt the model was trained on (same chat
  template, same system prompt, same token ids), scored against the reference: ROUGE-L, SQuAD token F1
  and exact match, embedding cosine (all-MiniLM), and optionally an LLM judge (correctness and
  groundedness in the source chunk, 1-5).
- Everything is also reported per group: test rows whose document also feeds training (``in_domain``:
  a chunk-grouped split) and rows from documents training never saw (``held_out_document``; all of
  them with ``build.group_by=document``), and per document.

Layout of ``RUN/eval``: ``metrics.json``, ``answers.jsonl``, ``report.md``, ``metrics.png``,
``per_document.png``, ``config.yaml``, ``versions.json``.

Modules: :mod:`.stage` (``run``), :mod:`.metrics`, :mod:`.judge`, :mod:`.report`.
"""

from papertune.evaluate.judge import judge_conversation, parse_judge_reply
from papertune.evaluate.metrics import (
    ANSWER_METRICS,
    GROUPS,
    MODELS,
    aggregate_loss,
    embedding_cosines,
    exact_match,
    example_losses,
    normalize_answer,
    rouge_l,
    token_f1,
)
from papertune.evaluate.stage import EVAL_DIR, SPEC, generate_answers, load_test_split, run

__all__ = ["ANSWER_METRICS", "EVAL_DIR", "GROUPS", "MODELS", "SPEC", "aggregate_loss", "embedding_cosines",
           "exact_match", "example_losses", "generate_answers", "judge_conversation", "load_test_split",
           "normalize_answer", "parse_judge_reply", "rouge_l", "run", "token_f1"]

"""The curate stage: generated pairs -> ``RUN/qa_curated.jsonl`` and ``RUN/qa_dropped.jsonl``.

Each pair of ``RUN/qa.jsonl`` is checked, in this order, and dropped with the first reason that applies:

- ``injection``: the question or answer carries an instruction aimed at the model, or the pair is grounded
  only in its chunk's injected sentences (:mod:`papertune.injection`), whoever wrote the pair;
- ``duplicate_id``: an id already seen earlier in the file (ids must be unique: variants point at them);
- ``unknown_chunk``: its ``chunk_id`` is not in ``RUN/chunks.jsonl``, so it cannot be checked or grouped;
- ``question_too_short`` / ``question_too_long`` / ``answer_too_short`` / ``answer_too_long``: word counts
  outside ``curate.min_question_words`` ... ``curate.max_answer_words``;
- ``answer_in_question``: the answer says nothing its question does not: the question holds it, or every
  content word of it, but for vague words and symbols labelling its nouns (``curate.drop_answer_in_question``);
- ``amount_not_given``: the question asks how much or how many and the answer gives no number, formula or
  number word ("How much does it cost?" answered "It is cheaper."; ``curate.drop_amount_not_given``);
- ``one_sided_comparison``: the question compares two named things and the answer never names one of them
  ("How does RACE differ from SQuAD?" answered "RACE has 28,000 passages."; ``curate.drop_one_sided_comparison``);
- ``not_self_contained``: the question leans on a passage the reader does not see ("the table", "this paper");
- ``answer_refers_to_source``: so does the answer ("In the paper, they adopted ...", "the above process");
- ``formula_changed``: a formula of the answer is not its chunk's, read as the symbols it shows (a teacher
  that copied ``R_{t+1} + \\gamma V(S_{t+1})`` as ``R_{t+1} + 4V(S_{t+1})``; ``curate.drop_formula_changed``);
- ``unsupported_answer``: the answer is not supported by its chunk (``curate.support``: the share of the
  answer's content words found in the chunk, or the embedding cosine of answer and chunk);
- ``judge`` (``curate.judge_enabled``): a judge model reading the chunk cannot back the pair up: its quote
  is not in the chunk or does not carry the answer, its own blind answer disagrees, or its rubric scores
  are low (:mod:`papertune.curate.judge`); the pair keeps the judge's record under ``judge``;
- ``exact_duplicate`` / ``near_duplicate``: the question repeats one kept earlier (``curate.dedup``).

Duplicates (of ids and of questions) are looked for only among pairs that passed the other checks, so a
good pair is never dropped as the duplicate of a bad or injected one; the first occurrence (in file order)
is kept. Without the judge everything is deterministic: the same inputs and settings give byte-identical
outputs.

Modules: :mod:`~papertune.curate.filters` (the checks), :mod:`~papertune.curate.judge` (the judge),
:mod:`~papertune.curate.stage` (files in, files and report out).
"""


from papertune.curate.filters import (REASONS, amount_not_given, answer_in_question, content_stems, curate_rows,
                                      one_sided_comparison, overlap_support)
from papertune.curate.stage import SPEC, run

__all__ = ["REASONS", "SPEC", "amount_not_given", "answer_in_question", "content_stems", "curate_rows",
           "one_sided_comparison", "overlap_support", "run"]

"""Stage 2, generate: chunks -> grounded synthetic question-answer pairs (``RUN/qa.jsonl``).

Generators: ``rules`` (sentence patterns, no model), ``llm`` (an instruct model, in-process or behind
an OpenAI-compatible server) and ``seq2seq`` (a highlight-format question-generation model).
"""

from papertune.generate.stage import (
    PROGRESS_FILE,
    QA_FILE,
    REPORT_FILE,
    SPEC,
    assign_generator,
    load_chunks,
    run,
    settings_hash,
)

__all__ = ["PROGRESS_FILE", "QA_FILE", "REPORT_FILE", "SPEC", "assign_generator", "load_chunks", "run",
           "settings_hash"]

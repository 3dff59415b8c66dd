"""Which form of the llm prompt writes more right pairs: question first or evidence first?

    python benchmarks/teacher_forms.py RUN_DIR [--n 30] [--seed 28] [--forms FORM ...] [--set KEY=VALUE ...]

Takes a run's ``chunks.jsonl``, draws N content chunks (``random.Random(seed).sample``), and has the teacher
write their pairs twice through the generator itself (:class:`papertune.generate.llm.LLMGenerator`):

- question first, each answer asked again on its own (``llm_evidence_first: false``, ``llm_focused_answers:
  true``);
- evidence first (``llm_evidence_first: true``, ``llm_focused_answers: false``).

Defaults: the 1.5B teacher in llama.cpp on this machine, as the cpu-quality profile runs it. Prints a table
(time, pairs, chunks with a pair, drops by reason) and writes, beside the run, ``teacher_forms_sheet.txt``:
one kept pair per chunk per form, drawn at random and shuffled, each with its chunk and without its form, to
be read by hand; ``teacher_forms_key.jsonl`` says which form each numbered pair came from. ``--forms
evidence`` writes one form only (to set beside an earlier version of the code on the same chunks).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from papertune.config import load_config
from papertune.generate.content import non_content_reason
from papertune.generate.llm import LLMGenerator
from papertune.rundir import CHUNKS, read_jsonl

DEFAULTS = ["generate.generators={llm: 1.0}", "generate.llm.backend=llamacpp",
            "generate.llm.model=packaged:qwen2.5-coder-1.5b-instruct", "generate.llm.parallel=2",
            "generate.llm.context_length=4096", "generate.llm.timeout_s=1800", "generate.pairs_per_chunk=3"]
FORMS = {
    "question first": ["generate.llm_evidence_first=false", "generate.llm_focused_answers=true",
                       "generate.llm.max_new_tokens=384"],
    "evidence first": ["generate.llm_evidence_first=true", "generate.llm_focused_answers=false",
                       "generate.llm.max_new_tokens=640"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=30, help="content chunks to write pairs for (a seeded draw)")
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument("--forms", nargs="+", choices=[f.split()[0] for f in FORMS], default=None,
                        help="the forms to write (default: both)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    forms = {f: s for f, s in FORMS.items() if args.forms is None or f.split()[0] in args.forms}
    chunks = [c for c in read_jsonl(args.run_dir / CHUNKS) if non_content_reason(c["text"]) is None]
    sample = random.Random(args.seed).sample(chunks, min(args.n, len(chunks)))
    by_id = {c["id"]: c for c in sample}
    kept: dict[str, dict[str, list[dict]]] = {}
    print("| form | seconds | pairs | chunks with a pair | dropped |")
    print("|---|---|---|---|---|")
    for form, settings in forms.items():
        config = load_config(None, [f"run_dir={args.run_dir}", *DEFAULTS, *settings, *args.set])
        generator = LLMGenerator(config)
        started = time.perf_counter()
        dropped: Counter[str] = Counter()
        kept[form] = {}
        for chunk_id, result in generator.generate(sample):
            dropped.update(result.dropped)
            if result.pairs:
                kept[form][chunk_id] = result.pairs
        seconds = time.perf_counter() - started
        pairs = sum(len(p) for p in kept[form].values())
        print(f"| {form} | {seconds:.0f} | {pairs} | {len(kept[form])} of {len(sample)} | "
              f"{', '.join(f'{k} {v}' for k, v in dropped.most_common())} |")
        close = getattr(generator.chat_model, "close", None)
        if close:
            close()
    rng = random.Random(5)
    drawn = [(form, chunk_id, rng.choice(pairs)) for form in forms for chunk_id, pairs in sorted(kept[form].items())]
    rng.shuffle(drawn)
    sheet, key = [], []
    for i, (form, chunk_id, pair) in enumerate(drawn):
        chunk = by_id[chunk_id]
        sheet.append(f"=== #{i} [{chunk.get('title')} / {chunk.get('section')}]\nCHUNK: {chunk['text']}\n\n"
                     f"Q: {pair['question']}\nA: {pair['answer']}\n")
        key.append({"i": i, "form": form, "chunk_id": chunk_id, **pair})
    (args.run_dir / "teacher_forms_sheet.txt").write_text("\n".join(sheet), encoding="utf-8")
    (args.run_dir / "teacher_forms_key.jsonl").write_text("".join(json.dumps(k, ensure_ascii=False) + "\n"
                                                                  for k in key), encoding="utf-8")
    print(f"\n{len(drawn)} pairs to read: {args.run_dir / 'teacher_forms_sheet.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Adds passage-verification rows to a built RAFT dataset's train split (an experiment, not a product path).

For each train pair: its source passage asked "does the passage contain the answer?" with target "yes",
and its first distractor in retrieval order (one that holds under half of the answer's words) with "no".
The prompt is benchmarks/answer_confidence.py's ``verify_user`` in the row's chat template (ChatML, taken
from the row's own prompt). Rewrites RUN/dataset in place.

    python benchmarks/verify_rows.py --run-dir R
"""
import argparse
import ast
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_confidence import verify_user  # noqa: E402
from papertune.text import carried_share  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    args = ap.parse_args()
    from datasets import Dataset, load_from_disk

    chunks = {c["id"]: c for c in map(json.loads, (args.run_dir / "chunks.jsonl").open())}
    dd = load_from_disk(str(args.run_dir / "dataset"))
    rows = dd["train"].to_list()
    added = []
    for r in rows:
        ids = r["passage_ids"] if isinstance(r["passage_ids"], list) else ast.literal_eval(r["passage_ids"])
        head = r["prompt"].split("<|im_start|>user\n")[0]
        negatives = [c for c in ids if c != r["chunk_id"] and carried_share(r["answer"], chunks[c]["text"]) < 0.5]
        for cid, target in [(r["chunk_id"], "yes")] + [(c, "no") for c in negatives[:1]]:
            prompt = f"{head}<|im_start|>user\n{verify_user(r['question'], chunks[cid])}<|im_end|>\n<|im_start|>assistant\n"
            completion = f"{target}<|im_end|>"
            added.append({**r, "id": f"{r['id']}::verify::{cid}", "generator": "verify", "prompt": prompt,
                          "completion": completion, "text": prompt + completion})
    dd["train"] = Dataset.from_list(rows + added, features=dd["train"].features).shuffle(seed=3407)
    tmp = args.run_dir / "dataset.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    shutil.rmtree(args.run_dir / "dataset")
    tmp.rename(args.run_dir / "dataset")
    print(f"train rows {len(rows)} + {len(added)} verification rows "
          f"({sum(a['completion'].startswith('yes') for a in added)} yes)")


if __name__ == "__main__":
    main()

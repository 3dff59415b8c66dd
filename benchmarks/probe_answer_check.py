"""A held-out probe of the answer check (``Retriever.check_answer``) on the CPU.

Questions about three documents left out of the index (written by hand before any answer was seen; the
documents are Lilian Weng's posts on policy gradients, evolution strategies and neural architecture
search) and 15 answerable held-out questions of an evaluated run; Qwen2.5-Coder-0.5B-Instruct (llama.cpp,
packaged) answers grounded in the top 4 passages of the run's chunks; the check is applied. Prints how
many of each kind the model declined and how many the check declined.

    python benchmarks/probe_answer_check.py --chunks RUN/chunks.jsonl --answers RUN/eval/answers.jsonl \
        --leave-out DOC.md --json OUT.json
"""
import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from papertune.chat import abstains, to_messages  # noqa: E402
from papertune.config import LLMConfig, load_config  # noqa: E402
from papertune.llm import make_chat_model  # noqa: E402
from papertune.retrieval import Retriever  # noqa: E402
OUTSIDE = [  # policy gradients, evolution strategies, neural architecture search
    'What is the policy gradient theorem?',
    'How does REINFORCE estimate the gradient?',
    'What does the baseline do in REINFORCE?',
    'How does PPO clip the probability ratio?',
    'What is the difference between DDPG and TD3?',
    'How does natural evolution strategies update the search distribution?',
    'What is CMA-ES?',
    'How do evolution strategies compare to policy gradients for reinforcement learning?',
    'What is novelty search?',
    'What is the search space in neural architecture search?',
    'How does DARTS make the architecture search differentiable?',
    'What is weight sharing in ENAS?',
    'How does NASNet define its cell-based search space?',
    'What is the role of the controller RNN in NAS with reinforcement learning?',
    'What is one-shot architecture search?',
]
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--chunks", required=True)
ap.add_argument("--answers", required=True, help="an evaluated run's answers.jsonl (its heldout questions)")
ap.add_argument("--leave-out", action="append", default=[], help="a document left out of the index")
ap.add_argument("--json", help="write every answer and both shares here")
args = ap.parse_args()
rows = [json.loads(line) for line in open(args.answers, encoding="utf-8")]
held = [r for r in rows if r['system'] == 'base_retrieval' and r['set'] == 'heldout']
random.Random(29).shuffle(held)
ANS = [(r['question'], r['scores'].get('judge_correct')) for r in held[:15]]
run = Path(tempfile.mkdtemp())
shutil.copy(args.chunks, run / 'chunks.jsonl')
cfg = load_config(None, [])
R = Retriever.for_run(run, cfg.retrieval, exclude_sources=set(args.leave_out))
llm = make_chat_model(LLMConfig(backend='llamacpp', model='packaged:qwen2.5-coder-0.5b-instruct',
                                max_new_tokens=160, context_length=4096), 'probe')
qs = [(q, 'outside', None) for q in OUTSIDE] + [(q, 'answerable', c) for q, c in ANS]
hits = R.search_many([q for q, _, _ in qs])
t = time.time()
answers = llm.chat([to_messages(q, None, cfg.build.system_prompt, [p.chunk for p in h])
                    for (q, _, _), h in zip(qs, hits)])
print(f"{len(qs)} answers in {time.time()-t:.0f} s")
out = []
for (q, kind, c), h, a in zip(qs, hits, answers):
    checked = R.check_answer(q, a, h)
    out.append(dict(kind=kind, q=q, judge=c, model_declined=abstains(a), checked_declined=abstains(checked),
                    qshare=R.support_share(q, h), ashare=R.support_share(a, h), answer=a))
if args.json:
    Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
for kind in ('outside', 'answerable'):
    sub = [o for o in out if o['kind'] == kind]
    lost = sum(1 for o in sub if o['judge'] == 1.0 and o['checked_declined'] and not o['model_declined'])
    print(f"{kind} {len(sub)}: model declines {sum(o['model_declined'] for o in sub)}, "
          f"checked declines {sum(o['checked_declined'] for o in sub)}, "
          f"judged correct in the run and declined by the check {lost}")

#!/usr/bin/env bash
# The ninth model-scale run's corpus: 12 of Lilian Weng's ML blog posts (Jekyll Markdown), from a git copy of
# github.com/lilianweng/lil-log at the last commit that still holds the posts (0fa5d15; later commits replace
# them with redirects). The posts are not part of this repository: this writes them into OUT.
#   bash benchmarks/lillog_corpus.sh LIL_LOG_GIT_DIR OUT
# Then, on a CPU machine: papertune ingest OUT --config benchmarks/raft_gpu.yaml --run-dir R and copy
# R/chunks.jsonl to .gpu-data/chunks.jsonl for benchmarks/gpu_raft.sh.
set -euo pipefail
repo=${1:?usage: lillog_corpus.sh LIL_LOG_GIT_DIR OUT}
out=${2:?usage: lillog_corpus.sh LIL_LOG_GIT_DIR OUT}
commit=0fa5d15
posts="2017-08-01-how-to-explain-the-prediction-of-a-machine-learning-model
2017-08-20-from-GAN-to-WGAN
2017-09-28-anatomize-deep-learning-with-information-theory
2018-01-23-the-multi-armed-bandit-problem-and-its-solutions
2018-02-19-a-long-peek-into-reinforcement-learning
2018-08-12-from-autoencoder-to-beta-vae
2018-10-13-flow-based-deep-generative-models
2019-01-31-generalized-language-models
2019-03-14-are-deep-neural-networks-dramatically-overfitted
2019-05-05-domain-randomization
2019-06-23-meta-reinforcement-learning
2020-01-29-curriculum-for-reinforcement-learning"
mkdir -p "$out"
for post in $posts; do
  git -C "$repo" show "$commit:_posts/$post.md" > "$out/$post.md"
done
echo "wrote $(echo "$posts" | wc -l) posts to $out"

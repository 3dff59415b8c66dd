#!/usr/bin/env bash
# Lilian Weng's ML blog posts (Jekyll Markdown) as a corpus, from a git copy of github.com/lilianweng/lil-log at
# the last commit that still holds the posts (0fa5d15; later commits replace them with redirects). The posts are
# not part of this repository: this writes them into OUT. SET picks the posts: 2017-2020 (default), the ninth
# model-scale run's 12; 2020-2021, 10 later posts no run before the nineteenth read.
#   bash benchmarks/lillog_corpus.sh LIL_LOG_GIT_DIR OUT [SET]
# Then, on a CPU machine: papertune ingest OUT --config benchmarks/raft_gpu.yaml --run-dir R and copy
# R/chunks.jsonl to .gpu-data/chunks.jsonl for benchmarks/gpu_raft.sh.
set -euo pipefail
repo=${1:?usage: lillog_corpus.sh LIL_LOG_GIT_DIR OUT}
out=${2:?usage: lillog_corpus.sh LIL_LOG_GIT_DIR OUT}
set_name=${3:-2017-2020}
commit=0fa5d15
case $set_name in
  2017-2020) posts="2017-08-01-how-to-explain-the-prediction-of-a-machine-learning-model
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
2020-01-29-curriculum-for-reinforcement-learning" ;;
  2020-2021) posts="2020-04-07-the-transformer-family
2020-06-07-exploration-strategies-in-deep-reinforcement-learning
2020-08-06-neural-architecture-search
2020-10-29-open-domain-question-answering
2021-01-02-controllable-neural-text-generation
2021-03-21-reducing-toxicity-in-language-models
2021-05-31-contrastive-representation-learning
2021-07-11-diffusion-models
2021-09-25-train-large-neural-networks
2021-12-05-semi-supervised-learning" ;;
  *) echo "lillog_corpus.sh: unknown SET '$set_name': use 2017-2020 or 2020-2021" >&2; exit 2 ;;
esac
mkdir -p "$out"
for post in $posts; do
  git -C "$repo" show "$commit:_posts/$post.md" > "$out/$post.md"
done
echo "wrote $(echo "$posts" | wc -l) posts to $out"

#!/usr/bin/env bash
# Where a step's time goes: train_seed_mix.py profile with configs/gpu-fast.yaml's settings on the seed Q&A mix
# (N examples), packed rows of each of LENGTHS tokens, each in its own process, one GPU: a plain loop against
# trainer.train() on the same rows, the GPU's busy share, the calls that wait on the GPU, and torch.profiler
# tables sorted by CPU and by GPU time (in $OUT/p_LENGTH.log).
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
for L in ${LENGTHS:-8192 16384}; do
  run p_$L ${PROFILE_LIMIT:-200} python3 benchmarks/train_seed_mix.py profile $MODEL ${N:-1200} $L
done

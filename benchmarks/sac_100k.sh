#!/usr/bin/env bash
# DiffSAC against SAC: Hopper-v5 and HalfCheetah-v5, 100k env steps, seeds 1 and 2, two runs at a time
# with one torch thread each (about 35 minutes per run on one core of a laptop-class CPU).
# Then: python benchmarks/curves.py runs --out benchmarks/results/sac_100k.png
set -euo pipefail
cd "$(dirname "$0")/.."
for env_id in Hopper-v5 HalfCheetah-v5; do
  for seed in 1 2; do
    for script in diffsac.py baselines/sac.py; do
      echo "$script --env-id $env_id --seed $seed --total-timesteps 100000 --eval-frequency 5000 --eval-episodes 5"
    done
  done
done | OMP_NUM_THREADS=1 xargs -P 2 -L 1 sh -c 'python $0 "$@" > /dev/null'

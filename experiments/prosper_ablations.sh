#!/usr/bin/env bash
# PROSPER ablations on Home Depot (seed 002 Table 4 / Appendix D), same budget as the
# `prosper` row of docs/sparse.md (400 steps of 32, embedded small LM), one thread each.
#   bash experiments/prosper_ablations.sh [row ...]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=("$@"); [ ${#rows[@]} -gt 0 ] || rows=(prosper-no-lrn prosper-no-lfw prosper-maxpool prosper-lrn-add prosper-no-norm)
for r in "${rows[@]}"; do
  OMP_NUM_THREADS=1 .venv/bin/python experiments/sparse_homedepot.py "$r" --out "results/sparse/$r" \
    --set preset=small max_steps=400 batch_size=32 > "results/sparse/$r.log" 2>&1
done

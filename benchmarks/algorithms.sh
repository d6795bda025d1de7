#!/usr/bin/env bash
# The side-by-side comparison of docs/algorithms.md ("Side by side on the demo task"): every algorithm from seed 0's
# demo run, then the plot into docs/img/. Usage: benchmarks/algorithms.sh [RUN] [OUT] [extra benchmarks/algorithms.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo-seeds/seed-0}
OUT=${2:-runs/algorithms}
shift $(( $# < 2 ? $# : 2 ))
[ -d "$RUN/sft" ] || .venv/bin/rlhf demo --out "$RUN"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python benchmarks/algorithms.py --run "$RUN" --out "$OUT" \
    --algorithms ppo,rloo,grpo,reinforce_pp,dpo "$@"
mkdir -p docs/img && cp "$OUT/algorithms_frontier.png" docs/img/algorithms_frontier.png

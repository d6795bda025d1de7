#!/usr/bin/env bash
# The reward-hacking study of docs/reward-hacking.md from scratch (demo, ensemble, one kl_coef-0 PPO run per defence),
# then its plots into docs/img/. Usage: benchmarks/reward_hacking.sh [OUT] [extra benchmarks/reward_hacking.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/reward-hacking}
shift $(( $# < 1 ? $# : 1 ))
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python benchmarks/reward_hacking.py --out "$OUT" "$@"
mkdir -p docs/img && cp "$OUT"/reward_hacking_*.png docs/img/

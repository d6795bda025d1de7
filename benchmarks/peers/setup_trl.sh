#!/usr/bin/env bash
# Make the peer venv for the TRL comparison (benchmarks/peers/trl_*.py): a separate environment, never a dependency
# of `rlhf`. torch is installed first and pinned, then trl==1.12.0 under the repository's constraints.txt, so the
# libraries both sides share (torch 2.13.0, transformers, accelerate, datasets, tokenizers) are the same versions
# on both sides and the comparison is about the trainers, not the libraries.
#
#     benchmarks/peers/setup_trl.sh            # creates benchmarks/peers/.venv-trl (git-ignored)
#     TRL_VENV=/some/where benchmarks/peers/setup_trl.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${TRL_VENV:-$ROOT/benchmarks/peers/.venv-trl}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -c "$ROOT/constraints.txt" torch==2.13.0
"$VENV/bin/pip" install --quiet -c "$ROOT/constraints.txt" trl==1.12.0
# The check fails loudly if a resolver step moved torch or trl away from the pinned versions.
"$VENV/bin/python" - <<'PY'
import torch, transformers, trl
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert trl.__version__ == "1.12.0", trl.__version__
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  (PPO lives in trl.experimental in 1.x)
print(f"TRL venv ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
PY

#!/usr/bin/env bash
# Ours against TRL 1.12.0 on this machine, in one go: the PPO update (benchmarks/ppo_step.py vs
# benchmarks/peers/trl_ppo.py, on one shared workload folder) and reward-model training (benchmarks/reward_train.py
# vs benchmarks/peers/trl_reward.py). Runs alternate ours / TRL so that drift in the machine's load hits both;
# each figure is the median over the runs, with the spread (min..max) of the per-run figures.
#
#     benchmarks/compare.sh [--runs 3] [--threads 2] [--scale] [--no-reward] [--smoke]
#
# Needs .venv (make setup / make test); makes benchmarks/peers/.venv-trl with setup_trl.sh when it is missing.
# Prints a table, then one JSON object as the last line. Run it on a quiet machine: a 2-thread run slows down
# many times over when other processes want the cores (the load average is printed with the figures).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
TRL_PY="${TRL_VENV:-$ROOT/benchmarks/peers/.venv-trl}/bin/python"

RUNS=3 THREADS=2 SCALE="" REWARD=1 SMOKE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --scale) SCALE="--scale"; shift ;;
    --no-reward) REWARD=0; shift ;;
    --smoke) SMOKE="--smoke"; RUNS=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || { echo "compare.sh: $PY is missing; run 'make setup' (or 'make test') first" >&2; exit 1; }
[ -x "$TRL_PY" ] || "$ROOT/benchmarks/peers/setup_trl.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rlhf-compare.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
echo "machine: $(nproc --all) CPUs (${CPU_MODEL:-unknown model}), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# one workload folder for both PPO implementations (same tokenizer, weights and prompt ids)
SHAPE_ARGS="--shape tiny"
[ -n "$SCALE" ] && SHAPE_ARGS="--shape scale"
[ -n "$SMOKE" ] && SHAPE_ARGS="$SHAPE_ARGS --smoke --response_length 8"
"$PY" benchmarks/_workload.py "$WORK/workload" $SHAPE_ARGS > /dev/null 2>&1

FAILED=""
bench() {  # bench NAME CMD...: append the JSON last line of CMD's output to $WORK/NAME.jsonl; on failure show its log
  local name="$1"; shift
  echo "run $i/$RUNS: $name"
  if "$@" > "$WORK/log" 2>&1; then
    tail -n 1 "$WORK/log" >> "$WORK/$name.jsonl"
  else
    echo "compare.sh: $name failed; the end of its output:" >&2
    tail -n 15 "$WORK/log" >&2
    FAILED="$FAILED $name"
  fi
}
for i in $(seq 1 "$RUNS"); do
  bench ours_ppo "$PY" benchmarks/ppo_step.py $SCALE $SMOKE --threads "$THREADS" --workload "$WORK/workload"
  bench trl_ppo "$TRL_PY" benchmarks/peers/trl_ppo.py $SCALE $SMOKE --threads "$THREADS" --workload "$WORK/workload"
  if [ "$REWARD" = 1 ]; then
    bench ours_reward "$PY" benchmarks/reward_train.py --repeats 1 $SMOKE --threads "$THREADS"
    bench trl_reward "$TRL_PY" benchmarks/peers/trl_reward.py --repeats 1 $SMOKE --threads "$THREADS"
  fi
done

"$PY" - "$WORK" "$FAILED" <<'PY'
import json, os, statistics, sys
from pathlib import Path

work, failed = Path(sys.argv[1]), sys.argv[2].split()


def rows(name):
    p = work / f"{name}.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def fig(rs, key):
    """(median, min, max) of a key over the runs."""
    vals = [r[key] for r in rs if r.get(key) is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def table(title, ours, trl, keys, prefix):
    print(f"\n{title}  (median of {len(ours)} runs [min..max]; TRL/ours > 1: TRL's figure is larger)")
    for key, unit in keys:
        a, b = fig(ours, key), fig(trl, key)
        print(f"  {key:<18} ours {a[0]:>9.4g} {unit:<7} [{a[1]:.4g}..{a[2]:.4g}]   TRL {b[0]:>9.4g} "
              f"[{b[1]:.4g}..{b[2]:.4g}]   TRL/ours {b[0] / a[0]:.2f}")
        out[f"{prefix}_{key}_ours"], out[f"{prefix}_{key}_trl"] = a[0], b[0]


out = {"benchmark": "compare", "failed": failed}
ours, trl = rows("ours_ppo"), rows("trl_ppo")
if ours and trl:
    o = ours[0]
    table(f"PPO update ({o['shape']}, batch {o['batch']}, response {o['response_length']}, {o['threads']} threads, "
          f"{trl[0]['impl']})", ours, trl, (("s_per_update", "s"), ("gen_tokens_per_s", "tok/s"),
                                            ("tokens_per_s", "tok/s"), ("peak_rss_mb", "MB")), "ppo")
    floor = fig(ours, "floor_s")[0]
    out["ppo_floor_s"] = floor
    out["ppo_floor_ratio_ours"] = fig(ours, "floor_ratio")[0]
    out["ppo_floor_ratio_trl"] = out["ppo_s_per_update_trl"] / floor
    out["ppo_speedup_vs_trl"] = out["ppo_s_per_update_trl"] / out["ppo_s_per_update_ours"]
    out["ppo_trl_gc_share"] = fig(trl, "gc_s")[0] / out["ppo_s_per_update_trl"]
    print(f"  compute floor {floor:.4g} s/update: ours {out['ppo_floor_ratio_ours']:.2f}x it, TRL "
          f"{out['ppo_floor_ratio_trl']:.2f}x; TRL spends {100 * out['ppo_trl_gc_share']:.0f}% of an update in "
          f"gc.collect(); TRL takes {out['ppo_speedup_vs_trl']:.2f}x our time per update")
ours_r, trl_r = rows("ours_reward"), rows("trl_reward")
if ours_r and trl_r:
    table("reward-model training (512 pairs, 48 ids per side, 16 pairs per step)", ours_r, trl_r,
          (("pairs_per_s", "pairs/s"), ("peak_rss_mb", "MB")), "reward")
    out["reward_speedup_vs_trl"] = out["reward_pairs_per_s_ours"] / out["reward_pairs_per_s_trl"]
loads = [r["loadavg_1m"] for r in ours + trl + ours_r + trl_r if "loadavg_1m" in r] + [os.getloadavg()[0]]
out["loadavg_1m_max"] = max(loads)
if max(loads) > 2:
    print(f"\nWARNING: the load average reached {max(loads):.1f}: other work competed for the cores, so these "
          "figures are not reliable; re-run on a quiet machine")
if failed:
    print(f"\nFAILED: {' '.join(failed)} (see their output above)")
print(json.dumps(out))
sys.exit(1 if failed else 0)
PY

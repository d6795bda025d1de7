"""PPO, RLOO, GRPO, REINFORCE++ and DPO side by side on the demo task: one demo run's SFT model, reward model,
preference file and prompts; the demo's PPO settings for every on-policy algorithm; the demo's eval for every policy.

    .venv/bin/rlhf demo --out runs/demo                       # once: SFT, preferences, reward model, PPO, eval
    .venv/bin/python benchmarks/algorithms.py --run runs/demo --out runs/algorithms

Each algorithm is trained by its own CLI stage in a child process (`rlhf ALGO --config OUT/ALGO.config.yaml`), whose
wall time and peak RSS (the child's `ru_maxrss` from `os.wait4`) are measured, then `rlhf eval` compares its policy
with the SFT model on the held-out prompts with the gold judge, with the settings of the demo's eval (RUN/eval).

Same budget: every on-policy algorithm takes the values of RUN/ppo/config.yaml (updates, rollout_batch_size,
max_new_tokens, temperature, lr, kl_coef, ppo_epochs, num_minibatches, cliprange, seed, ...), so each update samples
`rollout_batch_size` responses of at most `max_new_tokens` tokens (RLOO and GRPO with k = 4: rollout_batch_size / 4
prompts, 4 responses each). Each keeps its own loss and estimator options at their defaults (GRPO: the k3 KL in the
loss, with the demo's kl_coef as its beta). DPO is offline: it generates no tokens in training and trains on the
preference file (RUN/preferences.jsonl) with its defaults. PPO is trained again into OUT like the others (same
machine load as the rest), not taken from RUN/ppo.

A variant is `ALGO:key=value[:key=value]` in --algorithms (e.g. `grpo:loss_aggregation=token-mean`): the algorithm with
those options changed, in its own folder and row.

Resumable: an algorithm whose OUT/eval-NAME/eval.json exists is not run again; one whose training finished (its
summary.json and OUT/NAME.run.json) is only evaluated. Writes OUT/algorithms.json, OUT/algorithms.md (the table) and
OUT/algorithms_frontier.png (reward vs KL: each on-policy run's per-update objective/kl and objective/scores, every
policy's held-out eval point); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ON_POLICY = ("ppo", "rloo", "grpo", "reinforce_pp")
ALGORITHMS = (*ON_POLICY, "dpo")
# RUN/ppo/config.yaml keys not passed on: the output folder; the KL estimator (each algorithm's own: GRPO's k3 is in
# its loss, where k1 is no penalty); num_samples (each its own: RLOO and GRPO 4, PPO and REINFORCE++ 1); tensorboard
NOT_SHARED = {"out", "kl_estimator", "tensorboard", "num_samples"}
EVAL_KEYS = ("n_prompts", "samples_per_prompt", "temperature", "max_new_tokens", "seed", "gold", "batch_size", "dtype",
             "use_model_generation_config")
LABELS = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "reinforce_pp": "REINFORCE++", "dpo": "DPO"}


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """'grpo:kl_coef=0.04' -> (name 'grpo-kl_coef=0.04', algorithm 'grpo', {'kl_coef': 0.04})."""
    algo, *sets = spec.strip().split(":")
    if algo not in ALGORITHMS:
        raise SystemExit(f"--algorithms: unknown algorithm '{algo}' (choose from {', '.join(ALGORITHMS)})")
    extra: dict[str, Any] = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep or not key:
            raise SystemExit(f"--algorithms: '{s}' in '{spec}' is not key=value (e.g. grpo:kl_coef=0.04)")
        extra[key] = yaml.safe_load(value)
    name = algo + "".join(f"-{k}={v}" for k, v in extra.items())
    if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", name):
        raise SystemExit(f"--algorithms: '{spec}' makes a folder name with odd characters; use plain key=value")
    return name, algo, extra


def stage_fields(algo: str) -> set[str]:
    import dataclasses

    from rlhf.stages import dpo, grpo, ppo, reinforce_pp, rloo

    cls = {"ppo": ppo.PPOConfig, "rloo": rloo.RLOOConfig, "grpo": grpo.GRPOConfig,
           "reinforce_pp": reinforce_pp.ReinforcePPConfig, "dpo": dpo.DPOConfig}[algo]
    return {f.name for f in dataclasses.fields(cls)}


def train_config(algo: str, run: Path, ppo_cfg: dict[str, Any], out: Path, args: argparse.Namespace,
                 extra: dict[str, Any]) -> dict[str, Any]:
    fields = stage_fields(algo)
    if algo == "dpo":
        cfg = dict(model=str(run / "sft"), data=str(run / "preferences.jsonl"), seed=ppo_cfg.get("seed", 0))
    else:
        cfg = {k: v for k, v in ppo_cfg.items() if k in fields and k not in NOT_SHARED}
        cfg.update(policy=str(run / "sft"), reward=str(run / "reward"), prompts=str(run / "data" / "prompts_train.jsonl"),
                   gold="demo")
        if args.updates:
            cfg["updates"] = args.updates
        if "tensorboard" in fields:
            cfg["tensorboard"] = False
    cfg.update(out=str(out), device=args.device, resume=True)
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise SystemExit(f"--algorithms: {algo} has no option {', '.join(unknown)} (see rlhf {algo} --help)")
    cfg.update(extra)
    return cfg


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd` with its output in `log`; return (wall seconds, peak RSS in MB of the child and its waited-for
    descendants). A failure stops the benchmark with the log's tail."""
    env = {**os.environ, "RLHF_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:2])} failed (exit {p.returncode}); log {log}:\n{tail}")
    return wall, usage.ru_maxrss / 1024  # Linux: kilobytes


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_and_eval(name: str, algo: str, extra: dict[str, Any], run: Path, out: Path, ppo_cfg: dict[str, Any],
                   eval_cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rlhf = str(Path(sys.executable).parent / "rlhf")
    tdir, edir, runfile = out / name, out / f"eval-{name}", out / f"{name}.run.json"
    if not ((tdir / "summary.json").exists() and runfile.exists()):
        cfg = train_config(algo, run, ppo_cfg, tdir, args, extra)
        cfg_path = out / f"{name}.config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [rlhf, algo, "--config", str(cfg_path)]
        print(f"[{name}] training: {' '.join(cmd)}", file=sys.stderr, flush=True)
        wall, rss = run_child(cmd, out / f"{name}.train.log")
        runfile.write_text(json.dumps({"command": cmd, "wall_s": wall, "peak_rss_mb": rss}, indent=2))
    if not (edir / "eval.json").exists():
        ecfg = dict(eval_cfg, policy=str(tdir), baseline=str(run / "sft"), ref=str(run / "sft"),
                    reward=str(run / "reward"), prompts=str(run / "data" / "prompts_heldout.jsonl"), out=str(edir),
                    device=args.device)
        if args.eval_prompts:
            ecfg["n_prompts"] = args.eval_prompts
        cfg_path = out / f"eval-{name}.config.yaml"
        cfg_path.write_text(yaml.safe_dump(ecfg, sort_keys=False))
        cmd = [rlhf, "eval", "--config", str(cfg_path)]
        print(f"[{name}] eval: {' '.join(cmd)}", file=sys.stderr, flush=True)
        run_child(cmd, out / f"eval-{name}.log")
    return collect(name, algo, extra, tdir, edir, runfile)


def collect(name: str, algo: str, extra: dict[str, Any], tdir: Path, edir: Path, runfile: Path) -> dict[str, Any]:
    e = json.loads((edir / "eval.json").read_text())
    r = json.loads(runfile.read_text())
    s = json.loads((tdir / "summary.json").read_text())
    cfg = yaml.safe_load((tdir / "config.yaml").read_text())
    rows = read_jsonl(tdir / "metrics.jsonl")
    row: dict[str, Any] = {
        "name": name, "algorithm": algo, "options": extra, "kind": s.get("kind"),
        "win_rate_gold": e["win_rate"]["gold"], "win_rate_gold_ci95": list(e["win_rate_ci95"]["gold"]),
        "win_rate_reward": e["win_rate"]["reward"], "kl": e["kl"],
        "reward_policy": e["reward"]["policy"], "reward_baseline": e["reward"]["baseline"],
        "gold_policy": e["gold"]["policy"], "gold_baseline": e["gold"]["baseline"],
        "length_policy": e["length"]["policy"],
        "wall_s": r["wall_s"], "train_s": s.get("train_s"), "peak_rss_mb": r["peak_rss_mb"],
    }
    if algo == "dpo":
        # offline: no sampling in training; its budget is the preference pairs it read
        row.update(responses_generated=0, tokens_generated=0, steps=len([x for x in rows if "dpo/loss" in x]),
                   curve=[])
    else:
        updates = [x for x in rows if "objective/kl" in x]
        n = cfg["rollout_batch_size"]
        row.update(
            updates=len(updates), rollout_batch_size=n, num_samples=cfg.get("num_samples", 1),
            max_new_tokens=cfg["max_new_tokens"], responses_generated=n * len(updates),
            tokens_generated=int(round(sum(x["response/length_mean"] * n for x in updates))),
            curve=[[x["step"], x["objective/kl"], x["objective/scores"]] for x in updates])
    return row


def table(rows: list[dict[str, Any]], baseline: dict[str, float]) -> str:
    head = ("| algorithm | gold win rate vs SFT [95% CI] | KL (nats) | RM score | gold score | train wall (s) | "
            "peak RSS (MB) | responses / tokens generated |")
    lines = [head, "|" + "---|" * 8,
             f"| SFT (baseline) | 0.5 | 0 | {baseline['reward']:.3f} | {baseline['gold']:.3f} | — | — | — |"]
    for r in rows:
        label = LABELS[r["algorithm"]] + "".join(f" {k}={v}" for k, v in r["options"].items())
        lo, hi = r["win_rate_gold_ci95"]
        gen = "offline (preference file)" if r["algorithm"] == "dpo" else \
            f"{r['responses_generated']} / {r['tokens_generated']}"
        lines.append(f"| {label} | {r['win_rate_gold']:.3f} [{lo:.3f}, {hi:.3f}] | {r['kl']:.2f} | "
                     f"{r['reward_policy']:.3f} | {r['gold_policy']:.3f} | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} "
                     f"| {gen} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], baseline: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.scatter([0], [baseline["reward"]], marker="*", s=160, color="black", zorder=5, label="SFT (eval)")
    for i, r in enumerate(rows):
        c = colors[i % len(colors)]
        label = LABELS[r["algorithm"]] + "".join(f" {k}={v}" for k, v in r["options"].items())
        if r["curve"]:
            _, kl, score = zip(*r["curve"])
            ax.plot(kl, score, "-", color=c, alpha=0.45, lw=1.2)
            ax.plot(kl[-1:], score[-1:], "o", color=c, alpha=0.45, ms=4)
        ax.scatter([r["kl"]], [r["reward_policy"]], marker="D" if r["algorithm"] == "dpo" else "o", s=60, color=c,
                   edgecolor="black", zorder=6, label=f"{label} (eval)")
        lo, hi = r["win_rate_gold_ci95"]
        bx.errorbar([i], [r["win_rate_gold"]], yerr=[[r["win_rate_gold"] - lo], [hi - r["win_rate_gold"]]], fmt="o",
                    color=c, capsize=4)
    ax.set_xlabel("KL(policy ‖ SFT) per response, nats")
    ax.set_ylabel("reward-model score")
    ax.set_title("reward vs KL: training updates (lines) and held-out eval (markers)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    bx.axhline(0.5, color="black", lw=0.8, ls="--")
    bx.set_xticks(range(len(rows)), [LABELS[r["algorithm"]] + ("*" if r["options"] else "") for r in rows],
                  fontsize=8)
    bx.set_ylabel("gold win rate vs SFT (Wilson 95%)")
    bx.set_title("gold judge, held-out prompts", fontsize=10)
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished demo run folder (sft/, reward/, preferences.jsonl, data/, "
                    "ppo/config.yaml, eval/config.yaml)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated; ALGO:key=value for a variant")
    ap.add_argument("--updates", type=int, default=0, help="on-policy updates (0 = the demo's PPO's)")
    ap.add_argument("--eval_prompts", type=int, default=0, help="held-out prompts (0 = the demo eval's)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--jobs", type=int, default=1, help="algorithms trained at once (default 1: one after another)")
    args = ap.parse_args()

    run, out = Path(args.run), Path(args.out)
    specs = [parse_spec(s) for s in args.algorithms.split(",") if s.strip()]
    if len({n for n, _, _ in specs}) != len(specs):
        raise SystemExit("--algorithms: an algorithm is listed twice")
    for need in ("sft", "reward", "preferences.jsonl", "data/prompts_train.jsonl", "data/prompts_heldout.jsonl",
                 "ppo/config.yaml", "eval/config.yaml"):
        if not (run / need).exists():
            raise SystemExit(f"--run: {run / need} is missing; pass a finished demo run (rlhf demo --out {run})")
    out.mkdir(parents=True, exist_ok=True)
    ppo_cfg = yaml.safe_load((run / "ppo" / "config.yaml").read_text())
    demo_eval = yaml.safe_load((run / "eval" / "config.yaml").read_text())
    eval_cfg = {k: demo_eval[k] for k in EVAL_KEYS if k in demo_eval}

    if args.jobs > 1:  # N algorithms at once, each in its own child processes (wall times then share the CPU)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(train_and_eval, name, algo, extra, run, out, ppo_cfg, eval_cfg, args)
                       for name, algo, extra in specs]
            rows = [f.result() for f in futures]
    else:
        rows = [train_and_eval(name, algo, extra, run, out, ppo_cfg, eval_cfg, args) for name, algo, extra in specs]
    # every eval compares with the same SFT responses (same prompts, seed and settings): one baseline
    baseline = {"reward": rows[0]["reward_baseline"], "gold": rows[0]["gold_baseline"]}
    (out / "algorithms.md").write_text(table(rows, baseline))
    plot(rows, baseline, out / "algorithms_frontier.png")
    result = {"run": str(run), "out": str(out), "jobs": args.jobs, "baseline": baseline, "eval": eval_cfg,
              "shared": {k: ppo_cfg[k] for k in ("updates", "rollout_batch_size", "max_new_tokens", "temperature", "lr",
                                                 "kl_coef", "ppo_epochs", "num_minibatches", "seed") if k in ppo_cfg},
              "algorithms": rows}
    if args.updates:
        result["shared"]["updates"] = args.updates
    (out / "algorithms.json").write_text(json.dumps(result, indent=2))
    print(table(rows, baseline), file=sys.stderr)
    last = {"out": str(out), "plot": str(out / "algorithms_frontier.png"),
            "rows": {r["name"]: {k: r[k] for k in ("win_rate_gold", "win_rate_gold_ci95", "kl", "reward_policy",
                                                   "gold_policy", "wall_s", "peak_rss_mb", "tokens_generated")}
                     for r in rows}}
    print(json.dumps(last))


if __name__ == "__main__":
    main()

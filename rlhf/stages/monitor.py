"""Monitoring after deployment: is the production traffic still what the run was trained and evaluated on?

    rlhf monitor runs/demo --log traffic.jsonl [--window 1h] [--json]

Reads logged traffic (`{"prompt", "response"}` rows, optional `timestamp` and `user_feedback`), scores every row
with the run's reward model(s), deployed policy and reference, rescores the run's own eval samples
(RUN/eval/samples.jsonl: the evaluated policy's responses to the held-out prompts) the same way, and compares:
reward-score shift, KL to the reference, log-likelihood under the deployed policy, length and distinct-n shift,
prompt-distribution shift (JSD of prompt n-grams, calibrated on the run's held-out prompts), the fraction of
responses outside the reward ensemble's training support, and agreement of the reward model with user feedback.
Findings in the doctor's format; exit status 1 on a severe finding. Signals, thresholds and why: docs/monitor.md.
Writes out/monitor.json, out/scored.jsonl (one row per log row), out/config.yaml, and out/summary.json last.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.artifacts import load_stage, policy_run, stage_rm_accuracy
from rlhf.config import Device, Dtype, PrecisionOptions, RunOptions, check, opt, save_config
from rlhf.diagnose import monitor as mon
from rlhf.errors import UserError
from rlhf.io import atomic_write_text, write_jsonl
from rlhf.models.data_source import read_rows
from rlhf.stages.common import check_tokenizers, console, progress, say, set_seed, stage_outputs, write_summary

DEFAULT_TEMPERATURE = 0.7  # rlhf eval's default


@dataclass
class MonitorConfig(PrecisionOptions, RunOptions):
    """monitor options"""

    run: str = opt("", "the run folder (e.g. runs/demo): its eval/, reward/, policy and data/ are the baseline")
    log: str = opt("", "production log, JSONL rows {'prompt', 'response'} with optional 'timestamp' (ISO 8601 or "
                   "epoch seconds) and 'user_feedback' (1 = thumbs up, -1 = thumbs down, null = none)")
    policy: str = opt("", "the deployed policy (model folder or hub id); empty = the policy the run's eval evaluated "
                      "(RUN/eval/config.yaml), else RUN/ppo: the run's PPO policy stands in for the deployed one")
    reward: str = opt("", "reward model folder; empty = the one the run's eval used, else RUN/reward")
    ref: str = opt("", "reference model for the KL; empty = the run's reference (the eval's, else the policy run's)")
    baseline: str = opt("", "the run's eval samples (rlhf eval's samples.jsonl); empty = RUN/eval/samples.jsonl; "
                        "'sample' = sample the policy once on each of the run's held-out prompts now (a run "
                        "without `rlhf eval`), written to OUT/baseline.jsonl")
    baseline_prompts: int = opt(200, "with --baseline sample: the first N held-out prompts (0 = all)")
    max_new_tokens: int | None = opt(None, "with --baseline sample: longest response; empty = the policy run's")
    window: str = opt("", "also test windows of the log: a row count (e.g. 500) or a duration over the "
                      "timestamps (e.g. 30m, 6h, 1d); empty = the whole log only")
    out: str = opt("", "output folder; empty = RUN/monitor")
    json: bool = opt(False, "print the report as JSON on stdout instead of the table and findings")
    temperature: float | None = opt(None, "temperature of the log-probs (KL, log-likelihood); empty = the run's "
                                    "eval's, else 0.7")
    support_rows: int = opt(512, "reward-model training pairs scored for the ensemble support threshold (seeded "
                            "subset; 0 = all)")
    batch_size: int = opt(32, "rows scored together")
    seed: int = opt(0, "seed of the permutation tests, calibration draws and subsets")
    dtype: Dtype = opt("fp32", "weights dtype: fp32, bf16 or fp16 (fp16: CUDA only)")
    device: Device = opt("auto", "auto, cpu or cuda")

    def validate(self) -> None:
        super().validate()
        check(bool(self.run), "run", "no run folder given", "pass the run folder: rlhf monitor RUN --log FILE.jsonl")
        check(bool(self.log), "log", "no production log given", "pass --log FILE.jsonl (rows {'prompt', 'response'})")
        check(self.batch_size >= 1, "batch_size", "must be >= 1", "use 1 or more")
        check(self.support_rows >= 0, "support_rows", "must be >= 0", "use 0 for all pairs")
        check(self.temperature is None or self.temperature > 0, "temperature", "must be > 0", "use the run's (0.7)")
        check(self.baseline_prompts >= 0, "baseline_prompts", "must be >= 0", "use 0 for all held-out prompts")
        check(self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1",
              "use the run's (e.g. 48)")
        mon.parse_window(self.window)  # a bad window is an error before any model is loaded


@stage_outputs(resolve=lambda cfg: resolve(cfg), out="dir")
def run(cfg: MonitorConfig) -> Path:
    from rlhf.models.loading import load_causal_lm, load_tokenizer
    from rlhf.models.precision import check_dtype, resolve_device
    from rlhf.models.reward import load_reward_model

    # 0. the run's models and files (resolve: which policy stands for the deployed one, and why)
    policy_source = "given (--policy)" if cfg.policy else (
        "not given: the policy the run's eval evaluated (else RUN/ppo) stands in for the deployed model")
    cfg = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    save_config(cfg, out / "config.yaml")
    set_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    check_dtype(cfg.dtype, device.type)
    t_start = time.perf_counter()

    # 1. the log and the baseline: the run's eval samples of the evaluated policy on its held-out prompts
    rows = mon.read_log(cfg.log)
    windows = mon.windows(rows, cfg.window)  # a duration without timestamps is an error before any model loads
    train_prompts, heldout_prompts = run_prompts(Path(cfg.run), cfg)

    # 2. score the log and the baseline the same way: reward (+ members), log pi - log pi_ref, length
    tok = load_tokenizer(cfg.policy, padding_side="left")
    models = {p: load_causal_lm(p, cfg.dtype).to(device).eval().requires_grad_(False)
              for p in dict.fromkeys((cfg.policy, cfg.ref))}
    policy, ref = models[cfg.policy], models[cfg.ref]
    reward = load_reward_model(cfg.reward, dtype=cfg.dtype, device=str(device))
    check_tokenizers(tok, {"ref": cfg.ref, "reward": reward.tokenizer_path}, cfg.policy)
    context = min(getattr(m.config.get_text_config(), "max_position_embeddings", None) or 10**9
                  for m in models.values())
    if cfg.baseline == "sample":  # no eval samples: the policy's own, on the held-out prompts, sampled as eval does
        cfg = dataclasses.replace(cfg, baseline=str(sample_baseline(cfg, tok, policy, device, context, out)))
    base = read_rows(cfg.baseline, required=("prompt", "policy"))
    scorer = Scorer(tok, policy, ref, reward, cfg.temperature or DEFAULT_TEMPERATURE, cfg.batch_size, device,
                    context)
    log_items = [(r.prompt, r.response, f"{cfg.log}:{r.line}") for r in rows]
    base_items = [(b["prompt"], b["policy"], f"{cfg.baseline}:row {i}") for i, b in enumerate(base, start=1)]
    log_s = scorer.score(log_items, "log")
    log_s.feedback = [r.feedback for r in rows]
    base_s = scorer.score(base_items, "baseline")

    # 3. the ensemble's support: the std of its members on the RM's own training responses, 95% quantile
    notes, support, support_source = [], None, None
    if log_s.member_std is not None:
        support, support_source = support_threshold(scorer, cfg, base_s)
    else:
        notes.append("outside_support: the reward model is a single model (no ensemble), so there is no "
                     "disagreement to measure (train one with `rlhf reward --ensemble N`)")
    if not any(r.feedback is not None for r in rows):
        notes.append("feedback_agreement: no row has user_feedback")
    if rows[0].timestamp is None and cfg.window and mon.parse_window(cfg.window)[0] == "rows":  # type: ignore[index]
        notes.append("windows by row count in file order (the log has no timestamps)")

    # 4. every signal per window (all rows first), then the findings
    ctx = mon.Context(base_s, train_prompts, list(dict.fromkeys(train_prompts + heldout_prompts)), support,
                      rm_accuracy(cfg), seed=cfg.seed)
    results = []
    for name, idx in windows:
        sig = mon.window_signals(log_s.take(idx), ctx)
        results.append({"window": name, **sig})
    small = [r["window"] for r in results if r["n"] < mon.MIN_ROWS]
    if small:
        notes.append(f"{len(small)} window(s) with fewer than {mon.MIN_ROWS} rows are shown, not tested")
    found = mon.findings(results)
    note = mon.notes_finding(notes)
    report = {
        "run": cfg.run, "log": cfg.log, "rows": len(rows), "baseline_rows": len(base),
        "models": {"policy": cfg.policy, "policy_source": policy_source, "ref": cfg.ref,
                   "reward": cfg.reward, "reward_members": len(reward.members)},
        "temperature": cfg.temperature, "window": cfg.window or None,
        "baseline": {"source": cfg.baseline, "reward": mon.mean(base_s.reward), "kl": mon.mean(base_s.kl),
                     "logp": mon.mean(base_s.logp), "length": mon.mean(base_s.length),
                     "distinct2": mon.distinct(base_s.responses, 2)},
        "thresholds": thresholds(support, support_source),
        "windows": results,
        "findings": [f.to_dict() for f in found + ([note] if note else [])],
    }
    report["counts"] = {sev: sum(f["severity"] == sev for f in report["findings"]) for sev in mon.SEVERITIES}

    # 5. write (summary.json last) and show
    write_jsonl(out / "scored.jsonl", scored_rows(rows, log_s))
    atomic_write_text(out / "monitor.json", json.dumps(report, indent=2) + "\n")
    write_summary(out, {"monitor_s": time.perf_counter() - t_start, "rows": len(rows), "counts": report["counts"],
                        "severe": bool(mon.exit_status(report))}, kind="monitor")
    if cfg.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    say(f"[monitor] {len(rows)} rows, {len(results)} window(s) -> {out}")
    return out


def exit_status(out: Path) -> int:
    """The CLI's exit status after `run`: 1 when a finding is severe (as `rlhf doctor`), else 0."""
    return mon.exit_status(mon.read_report(out) or {})


# ---------------------------------------------------------------------------------------------------------------
# scoring with the run's models


class Scorer:
    """Scores (prompt, response) rows: reward (mean of the members, and their std), the sum over response tokens of
    log pi - log pi_ref at the run's temperature, the policy's mean log-prob per token, and the length. Text is
    encoded as the reward model reads it (rlhf.models.reward.encode_prompt / encode_response, the response ended
    with EOS), for the log and the baseline alike, so that both go through the same path."""

    def __init__(self, tok: Any, policy: Any, ref: Any, reward: Any, temperature: float, batch_size: int,
                 device: torch.device, context: int):
        self.tok, self.policy, self.ref, self.reward = tok, policy, ref, reward
        self.temperature, self.batch_size, self.device, self.context = temperature, batch_size, device, context

    def encode(self, prompt: Any, response: Any, where: str) -> tuple[list[int], list[int]]:
        from rlhf.models.reward import encode_prompt, encode_response

        p = encode_prompt(self.tok, prompt)
        r = encode_response(self.tok, response, ended=True, prompt=prompt)
        if len(p) + len(r) > self.context:
            raise UserError(f"{where}: prompt + response are {len(p) + len(r)} tokens, more than the model's context "
                            f"of {self.context}; drop or truncate that row")
        return p, r

    @torch.inference_mode()
    def score(self, items: list[tuple[Any, Any, str]], label: str) -> mon.Scored:
        from rlhf.models.generation import Batch, left_pad, response_logprobs, right_pad

        s = mon.Scored([mon.text_of(p) for p, _, _ in items], [mon.text_of(r) for _, r, _ in items], [], [], [], [],
                       [] if len(self.reward.members) > 1 else None)
        encoded = [self.encode(p, r, w) for p, r, w in items]
        pad = self.tok.pad_token_id
        with progress() as bar:
            task = bar.add_task(f"score {label}", total=len(items), info="")
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start:start + self.batch_size]
                p_ids, p_mask = left_pad([p for p, _ in chunk], pad)
                r_ids, r_mask = right_pad([r for _, r in chunk], pad)
                b = Batch(p_ids.to(self.device), p_mask.to(self.device), r_ids.to(self.device), r_mask.to(self.device))
                score, members = self.reward(b.input_ids, b.attention_mask)
                logp, _ = response_logprobs(self.policy, b, self.temperature)
                ref_logp, _ = response_logprobs(self.ref, b, self.temperature)
                n_tok = b.response_mask.sum(1)
                s.reward += score.float().cpu().tolist()
                s.kl += ((logp - ref_logp) * b.response_mask).sum(1).cpu().tolist()
                s.logp += ((logp * b.response_mask).sum(1) / n_tok).cpu().tolist()
                s.length += n_tok.cpu().tolist()
                if s.member_std is not None:
                    s.member_std += members.float().std(0).cpu().tolist()
                bar.update(task, advance=len(chunk), info="")
        return s

    @torch.inference_mode()
    def member_std(self, items: list[tuple[Any, Any, str]]) -> list[float]:
        """The ensemble members' std only (the support threshold needs no policy forward)."""
        from rlhf.models.generation import left_pad, right_pad

        out: list[float] = []
        encoded = [self.encode(p, r, w) for p, r, w in items]
        pad = self.tok.pad_token_id
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            p_ids, p_mask = left_pad([p for p, _ in chunk], pad)
            r_ids, r_mask = right_pad([r for _, r in chunk], pad)
            ids = torch.cat([p_ids, r_ids], 1).to(self.device)
            mask = torch.cat([p_mask, r_mask.long()], 1).to(self.device)
            _, members = self.reward(ids, mask)
            out += members.float().std(0).cpu().tolist()
        return out


def support_threshold(scorer: Scorer, cfg: MonitorConfig, base: mon.Scored) -> tuple[float, str]:
    """The SUPPORT_QUANTILE quantile of the ensemble members' std on the responses the reward model was trained on
    (its preference data: chosen and rejected of a seeded subset of `support_rows` pairs). Without that data, the
    run's eval samples stand in (and the report says so through the threshold's source)."""
    data = load_stage(Path(cfg.reward)).config.get("data") if (Path(cfg.reward) / "config.yaml").is_file() else None
    stds = None
    if data and Path(str(data)).exists():
        pairs = read_rows(str(data), required=("prompt", "chosen", "rejected"))
        if cfg.support_rows and len(pairs) > cfg.support_rows:
            pairs = random.Random(cfg.seed).sample(pairs, cfg.support_rows)
        items = [(p["prompt"], p[k], f"{data}: pair") for p in pairs for k in ("chosen", "rejected")]
        stds = scorer.member_std(items)
        source = f"{data} ({len(items)} responses the RM was trained on)"
    if not stds:
        stds = base.member_std or []
        source = f"{cfg.baseline} (the RM's training data was not found; the eval samples stand in)"
    return mon.quantile(stds, mon.SUPPORT_QUANTILE), source


def thresholds(support: float | None, source: str | None) -> dict[str, Any]:
    return {"smd_warn": mon.SMD_WARN, "smd_severe": mon.SMD_SEVERE, "p_warn": mon.P_WARN, "p_severe": mon.P_SEVERE,
            "permutations": mon.PERMUTATIONS, "distinct_warn": mon.DISTINCT_WARN,
            "distinct_severe": mon.DISTINCT_SEVERE, "prompt_draws": mon.PROMPT_DRAWS,
            "prompt_severe_factor": mon.PROMPT_SEVERE_FACTOR, "support_quantile": mon.SUPPORT_QUANTILE,
            "support_std": support, "support_source": source,
            "support_warn": mon.SUPPORT_WARN, "support_severe": mon.SUPPORT_SEVERE, "feedback_min": mon.FEEDBACK_MIN,
            "min_rows": mon.MIN_ROWS}


def scored_rows(rows: list[mon.LogRow], s: mon.Scored) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows):
        row = {"line": r.line, "reward": s.reward[i], "kl": s.kl[i], "logp": s.logp[i], "length": s.length[i],
               "timestamp": r.timestamp, "user_feedback": r.feedback}
        if s.member_std is not None:
            row["member_std"] = s.member_std[i]
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# inputs


def resolve(cfg: MonitorConfig) -> MonitorConfig:
    """Fill the empty fields from the run folder: its eval's config (policy, reference, reward, temperature), else
    RUN/ppo and RUN/reward; the baseline is RUN/eval/samples.jsonl. A missing piece is an error naming the fix."""
    root = Path(cfg.run)
    if not root.is_dir():
        raise UserError(f"config field 'run': {root} is not a folder; pass a run folder such as runs/demo")
    ev = load_stage(root / "eval").config if (root / "eval" / "config.yaml").is_file() else {}

    def existing(*paths: Any) -> str:
        return next((str(p) for p in paths if p and Path(str(p)).exists()), "")

    policy = cfg.policy or existing(ev.get("policy"), root / "ppo")
    if not policy:
        raise UserError(f"config field 'policy': {root} has no eval/config.yaml naming a policy and no ppo/ folder; "
                        "pass --policy DEPLOYED_MODEL")
    trained = policy_run(policy)
    ref = cfg.ref or existing(ev.get("ref"), trained.get("ref"), trained.get("policy"), root / "sft")
    if not ref:
        raise UserError(f"config field 'ref': no reference model found for {policy} (no eval/config.yaml 'ref', no "
                        "policy-run config, no sft/ folder); pass --ref SFT_FOLDER")
    reward = cfg.reward or existing(ev.get("reward"), root / "reward")
    if not reward:
        raise UserError(f"config field 'reward': {root} has no reward/ folder and its eval names none; pass --reward")
    baseline = cfg.baseline or str(root / "eval" / "samples.jsonl")
    if baseline != "sample" and not Path(baseline).is_file():
        raise UserError(f"config field 'baseline': {baseline} does not exist, so there is no eval distribution to "
                        f"compare with; run `rlhf eval --policy {policy} --reward {reward}` first (it writes "
                        "RUN/eval/samples.jsonl), pass --baseline SAMPLES.jsonl, or --baseline sample to sample "
                        "the policy on the run's held-out prompts now")
    temperature = cfg.temperature or ev.get("temperature") or trained.get("temperature") or DEFAULT_TEMPERATURE
    max_new = cfg.max_new_tokens or trained.get("max_new_tokens") or ev.get("max_new_tokens") or 48
    return dataclasses.replace(cfg, policy=policy, ref=ref, reward=reward, baseline=baseline,
                               out=cfg.out or str(root / "monitor"), temperature=float(temperature),
                               max_new_tokens=int(max_new))


def sample_baseline(cfg: MonitorConfig, tok: Any, policy: Any, device: torch.device, context: int, out: Path) -> Path:
    """OUT/baseline.jsonl: one response of the policy per held-out prompt (the first `baseline_prompts`), at the
    run's temperature and max_new_tokens, seeded, in rlhf eval's samples.jsonl columns (`prompt`, `policy`)."""
    from rlhf.models.generation import decode_responses, generate, left_pad, stop_token_ids
    from rlhf.models.prompts import encode_prompts

    held = held_out_path(Path(cfg.run))
    if held is None:
        raise UserError("config field 'baseline': 'sample' needs the run's held-out prompts (the eval's prompts, or "
                        "RUN/data/prompts_heldout.jsonl); pass --baseline SAMPLES.jsonl instead")
    rows = read_rows(str(held), required=("prompt",))[: cfg.baseline_prompts or None]
    max_new = int(cfg.max_new_tokens or 48)
    encoded = encode_prompts(rows, tok, str(held), context, max_new)
    eos = stop_token_ids(policy, tok)
    texts: list[str] = []
    for c, start in enumerate(range(0, len(encoded), cfg.batch_size)):
        ids, mask = left_pad(encoded[start:start + cfg.batch_size], tok.pad_token_id)
        torch.manual_seed(cfg.seed * 1_000_003 + c)
        b = generate(policy, ids.to(device), mask.to(device), max_new_tokens=max_new,
                     temperature=cfg.temperature or DEFAULT_TEMPERATURE, eos_token_id=eos,
                     pad_token_id=tok.pad_token_id)
        texts += decode_responses(tok, b, eos)
    path = out / "baseline.jsonl"
    write_jsonl(path, [{"prompt_id": str(r.get("prompt_id", i)), "prompt": r["prompt"], "policy": t}
                       for i, (r, t) in enumerate(zip(rows, texts))])
    say(f"[monitor] no eval samples: sampled the policy on {len(rows)} held-out prompts of {held} -> {path}")
    return path


def held_out_path(root: Path) -> Path | None:
    ev = load_stage(root / "eval").config if (root / "eval" / "config.yaml").is_file() else {}
    for p in (ev.get("prompts"), root / "data" / "prompts_heldout.jsonl"):
        if p and Path(str(p)).is_file():
            return Path(str(p))
    return None


def run_prompts(root: Path, cfg: MonitorConfig) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) as text: the policy run's `prompts` (else RUN/data/prompts_train.jsonl)
    and the eval's (else RUN/data/prompts_heldout.jsonl). Without held-out prompts, half the training prompts are
    held out for the calibration draws."""
    train = policy_run(cfg.policy).get("prompts") or root / "data" / "prompts_train.jsonl"
    held = held_out_path(root)
    if not Path(str(train)).exists():
        raise UserError(f"{train}: the run's training prompts were not found (the prompt-shift reference); pass a run "
                        "folder whose policy run names its prompts")
    t = [mon.text_of(r["prompt"]) for r in read_rows(str(train), required=("prompt",))]
    if held is not None:
        return t, [mon.text_of(r["prompt"]) for r in read_rows(str(held), required=("prompt",))]
    random.Random(cfg.seed).shuffle(t)
    return t[: len(t) // 2], t[len(t) // 2:]


def rm_accuracy(cfg: MonitorConfig) -> float | None:
    """The reward model's held-out accuracy (its reward stage's record), for the user-feedback comparison."""
    folder = Path(cfg.reward)
    if not folder.is_dir():
        return None
    return stage_rm_accuracy(load_stage(folder))[0]


# ---------------------------------------------------------------------------------------------------------------
# display


def render(report: dict[str, Any]) -> None:
    """The signal table (one row per window) and the findings as `rlhf doctor` shows them, on stderr."""
    from rich.table import Table

    from rlhf.diagnose.doctor import Finding, render_finding

    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    t = Table(title=f"rlhf monitor: {report['log']} ({report['rows']} rows) vs {report['baseline']['source']}",
              title_justify="left")
    cols = ["window", "n", "reward d", "KL d", "logp d", "length d", "distinct-2 Δ", "prompt JSD / limit",
            "outside support", "feedback AUC"]
    for c in cols:
        t.add_column(c, justify="left" if c == "window" else "right")
    for w in report["windows"]:
        def flag(s: dict[str, Any] | None, text: str) -> str:
            sev = (s or {}).get("severity")
            return f"[bold red]{text}[/]" if sev == mon.SEVERE else f"[yellow]{text}[/]" if sev else text

        cells = [w["window"], str(w["n"])]
        for k in ("reward", "kl", "logp", "length"):
            cells.append(flag(w[k], f(w[k]["smd"], "+.2f")))
        cells.append(flag(w["distinct2"], f(w["distinct2"]["relative_change"], "+.0%")))
        pj = w["prompt_jsd"]
        cells.append(flag(pj, f"{pj['value']:.3f} / {f(pj['threshold'], '.3f')}"))
        osup = w.get("outside_support")
        cells.append(flag(osup, f(osup["value"], ".0%")) if osup else "-")
        fb = w.get("feedback_agreement")
        cells.append(flag(fb, f(fb["auc"], ".3f")) if fb else "-")
        t.add_row(*cells)
    b = report["baseline"]
    t.caption = (f"baseline (the run's eval samples): reward {b['reward']:+.3f}, KL {b['kl']:.3f} nats, length "
                 f"{b['length']:.1f}; d = standardised mean difference; policy: {report['models']['policy']}")
    console.print(t)
    for fd in report["findings"]:
        render_finding(Finding(**{**fd, "steps": None}), console)
    c = report["counts"]
    if not report["findings"]:
        console.print("[green]No drift found.[/]")
    else:
        console.print(f"{c[mon.SEVERE]} severe, {c[mon.WARNING]} warning(s), {c[mon.INFO]} info")
    sys.stderr.flush()

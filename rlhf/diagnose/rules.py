"""The doctor's rules: each looks at one stage's metrics (names from docs/metrics.md) and either stays quiet or
returns a `Hit` with its severity and the evidence. Title, why and fix are fixed per rule; a hit may add advice
that depends on the run's config (e.g. "kl_coef is 0").

Every rule and threshold is documented in docs/doctor.md; change both together.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhf.artifacts import ON_POLICY, Series, Stage, stage_rm_accuracy

INFO, WARNING, SEVERE = "info", "warning", "severe"
SEVERITIES = (SEVERE, WARNING, INFO)

# --- which stages a rule looks at (kinds: rlhf.artifacts; an on-policy rule covers PPO and the critic-free
# algorithms alike, since they log PPO's policy/KL/response/reward names; value-function rules need a critic)
CRITIC = ("ppo",)
TRAINING = ("sft", "reward", *ON_POLICY, "dpo", "value-pretrain")  # stages that write checkpoints and a summary

# --- thresholds (docs/doctor.md says why each value) -------------------------------------------------------------
MIN_POINTS = 4  # trend rules need at least this many logged updates / steps
WINDOW_FRACTION, WINDOW_MIN, WINDOW_MAX = 0.25, 2, 20  # first/last window: a quarter of the run, 2..20 points
EV_WARN, EV_SEVERE = 0.0, -0.5  # value/explained_variance, mean over the last window
VALUE_LOSS_GROWTH = 10.0  # loss/value last window / first window
VALUE_LR_TINY = 1e-8
KL_PER_TOKEN_WARN, KL_PER_TOKEN_SEVERE = 0.3, 1.0  # nats per response token, last window
KL_TARGET_WARN, KL_TARGET_SEVERE = 2.0, 4.0  # x kl_target, with adaptive_kl
NEG_KL_NATS = 0.05  # mean sequence KL below -this (and most updates negative) = log-prob mismatch
START_KL_NATS = 0.05  # |KL| at update 1 with the reference = initial policy
# rollout/logprob_diff_mean (nats/token, training forward vs the rollout's log-probs before any step): fp32 runs sit
# near 1e-7, a bf16 KV-cache sampler near 2e-4; a separate engine in bf16 (vLLM) typically 1e-2
LOGPROB_DIFF_WARN, LOGPROB_DIFF_SEVERE = 1e-3, 2e-2
ENTROPY_WARN, ENTROPY_SEVERE = 0.3, 0.1  # last window / first window
CLIPFRAC_WARN, CLIPFRAC_SEVERE = 0.3, 0.5  # median over the run
APPROXKL_WARN, APPROXKL_SEVERE = 0.05, 0.5  # median over the run
GOLD_DROP = 0.1  # fitted fall of gold over the run, in gold-judge units (demo judge: range [-3, 1])
GOLD_T = 2.0  # ... and its slope at least this many standard errors below 0 (not noise)
# Gold plateau: over the second half of the run the proxy still rises by this much (normalised reward units, with
# |t| >= GOLD_T) while gold gains less than GOLD_FLAT: the proxy has come unstuck from the preference it stands for.
PROXY_RISE, GOLD_FLAT = 0.25, 0.02
DISAGREE_GROWTH, DISAGREE_MIN_RISE = 1.5, 0.05
# constraint-violated: last-window mean objective/cost above its cost_threshold by more than this (normalised units:
# std 1 on the SFT samples); severe beyond 0.5, half a standard deviation of the SFT samples' cost
COST_EXCESS_WARN, COST_EXCESS_SEVERE = 0.0, 0.5
LENGTH_GROWTH, LENGTH_SCORE_CORR = 1.3, 0.5
DISTINCT2_WARN, DISTINCT2_SEVERE, DISTINCT2_FLOOR = 0.5, 0.2, 0.05
SCORE_WARN, SCORE_SEVERE = 3.0, 6.0  # normalised reward (mean 0, std 1 on SFT samples), last window
EOS_WARN, EOS_SEVERE = 0.5, 0.2  # response/eos_fraction, last window
RM_CHANCE = 0.55  # held-out accuracy at or below this is chance
RM_VS_BAYES = 0.9  # accuracy / Bayes-optimal accuracy below this
EVAL_LOSS_RISE = 0.05  # eval loss above its minimum by this fraction
LOSS_FLAT = 0.97  # train loss last window / first window above this = not falling
GROUP_STD_MIN = 1e-3  # objective/group_score_std, last window: all samples of a prompt scored alike = no signal
DPO_CHANCE = 0.55  # held-out eval/dpo_accuracy at or below this, at the last evaluation: not learning
# likelihood displacement: dpo/chosen_logratio falls by this many nats (fitted, |t| >= GOLD_T) while dpo/margin rises
DISPLACEMENT_WARN, DISPLACEMENT_SEVERE = 0.5, 2.0


@dataclass
class Hit:
    severity: str
    evidence: str
    steps: tuple[int, int] | None = None  # range of steps/updates the evidence covers
    advice: str = ""  # config-specific advice, shown before the rule's general fix


@dataclass(frozen=True)
class Rule:
    id: str
    kinds: tuple[str, ...]  # stage kinds it looks at ("*" = all)
    title: str
    why: str
    fix: str
    check: Callable[[Stage], Hit | None]


RULES: list[Rule] = []


def rule(id: str, kinds: tuple[str, ...], title: str, why: str, fix: str) -> Callable:
    def register(fn: Callable[[Stage], Hit | None]) -> Callable[[Stage], Hit | None]:
        RULES.append(Rule(id, kinds, title, why, fix, fn))
        return fn

    return register


# --- all stages -----------------------------------------------------------------------------------------------


@rule("non-finite", ("*",), "NaN or inf in the metrics",
      why="A NaN/inf loss or statistic means the weights or the rewards are already broken: every later number "
          "is meaningless, and the checkpoints written after it are too.",
      fix="Restart from the last checkpoint before the first bad step with a lower learning rate; keep gradient "
          "clipping on (max_grad_norm 1.0); use fp32 or bf16 rather than fp16; check the reward model's scores "
          "for NaN on the rollouts.")
def non_finite(s: Stage) -> Hit | None:
    bad: dict[str, tuple[int, float]] = {}
    bad_steps = []
    for r in s.rows:
        row_bad = False
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                bad.setdefault(k, (int(r.get("step", -1)), v))
                row_bad = True
        if row_bad:
            bad_steps.append(int(r.get("step", -1)))
    if not bad:
        return None
    names = ", ".join(f"{k} ({v} at step {st})" for k, (st, v) in list(bad.items())[:6])
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    return Hit(SEVERE, f"{len(bad_steps)} logged row(s) hold NaN/inf, first at step {bad_steps[0]}: {names}{more}",
               (bad_steps[0], bad_steps[-1]))


@rule("stage-incomplete", TRAINING, "Stage did not finish",
      why="summary.json is written last, so a stage without it stopped early (crash, Ctrl-C) or is still running; "
          "its model folder may be missing or stale and later stages would read the wrong thing.",
      fix="If it is not still running, continue it with the same command plus --resume (it picks up checkpoint/).")
def stage_incomplete(s: Stage) -> Hit | None:
    if s.summary is not None or not s.rows:
        return None
    total = s.config.get("updates") if s.on_policy else s.config.get("max_steps")
    of = f" of {total}" if isinstance(total, int) and total > 0 else ""
    ckpt = s.path / "checkpoint"
    has_ckpt = ckpt.is_dir() and any(ckpt.iterdir())
    where = "checkpoint/ is present" if has_ckpt else "there is no checkpoint/ (a resume starts over)"
    return Hit(INFO, f"no summary.json; last logged step {s.last_step}{of}; {where}")


# --- PPO ------------------------------------------------------------------------------------------------------


@rule("value-not-learning", CRITIC, "Value function is not learning",
      why="PPO's advantages are returns minus the value baseline. A value model that explains none of the returns' "
          "variance (explained variance <= 0) gives no variance reduction, and a negative one adds noise: the "
          "policy gradient gets noisier and learning slows or stalls.",
      fix="Check the value learning rate (value_lr; 0 means 'same as lr') and vf_coef; keep rewards on a unit "
          "scale (a normalised reward model, or whiten_rewards) so value targets are not huge; with a shared "
          "backbone try a separate value model.")
def value_not_learning(s: Stage) -> Hit | None:
    ev = s.series("value/explained_variance").finite()
    if len(ev) < MIN_POINTS:
        return None
    tail = _tail(ev)
    m = _mean(tail)
    loss = s.series("loss/value").finite()
    growth = _mean(_tail(loss)) / _mean(_head(loss)) if len(loss) >= MIN_POINTS and _mean(_head(loss)) > 0 else 0.0
    exploding = growth > VALUE_LOSS_GROWTH
    if m > EV_WARN and not exploding:
        return None
    parts = [f"value/explained_variance averages {m:.3f} over {_span(tail, 'updates')} (max {max(tail.values):.3f})"]
    if len(loss) >= MIN_POINTS:
        parts.append(f"loss/value {_mean(_head(loss)):.4g} -> {_mean(_tail(loss)):.4g} ({growth:.1f}x)")
    advice = []
    vlr = s.series("lr/value").finite()
    if len(vlr) and max(vlr.values) < VALUE_LR_TINY:
        parts.append(f"lr/value at most {max(vlr.values):.1e}")
        advice.append(f"The value learning rate is effectively 0 ({max(vlr.values):.1e}): set value_lr to a "
                      "normal value (e.g. the policy lr) or to 0 for 'same as lr'.")
    ret = s.series("returns/mean").finite()
    if len(ret) and abs(_mean(_tail(ret))) > 10:
        parts.append(f"returns/mean is {_mean(_tail(ret)):.3g}")
        advice.append("Returns are large: the rewards are not on a unit scale; normalise the reward model or set "
                      "whiten_rewards.")
    severe = m <= EV_SEVERE or exploding
    return Hit(SEVERE if severe else WARNING, "; ".join(parts), _range(tail), " ".join(advice))


@rule("kl-blowup", ON_POLICY, "KL to the reference is blowing up",
      why="The KL penalty is what keeps the policy a fluent version of the SFT model. A KL of more than a few "
          "tenths of a nat per token means the policy has moved far from it: text degenerates and the reward "
          "model is scored far outside the data it was trained on, where its scores mean little.",
      fix="Raise kl_coef or use adaptive_kl with a kl_target; lower lr; use fewer ppo_epochs or set "
          "target_approx_kl; stop earlier (pick a checkpoint from before the blow-up).")
def kl_blowup(s: Stage) -> Hit | None:
    kl = s.series("objective/kl").finite()
    if len(kl) < 2:
        return None
    tail = _tail(kl)
    kl_last = _mean(tail)
    length = s.series("response/length_mean").finite()
    per_token = kl_last / _mean(_tail(length)) if len(length) and _mean(_tail(length)) > 0 else None
    target = float(s.config["kl_target"]) if s.config.get("adaptive_kl") and s.config.get("kl_target") else None
    severe = (per_token is not None and per_token > KL_PER_TOKEN_SEVERE) or (
        target is not None and kl_last > KL_TARGET_SEVERE * target)
    warn = (per_token is not None and per_token > KL_PER_TOKEN_WARN) or (
        target is not None and kl_last > KL_TARGET_WARN * target)
    if not (severe or warn):
        return None
    peak = max(range(len(kl)), key=lambda i: kl.values[i])
    ev = (f"objective/kl {_mean(_head(kl)):.3g} ({_span(_head(kl), 'updates')}) -> {kl_last:.3g} nats per response "
          f"({_span(tail, 'updates')}, peak {kl.values[peak]:.3g} at update {kl.steps[peak]})")
    if per_token is not None:
        ev += f" = {per_token:.2f} nats per token (response/length_mean {_mean(_tail(length)):.1f})"
    if target is not None:
        ev += f"; the adaptive controller's kl_target is {target:g}"
    advice = []
    if s.config.get("kl_coef") == 0 and not s.config.get("adaptive_kl"):
        advice.append("kl_coef is 0: nothing holds the policy near the reference; use e.g. 0.05.")
    if "lr" in s.config:
        advice.append(f"The policy lr is {s.config['lr']:g}.")
    return Hit(SEVERE if severe else WARNING, ev, _range(tail), " ".join(advice))


@rule("negative-kl", ON_POLICY, "Negative KL: log-probs do not match the sampler",
      why="KL(policy || reference) is never negative, and its sampled estimate is only negative by noise. A mean "
          "clearly below 0 means the log-probs used for the KL (and for the PPO ratio) are not the probabilities "
          "the responses were sampled with: a temperature, top-k/top-p or padding mismatch between generation and "
          "training. The KL penalty then rewards drifting away, and the ratio is wrong from the first step.",
      fix="Compute every log-prob (policy, reference, old policy) at the sampling temperature; sample with "
          "top_p 1.0 and top_k 0 (truncated sampling is not the policy's distribution); check that padding and "
          "position ids agree between generate() and the training forward.")
def negative_kl(s: Stage) -> Hit | None:
    kl = s.series("objective/kl").finite()
    if len(kl) < 2:
        return None
    m = _mean(kl)
    neg = sum(v < 0 for v in kl.values) / len(kl)
    if m >= -NEG_KL_NATS or neg < 0.5:
        return None
    return Hit(SEVERE, f"mean objective/kl is {m:.3g} nats over {_span(kl, 'updates')}; {neg:.0%} of the updates "
               "are negative", _range(kl), _sampling_advice(s))


@rule("kl-nonzero-at-start", ON_POLICY, "KL is not 0 at the first update",
      why="Before the first optimiser step the policy is the reference, so the first update's KL must be 0 (up to "
          "rounding). A clearly non-zero value means the policy's and the reference's log-probs are computed "
          "differently (temperature, dropout, dtype, padding).",
      fix="Compute both log-probs the same way: same temperature, dropout off in both models, same dtype, same "
          "padding and position ids.")
def kl_nonzero_at_start(s: Stage) -> Hit | None:
    kl = s.series("objective/kl")
    if not len(kl) or kl.steps[0] != 1 or not math.isfinite(kl.values[0]) or s.config.get("ref", None) != "":
        return None  # a different --ref model legitimately starts at KL > 0
    if abs(kl.values[0]) <= START_KL_NATS:
        return None
    return Hit(WARNING, f"objective/kl is {kl.values[0]:.3g} nats at update 1 although the reference is the initial "
               "policy (config ref: '')", (1, 1), _sampling_advice(s))


@rule("logprob-mismatch", ON_POLICY, "The trainer's log-probs disagree with the sampler's",
      why="Before the first optimiser step of an update the training forward must give each sampled token the log-"
          "probability the rollout recorded (the PPO ratio is then exactly 1). A gap means the samples come from "
          "another distribution than the one PPO scores and optimises: a checkpoint's own generation settings "
          "applied by the sampler (repetition_penalty, no_repeat_ngram_size, ...), a sampling engine with other "
          "kernels or precision (vLLM in bf16), stale weights in the engine (a missed LoRA/weight sync), dropout on "
          "in one of the two, or a different temperature. The ratio, the KL and the advantages are then off-policy.",
      fix="Use rollout_logprobs: recompute (the trainer scores the samples itself); sample with the trainer's "
          "precision; check that the engine receives the policy's weights every update; keep top_p 1.0 / top_k 0; "
          "rlhf builds an explicit generation config, so a gap with generation_backend transformers is a bug to "
          "report.")
def logprob_mismatch(s: Stage) -> Hit | None:
    diff = s.series("rollout/logprob_diff_mean").finite()
    if not len(diff):
        return None
    worst = max(range(len(diff)), key=lambda i: diff.values[i])
    peak = diff.values[worst]
    if peak <= LOGPROB_DIFF_WARN:
        return None
    big = sum(v > LOGPROB_DIFF_WARN for v in diff.values)
    dmax = s.series("rollout/logprob_diff_max")
    at = dict(zip(dmax.steps, dmax.values)).get(diff.steps[worst])
    return Hit(SEVERE if peak > LOGPROB_DIFF_SEVERE else WARNING,
               f"rollout/logprob_diff_mean peaks at {peak:.3g} nats/token at update {diff.steps[worst]}"
               + (f" (largest token gap {at:.3g})" if at is not None else "")
               + f"; above {LOGPROB_DIFF_WARN:g} on {big} of {len(diff)} updates", _range(diff),
               f"generation_backend={s.config.get('generation_backend', 'transformers')}, "
               f"rollout_logprobs={s.config.get('rollout_logprobs', 'auto')}, dtype={s.config.get('dtype', 'fp32')}.")


@rule("entropy-collapse", ON_POLICY, "Policy entropy collapsed",
      why="Entropy is how much the policy still explores. Once it falls to a small fraction of its start the policy "
          "is nearly deterministic: every rollout looks alike, PPO has nothing left to compare, and outputs "
          "typically degenerate into one repeated phrase.",
      fix="Lower lr; raise kl_coef (the KL term keeps the policy near the reference's entropy); add a small "
          "entropy bonus (entropy_coef, e.g. 0.01); check that the sampling temperature is the one used in training.")
def entropy_collapse(s: Stage) -> Hit | None:
    ent = s.series("objective/entropy").finite()
    if len(ent) < MIN_POINTS:
        return None
    start, end = _mean(_head(ent)), _mean(_tail(ent))
    if start <= 1e-6:
        return None
    ratio = end / start
    if ratio >= ENTROPY_WARN:
        return None
    return Hit(SEVERE if ratio < ENTROPY_SEVERE else WARNING,
               f"objective/entropy fell from {start:.3g} ({_span(_head(ent), 'updates')}) to {end:.3g} "
               f"({_span(_tail(ent), 'updates')}), {ratio:.0%} of its start", (ent.steps[0], ent.steps[-1]))


@rule("clipfrac-high", ON_POLICY, "Policy clip fraction is high",
      why="The clip fraction is the share of tokens whose probability ratio left [1-eps, 1+eps]. When a third or "
          "more are clipped on most updates, each step moves the policy further than the trust region allows: "
          "the clipped tokens get no gradient and the rest get a biased one.",
      fix="Lower lr (the usual cause); use fewer ppo_epochs or more num_minibatches per epoch; set "
          "target_approx_kl (e.g. 0.02) to stop an update's epochs early.")
def clipfrac_high(s: Stage) -> Hit | None:
    cf = s.series("policy/clipfrac").finite()
    if len(cf) < 3:
        return None
    med = statistics.median(cf.values)
    if med <= CLIPFRAC_WARN:
        return None
    above = sum(v > CLIPFRAC_WARN for v in cf.values)
    return Hit(SEVERE if med > CLIPFRAC_SEVERE else WARNING,
               f"policy/clipfrac median {med:.2f} (max {max(cf.values):.2f}); above {CLIPFRAC_WARN} on {above} of "
               f"{len(cf)} updates", _range(cf), _optim_advice(s))


@rule("approxkl-high", ON_POLICY, "Approximate KL per update is high",
      why="policy/approxkl measures how far one update's epochs moved the policy from the one that sampled the "
          "rollouts. Above ~0.05 per token the PPO surrogate is no longer a good approximation: updates overshoot "
          "and the run becomes unstable.",
      fix="Lower lr; fewer ppo_epochs; set target_approx_kl (e.g. 0.02) so an update stops once it has moved enough.")
def approxkl_high(s: Stage) -> Hit | None:
    ak = s.series("policy/approxkl").finite()
    if len(ak) < 3:
        return None
    med = statistics.median(ak.values)
    if med <= APPROXKL_WARN:
        return None
    return Hit(SEVERE if med > APPROXKL_SEVERE else WARNING,
               f"policy/approxkl median {med:.3g} (max {max(ak.values):.3g}) over {_span(ak, 'updates')}",
               _range(ak), _optim_advice(s))


@rule("over-optimisation", ON_POLICY, "Reward over-optimisation: proxy up, gold down or flat",
      why="The reward model is a proxy for the real preference (here the gold judge). When the proxy score keeps "
          "rising while the gold score falls, the policy is exploiting the reward model's errors (Goodhart; Gao "
          "et al. 2022): further training makes the policy worse. When gold has stopped improving but the proxy "
          "keeps climbing (and the KL with it), the extra reward buys nothing real: the policy is drifting into "
          "text the reward model was never trained on, the regime where gold starts to fall.",
      fix="Stop earlier: keep the checkpoint from before gold started to fall; raise kl_coef (or lower kl_target); "
          "train the reward model on more (and on-policy) preferences; use a reward ensemble.")
def over_optimisation(s: Stage) -> Hit | None:
    proxy, gold = _aligned(s.series("objective/scores").finite(), s.series("objective/gold").finite())
    if len(gold) < MIN_POINTS:
        return None
    proxy_change, _ = _trend(proxy)
    gold_change, gold_t = _trend(gold)
    if proxy_change <= 0 or gold_change > -GOLD_DROP or gold_t > -GOLD_T:
        return _gold_plateau(s, proxy, gold)
    return Hit(SEVERE, f"over {_span(gold, 'updates')} the least-squares trend of objective/scores is "
               f"{proxy_change:+.3f} while objective/gold's is {gold_change:+.3f} (t = {gold_t:.1f}); gold "
               f"{_mean(_head(gold)):+.3f} ({_span(_head(gold), 'updates')}) -> {_mean(_tail(gold)):+.3f} "
               f"({_span(_tail(gold), 'updates')})", (gold.steps[0], gold.steps[-1]))


def _gold_plateau(s: Stage, proxy: Series, gold: Series) -> Hit | None:
    """Second half of the run: the proxy still rises clearly while gold no longer does (warning)."""
    half = len(gold) // 2
    if half < MIN_POINTS:
        return None
    p2, g2 = Series(proxy.steps[half:], proxy.values[half:]), Series(gold.steps[half:], gold.values[half:])
    proxy_rise, proxy_t = _trend(p2)
    gold_rise, _ = _trend(g2)
    if proxy_rise < PROXY_RISE or proxy_t < GOLD_T or gold_rise >= GOLD_FLAT:
        return None
    kl = s.series("objective/kl").finite()
    kl_note = ""
    if len(kl) > half:
        kl2 = Series(kl.steps[half:], kl.values[half:])
        kl_note = f"; objective/kl {_mean(_head(kl2)):.1f} -> {_mean(_tail(kl2)):.1f} nats"
    return Hit(WARNING, f"over {_span(p2, 'updates')} objective/scores still rose by {proxy_rise:+.2f} (t = "
               f"{proxy_t:.1f}) while objective/gold changed by {gold_rise:+.3f} (at {_mean(_tail(g2)):+.3f})"
               f"{kl_note}", (p2.steps[0], p2.steps[-1]))


@rule("ensemble-disagreement", ON_POLICY, "Reward ensemble disagreement is rising",
      why="The ensemble members agree on the data they were trained on. Rising disagreement means the policy is "
          "producing text where the reward models' judgments diverge: the score there is unreliable and likely "
          "being exploited.",
      fix="Stop earlier or raise kl_coef; penalise disagreement (e.g. score = mean - k * std of the members); add "
          "preferences on the policy's current outputs and retrain the reward models.")
def ensemble_disagreement(s: Stage) -> Hit | None:
    d = s.series("ensemble/disagreement").finite()
    if len(d) < MIN_POINTS:
        return None
    start, end = _mean(_head(d)), _mean(_tail(d))
    if end <= DISAGREE_GROWTH * start or end - start <= DISAGREE_MIN_RISE:
        return None
    return Hit(WARNING, f"ensemble/disagreement {start:.3f} ({_span(_head(d), 'updates')}) -> {end:.3f} "
               f"({_span(_tail(d), 'updates')})", (d.steps[0], d.steps[-1]))


@rule("constraint-violated", ON_POLICY, "A cost constraint does not hold at the end of the run",
      why="With cost_threshold the run maximises the reward subject to mean cost <= the threshold (a Lagrange "
          "multiplier per cost model; Safe RLHF). A last window of updates whose mean objective/cost is still above "
          "its threshold means the policy ends outside the constraint: the multiplier has not caught up with the "
          "reward's pull, and the final policy breaks the rule it was trained to keep.",
      fix="Raise lagrange_lr (the multiplier reacts faster) or lagrange_init, or train for more updates; if "
          "objective/lagrange_multiplier is still rising at the end, it was catching up. Check the cost model on "
          "the policy's samples: a threshold below what any response scores cannot be met.")
def constraint_violated(s: Stage) -> Hit | None:
    n = len(s.config.get("cost_reward") or [])
    thresholds = list(s.config.get("cost_threshold") or [])
    if not n or not thresholds:
        return None
    thresholds = thresholds * n if len(thresholds) == 1 else thresholds
    worst: tuple[float, str] | None = None
    for i, d in enumerate(thresholds):
        suffix = "" if i == 0 else f"_{i + 1}"  # metric names of the i-th cost model (rlhf.rl.objectives)
        cost = s.series(f"objective/cost{suffix}").finite()
        if len(cost) < MIN_POINTS:
            continue
        tail, lam = _tail(cost), _tail(s.series(f"objective/lagrange_multiplier{suffix}").finite())
        excess = _mean(tail) - float(d)
        if excess <= COST_EXCESS_WARN or (worst is not None and excess <= worst[0]):
            continue
        lam_note = f"; objective/lagrange_multiplier{suffix} {lam.values[0]:.3g} -> {lam.values[-1]:.3g}" \
            if len(lam) else ""
        worst = (excess, f"mean objective/cost{suffix} {_mean(tail):+.3f} over {_span(tail, 'updates')} is above "
                         f"its cost_threshold {float(d):+.3f} by {excess:.3f}{lam_note}")
    if worst is None:
        return None
    return Hit(SEVERE if worst[0] > COST_EXCESS_SEVERE else WARNING, worst[1])


@rule("length-exploitation", ON_POLICY, "Responses grow longer with the score",
      why="Reward models often prefer longer answers for reasons unrelated to quality. When length rises steadily "
          "together with the score, the policy may be buying reward with length rather than content.",
      fix="Compare gold (or human) judgments at equal length; add a length penalty or length-balanced preference "
          "data; set missing_eos_penalty so running to max_new_tokens is not free; raise kl_coef.")
def length_exploitation(s: Stage) -> Hit | None:
    length, score = _aligned(s.series("response/length_mean").finite(), s.series("objective/scores").finite())
    if len(length) < MIN_POINTS:
        return None
    start, end = _mean(_head(length)), _mean(_tail(length))
    corr = _pearson(length.values, score.values)
    if start <= 0 or end / start < LENGTH_GROWTH or corr < LENGTH_SCORE_CORR:
        return None
    ev = (f"response/length_mean {start:.1f} -> {end:.1f} tokens ({end / start:.1f}x) over "
          f"{_span(length, 'updates')}; correlation with objective/scores {corr:.2f}")
    mnt = s.config.get("max_new_tokens")
    if isinstance(mnt, int) and end >= 0.95 * mnt:
        ev += f"; responses now reach max_new_tokens={mnt}"
    return Hit(WARNING, ev, (length.steps[0], length.steps[-1]))


@rule("repetition", ON_POLICY, "Response diversity collapsed (repetition)",
      why="response/distinct2 is the share of distinct word bigrams in the rollouts. A collapse means the policy "
          "repeats itself within and across responses: a classic degenerate reward hack.",
      fix="Stop earlier; raise kl_coef; lower lr; check the reward model on repetitive text (add such negatives "
          "to its preference data).")
def repetition(s: Stage) -> Hit | None:
    d2 = s.series("response/distinct2").finite()
    if len(d2) < MIN_POINTS:
        return None
    start, end = _mean(_head(d2)), _mean(_tail(d2))
    if start <= 0 or end / start >= DISTINCT2_WARN:
        return None
    severe = end / start < DISTINCT2_SEVERE or end < DISTINCT2_FLOOR
    return Hit(SEVERE if severe else WARNING, f"response/distinct2 {start:.2f} ({_span(_head(d2), 'updates')}) -> "
               f"{end:.2f} ({_span(_tail(d2), 'updates')})", (d2.steps[0], d2.steps[-1]))


@rule("reward-out-of-range", ON_POLICY, "Reward far outside the reward model's training range",
      why="The reward model is normalised to mean 0 and std 1 on SFT samples. Scores many standard deviations above "
          "that are on text unlike anything it was trained or normalised on: extrapolation, not preference, and a "
          "sign of reward hacking.",
      fix="Look at the samples with the highest scores; stop earlier or raise kl_coef; retrain the reward model "
          "with preferences on the policy's current outputs.")
def reward_out_of_range(s: Stage) -> Hit | None:
    sc = s.series("objective/scores").finite()
    if len(sc) < 2:
        return None
    source = _normalised_reward(s)
    if source is None:
        return None  # raw scores of an un-normalised reward model have no fixed scale
    end = _mean(_tail(sc))
    if end <= SCORE_WARN:
        return None
    return Hit(SEVERE if end > SCORE_SEVERE else WARNING,
               f"objective/scores averages {end:+.2f} std over {_span(_tail(sc), 'updates')} (first "
               f"{_mean(_head(sc)):+.2f}); the reward is normalised to mean 0, std 1 ({source})", _range(_tail(sc)))


@rule("missing-eos", ON_POLICY, "Many responses never end (no EOS)",
      why="A response cut at max_new_tokens is scored as if it were complete: the reward model judges unfinished "
          "text, and the policy is never taught to stop (it can even learn that rambling pays).",
      fix="Raise max_new_tokens; set missing_eos_penalty (e.g. -1.0) so unfinished responses score lower; check "
          "that the SFT data ends responses with EOS.")
def missing_eos(s: Stage) -> Hit | None:
    eos = s.series("response/eos_fraction").finite()
    if not len(eos):
        return None
    end = _mean(_tail(eos))
    if end >= EOS_WARN:
        return None
    ev = f"response/eos_fraction averages {end:.2f} over {_span(_tail(eos), 'updates')}"
    advice = []
    if "max_new_tokens" in s.config:
        ev += f" (max_new_tokens={s.config['max_new_tokens']})"
    if "missing_eos_penalty" in s.config and s.config["missing_eos_penalty"] is None:
        advice.append("missing_eos_penalty is not set.")
    return Hit(SEVERE if end < EOS_SEVERE else WARNING, ev, _range(_tail(eos)), " ".join(advice))


# --- reward model and evaluation --------------------------------------------------------------------------------


@rule("rm-near-chance", ("reward", "eval"), "Reward model is near chance",
      why="A reward model that cannot tell the preferred response from the other on held-out pairs gives PPO a "
          "signal that is mostly noise: PPO will optimise whatever quirk the model has instead of the preference.",
      fix="Check the labels (agreement, position bias, swapped chosen/rejected); train longer or with a higher lr; "
          "start from the SFT model; collect more preference pairs.")
def rm_near_chance(s: Stage) -> Hit | None:
    acc, bayes, pairs = stage_rm_accuracy(s)
    if acc is None:
        return None
    what = f"held-out accuracy {acc:.3f}" + (f" on {pairs} pairs" if pairs else "")
    if acc <= RM_CHANCE:
        return Hit(SEVERE, f"{what} (chance is 0.5)" + (f"; Bayes-optimal {bayes:.3f}" if bayes else ""))
    if pairs and acc <= 0.5 + 2 * math.sqrt(0.25 / pairs):
        return Hit(WARNING, f"{what}: within two standard errors of chance (0.5 +- {2 * math.sqrt(0.25 / pairs):.3f})",
                   advice="Evaluate on more held-out pairs before trusting this reward model.")
    if bayes and acc / bayes < RM_VS_BAYES:
        return Hit(WARNING, f"{what} is {acc / bayes:.0%} of the Bayes-optimal {bayes:.3f} (the best any model can "
                   "do on these noisy labels)")
    return None


@rule("eval-gold-below-baseline", ("eval",), "Policy is worse than the baseline by the gold judge",
      why="The point of RLHF is a policy the real preference (gold judge, people) likes better than the SFT "
          "baseline. If gold says it got worse, especially while the reward model says it got better, PPO "
          "optimised the reward model's errors.",
      fix="Pick an earlier PPO checkpoint; raise kl_coef; improve the reward model (more and on-policy "
          "preferences); see the over-optimisation and KL findings of the ppo stage.")
def eval_gold_below_baseline(s: Stage) -> Hit | None:
    ev = s.eval or {}
    gold, reward = ev.get("gold") or {}, ev.get("reward") or {}
    gb, gp = gold.get("baseline"), gold.get("policy")
    if not isinstance(gb, (int, float)) or not isinstance(gp, (int, float)) or gp >= gb:
        return None
    text = f"gold: policy {gp:+.3f} < baseline {gb:+.3f}"
    rb, rp = reward.get("baseline"), reward.get("policy")
    hacked = isinstance(rb, (int, float)) and isinstance(rp, (int, float)) and rp > rb
    if hacked:
        text += f" while the reward model prefers the policy ({rp:+.3f} vs {rb:+.3f})"
    win = (ev.get("win_rate") or {}).get("gold")
    if isinstance(win, (int, float)):
        text += f"; gold win rate {win:.2f}"
    return Hit(SEVERE if hacked else WARNING, text)


# --- SFT and reward training ------------------------------------------------------------------------------------


@rule("eval-loss-rising", ("sft", "reward", "dpo"), "Held-out loss is rising (overfitting)",
      why="Training loss can keep falling while the model memorises its training data; the held-out loss rising "
          "from its minimum is the sign. The final model is worse on new data than an earlier one was.",
      fix="Train fewer steps/epochs (stop near the step of the minimum), lower the lr, add weight_decay, or use "
          "more data.")
def eval_loss_rising(s: Stage) -> Hit | None:
    key = {"sft": "eval/loss", "dpo": "eval/dpo_loss"}.get(s.kind, "eval/rm_loss")
    ev = s.series(key).finite()
    if len(ev) < 3:
        return None
    i = min(range(len(ev)), key=lambda j: ev.values[j])
    # the model the stage saved: the last evaluation's, or with reward early stopping the one of its best step
    kept_step = ((s.summary or {}).get("early_stopping") or {}).get("best_step") if s.kind == "reward" else None
    k = ev.steps.index(kept_step) if kept_step in ev.steps else len(ev) - 1
    low, last = ev.values[i], ev.values[k]
    if i == k or last <= low * (1 + EVAL_LOSS_RISE):
        return None
    kept = f"the kept step {ev.steps[k]} (early stopping)" if k < len(ev) - 1 else f"step {ev.steps[k]}"
    return Hit(WARNING, f"{key} was lowest ({low:.4g}) at step {ev.steps[i]} and rose to {last:.4g} by {kept} "
               f"(+{last / low - 1:.0%})", (ev.steps[i], ev.steps[k]))


@rule("loss-not-falling", ("sft", "reward", "dpo"), "Training loss is not falling",
      why="A model whose training loss does not go down has not learned anything from the data: everything "
          "downstream (reward model, PPO) builds on an untrained model.",
      fix="Check the learning rate (too small, or the warm-up longer than the run) and that the labels are right "
          "(for SFT: loss on response tokens; for rewards: chosen really is preferred); train for more steps.")
def loss_not_falling(s: Stage) -> Hit | None:
    key = {"sft": "sft/loss", "dpo": "dpo/loss"}.get(s.kind, "rm/loss")
    loss = s.series(key).finite()
    if len(loss) < 3:
        return None
    start, end = _mean(_head(loss)), _mean(_tail(loss))
    if start <= 0 or end <= LOSS_FLAT * start:
        return None
    advice = f"The lr is {s.config['lr']:g}." if isinstance(s.config.get("lr"), (int, float)) else ""
    return Hit(SEVERE if end >= start else WARNING,
               f"{key} {start:.4g} ({_span(_head(loss), 'steps')}) -> {end:.4g} ({_span(_tail(loss), 'steps')})",
               (loss.steps[0], loss.steps[-1]), advice)


@rule("no-group-signal", ("rloo", "grpo", "reinforce_pp"), "All samples of a prompt get the same score",
      why="RLOO, GRPO and REINFORCE++ with group_baseline learn only from differences between the k responses to one "
          "prompt (the advantage is a score minus the group's mean). When every group's scores are equal, every "
          "advantage is 0: the policy gets no gradient however long it trains.",
      fix="Raise the sampling temperature or num_samples (more varied groups); use a reward with more "
          "resolution (a reward model rather than a 0/1 check); drop prompts the policy always gets right or wrong.")
def no_group_signal(s: Stage) -> Hit | None:
    if s.kind == "reinforce_pp" and not s.config.get("group_baseline"):
        return None  # its baseline is the whole batch's mean: equal scores within a prompt still differ across prompts
    std = s.series("objective/group_score_std").finite()
    if len(std) < MIN_POINTS:
        return None
    last = _mean(_tail(std))
    if last >= GROUP_STD_MIN:
        return None
    return Hit(SEVERE if _mean(std) < GROUP_STD_MIN else WARNING,
               f"objective/group_score_std {last:.2g} over {_span(_tail(std), 'updates')} (mean over the run "
               f"{_mean(std):.2g})", _range(_tail(std)))


# --- DPO ------------------------------------------------------------------------------------------------------


@rule("dpo-likelihood-displacement", ("dpo",), "The chosen responses are losing likelihood (likelihood displacement)",
      why="DPO's loss only asks the chosen response to gain on the rejected one relative to the reference. It can "
          "get there by pushing both down, the rejected faster: the margin rises while the chosen responses become "
          "less likely than under the reference, and the probability mass goes to responses in neither set (Pal "
          "et al. 2024; Razin et al. 2024). The policy can then get worse at the very responses people chose.",
      fix="Add an NLL (SFT) term on the chosen responses (RPO, Pang et al. 2024); lower the lr or train fewer "
          "epochs; raise beta (a stronger pull to the reference); check for pairs whose chosen and rejected "
          "responses are near-identical.")
def dpo_likelihood_displacement(s: Stage) -> Hit | None:
    chosen, margin = _aligned(s.series("dpo/chosen_logratio").finite(), s.series("dpo/margin").finite())
    if len(chosen) < MIN_POINTS:
        return None
    fall, t = _trend(chosen)
    rise, t_margin = _trend(margin)
    if rise <= 0 or t_margin < GOLD_T or fall > -DISPLACEMENT_WARN or t > -GOLD_T:
        return None
    return Hit(SEVERE if fall <= -DISPLACEMENT_SEVERE else WARNING,
               f"dpo/chosen_logratio {_mean(_head(chosen)):+.3f} -> {_mean(_tail(chosen)):+.3f} nats (fitted "
               f"{fall:+.3f}) while dpo/margin rose {_mean(_head(margin)):+.3f} -> {_mean(_tail(margin)):+.3f}",
               _range(chosen))


@rule("dpo-not-learning", ("dpo",), "DPO is at chance on held-out preference pairs",
      why="eval/dpo_accuracy is how often the policy's implicit reward (beta times its log-ratio to the reference) "
          "ranks the held-out chosen response above the rejected one. At 0.5 the policy has learned nothing that "
          "carries over to new pairs, even if the training accuracy is high (memorised pairs).",
      fix="Check the pairs (chosen really preferred; prompt and responses split at the right token); raise the lr "
          "or train longer; if the training accuracy is high, use more pairs or fewer epochs.")
def dpo_not_learning(s: Stage) -> Hit | None:
    held = s.series("eval/dpo_accuracy").finite()
    if not len(held) or (len(held) < 2 and s.summary is None):  # one early evaluation says nothing yet
        return None
    last = held.values[-1]
    if last > DPO_CHANCE:
        return None
    train = s.series("dpo/accuracy").finite()
    memorised = len(train) and _mean(_tail(train)) >= 0.8
    text = f"eval/dpo_accuracy {last:.3f} at step {held.steps[-1]} (chance is 0.5)"
    if memorised:
        text += f" while the training dpo/accuracy is {_mean(_tail(train)):.3f} (pairs memorised, not learned)"
    return Hit(SEVERE, text, (held.steps[-1], held.steps[-1]))


# --- helpers ----------------------------------------------------------------------------------------------------


def _window(n: int) -> int:
    return max(WINDOW_MIN, min(WINDOW_MAX, math.ceil(n * WINDOW_FRACTION)))


def _head(s: Series) -> Series:
    k = min(len(s), _window(len(s)))
    return Series(s.steps[:k], s.values[:k])


def _tail(s: Series) -> Series:
    k = min(len(s), _window(len(s)))
    return Series(s.steps[-k:], s.values[-k:])


def _mean(s: Series) -> float:
    return sum(s.values) / len(s.values) if len(s.values) else float("nan")


def _range(s: Series) -> tuple[int, int] | None:
    return (s.steps[0], s.steps[-1]) if len(s) else None


def _span(s: Series, unit: str) -> str:
    if not len(s):
        return f"no {unit}"
    a, b = s.steps[0], s.steps[-1]
    return f"{unit[:-1]} {a}" if a == b else f"{unit} {a}-{b}"


def _aligned(a: Series, b: Series) -> tuple[Series, Series]:
    """The two series restricted to the steps where both were logged."""
    bmap = dict(zip(b.steps, b.values))
    steps = [st for st in a.steps if st in bmap]
    amap = dict(zip(a.steps, a.values))
    return Series(steps, [amap[st] for st in steps]), Series(steps, [bmap[st] for st in steps])


def _trend(s: Series) -> tuple[float, float]:
    """Least-squares line through the values against their index: (fitted change from first to last point,
    t statistic of the slope). The t statistic is +-inf for a perfect line."""
    n = len(s.values)
    x = range(n)
    mx, my = (n - 1) / 2, sum(s.values) / n
    sxx = sum((i - mx) ** 2 for i in x)
    slope = sum((i - mx) * (v - my) for i, v in zip(x, s.values)) / sxx
    resid = sum((v - my - slope * (i - mx)) ** 2 for i, v in zip(x, s.values))
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 else 0.0
    t = slope / se if se > 0 else math.copysign(math.inf, slope) if slope else 0.0
    return slope * (n - 1), t


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def _sampling_advice(s: Stage) -> str:
    c = s.config
    bits = [f"{k}={c[k]}" for k in ("temperature", "top_p", "top_k") if k in c]
    if c.get("top_p", 1.0) < 1.0 or c.get("top_k", 0):
        return f"Sampling is truncated ({', '.join(bits)}): the samples are not from the policy's distribution."
    return f"Sampling settings: {', '.join(bits)}." if bits else ""


def _optim_advice(s: Stage) -> str:
    c = s.config
    bits = [f"{k}={c[k]}" for k in ("lr", "ppo_epochs", "num_minibatches", "cliprange", "target_approx_kl") if k in c]
    return f"Now: {', '.join(bits)}." if bits else ""


def _normalised_reward(s: Stage) -> str | None:
    """Where the PPO stage's reward normalisation comes from (reward_config.json with a gain), or None."""
    import json

    candidates = []
    if s.config.get("reward"):
        r = Path(str(s.config["reward"]))
        candidates += [r, s.path / r, s.path.parent / r]
    candidates.append(s.path.parent / "reward")
    for folder in candidates:
        f = folder / "reward_config.json"
        if f.is_file():
            try:
                rc = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                return None
            if "gain" in rc or "members" in rc:
                return f"{f}"
            return None
    return None

"""`rlhf monitor`: drift of logged production traffic against the run's own eval distribution (docs/monitor.md).

Torch-free: reading and checking the log, the statistics (standardised mean difference with a permutation test,
Jensen-Shannon divergence of prompt n-grams with a split-calibrated threshold, size-matched distinct-n, the
fraction of responses outside the reward ensemble's support, the reward model's agreement with user feedback),
time/row windows, and the findings in the doctor's format (rlhf.diagnose.doctor.Finding). The scoring with the
run's models is in rlhf.stages.monitor.

Every threshold below is documented in docs/monitor.md (why that value); change both together.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlhf.diagnose.doctor import Finding
from rlhf.diagnose.rules import INFO, SEVERE, SEVERITIES, WARNING
from rlhf.errors import UserError
from rlhf.io import iter_jsonl

# --- thresholds (docs/monitor.md says why each value) -----------------------------------------------------------
MIN_ROWS = 8  # a window with fewer rows is reported, not tested
PERMUTATIONS = 2000  # permutation test of a difference in means: smallest p is 1/2001
PERMUTATION_MAX_ROWS = 5000  # above this many rows (log + baseline), Welch's z instead (same answer, faster)
SMD_WARN, SMD_SEVERE = 0.5, 1.0  # |standardised mean difference| (Cohen's d, pooled sd)
P_WARN, P_SEVERE = 0.01, 0.001  # ... and the permutation p-value below this (not sampling noise)
DISTINCT_WARN, DISTINCT_SEVERE = 0.25, 0.5  # |relative change| of size-matched distinct-2
DISTINCT_DRAWS = 20  # subsamples averaged for size-matched distinct-n
PROMPT_DRAWS = 50  # calibration draws of the run's own held-out prompts
PROMPT_SEVERE_FACTOR = 2.0  # severe: JSD above this many times the largest calibration draw
SUPPORT_QUANTILE = 0.95  # the ensemble-std threshold: this quantile of the RM's own training responses
SUPPORT_WARN, SUPPORT_SEVERE = 0.15, 0.30  # fraction of rows above it (expected: 1 - SUPPORT_QUANTILE)
FEEDBACK_MIN = 5  # thumbs up and thumbs down each needed for an agreement figure
Z95 = 1.959963984540054

FEEDBACK_VALUES = {1: 1, -1: -1, "up": 1, "down": -1}  # user_feedback: +1 / -1 (or "up" / "down"), null = none


# ---------------------------------------------------------------------------------------------------------------
# the log


@dataclass
class LogRow:
    line: int
    prompt: Any  # a string, or a list of chat messages
    response: Any
    timestamp: float | None = None  # seconds since the epoch (UTC)
    feedback: int | None = None  # +1 thumbs up, -1 thumbs down


def read_log(path: str | Path) -> list[LogRow]:
    """The production log: one JSON object a line with `prompt` and `response` (strings, or chat messages), optional
    `timestamp` (ISO 8601, or seconds since the epoch) and `user_feedback` (+1 / -1, "up" / "down", or null). A bad
    row is a UserError naming the line and the field; timestamps are all present or all absent."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config field 'log': {path} does not exist or is not a file; pass the production log "
                        "(JSONL rows {\"prompt\", \"response\"})")
    rows = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("prompt", "response"):
            if key not in obj:
                raise UserError(f"{where}: missing field '{key}' (each row needs 'prompt' and 'response'; optional "
                                "'timestamp', 'user_feedback')")
            if not (isinstance(obj[key], str) or _is_messages(obj[key])):
                raise UserError(f"{where}: field '{key}' must be a string (or a list of chat messages), got "
                                f"{type(obj[key]).__name__}")
        rows.append(LogRow(lineno, obj["prompt"], obj["response"], _timestamp(obj.get("timestamp"), where),
                           _feedback(obj.get("user_feedback"), where)))
    if not rows:
        raise UserError(f"{path}: no rows (the file is empty)")
    stamped = [r.timestamp is not None for r in rows]
    if any(stamped) and not all(stamped):
        first = rows[stamped.index(False)]
        raise UserError(f"{path}:{first.line}: field 'timestamp' is missing while other rows have one; give every "
                        "row a timestamp or none")
    return rows


def _is_messages(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(m, dict) and "content" in m for m in x)


def _timestamp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    raise UserError(f"{where}: field 'timestamp' is {value!r}; use ISO 8601 (e.g. 2026-12-02T14:00:00Z) or seconds "
                    "since the epoch")


def _feedback(value: Any, where: str) -> int | None:
    if value is None:
        return None
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in FEEDBACK_VALUES:
        raise UserError(f"{where}: field 'user_feedback' is {value!r}; use 1 (thumbs up), -1 (thumbs down), "
                        "\"up\"/\"down\", or null for none")
    return FEEDBACK_VALUES[key]


def text_of(x: Any) -> str:
    """A prompt or response as plain text (chat messages: their contents joined)."""
    return x if isinstance(x, str) else "\n".join(str(m.get("content", "")) for m in x)


# ---------------------------------------------------------------------------------------------------------------
# windows


def parse_window(spec: str) -> tuple[str, float] | None:
    """'' -> None; '500' -> ('rows', 500); '30m' / '6h' / '1d' / '45s' -> ('time', seconds)."""
    spec = spec.strip()
    if not spec:
        return None
    if spec.isdigit() and int(spec) > 0:
        return "rows", float(int(spec))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", spec)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"config field 'window': '{spec}' is not a window; use a row count (e.g. 500) or a duration "
                        "(e.g. 30m, 6h, 1d)")
    return "time", float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def windows(rows: list[LogRow], spec: str) -> list[tuple[str, list[int]]]:
    """[(name, row indices)]: 'all' first, then one per window (rows in timestamp order when they have one)."""
    out = [("all", list(range(len(rows))))]
    w = parse_window(spec)
    if w is None:
        return out
    kind, size = w
    order = list(range(len(rows)))
    if kind == "time":
        if rows[0].timestamp is None:
            raise UserError(f"config field 'window': '{spec}' is a duration but the log has no 'timestamp' field; "
                            "use a row count (e.g. --window 500) or log timestamps")
        order.sort(key=lambda i: rows[i].timestamp)  # type: ignore[arg-type, return-value]
        t0 = rows[order[0]].timestamp or 0.0
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(int(((rows[i].timestamp or 0.0) - t0) // size), []).append(i)
        for k, idx in sorted(groups.items()):
            start = t0 + k * size
            out.append((f"{_iso(start)}/{_iso(start + size)}", idx))
    else:
        if rows[0].timestamp is not None:
            order.sort(key=lambda i: rows[i].timestamp)  # type: ignore[arg-type, return-value]
        n = int(size)
        for k in range(0, len(order), n):
            out.append((f"rows {k + 1}-{min(k + n, len(order))}", order[k:k + n]))
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------------
# statistics (pure)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def sd(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0.0 for fewer than two values."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def smd(a: Sequence[float], b: Sequence[float]) -> float:
    """Standardised mean difference (Cohen's d): (mean a - mean b) / pooled sd; 0 when both are constant and equal,
    +-inf when constant and different."""
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * sd(a) ** 2 + (nb - 1) * sd(b) ** 2) / max(na + nb - 2, 1))
    diff = mean(a) - mean(b)
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / pooled


def permutation_p(a: Sequence[float], b: Sequence[float], n_perm: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided permutation test of a difference in means (Fisher-Pitman): the share of random relabellings of
    a + b whose |mean difference| is at least the observed one, (1 + hits) / (1 + n_perm). No normality assumed."""
    pooled = list(a) + list(b)
    na, total = len(a), sum(pooled)
    n = len(pooled)
    if n > PERMUTATION_MAX_ROWS:  # large samples: Welch's z, which the permutation distribution approaches
        se = math.sqrt(sd(a) ** 2 / na + sd(b) ** 2 / len(b))
        z = abs(mean(a) - mean(b)) / se if se > 0 else (0.0 if mean(a) == mean(b) else math.inf)
        return math.erfc(z / math.sqrt(2))
    rng = random.Random(seed)
    observed = abs(sum(a) / na - (total - sum(a)) / (n - na))
    hits = 0
    for _ in range(n_perm):
        s = sum(rng.sample(pooled, na))
        hits += abs(s / na - (total - s) / (n - na)) >= observed - 1e-12
    return (1 + hits) / (1 + n_perm)


def words(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and apostrophes (rlhf eval's distinct-n reads text the same way)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def ngram_counts(texts: Sequence[str]) -> Counter:
    """Unigram and bigram counts pooled over texts (bigrams joined with a space, so they never collide with a
    unigram)."""
    c: Counter = Counter()
    for t in texts:
        w = words(t)
        c.update(w)
        c.update(f"{x} {y}" for x, y in zip(w, w[1:]))
    return c


def js_divergence(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) of two count distributions: the mean KL of each to their
    average. Symmetric and finite on n-grams one side never saw (which a KL is not)."""
    sp, sq = sum(p.values()), sum(q.values())
    if not sp or not sq:
        return 0.0
    js = 0.0
    for g in set(p) | set(q):
        a, b = p.get(g, 0) / sp, q.get(g, 0) / sq
        m = (a + b) / 2
        js += (a * math.log(a / m) if a else 0.0) + (b * math.log(b / m) if b else 0.0)
    return js / 2


def prompt_null(pool: Sequence[str], n: int, ref_size: int, draws: int = PROMPT_DRAWS, seed: int = 0) -> list[float]:
    """What a log of n prompts with no shift shows: for each draw, a random split of `pool` (the run's training and
    held-out prompts) into n prompts and a reference of `ref_size` others; the JSD of their n-grams. A fresh split
    every draw, so the spread is that of new same-distribution prompts, not of re-drawing one fixed set."""
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        order = rng.sample(list(pool), len(pool))
        out.append(js_divergence(ngram_counts(order[:n]), ngram_counts(order[n:n + ref_size])))
    return out


def prompt_shift(prompts: Sequence[str], reference: Sequence[str], pool: Sequence[str], seed: int = 0) -> tuple[float, int]:
    """(JSD of the prompts' n-grams to the reference's, the size m compared; calibrate with prompt_null at m). A window larger
    than half the pool is compared through random subsets of m = half the pool (the mean JSD of DISTINCT_DRAWS of
    them), so the statistic and its calibration are always at the same size: JSD between empirical n-gram
    distributions shrinks as the samples grow."""
    m = min(len(prompts), len(pool) // 2)
    ref = ngram_counts(reference)
    if m >= len(prompts):
        value = js_divergence(ngram_counts(prompts), ref)
    else:
        rng = random.Random(seed)
        value = mean([js_divergence(ngram_counts(rng.sample(list(prompts), m)), ref) for _ in range(DISTINCT_DRAWS)])
    return value, m


def distinct(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams pooled over texts (Li et al. 2016); 0.0 when there are none."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def matched_distinct(texts: Sequence[str], size: int, n: int, draws: int = DISTINCT_DRAWS, seed: int = 0) -> float:
    """distinct-n at a fixed number of texts (the mean over random subsets of `size`): pooled distinct-n falls as texts
    are added, so two sets are compared at the same size."""
    if size >= len(texts):
        return distinct(texts, n)
    rng = random.Random(seed)
    return mean([distinct(rng.sample(list(texts), size), n) for _ in range(draws)])


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def auc(pos: Sequence[float], neg: Sequence[float]) -> tuple[float, float]:
    """(AUC, its Hanley-McNeil 1982 standard error): the probability that a random thumbs-up response scores above a
    random thumbs-down one, ties half; the reward model's pairwise accuracy on the users' implied preferences."""
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    a = wins / (len(pos) * len(neg))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (len(pos) - 1) * (q1 - a * a) + (len(neg) - 1) * (q2 - a * a)) / (len(pos) * len(neg))
    return a, math.sqrt(max(var, 0.0))


# ---------------------------------------------------------------------------------------------------------------
# signals of one window, and the findings


@dataclass
class Scored:
    """Per-row figures of a set of responses (the log, or the baseline), from rlhf.stages.monitor."""

    prompts: list[str]
    responses: list[str]
    reward: list[float]
    kl: list[float]  # sum over response tokens of log pi - log pi_ref (k1), at the run's temperature
    logp: list[float]  # mean log-prob per response token under the deployed policy
    length: list[int]  # response tokens incl. the EOS
    member_std: list[float] | None = None  # std of the ensemble members' normalised scores (ensembles only)
    feedback: list[int | None] = field(default_factory=list)

    def take(self, idx: Sequence[int]) -> Scored:
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Scored(pick(self.prompts), pick(self.responses), pick(self.reward), pick(self.kl), pick(self.logp),
                      pick(self.length), pick(self.member_std) if self.member_std is not None else None,
                      pick(self.feedback) if self.feedback else [])


MEAN_SIGNALS = (  # (signal, Scored attribute, what it is)
    ("reward", "reward", "reward-model score (normalised: mean 0, std 1 on the SFT samples)"),
    ("kl", "kl", "log pi(y|x) - log pi_ref(y|x) summed over the response, nats (KL to the reference)"),
    ("logp", "logp", "mean log-prob per response token under the deployed policy"),
    ("length", "length", "response length, tokens"),
)


@dataclass
class Context:
    """What the windows are compared with: the baseline rows (rescored), the prompt reference and the support."""

    baseline: Scored
    train_prompts: list[str]  # the reference of the prompt shift
    prompt_pool: list[str]  # the run's training and held-out prompts (calibration draws)
    support_threshold: float | None  # ensemble std above which a response is outside the RM's training support
    rm_accuracy: float | None  # the RM's held-out pairwise accuracy, for the user-feedback agreement
    seed: int = 0
    train_words: set[str] = field(default_factory=set)
    _null: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train_words = {w for t in self.train_prompts for w in words(t)}

    def null(self, m: int) -> list[float]:
        """The calibration draws at m prompts (cached: windows of one size share them)."""
        if m not in self._null:
            ref_size = min(len(self.train_prompts), len(self.prompt_pool) - m)
            self._null[m] = prompt_null(self.prompt_pool, m, ref_size, seed=self.seed)
        return self._null[m]


def window_signals(w: Scored, ctx: Context) -> dict[str, Any]:
    """Every signal of one window: its figure, the baseline's, the test statistic, and the severity it reaches
    (None = no drift). Keys are the signal names of docs/monitor.md."""
    base = ctx.baseline
    out: dict[str, Any] = {"n": len(w.reward)}
    tested = len(w.reward) >= MIN_ROWS
    for name, attr, _ in MEAN_SIGNALS:
        a, b = [float(x) for x in getattr(w, attr)], [float(x) for x in getattr(base, attr)]
        d = smd(a, b)
        p = permutation_p(a, b, seed=ctx.seed) if tested else None
        sev = None
        if tested and p is not None:
            sev = SEVERE if abs(d) >= SMD_SEVERE and p < P_SEVERE else WARNING if abs(d) >= SMD_WARN and p < P_WARN \
                else None
        out[name] = {"mean": mean(a), "baseline_mean": mean(b), "smd": d, "p": p, "severity": sev}
    size = min(len(w.responses), len(base.responses))
    for n in (1, 2):
        dw = matched_distinct(w.responses, size, n, seed=ctx.seed)
        db = matched_distinct(base.responses, size, n, seed=ctx.seed)
        rel = dw / db - 1 if db else 0.0
        sev = None
        if tested and n == 2:  # distinct-1 is shown, distinct-2 decides (as the doctor's diversity rule)
            sev = SEVERE if abs(rel) >= DISTINCT_SEVERE else WARNING if abs(rel) >= DISTINCT_WARN else None
        out[f"distinct{n}"] = {"value": dw, "baseline": db, "relative_change": rel, "matched_size": size,
                               "severity": sev}
    jsd, m = prompt_shift(w.prompts, ctx.train_prompts, ctx.prompt_pool, seed=ctx.seed)
    null = ctx.null(m)
    limit = max(null)
    prompt_words = [x for t in w.prompts for x in words(t)]
    unseen = sum(x not in ctx.train_words for x in prompt_words) / len(prompt_words) if prompt_words else 0.0
    sev = None
    if tested:
        sev = SEVERE if jsd > PROMPT_SEVERE_FACTOR * limit else WARNING if jsd > limit else None
    out["prompt_jsd"] = {"value": jsd, "threshold": limit, "severe_threshold": PROMPT_SEVERE_FACTOR * limit,
                         "null_mean": mean(null), "compared_size": m, "unseen_word_fraction": unseen,
                         "severity": sev}
    if w.member_std is not None and ctx.support_threshold is not None:
        frac = sum(s > ctx.support_threshold for s in w.member_std) / len(w.member_std)
        sev = None
        if tested:
            sev = SEVERE if frac >= SUPPORT_SEVERE else WARNING if frac >= SUPPORT_WARN else None
        out["outside_support"] = {"value": frac, "threshold_std": ctx.support_threshold,
                                  "expected": 1 - SUPPORT_QUANTILE, "severity": sev}
    fb = [(r, f) for r, f in zip(w.reward, w.feedback) if f is not None]
    up, down = [r for r, f in fb if f > 0], [r for r, f in fb if f < 0]
    if fb:
        entry: dict[str, Any] = {"up": len(up), "down": len(down), "auc": None, "auc_ci95": None,
                                 "rm_accuracy": ctx.rm_accuracy, "severity": None}
        if len(up) >= FEEDBACK_MIN and len(down) >= FEEDBACK_MIN:
            a, se = auc(up, down)
            hi = a + Z95 * se
            entry["auc"], entry["auc_ci95"] = a, [max(0.0, a - Z95 * se), min(1.0, hi)]
            sev = SEVERE if hi < 0.5 else WARNING if ctx.rm_accuracy is not None and hi < ctx.rm_accuracy else None
            entry["severity"] = sev
        out["feedback_agreement"] = entry
    return out


@dataclass(frozen=True)
class Signal:
    title: str
    why: str
    fix: str


SIGNALS: dict[str, Signal] = {
    "reward": Signal(
        "Reward-model scores of the traffic have shifted",
        "The reward model scores the logged responses differently from the run's own eval samples: either the "
        "traffic's responses are not what the evaluated policy writes, or the prompts moved where the reward model "
        "reads them differently. A rise is as suspect as a fall (a policy or prompt mix that games the RM).",
        "Compare the deployed model with the run's policy (same weights, same sampling settings); re-run "
        "`rlhf eval` on a sample of the logged prompts; label a sample of the traffic and check the reward model's "
        "accuracy on it."),
    "kl": Signal(
        "KL to the reference differs from the run's eval",
        "The eval measured KL(policy || reference) on the policy's own samples. The logged responses give a different "
        "log-ratio: they are not samples of the evaluated policy (another checkpoint, other sampling settings, a "
        "system prompt or post-processing in production).",
        "Check which weights and sampling settings (temperature, top-p, max tokens) production uses; pass the "
        "deployed model with --policy; re-evaluate that model with `rlhf eval`."),
    "logp": Signal(
        "The deployed policy finds the logged responses unlikely",
        "Under the policy named in the report, the logged responses have a lower (or higher) mean log-prob per token "
        "than its own samples: the traffic was written by a different model or decoding.",
        "Pass the model production really serves with --policy, or fix the deployment to serve the run's policy."),
    "length": Signal(
        "Response length has shifted",
        "Length is the first thing a reward model over-rewards and the first thing a decoding change moves.",
        "Check max_new_tokens / stop sequences in production; if the RM scores rise with length, see `rlhf doctor`'s "
        "length rule and the reward-hacking defences (docs/reward-hacking.md)."),
    "distinct2": Signal(
        "Response diversity has shifted",
        "Size-matched distinct-2 of the traffic differs from the eval's: a fall is mode collapse or templated "
        "answers, a rise is a different (less trained, or higher-temperature) generator.",
        "Check production sampling (temperature, top-p, repetition penalty); compare samples side by side."),
    "prompt_jsd": Signal(
        "The prompt distribution has shifted",
        "The traffic's prompt n-grams differ from the training prompts' by more than the run's own held-out prompts "
        "ever do at this size. The reward model and the policy were fitted on the training distribution; off it their "
        "scores are extrapolations.",
        "Collect preferences on the new prompts (`rlhf sample` then `rlhf label`), retrain the reward model and "
        "re-run PPO with the new prompts mixed in."),
    "outside_support": Signal(
        "Responses outside the reward model's training support",
        "The reward ensemble's members agree on responses like those they were trained on; a large fraction of "
        "logged responses where they disagree more than on 95% of their own training responses means the reward "
        "is an extrapolation there.",
        "Label a sample of the high-disagreement responses and retrain the reward models on them; treat their "
        "scores as unreliable until then."),
    "feedback_agreement": Signal(
        "The reward model disagrees with users",
        "The AUC of the RM score between thumbs-up and thumbs-down responses is its pairwise accuracy on the users' "
        "implied preferences. Below its held-out accuracy, the RM's notion of good has drifted from the users'; "
        "below 0.5 it ranks against them.",
        "Turn user feedback into preference pairs (`rlhf label import`), retrain the reward model, and check its "
        "accuracy on held-out feedback before the next PPO run."),
}


def fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.4f}"


def evidence(name: str, s: dict[str, Any]) -> str:
    """One line with the figure, the baseline and the statistic that decided."""
    if name in ("reward", "kl", "logp", "length"):
        return (f"{name} mean {s['mean']:+.3f} vs {s['baseline_mean']:+.3f} in the run's eval; standardised mean "
                f"difference {s['smd']:+.2f} (warn |d| >= {SMD_WARN}, severe >= {SMD_SEVERE}), permutation "
                f"p = {fmt_p(s['p'])}")
    if name == "distinct2":
        return (f"distinct-2 {s['value']:.3f} vs {s['baseline']:.3f} at {s['matched_size']} responses each "
                f"({s['relative_change']:+.0%}; warn at +-{DISTINCT_WARN:.0%}, severe at +-{DISTINCT_SEVERE:.0%})")
    if name == "prompt_jsd":
        return (f"prompt JSD {s['value']:.3f} nats to the training prompts vs at most {s['threshold']:.3f} over "
                f"{PROMPT_DRAWS} random splits of the run's own prompts at {s['compared_size']} prompts (severe "
                f"above {s['severe_threshold']:.3f}); {s['unseen_word_fraction']:.0%} of prompt words never occur in "
                "the training prompts")
    if name == "outside_support":
        return (f"{s['value']:.0%} of responses have ensemble std > {s['threshold_std']:.3f} (the "
                f"{SUPPORT_QUANTILE:.0%} quantile on the RM's training responses, so {s['expected']:.0%} expected; "
                f"warn at {SUPPORT_WARN:.0%}, severe at {SUPPORT_SEVERE:.0%})")
    if name == "feedback_agreement":
        acc = f"{s['rm_accuracy']:.3f}" if s["rm_accuracy"] is not None else "unknown"
        if s["auc"] is None:
            return f"{s['up']} thumbs up, {s['down']} thumbs down: fewer than {FEEDBACK_MIN} of each, no figure"
        return (f"AUC of the RM score, thumbs up vs down: {s['auc']:.3f} [{s['auc_ci95'][0]:.3f}, "
                f"{s['auc_ci95'][1]:.3f}] over {s['up']} up / {s['down']} down; RM held-out accuracy {acc}")
    raise KeyError(name)


def findings(results: list[dict[str, Any]]) -> list[Finding]:
    """One finding per signal that reaches a severity in any window: its worst window's evidence (a specific window
    before 'all' at equal severity), and how many windows fired. An info finding says which signals could not be measured."""
    out = []
    for name, sig in SIGNALS.items():
        fired = [(r["window"], r[name]) for r in results if isinstance(r.get(name), dict) and r[name]["severity"]]
        if not fired:
            continue
        # the worst severity; among equals, a time/row window (it says when) before all rows together
        worst = min(fired, key=lambda x: (SEVERITIES.index(x[1]["severity"]), x[0] == "all"))
        where = f"window {worst[0]}" if worst[0] != "all" else "all rows"
        more = f"; {len(fired)} of {len(results)} windows fire" if len(results) > 1 else ""
        out.append(Finding(f"monitor-{name.replace('_', '-')}", worst[1]["severity"], "monitor", sig.title,
                           f"{where}: {evidence(name, worst[1])}{more}", sig.why, sig.fix))
    return sorted(out, key=lambda f: SEVERITIES.index(f.severity))


def notes_finding(notes: list[str]) -> Finding | None:
    if not notes:
        return None
    return Finding("monitor-not-measured", INFO, "monitor", "Some signals were not measured", "; ".join(notes),
                   "The monitor reports what the run and the log allow; a missing signal is not a clean bill.",
                   "See docs/monitor.md for what each signal needs.")


def exit_status(report: dict[str, Any]) -> int:
    """1 when a finding is severe, else 0 (as `rlhf doctor`)."""
    return int(any(f.get("severity") == SEVERE for f in report.get("findings", [])))


def read_report(folder: str | Path) -> dict[str, Any] | None:
    """RUN/monitor/monitor.json, or None when there is none (the report's section, exit status)."""
    path = Path(folder) / "monitor.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None

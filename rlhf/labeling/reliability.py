"""Labeler reliability: each labeler's accuracy estimated from overlap (comparisons answered by several people) and
gold tasks, by a one-coin Dawid-Skene model fitted with EM (Dawid & Skene 1979; the one-coin form: one accuracy per
labeler, as in Karger, Oh & Shah 2011 and Raykar et al. 2010).

Model. Each comparison u (an unordered pair of responses, `export.Unit`) has an unknown true order z_u = +1
(response i better) or -1. A labeler l votes the true order with probability a_l and the other with 1 - a_l,
independently of other labelers and comparisons. Ties and "both bad" carry no direction and are left out (counted
in `ignored_votes`). On a gold comparison with a strict gold order, z_u is known. Prior P(z_u = +1) = 1/2: every
showing puts the responses in a fresh random order, so the index order says nothing about which is better.

EM (log-likelihood rises every step):
    E: q_u = P(z_u = +1 | votes) = sigmoid( sum over votes v on u of s_v * logit(a_{l(v)}) )   (gold: q_u = 1 or 0)
    M: a_l = (sum over l's votes of P(vote correct) + k - 1) / (votes + 2(k - 1)),  P(correct) = q_u or 1 - q_u
with a Beta(k, k) prior on a_l (k = 2: Laplace's rule), which pulls a labeler with little evidence toward 1/2 and
keeps logit(a_l) finite. EM starts from the soft majority vote, so it picks the labelling where most labelers are
better than chance (the model cannot tell "everyone is right" from "everyone is wrong" otherwise). The same holds
for every group of labelers linked by shared comparisons (`groups`): two groups that never share a comparison and
have no gold are each oriented only by that start, so mix who labels with whom (and add gold tasks). A comparison with
one vote and no gold says nothing about its voter (its term in the M-step is the voter's own current accuracy), so
only comparisons with >= 2 labelers or gold enter the fit: `evidence` counts those votes; a labeler with none has
accuracy None.

Why this and not a per-labeler Bradley-Terry noise model (P(a > b) = sigmoid(beta_l (r_a - r_b))): that needs the
latent reward of every response, i.e. fitting a reward model jointly with the labelers, and its beta_l is only
identified through those rewards. The one-coin model uses nothing but the votes, runs in the label store's layer
(no torch), is exact on gold, and its a_l is what a loss weight needs: how often a vote of l points the right way.
It averages over the comparisons a labeler saw; tasks are served first in, first out to whoever asks, so labelers
see comparisons of similar difficulty. A systematic bias shared by most labelers (e.g. all prefer longer answers)
looks like the truth to it, as to any agreement measure.

Loss weight (`rlhf label export --weight reliability`): for an exported pair, q = P(its chosen response is truly
better | all votes on it) and weight = max(0, 2q - 1). With label noise rate 1 - q, the expected gradient of the
logistic (Bradley-Terry) loss near r_chosen = r_rejected is (2q - 1) times the clean one, so 2q - 1 is the signal a
pair carries: a pair from a coin-flipper weighs ~0, a unanimous pair from reliable labelers ~1. A pair whose
posterior disagrees with the vote consensus (q < 1/2) gets weight 0, counted in `pairs_against_posterior`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlhf.labeling.export import ConsensusPair, Unit, collect_votes, excluded_tasks
from rlhf.labeling.store import JudgmentRecord, TaskRecord

PRIOR_K = 2.0  # Beta(k, k) prior on each labeler's accuracy (k = 2: Laplace's rule of succession)
MAX_ITER = 5000
TOL = 1e-7


@dataclass(frozen=True)
class LabelerEstimate:
    name: str
    accuracy: float | None  # P(a vote of this labeler orders a strict comparison correctly); None: no evidence
    stderr: float | None  # sqrt(a (1 - a) / (evidence + 2k - 2)), a rough +- for the page
    votes: int  # directional votes (ties and both-bad left out)
    evidence: int  # of those, votes on comparisons with another labeler or a gold order
    gold_votes: int


@dataclass
class Reliability:
    labelers: dict[str, LabelerEstimate]
    posterior: dict[Unit, float]  # P(response i better than j), every non-gold comparison with a directional vote
    iterations: int
    converged: bool
    units_fitted: int  # comparisons in the fit (overlap >= 2 or gold)
    gold_units: int
    ignored_votes: int  # tie / both-bad votes
    fallback_accuracy: float | None  # used in `posterior` for labelers without evidence (mean of the others)
    no_evidence: list[str] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)  # labelers linked by shared comparisons, and their gold votes

    def summary(self) -> dict:
        return {
            "method": "one-coin Dawid-Skene EM (rlhf/labeling/reliability.py)",
            "labelers": {n: {"accuracy": e.accuracy, "stderr": e.stderr, "votes": e.votes, "evidence": e.evidence,
                             "gold_votes": e.gold_votes} for n, e in sorted(self.labelers.items())},
            "iterations": self.iterations, "converged": self.converged, "units_fitted": self.units_fitted,
            "gold_units": self.gold_units, "ignored_votes": self.ignored_votes,
            "fallback_accuracy": self.fallback_accuracy, "no_evidence": self.no_evidence, "groups": self.groups,
        }  # fmt: skip


def _logit(a: float) -> float:
    return math.log(a / (1.0 - a))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit(votes: Mapping[Unit, list[tuple[str, int]]], truth: Mapping[Unit, int], *, prior_k: float = PRIOR_K,
        max_iter: int = MAX_ITER, tol: float = TOL, start: Mapping[str, float] | None = None
        ) -> tuple[dict[str, float], int, bool, int]:
    """The EM above on directional votes {unit: [(labeler, +1|-1)]} and gold orders {unit: +1|-1}.
    Returns ({labeler: accuracy} for labelers with evidence, iterations, converged, units fitted).
    Vectorised over votes (numpy): one iteration is two bincounts, so thousands of iterations take well under a
    second on a store of 10^4 votes (a labeler far below chance can take ~10^3 iterations to settle)."""
    import numpy as np

    units = [u for u, vs in votes.items() if u in truth or len({name for name, _ in vs}) >= 2]
    if not units:
        return {}, 0, True, 0
    names = sorted({name for u in units for name, _ in votes[u]})
    col = {n: i for i, n in enumerate(names)}
    vu, vl, vs = [], [], []
    for i, u in enumerate(units):
        for name, s in votes[u]:
            vu.append(i)
            vl.append(col[name])
            vs.append(s)
    vote_unit, vote_lab, sign = np.array(vu), np.array(vl), np.array(vs, dtype=float)
    is_gold = np.array([u in truth for u in units])
    gold_q = np.array([1.0 if truth.get(u, 0) > 0 else 0.0 for u in units])
    n_units, n_labs = len(units), len(names)
    # start: the soft majority vote (gold: the truth)
    q = (np.bincount(vote_unit, weights=(sign > 0), minlength=n_units) + 1) / (np.bincount(vote_unit, minlength=n_units) + 2)
    q = np.where(is_gold, gold_q, q)
    if start is not None:  # start from given accuracies instead (an E-step first)
        a0 = np.array([start.get(n, 0.5) for n in names])
        lo = np.bincount(vote_unit, weights=sign * np.log(a0 / (1 - a0))[vote_lab], minlength=n_units)
        q = np.where(is_gold, gold_q, 1.0 / (1.0 + np.exp(-lo)))
    count = np.bincount(vote_lab, minlength=n_labs)
    acc = np.full(n_labs, 0.5)
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        p_correct = np.where(sign > 0, q[vote_unit], 1.0 - q[vote_unit])  # M-step
        new = (np.bincount(vote_lab, weights=p_correct, minlength=n_labs) + prior_k - 1) / (count + 2 * (prior_k - 1))
        delta = float(np.max(np.abs(new - acc)))
        acc = new
        logit = np.log(acc / (1.0 - acc))  # E-step
        lo = np.bincount(vote_unit, weights=sign * logit[vote_lab], minlength=n_units)
        q = np.where(is_gold, gold_q, 1.0 / (1.0 + np.exp(-lo)))
        if delta < tol:
            converged = True
            break
    return {n: float(acc[col[n]]) for n in names}, iterations, converged, n_units


def estimate(tasks: Mapping[int, TaskRecord], current: list[JudgmentRecord], *, prior_k: float = PRIOR_K
             ) -> Reliability:
    """Per-labeler accuracy and per-comparison posteriors from the current judgments (flagged tasks left out)."""
    flagged = excluded_tasks(tasks, current)["flagged"]
    raw = collect_votes([j for j in current if j.task_id not in flagged], tasks)
    votes: dict[Unit, list[tuple[str, int]]] = {}
    ignored = 0
    for u, vs in raw.items():
        directional = [(v.user, v.sign) for v in vs if v.sign != 0]
        ignored += len(vs) - len(directional)
        if directional:
            votes[u] = directional
    truth: dict[Unit, int] = {}
    for (tid, i, k) in votes:
        g = tasks[tid].gold_ranks
        if g is not None and g[i] != g[k]:
            truth[(tid, i, k)] = 1 if g[i] < g[k] else -1
    acc, iterations, converged, fitted = fit(votes, truth, prior_k=prior_k)

    total: dict[str, int] = defaultdict(int)
    evidence: dict[str, int] = defaultdict(int)
    gold_votes: dict[str, int] = defaultdict(int)
    for u, vs in votes.items():
        informative = u in truth or len({n for n, _ in vs}) >= 2
        for name, _ in vs:
            total[name] += 1
            evidence[name] += informative
            gold_votes[name] += u in truth
    labelers = {}
    for name in total:
        a = acc.get(name)
        se = math.sqrt(a * (1 - a) / (evidence[name] + 2 * (prior_k - 1))) if a is not None else None
        labelers[name] = LabelerEstimate(name, a, se, total[name], evidence[name], gold_votes[name])
    fallback = sum(acc.values()) / len(acc) if acc else None
    no_evidence = sorted(n for n in total if n not in acc)
    posterior = {}
    if fallback is not None:
        for u, vs in votes.items():
            if u[0] in tasks and tasks[u[0]].gold_ranks is None:
                posterior[u] = _sigmoid(sum(s * _logit(acc.get(name, fallback)) for name, s in vs))
    return Reliability(labelers, posterior, iterations, converged, fitted, len(truth), ignored, fallback, no_evidence,
                       _groups(votes, gold_votes))


def _groups(votes: Mapping[Unit, list[tuple[str, int]]], gold_votes: Mapping[str, int]) -> list[dict]:
    """Labelers linked (directly or through others) by comparisons they both answered. The votes fix accuracies
    only up to a joint flip of a whole group (a < 1/2 for all of them explains the votes as well as a > 1/2); gold
    inside a group anchors it, else its orientation comes from EM's start (most labelers better than chance)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for vs in votes.values():
        names = [n for n, _ in vs]
        for n in names[1:]:
            parent[find(n)] = find(names[0])
        find(names[0])
    members: dict[str, list[str]] = defaultdict(list)
    for n in parent:
        members[find(n)].append(n)
    return [{"labelers": sorted(ms), "gold_votes": sum(gold_votes.get(n, 0) for n in ms)}
            for ms in sorted(members.values(), key=lambda m: sorted(m))]


def pair_weights(pairs: list[ConsensusPair], rel: Reliability) -> tuple[list[float], int]:
    """weight = max(0, 2q - 1) per consensus pair, q = P(its chosen response is truly better); and how many pairs
    the posterior orders the other way (weight 0)."""
    weights, against = [], 0
    for p in pairs:
        i, k = min(p.better, p.worse), max(p.better, p.worse)
        q_first = rel.posterior[(p.task_id, i, k)]
        q = q_first if p.better == i else 1.0 - q_first
        against += q < 0.5
        weights.append(max(0.0, 2.0 * q - 1.0))
    return weights, against

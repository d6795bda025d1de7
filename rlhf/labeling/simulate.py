"""Simulated labelers: a gold judge (text -> score) plus known noise, answering through the same store API as people.

Noise model (Bradley-Terry): for responses a, b with gold scores g_a, g_b and lengths len_a, len_b (characters),
    logit = beta * (g_a - g_b) + length_bias * (len_a - len_b) / 100,   P(a preferred over b) = sigmoid(logit)
A random clicker has logit 0. A labeler with `flip` f answers the other way with probability f (a deliberately
bad labeler: P(a preferred) = (1 - f) sigmoid(logit) + f (1 - sigmoid(logit)); a ranking is reversed with
probability f, so every pair in it flips with probability f). A pairwise task whose gold scores differ by less than
`tie_threshold` is answered "tie" (deterministically; random clickers never tie). A ranking is the order of the
noisy utilities beta * g + length_bias * len / 100 + Gumbel noise (Plackett-Luce): the difference of two Gumbels is
logistic, so every pair inside a ranking has exactly the Bradley-Terry probability above. Simulated rankings have
no ties.

Because the noise is known, the best accuracy any reward model can reach on the exported comparisons is known too:
for each exported pair, q = P(the consensus of its voters picks response i | some side wins), and
    bayes_accuracy = mean over held-out exported pairs of max(q, 1 - q)
(with one vote per pair, q is the labeler's own sigmoid, so this is the mean of max(p, 1 - p)). It is stored in the
store's meta under "simulation" and copied into `preferences.meta.json` by the export.
"""

from __future__ import annotations

import importlib
import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rlhf.errors import UserError
from rlhf.labeling.export import ConsensusPair, consensus_pairs
from rlhf.labeling.store import Answer, Shown, Store, TaskRecord

Judge = Callable[[str], float]
DEFAULT_JUDGE = "rlhf.data.gold:gold_score"
JUDGE_NAMES = {"gold": DEFAULT_JUDGE, "cost": "rlhf.data.gold:cost_score"}  # short names for --judge


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class SimLabeler:
    name: str
    beta: float = 5.0  # inverse noise: 0 = coin flip, large = always agrees with the gold judge
    length_bias: float = 0.0  # extra logit per 100 characters that one response is longer
    random_clicker: bool = False
    tie_threshold: float = 0.0  # pairwise: "tie" when |g_a - g_b| < this
    flip: float = 0.0  # probability of answering the opposite (pairwise) / the reversed order (ranking)

    def utility(self, score: float, text: str) -> float:
        if self.random_clicker:
            return 0.0
        return self.beta * score + self.length_bias * len(text) / 100

    def vote_probs(self, kind: str, g_a: float, g_b: float, text_a: str, text_b: str) -> tuple[float, float, float]:
        """(P(a preferred), P(b preferred), P(tie)) for one comparison."""
        if kind == "pairwise" and not self.random_clicker and abs(g_a - g_b) < self.tie_threshold:
            return 0.0, 0.0, 1.0
        p = sigmoid(self.utility(g_a, text_a) - self.utility(g_b, text_b))
        p = (1.0 - self.flip) * p + self.flip * (1.0 - p)
        return p, 1.0 - p, 0.0

    def answer(self, shown: Shown, scores: list[float], rng: random.Random) -> Answer:
        """Answer a shown task; `scores[p]` is the gold score of the response at shown position p."""
        client_id = f"sim-{shown.assignment_id}"
        texts = shown.responses
        if shown.kind == "pairwise":
            p_a, _p_b, p_tie = self.vote_probs("pairwise", scores[0], scores[1], texts[0], texts[1])
            if p_tie == 1.0:
                return Answer(shown.assignment_id, client_id, choice="tie")
            choice = "A" if rng.random() < p_a else "B"  # p_a includes the flip
            logit = abs(self.utility(scores[0], texts[0]) - self.utility(scores[1], texts[1]))
            strength = "much_better" if logit >= 3 else "better" if logit >= 1 else "slightly_better"
            return Answer(shown.assignment_id, client_id, choice=choice, strength=strength)
        # Gumbel-max trick: sorting utility + Gumbel(0, 1) noise samples a Plackett-Luce ranking.
        noisy = [self.utility(g, t) - math.log(-math.log(rng.random() or 1e-300)) for g, t in zip(scores, texts)]
        order = sorted(range(len(noisy)), key=lambda p: -noisy[p])
        if self.flip and rng.random() < self.flip:
            order.reverse()  # every pair of a reversed ranking flips: P(a over b) = (1-f) p + f (1-p), as vote_probs
        ranks = [0] * len(noisy)
        for rank, p in enumerate(order, start=1):
            ranks[p] = rank
        return Answer(shown.assignment_id, client_id, ranks=ranks)


def load_judge(spec: str) -> Judge:
    """'module:function' -> the function (e.g. the default 'rlhf.data.gold:gold_score'), or a short name of
    JUDGE_NAMES: 'gold' (the demo's sentiment judge), 'cost' (the demo's second judge, rlhf.data.gold.cost_score)."""
    spec = JUDGE_NAMES.get(spec, spec)
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise UserError(f"--judge {spec!r}: expected 'module:function', e.g. {DEFAULT_JUDGE}")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--judge {spec!r}: cannot load it ({e})") from None
    if not callable(fn):
        raise UserError(f"--judge {spec!r} is not a function")
    return fn


def consensus_probability(dists: list[tuple[float, float, float]]) -> float:
    """P(the vote sum is > 0 | it is != 0), votes independent with (P(+1), P(-1), P(0)) each."""
    dist: dict[int, float] = {0: 1.0}
    for p_plus, p_minus, p_zero in dists:
        nxt: dict[int, float] = defaultdict(float)
        for s, w in dist.items():
            nxt[s + 1] += w * p_plus
            nxt[s - 1] += w * p_minus
            nxt[s] += w * p_zero
        dist = nxt
    win = sum(w for s, w in dist.items() if s > 0)
    lose = sum(w for s, w in dist.items() if s < 0)
    return win / (win + lose) if win + lose > 0 else 0.5


def bayes_accuracy(
    tasks: Mapping[int, TaskRecord],
    pairs: list[ConsensusPair],
    labelers: Mapping[str, SimLabeler],
    score: Judge,
) -> dict[str, Any]:
    """Bayes-optimal accuracy on the held-out exported pairs (all pairs if none is held out)."""
    heldout = [p for p in pairs if p.split == "heldout"]
    scope, use = ("heldout", heldout) if heldout else ("all", pairs)
    terms, unknown = [], 0
    for p in use:
        if any(v.user not in labelers for v in p.votes):
            unknown += 1  # a person (or an import) voted: their noise is unknown
            continue
        task = tasks[p.task_id]
        i, k = min(p.better, p.worse), max(p.better, p.worse)
        a, b = task.responses[i], task.responses[k]
        dists = [labelers[v.user].vote_probs(task.kind, score(a), score(b), a, b) for v in p.votes]
        q = consensus_probability(dists)
        terms.append(max(q, 1.0 - q))
    return {
        "bayes_accuracy": sum(terms) / len(terms) if terms else None,
        "bayes_pairs": len(terms),
        "bayes_scope": scope,
        "pairs_with_unknown_noise": unknown,
    }


def simulate(
    store: Store,
    labelers: list[SimLabeler],
    judge: Judge,
    *,
    judge_name: str = "custom",
    heldout_fraction: float = 0.0,
    seed: int = 0,
    gold_rate: float = 0.0,
    max_judgments: int | None = None,
    mix_order: bool = False,
) -> dict[str, Any]:
    """Let the simulated labelers answer every task they can get (round robin, in a fixed order: with overlap k the
    same k labelers then share every task; `mix_order` shuffles the order each round), assign train/heldout splits,
    compute the Bayes-optimal accuracy and store it as meta "simulation". Returns that meta dict."""
    if not labelers:
        raise UserError("simulate needs at least one labeler (--labelers N)")
    if len({lab.name for lab in labelers}) != len(labelers):
        raise UserError("simulated labeler names must be distinct")
    rng = random.Random(seed)
    cache: dict[str, float] = {}

    def score(text: str) -> float:
        if text not in cache:
            cache[text] = float(judge(text))
        return cache[text]

    ids = {lab.name: store.ensure_user(lab.name, "labeler").id for lab in labelers}
    active = list(labelers)
    made = 0
    order_rng = random.Random(f"order-{seed}")  # its own stream: mix_order leaves the answers' draws alone
    while active and (max_judgments is None or made < max_judgments):
        if mix_order:  # who asks first each round: with overlap, labelers then share tasks with everyone
            order_rng.shuffle(active)
        for lab in list(active):
            shown = store.next_assignment(ids[lab.name], gold_rate=gold_rate, rng=rng)
            if shown is None:
                active.remove(lab)
                continue
            ans = lab.answer(shown, [score(t) for t in shown.responses], rng)
            _, created = store.submit(ids[lab.name], ans)
            made += created
            if max_judgments is not None and made >= max_judgments:
                break
    splits = store.assign_splits(heldout_fraction, seed, "simulate") if heldout_fraction > 0 else {}

    # Labelers of earlier runs keep their parameters, so their votes still count in the Bayes computation.
    previous = store.get_meta("simulation") or {}
    known = {d["name"]: SimLabeler(**d) for d in previous.get("labelers", [])}
    known.update({lab.name: lab for lab in labelers})
    tasks = {t.id: t for t in store.tasks()}
    pairs, _counts = consensus_pairs(tasks, store.judgments(current_only=True))
    meta = {
        "judge": judge_name,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "new_splits": splits,
        "judgments_made": made,
        "mix_order": mix_order,
        "labelers": [asdict(lab) for lab in known.values()],
        **bayes_accuracy(tasks, pairs, known, score),
    }
    store.set_meta("simulation", meta)
    return meta

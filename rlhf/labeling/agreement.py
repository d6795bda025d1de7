"""Agreement between labelers, on comparisons (see export.py): each rater's category per comparison is
"first" (response i better), "second" (response j better), "tie", or "both_bad" (pairwise only).

- Krippendorff's alpha, nominal, over all comparisons with >= 2 raters (missing ratings allowed).
- Fleiss' kappa needs the same number of raters per unit, so it is computed on the comparisons that have the most
  common rater count m >= 2 (reported with m and the number of units).
- Cohen's kappa per labeler against the others: every (labeler, other rater) pair of ratings on a shared comparison
  is pooled into one two-rater table.
- Gold accuracy: on gold tasks, the fraction of the gold ordered pairs the labeler ordered the same way.
- Estimated accuracy: each labeler's P(vote right) from overlap and gold by a one-coin Dawid-Skene EM
  (rlhf/labeling/reliability.py), with a rough standard error and the number of votes it rests on.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping
from datetime import timedelta
from typing import Any

from rlhf.labeling.export import Unit, collect_votes, excluded_tasks
from rlhf.labeling.store import KINDS, JudgmentRecord, Store, TaskRecord, utcnow

Ratings = Mapping[Hashable, Mapping[Hashable, Hashable]]  # unit -> rater -> category


def krippendorff_alpha_nominal(ratings: Ratings) -> float | None:
    """Krippendorff's alpha for nominal data (Krippendorff 2011, "Computing Krippendorff's alpha-reliability").

    Units with fewer than two ratings are not pairable and are ignored. None when undefined (no pairable units, or
    a single category overall so that expected disagreement is 0).
    """
    o: dict[tuple[Hashable, Hashable], float] = defaultdict(float)  # coincidence matrix
    for by_rater in ratings.values():
        m = len(by_rater)
        if m < 2:
            continue
        counts = Counter(by_rater.values())
        for c, nc in counts.items():
            for k, nk in counts.items():
                o[c, k] += nc * (nk - (c == k)) / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    observed = sum(v for (c, k), v in o.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n - 1) if n > 1 else 0.0
    if expected == 0:
        return None
    return 1.0 - observed / expected


def fleiss_kappa(ratings: Ratings) -> tuple[float | None, int, int]:
    """Fleiss' kappa on the units rated by the most common number m >= 2 of raters: (kappa, m, units used)."""
    sizes = Counter(len(r) for r in ratings.values() if len(r) >= 2)
    if not sizes:
        return None, 0, 0
    m = max(sizes, key=lambda s: (sizes[s], s))
    units = [Counter(r.values()) for r in ratings.values() if len(r) == m]
    n_units = len(units)
    p_bar = sum((sum(c * c for c in u.values()) - m) / (m * (m - 1)) for u in units) / n_units
    totals: Counter = Counter()
    for u in units:
        totals.update(u)
    p_e = sum((t / (n_units * m)) ** 2 for t in totals.values())
    if p_e == 1:
        return None, m, n_units
    return (p_bar - p_e) / (1 - p_e), m, n_units


def cohen_kappa(pairs: list[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters from their paired ratings; None if undefined (no pairs, or p_e = 1)."""
    n = len(pairs)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in pairs) / n
    ca = Counter(a for a, _ in pairs)
    cb = Counter(b for _, b in pairs)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)


def per_labeler_kappa(ratings: Ratings) -> dict[Hashable, tuple[float | None, int]]:
    """Cohen's kappa of each rater against all others pooled: {rater: (kappa, number of rating pairs)}."""
    pairs: dict[Hashable, list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for by_rater in ratings.values():
        for a, ca in by_rater.items():
            for b, cb in by_rater.items():
                if a != b:
                    pairs[a].append((ca, cb))
    return {r: (cohen_kappa(p), len(p)) for r, p in pairs.items()}


def comparison_ratings(tasks: Mapping[int, TaskRecord], current: list[JudgmentRecord]) -> dict[Unit, dict[str, str]]:
    """unit -> {labeler: category} from current judgments (flagged tasks left out, as in the export)."""
    flagged = excluded_tasks(tasks, current)["flagged"]
    both_bad = {(j.task_id, j.user_name) for j in current if j.kind == "pairwise" and j.answer["choice"] == "both_bad"}
    ratings: dict[Unit, dict[str, str]] = {}
    for unit, votes in collect_votes([j for j in current if j.task_id not in flagged], tasks).items():
        ratings[unit] = {
            v.user: "both_bad" if (unit[0], v.user) in both_bad else {1: "first", -1: "second", 0: "tie"}[v.sign] for v in votes
        }
    return ratings


def gold_accuracy(tasks: Mapping[int, TaskRecord], current: list[JudgmentRecord]) -> dict[str, tuple[int, int]]:
    """{labeler: (correct, total)} over the strictly ordered pairs of gold tasks."""
    gold = {t.id: t for t in tasks.values() if t.gold_ranks is not None}
    ratings = comparison_ratings(gold, [j for j in current if j.task_id in gold])
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (tid, i, k), by_user in ratings.items():
        g = gold[tid].gold_ranks
        if g[i] == g[k]:
            continue
        truth = "first" if g[i] < g[k] else "second"
        for user, cat in by_user.items():
            out[user][0] += cat == truth
            out[user][1] += 1
    return {u: (c, n) for u, (c, n) in out.items()}


def report(store: Store) -> dict[str, Any]:
    """Everything the admin page shows: progress, throughput, per-labeler figures and overall agreement."""
    tasks = {t.id: t for t in store.tasks()}
    all_j = store.judgments()
    superseded = {j.supersedes_id for j in all_j if j.supersedes_id is not None}
    current = [j for j in all_j if j.id not in superseded]
    ratings = comparison_ratings(tasks, current)
    alpha = krippendorff_alpha_nominal(ratings)
    fk, fk_m, fk_units = fleiss_kappa(ratings)
    kappas = per_labeler_kappa(ratings)
    gold = gold_accuracy(tasks, current)
    from rlhf.labeling.reliability import estimate

    rel = estimate(tasks, current)
    now = utcnow()
    labelers = []
    by_user: dict[str, list[JudgmentRecord]] = defaultdict(list)
    for j in current:
        by_user[j.user_name].append(j)
    for name in sorted(by_user):
        js = by_user[name]
        answers = [j for j in js if j.kind in KINDS]
        kappa, kappa_n = kappas.get(name, (None, 0))
        g_correct, g_total = gold.get(name, (0, 0))
        labelers.append(
            {
                "name": name,
                "role": js[0].user_role,
                "judgments": len(answers),
                "skips": sum(j.kind == "skip" for j in js),
                "flags": sum(j.kind == "flag" for j in js),
                "last_hour": sum(j.created_at >= now - timedelta(hours=1) for j in js),
                "median_time_s": statistics.median(j.time_spent_ms for j in answers) / 1000 if answers else None,
                "kappa": kappa,
                "kappa_pairs": kappa_n,
                "gold_accuracy": g_correct / g_total if g_total else None,
                "gold_pairs": g_total,
                "reliability": rel.labelers[name].accuracy if name in rel.labelers else None,
                "reliability_stderr": rel.labelers[name].stderr if name in rel.labelers else None,
                "reliability_evidence": rel.labelers[name].evidence if name in rel.labelers else 0,
            }
        )
    last_hour = sum(j.created_at >= now - timedelta(hours=1) for j in all_j)
    last_day = sum(j.created_at >= now - timedelta(days=1) for j in all_j)
    flagged = [
        {"task_id": j.task_id, "flag": j.answer["flag"], "by": j.user_name, "note": j.answer.get("note", "")}
        for j in current
        if j.kind == "flag"
    ]
    return {
        "progress": store.progress(),
        "throughput": {"last_hour": last_hour, "last_24h": last_day, "per_hour_24h": last_day / 24},
        "labelers": labelers,
        "krippendorff_alpha": alpha,
        "alpha_units": sum(len(r) >= 2 for r in ratings.values()),
        "fleiss_kappa": fk,
        "fleiss_raters": fk_m,
        "fleiss_units": fk_units,
        "flagged": flagged,
        "reliability": {k: v for k, v in rel.summary().items() if k != "labelers"},
        "simulation": store.get_meta("simulation"),
    }

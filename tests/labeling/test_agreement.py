"""Agreement metrics against the `krippendorff` package and hand-computed textbook values."""

from __future__ import annotations

import random

import krippendorff
import numpy as np
import pytest

from rlhf.labeling.agreement import (
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    per_labeler_kappa,
    report,
)
from rlhf.labeling.store import Answer, Shown, Store, TaskSpec


def as_matrix(ratings: dict, raters: list, codes: dict) -> np.ndarray:
    m = np.full((len(raters), len(ratings)), np.nan)
    for u, (_unit, by_rater) in enumerate(sorted(ratings.items())):
        for r, c in by_rater.items():
            m[raters.index(r), u] = codes[c]
    return m


@pytest.mark.parametrize("seed", range(6))
def test_alpha_matches_the_krippendorff_package(seed: int) -> None:
    rng = random.Random(seed)
    raters = list(range(rng.randint(2, 6)))
    ratings = {}
    for u in range(rng.randint(5, 40)):
        truth = rng.choice("abcd")
        ratings[u] = {r: truth if rng.random() < 0.6 else rng.choice("abcd") for r in raters if rng.random() < 0.75}
    expected = krippendorff.alpha(
        reliability_data=as_matrix(ratings, raters, {"a": 0, "b": 1, "c": 2, "d": 3}), level_of_measurement="nominal"
    )
    assert krippendorff_alpha_nominal(ratings) == pytest.approx(expected, abs=1e-9)


def test_alpha_hand_computed() -> None:
    # Coincidences: o_aa = 2, o_ab = o_ba = 1, o_bb = 4; n_a = 3, n_b = 5, n = 8.
    # alpha = 1 - (n - 1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 7 * 2 / 30 = 16/30.
    ratings = {1: {"x": "a", "y": "a"}, 2: {"x": "a", "y": "b"}, 3: {"x": "b", "y": "b"}, 4: {"x": "b", "y": "b"}}
    assert krippendorff_alpha_nominal(ratings) == pytest.approx(16 / 30)
    assert krippendorff_alpha_nominal({1: {"x": "a", "y": "a"}}) is None  # one category: undefined
    assert krippendorff_alpha_nominal({1: {"x": "a"}}) is None  # nothing pairable


def test_fleiss_kappa_wikipedia_example() -> None:
    # Fleiss' kappa article on Wikipedia: 10 subjects, 14 raters, 5 categories; P = 0.378, P_e = 0.213, kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = {}
    for s, row in enumerate(table):
        cats = [c for c, n in enumerate(row) for _ in range(n)]
        ratings[s] = dict(enumerate(cats))
    kappa, m, units = fleiss_kappa(ratings)
    assert (m, units) == (14, 10)
    assert kappa == pytest.approx(0.2099, abs=5e-4)
    # Units with another rater count are left out, not mixed in.
    ratings["extra"] = {0: 1, 1: 1}
    assert fleiss_kappa(ratings)[:2] == pytest.approx((0.2099, 14), abs=5e-4)


def test_cohen_kappa_hand_computed() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([]) is None
    two = {u: {"A": a, "B": b} for u, (a, b) in enumerate(pairs)}
    kappas = per_labeler_kappa(two)
    assert kappas["A"] == pytest.approx((0.4, 50)) and kappas["B"] == pytest.approx((0.4, 50))


def answer_canonical(store: Store, uid: int, shown: Shown, canonical: str | list[int]) -> None:
    """Answer in task terms: for pairwise 'first'/'second'/'tie'/'both_bad'; for a ranking, ranks per response."""
    cid = f"{uid}-{shown.assignment_id}"
    if shown.kind == "ranking":
        ranks = [canonical[i] for i in shown.shown_order]
        store.submit(uid, Answer(shown.assignment_id, cid, ranks=ranks))
    elif canonical in ("first", "second"):
        better = 0 if canonical == "first" else 1
        choice = "A" if shown.shown_order[0] == better else "B"
        store.submit(uid, Answer(shown.assignment_id, cid, choice=choice, strength="better"))
    else:
        store.submit(uid, Answer(shown.assignment_id, cid, choice=canonical))


def test_report_on_store_judgments(tmp_path) -> None:
    store = Store(tmp_path / "labels.db")
    tasks = [TaskSpec("pairwise", f"p{i}", [f"a{i}", f"b{i}"], {}, 3) for i in range(4)]
    tasks.append(TaskSpec("ranking", "r", ["x", "y", "z"], {}, 3))
    tasks.append(TaskSpec("pairwise", "g", ["good", "bad"], {}, 1, gold_ranks=[1, 2]))
    store.add_tasks(tasks)
    answers = {
        "L1": ["first", "first", "second", "tie", [1, 2, 3], "first"],
        "L2": ["first", "second", "second", "tie", [1, 1, 3], "second"],
        "L3": ["first", "first", "first", "both_bad", [2, 1, 3], "first"],
    }
    for name, given in answers.items():
        uid = store.create_user(name, "labeler").user.id
        by_prompt = {t.prompt: a for t, a in zip(tasks, given)}
        while (shown := store.next_assignment(uid, gold_rate=1.0)) is not None:
            answer_canonical(store, uid, shown, by_prompt[shown.prompt])
    r = report(store)
    # Units: 4 pairwise + 3 ranking pairs + 1 gold pair; categories per labeler, written out by hand.
    cats = {
        "L1": ["first", "first", "second", "tie", "first", "first", "first", "first"],
        "L2": ["first", "second", "second", "tie", "tie", "first", "first", "second"],
        "L3": ["first", "first", "first", "both_bad", "second", "first", "first", "first"],
    }
    codes = {"first": 0, "second": 1, "tie": 2, "both_bad": 3}
    matrix = np.array([[codes[c] for c in cats[n]] for n in ("L1", "L2", "L3")], dtype=float)
    assert r["krippendorff_alpha"] == pytest.approx(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
    assert (r["fleiss_raters"], r["fleiss_units"], r["alpha_units"]) == (3, 8, 8)
    by_name = {row["name"]: row for row in r["labelers"]}
    for name in cats:
        pairs = [(cats[name][u], cats[o][u]) for o in cats if o != name for u in range(8)]
        assert by_name[name]["kappa"] == pytest.approx(cohen_kappa(pairs))
        assert by_name[name]["kappa_pairs"] == 16
        assert by_name[name]["judgments"] == 6
    assert [by_name[n]["gold_accuracy"] for n in ("L1", "L2", "L3")] == [1.0, 0.0, 1.0]
    assert r["progress"]["tasks"] == 5 and r["progress"]["tasks_complete"] == 5
    assert r["throughput"]["last_hour"] == 18

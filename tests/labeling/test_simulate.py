"""Simulated labelers: the noise model, and the stored Bayes-optimal accuracy against a direct computation."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from rlhf.data.preferences import read_preferences, read_preferences_meta
from rlhf.labeling.cli import main
from rlhf.labeling.simulate import SimLabeler, consensus_probability, sigmoid, simulate
from rlhf.labeling.store import Shown, Store

try:  # the demo task's gold judge (rlhf/data/gold.py); a tiny stand-in keeps these tests independent of it
    from rlhf.data.gold import gold_score
except ImportError:  # pragma: no cover

    def gold_score(text: str) -> float:
        return sum(w in text for w in ("good", "great", "love")) - sum(w in text for w in ("bad", "awful", "hate"))


PHRASES = [
    "I love this film",
    "a great and moving story",
    "the acting was good",
    "it was fine I guess",
    "the plot was bad",
    "an awful waste of time",
    "I hate the ending",
    "the music was wonderful",
    "boring and slow",
    "",
]


def write_samples(path: Path, n: int, k: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            responses = [" ".join(rng.sample(PHRASES, 2)).strip() + "." * (r + 1) for r in range(k)]
            f.write(json.dumps({"prompt_id": f"p{i}", "prompt": f"Review {i}:", "responses": responses, "model": "t"}) + "\n")


def load_raw(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.stem + ".raw.jsonl").read_text().splitlines()]


def test_consensus_probability_matches_enumeration() -> None:
    rng = random.Random(0)
    for _ in range(30):
        dists = []
        for _ in range(rng.randint(1, 5)):
            kind = rng.random()
            if kind < 0.2:
                dists.append((0.0, 0.0, 1.0))
            else:
                p = rng.random()
                dists.append((p, 1 - p, 0.0))
        win = lose = 0.0
        for outcome in itertools.product((1, -1, 0), repeat=len(dists)):
            w = math.prod(d[{1: 0, -1: 1, 0: 2}[o]] for d, o in zip(dists, outcome))
            win += w * (sum(outcome) > 0)
            lose += w * (sum(outcome) < 0)
        expected = win / (win + lose) if win + lose else 0.5
        assert consensus_probability(dists) == pytest.approx(expected, abs=1e-12)


def test_ranking_pairs_follow_bradley_terry() -> None:
    # Gumbel-perturbed sort (Plackett-Luce): every pair inside a ranking has the BT marginal sigmoid(beta * dg).
    lab = SimLabeler("x", beta=2.0)
    scores = [0.5, 0.0, -0.4]
    shown = Shown(1, 1, "ranking", "p", ["a", "b", "c"], [0, 1, 2], None)
    rng = random.Random(0)
    n = 6000
    above = [0, 0, 0]
    for _ in range(n):
        ranks = lab.answer(shown, scores, rng).ranks
        above[0] += ranks[0] < ranks[1]
        above[1] += ranks[0] < ranks[2]
        above[2] += ranks[1] < ranks[2]
    expected = [sigmoid(2 * 0.5), sigmoid(2 * 0.9), sigmoid(2 * 0.4)]
    for got, want in zip(above, expected):
        assert got / n == pytest.approx(want, abs=0.025)  # ~4 standard errors


def test_stored_bayes_accuracy_matches_direct_computation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db, samples, out = str(tmp_path / "labels.db"), tmp_path / "samples.jsonl", tmp_path / "preferences.jsonl"
    write_samples(samples, 60, 2, seed=1)
    args = [
        "--samples",
        str(samples),
        "--kind",
        "pairwise",
        "--overlap",
        "1",
        "--labelers",
        "2",
        "--beta",
        "2,6",
        "--heldout",
        "0.4",
        "--seed",
        "3",
        "--judge",
        "rlhf.data.gold:gold_score",
    ]
    if gold_score.__module__ != "rlhf.data.gold":  # pragma: no cover - the stand-in above
        pytest.skip("rlhf.data.gold is missing")
    assert main(["label", "simulate", "--db", db, *args]) == 0
    assert main(["label", "export", "--db", db, "--out", str(out)]) == 0
    assert "Bayes-optimal accuracy" in capsys.readouterr().out

    rows = read_preferences(out)
    voter = {r["task_id"]: r["user"] for r in load_raw(out)}
    beta = {"sim-1": 2.0, "sim-2": 6.0}
    heldout = [r for r in rows if r["split"] == "heldout"]
    assert 10 <= len(heldout) <= 40 and {r["split"] for r in rows} == {"train", "heldout"}
    terms = []
    for r in heldout:
        p = 1 / (1 + math.exp(-beta[voter[r["task_id"]]] * (gold_score(r["chosen"]) - gold_score(r["rejected"]))))
        terms.append(max(p, 1 - p))
    direct = sum(terms) / len(terms)
    stored = Store(db).get_meta("simulation")
    assert stored["bayes_accuracy"] == pytest.approx(direct, abs=1e-12)
    assert stored["bayes_pairs"] == len(heldout) and stored["bayes_scope"] == "heldout"
    assert read_preferences_meta(out)["bayes_accuracy"] == pytest.approx(direct, abs=1e-12)


def test_bayes_accuracy_with_overlap_rankings_and_biased_labelers(tmp_path: Path) -> None:
    db, samples, out = str(tmp_path / "labels.db"), tmp_path / "samples.jsonl", tmp_path / "preferences.jsonl"
    write_samples(samples, 12, 3, seed=2)
    assert main(["label", "add-tasks", str(samples), "--kind", "ranking", "--overlap", "3", "--db", db]) == 0
    labelers = [
        SimLabeler("plain", beta=4.0),
        SimLabeler("long", beta=3.0, length_bias=2.0),
        SimLabeler("coin", random_clicker=True),
    ]
    store = Store(db)
    meta = simulate(store, labelers, gold_score, heldout_fraction=0.5, seed=5)
    assert meta["judgments_made"] == 36
    assert main(["label", "export", "--db", db, "--out", str(out)]) == 0
    rows = [r for r in read_preferences(out) if r["split"] == "heldout"]
    assert rows and all(r["group_id"] == f"task-{r['task_id']}" and r["n_votes"] == 3 for r in rows)
    by_name = {lab.name: lab for lab in labelers}

    def p_first(lab: SimLabeler, a: str, b: str) -> float:
        if lab.random_clicker:
            return 0.5
        logit = lab.beta * (gold_score(a) - gold_score(b)) + lab.length_bias * (len(a) - len(b)) / 100
        return 1 / (1 + math.exp(-logit))

    terms = []
    for r in rows:
        ps = [p_first(by_name[name], r["chosen"], r["rejected"]) for name in by_name]
        win = lose = 0.0
        for votes in itertools.product((1, -1), repeat=3):  # brute force over the three voters
            w = math.prod(p if v == 1 else 1 - p for p, v in zip(ps, votes))
            win += w * (sum(votes) > 0)
            lose += w * (sum(votes) < 0)
        q = win / (win + lose)
        terms.append(max(q, 1 - q))
    assert store.get_meta("simulation")["bayes_accuracy"] == pytest.approx(sum(terms) / len(terms), abs=1e-12)


def test_noisy_labels_reach_about_the_bayes_accuracy(tmp_path: Path) -> None:
    # The Bayes predictor (pick the response with the higher gold score) should agree with the simulated labels
    # about as often as the computed Bayes accuracy says.
    store = Store(tmp_path / "labels.db")
    samples = tmp_path / "s.jsonl"
    write_samples(samples, 200, 2, seed=3)
    assert main(["label", "add-tasks", str(samples), "--overlap", "1", "--db", str(tmp_path / "labels.db")]) == 0
    meta = simulate(store, [SimLabeler("one", beta=3.0)], gold_score, seed=11)
    out = tmp_path / "p.jsonl"
    main(["label", "export", "--db", str(tmp_path / "labels.db"), "--out", str(out)])
    rows = [r for r in read_preferences(out) if gold_score(r["chosen"]) != gold_score(r["rejected"])]
    agree = sum(gold_score(r["chosen"]) > gold_score(r["rejected"]) for r in rows) / len(rows)
    assert meta["bayes_scope"] == "all" and 0.6 < meta["bayes_accuracy"] < 0.95
    assert agree == pytest.approx(meta["bayes_accuracy"], abs=0.1)  # ~3 standard errors at n ~ 170


def test_ties_below_threshold_give_no_pair(tmp_path: Path) -> None:
    store = Store(tmp_path / "labels.db")
    samples = tmp_path / "s.jsonl"
    write_samples(samples, 40, 2, seed=4)
    main(["label", "add-tasks", str(samples), "--overlap", "1", "--db", str(tmp_path / "labels.db")])
    simulate(store, [SimLabeler("t", beta=5.0, tie_threshold=0.3)], gold_score, seed=0)
    ties = [j for j in store.judgments() if j.answer.get("choice") == "tie"]
    tasks = {t.id: t for t in store.tasks()}
    expected = [t for t in tasks.values() if abs(gold_score(t.responses[0]) - gold_score(t.responses[1])) < 0.3]
    assert len(ties) == len(expected) > 0
    from rlhf.labeling.export import build_export

    rows, _raw, meta = build_export(store)
    assert len(rows) == 40 - len(ties) and meta["counts"]["no_consensus"] == len(ties)


def test_simulate_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    assert main(["label", "simulate", "--db", db, "--beta", "x"]) == 2
    assert main(["label", "simulate", "--db", db, "--judge", "nope"]) == 2
    assert main(["label", "simulate", "--db", db, "--judge", "rlhf.nothing:here"]) == 2
    err = capsys.readouterr().err
    assert "--beta" in err and "module:function" in err and "cannot load" in err

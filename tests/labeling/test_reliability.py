"""Labeler reliability (rlhf/labeling/reliability.py): the EM recovers known accuracies, gold anchors it, the CLI
and the export show and use it, and the reward loss weights pairs by the exported `weight`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from rlhf.data.preferences import read_preferences
from rlhf.errors import UserError
from rlhf.labeling.cli import main
from rlhf.labeling.export import export
from rlhf.labeling.reliability import estimate, fit
from rlhf.labeling.simulate import SimLabeler, simulate
from rlhf.labeling.store import Store, TaskSpec


def spearman(x: list[float], y: list[float]) -> float:
    rank = lambda v: {i: r for r, i in enumerate(sorted(range(len(v)), key=v.__getitem__))}  # noqa: E731 (no ties)
    rx, ry = rank(x), rank(y)
    n = len(x)
    return 1 - 6 * sum((rx[i] - ry[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def test_em_recovers_known_accuracies_on_synthetic_votes() -> None:
    rng = random.Random(0)
    true = {"good": 0.95, "fair": 0.85, "meh": 0.7, "coin": 0.5, "adversary": 0.3}
    names = list(true)
    votes = {}
    for u in range(4000):
        z = rng.choice((1, -1))
        votes[(u, 0, 1)] = [(n, z if rng.random() < true[n] else -z) for n in rng.sample(names, 3)]
    acc, iterations, converged, fitted = fit(votes, {})
    assert converged and fitted == 4000
    for n in names:  # ~2400 votes each: standard error about 0.01
        assert abs(acc[n] - true[n]) < 0.03, (n, acc[n])
    assert spearman([acc[n] for n in names], [true[n] for n in names]) == 1.0


def test_gold_alone_gives_each_labeler_an_accuracy() -> None:
    # no overlap at all: every comparison has one vote, a quarter of them gold
    rng = random.Random(1)
    true = {"a": 0.9, "b": 0.6}
    votes, truth = {}, {}
    for u in range(2000):
        z = rng.choice((1, -1))
        n = "a" if u % 2 else "b"
        votes[(u, 0, 1)] = [(n, z if rng.random() < true[n] else -z)]
        if u % 4 < 2:
            truth[(u, 0, 1)] = z
    acc, _, converged, fitted = fit(votes, truth)
    assert converged and fitted == 1000  # only gold comparisons say anything about a lone voter
    assert abs(acc["a"] - 0.9) < 0.04 and abs(acc["b"] - 0.6) < 0.05


def _simulated_store(tmp_path: Path, overlap: int = 3) -> tuple[Store, list[SimLabeler]]:
    store = Store(tmp_path / "labels.db")
    rng = random.Random(2)
    specs = []
    for n in range(300):
        a, b = rng.random(), rng.random()
        specs.append(TaskSpec("pairwise", f"prompt {n}", [f"resp {n} {a:.6f}", f"resp {n} {b:.6f}"], {}, overlap))
    store.add_tasks(specs)
    labelers = [SimLabeler("sim-good", beta=20), SimLabeler("sim-ok", beta=4), SimLabeler("sim-noisy", beta=1),
                SimLabeler("sim-flipper", beta=20, flip=0.75)]
    return store, labelers


def _judge(text: str) -> float:
    return float(text.rsplit(" ", 1)[1])  # the number in the response is its gold score


def test_simulated_labelers_with_a_flipper_are_ranked_by_their_known_accuracy(tmp_path: Path) -> None:
    store, labelers = _simulated_store(tmp_path)
    simulate(store, labelers, _judge, seed=0)
    tasks = {t.id: t for t in store.tasks()}
    rel = estimate(tasks, store.judgments(current_only=True))
    # the known accuracy of each labeler: mean P(vote in the gold order) over the comparisons it answered
    known = {}
    for lab in labelers:
        ps = []
        for j in store.judgments(current_only=True):
            if j.user_name == lab.name:
                a, b = tasks[j.task_id].responses
                p_a = lab.vote_probs("pairwise", _judge(a), _judge(b), a, b)[0]
                ps.append(p_a if _judge(a) > _judge(b) else 1 - p_a)
        known[lab.name] = sum(ps) / len(ps)
    names = [lab.name for lab in labelers]
    est = [rel.labelers[n].accuracy for n in names]
    assert spearman(est, [known[n] for n in names]) == 1.0
    assert known["sim-flipper"] < 0.5 and rel.labelers["sim-flipper"].accuracy < 0.5  # worse than chance, seen as such
    for n in names:
        assert abs(rel.labelers[n].accuracy - known[n]) < 0.08, (n, rel.labelers[n].accuracy, known[n])


def test_groups_that_never_share_a_comparison_are_reported_and_mix_order_links_them(tmp_path: Path) -> None:
    # a fixed asking order with overlap 2 and 4 labelers: {1, 2} and {3, 4} always label together, so the votes fix
    # each pair's accuracies only up to a joint flip; mix_order shuffles who asks first and links everyone
    for mix, want in ((False, [["sim-1", "sim-2"], ["sim-3", "sim-4"]]), (True, [["sim-1", "sim-2", "sim-3", "sim-4"]])):
        store, _ = _simulated_store(tmp_path / str(mix), overlap=2)
        labelers = [SimLabeler(f"sim-{n}", beta=4) for n in range(1, 5)]
        meta = simulate(store, labelers, _judge, seed=0, mix_order=mix)
        rel = estimate({t.id: t for t in store.tasks()}, store.judgments(current_only=True))
        assert [g["labelers"] for g in rel.summary()["groups"]] == want and meta["mix_order"] is mix


def test_stats_and_export_show_and_use_the_estimates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, labelers = _simulated_store(tmp_path)
    simulate(store, labelers, _judge, seed=0)
    db = str(tmp_path / "labels.db")
    assert main(["label", "stats", "--db", db]) == 0
    stats = json.loads(capsys.readouterr().out)
    by_name = {lab["name"]: lab for lab in stats["labelers"]}
    assert by_name["sim-good"]["reliability"] > by_name["sim-noisy"]["reliability"] > by_name["sim-flipper"]["reliability"]
    assert by_name["sim-good"]["reliability_evidence"] > 0 and stats["reliability"]["converged"]

    out = tmp_path / "p.jsonl"
    assert main(["label", "export", "--db", db, "--out", str(out), "--weight", "reliability"]) == 0
    rows = read_preferences(out)
    meta = json.loads((tmp_path / "p.meta.json").read_text())
    tasks = {t.id: t for t in store.tasks()}
    rel = estimate(tasks, store.judgments(current_only=True))
    for r in rows:  # weight = max(0, 2q - 1), q = P(chosen truly better)
        t = tasks[r["task_id"]]
        q_first = rel.posterior[(t.id, 0, 1)]
        q = q_first if r["chosen"] == t.responses[0] else 1 - q_first
        assert r["weight"] == pytest.approx(max(0.0, 2 * q - 1), abs=1e-6)
    assert meta["reliability"]["weight"] == "reliability" and 0 < meta["reliability"]["mean_weight"] < 1
    assert sum(r["weight"] == 0 for r in rows) == meta["reliability"]["pairs_against_posterior"]
    # without --weight: the same pairs, no weight field
    export(store, tmp_path / "plain.jsonl")
    plain = read_preferences(tmp_path / "plain.jsonl")
    assert [{k: v for k, v in r.items() if k != "weight"} for r in rows] == plain and "weight" not in plain[0]


def test_cli_simulate_flip_makes_a_labeler_bad_and_checks_its_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    assert main(["label", "simulate", "--db", db, "--labelers", "2", "--flip", "1.5"]) == 2
    assert "--flip '1.5': each value must be a probability in [0, 1]" in capsys.readouterr().err
    store, _ = _simulated_store(tmp_path)
    assert main(["label", "simulate", "--db", db, "--labelers", "3", "--beta", "20", "--flip", "0,0,1",
                 "--judge", "tests.labeling.test_reliability:_judge"]) == 0
    meta = store.get_meta("simulation")
    assert [lab["flip"] for lab in meta["labelers"]] == [0.0, 0.0, 1.0]
    rel = estimate({t.id: t for t in store.tasks()}, store.judgments(current_only=True))
    assert rel.labelers["sim-3"].accuracy < 0.2 < 0.8 < rel.labelers["sim-1"].accuracy  # always the wrong way


def test_weight_reliability_needs_overlap_or_gold(tmp_path: Path) -> None:
    store, labelers = _simulated_store(tmp_path, overlap=1)
    simulate(store, labelers[:2], _judge, seed=0)
    with pytest.raises(UserError, match="no labeler's accuracy can be estimated"):
        export(store, tmp_path / "p.jsonl", weight="reliability")


def test_weighted_reward_loss_is_the_unweighted_one_at_weight_1_and_follows_the_formula() -> None:
    from rlhf.stages.reward import preference_loss

    torch.manual_seed(0)
    rewards = torch.randn(8, requires_grad=True)
    batch = {"chosen": torch.tensor([0, 2, 4, 6]), "rejected": torch.tensor([1, 3, 5, 7]),
             "tie": torch.zeros(4, dtype=torch.bool), "margin": torch.tensor([0.5, 0.0, 1.0, 0.2])}
    plain, _ = preference_loss(rewards, batch, use_margin=True)
    ones, _ = preference_loss(rewards, {**batch, "weight": torch.ones(4)}, use_margin=True)
    assert torch.equal(plain, ones)
    w = torch.tensor([1.0, 0.0, 0.5, 0.25])
    weighted, stats = preference_loss(rewards, {**batch, "weight": w}, use_margin=True)
    d = rewards[batch["chosen"]] - rewards[batch["rejected"]] - batch["margin"]
    assert torch.allclose(weighted, -(w * torch.nn.functional.logsigmoid(d)).mean())
    assert not torch.allclose(weighted, plain)
    weighted.backward()
    assert rewards.grad[2] == 0 and rewards.grad[3] == 0  # a weight-0 pair gives no gradient


def test_reward_rows_carry_their_weight_into_the_batch(tmp_path: Path) -> None:
    from rlhf.train.pairs import collate_pairs, parse_row

    class Table:  # stands in for SequenceTable: one id per distinct (prompt, response)
        def __init__(self) -> None:
            self.seqs, self.prompt_lens, self.ids = [], [], {}

        def add(self, prompt, response, ended=True):
            key = (prompt, response)
            if key not in self.ids:
                self.ids[key] = len(self.seqs)
                self.seqs.append([1, 2, 3 + len(self.seqs)])
                self.prompt_lens.append(1)
            return self.ids[key]

    t = Table()
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "weight": 0.25},
            {"prompt": "p", "chosen": "c", "rejected": "d", "chosen_ended": None},
            {"prompt": "p", "chosen": "e", "rejected": "f", "weight": None}]
    pairs = [parse_row(r, f"f:{n}", t, "skip") for n, r in enumerate(rows, 1)]
    assert collate_pairs(pairs, t, 0)["weight"].tolist() == [0.25, 1.0, 1.0]
    with pytest.raises(UserError, match="field 'weight' must be >= 0"):
        parse_row({"prompt": "p", "chosen": "a", "rejected": "b", "weight": -1}, "f:9", t, "skip")

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.core import dpo_loss, pairwise_loss, ranking_to_pairs


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_pairwise_loss_hand_computed():
    chosen = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    loss, stats = pairwise_loss(chosen, rejected)
    diffs = [1.0, -0.5, 0.0]
    assert loss.item() == pytest.approx(-statistics.fmean(log_sigmoid(d) for d in diffs))
    assert stats["accuracy"].item() == pytest.approx(1 / 3)  # the tie counts as wrong
    assert stats["margin_mean"].item() == pytest.approx(statistics.fmean(diffs))
    loss.backward()
    # d/dchosen of -log sigmoid(d) / N = -(1 - sigmoid(d)) / N
    assert chosen.grad.tolist() == pytest.approx([-(1 - 1 / (1 + math.exp(-d))) / 3 for d in diffs])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(0, 2)), min_size=1, max_size=8))
def test_pairwise_loss_with_margin_matches_manual(rows):
    chosen = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    rejected = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    margin = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    loss, stats = pairwise_loss(chosen, rejected, margin)
    assert loss.item() == pytest.approx(-statistics.fmean(log_sigmoid(c - r - m) for c, r, m in rows), rel=1e-9)
    assert stats["accuracy"].item() == pytest.approx(statistics.fmean(float(c > r) for c, r, _ in rows))
    scalar_loss, _ = pairwise_loss(chosen, rejected, 0.5)
    assert scalar_loss.item() == pytest.approx(-statistics.fmean(log_sigmoid(c - r - 0.5) for c, r, _ in rows))


def test_pairwise_loss_errors():
    with pytest.raises(ValueError, match="N = 0"):
        pairwise_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        pairwise_loss(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        pairwise_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        pairwise_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))


def test_ranking_to_pairs_with_ties():
    assert ranking_to_pairs([1, 2]) == [(0, 1)]
    assert ranking_to_pairs([2, 1]) == [(1, 0)]
    assert ranking_to_pairs([2, 1, 2]) == [(1, 0), (1, 2)]
    assert ranking_to_pairs([3, 1, 2, 1]) == [(1, 0), (1, 2), (2, 0), (3, 0), (3, 2)]
    assert ranking_to_pairs((1, 1, 1)) == []
    assert ranking_to_pairs([1, 2, 3, 4]) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=7))
def test_ranking_to_pairs_property(ranks):
    pairs = ranking_to_pairs(ranks)
    expected = {(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]}
    assert set(pairs) == expected and len(pairs) == len(expected)
    assert pairs == sorted(pairs)


@pytest.mark.parametrize(
    ("ranks", "match"),
    [([1], "at least 2"), ([], "at least 2"), ([1, 0], "index 1"), ([1, 2.0], "index 1"), ([True, 2], "index 0"),
     ("12", "list"), (None, "list")],
)
def test_ranking_to_pairs_errors(ranks, match):
    with pytest.raises(ValueError, match=match):
        ranking_to_pairs(ranks)


# --- DPO (Rafailov et al. 2023, eq. 7; label smoothing = conservative DPO, Mitchell 2023) -------------------------


def test_dpo_loss_hand_computed():
    # two pairs; log-probs summed over each response
    pc = torch.tensor([-4.0, -6.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-5.0, -5.5], dtype=torch.float64, requires_grad=True)
    rc = torch.tensor([-4.5, -6.0], dtype=torch.float64)
    rr = torch.tensor([-4.5, -5.0], dtype=torch.float64)
    beta = 0.5
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    # h_c = [0.5, 0.0], h_r = [-0.5, -0.5]; beta (h_c - h_r) = [0.5, 0.25]
    z = [0.5, 0.25]
    assert loss.item() == pytest.approx(-(log_sigmoid(0.5) + log_sigmoid(0.25)) / 2, rel=1e-12)
    assert stats["accuracy"].item() == 1.0
    assert stats["margin"].item() == pytest.approx(0.375)
    assert stats["chosen_logratio"].item() == pytest.approx(0.25)
    assert stats["rejected_logratio"].item() == pytest.approx(-0.5)
    loss.backward()
    # d/d pc_i of -log sigmoid(z_i) / N = -beta (1 - sigmoid(z_i)) / N, and the opposite for pr
    grad = [-beta * (1 - 1 / (1 + math.exp(-zi))) / 2 for zi in z]
    assert pc.grad.tolist() == pytest.approx(grad, rel=1e-12)
    assert pr.grad.tolist() == pytest.approx([-g for g in grad], rel=1e-12)


def test_dpo_label_smoothing_is_conservative_dpo():
    pc, pr = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -1.0, -3.5])
    rc, rr = torch.tensor([-1.5, -2.0, -3.0]), torch.tensor([-1.5, -1.5, -3.0])
    eps, beta = 0.2, 0.1
    loss, stats = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)
    z = [beta * ((c - a) - (r - b)) for c, r, a, b in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    want = statistics.fmean(-(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x) for x in z)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert stats["accuracy"].item() == pytest.approx(statistics.fmean(float(x > 0) for x in z))


def test_dpo_policy_equal_to_reference_gives_log2_and_zero_ratios():
    logp = torch.tensor([-3.0, -7.0, -1.0])
    loss, stats = dpo_loss(logp, logp - 1, logp, logp - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["margin"].item() == 0 and stats["chosen_logratio"].item() == 0 and stats["accuracy"].item() == 0


@pytest.mark.parametrize("kw, message", [
    ({"beta": 0.0}, "beta must be > 0"),
    ({"beta": 0.1, "label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
])
def test_dpo_loss_refuses_bad_arguments(kw, message):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=message):
        dpo_loss(x, x, x, x, **kw)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(x, torch.zeros(3), x, x, beta=0.1)

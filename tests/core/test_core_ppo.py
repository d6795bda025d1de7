import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.core import gae, ppo_policy_loss, ppo_value_loss
from tests.core._core_helpers import gae_loop, mask_from_lengths, padded_batches, valid_lists

SETTINGS = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------- gae


def test_gae_hand_computed():
    rewards = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 7.0]], dtype=torch.float64)
    adv, ret = gae(rewards, values, mask_from_lengths([2], 3), gamma=0.9, lam=0.8)
    # delta_1 = 2 + 0 - 1 = 1 (V = 0 after the last token); delta_0 = 1 + 0.9 * 1 - 0.5 = 1.4
    # A_1 = 1; A_0 = 1.4 + 0.72 * 1 = 2.12; returns = A + V
    assert adv[0].tolist() == pytest.approx([2.12, 1.0, 0.0])
    assert ret[0].tolist() == pytest.approx([2.62, 2.0, 0.0])


def test_gae_length_one_and_monte_carlo_limit():
    adv, ret = gae(torch.tensor([[3.0]]), torch.tensor([[1.0]]), torch.tensor([[True]]), 1.0, 1.0)
    assert adv.tolist() == [[2.0]] and ret.tolist() == [[3.0]]
    # gamma = lam = 1: returns are the undiscounted sums of future rewards, whatever the values
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    _, ret = gae(rewards, torch.randn(1, 4), mask_from_lengths([3], 4), 1.0, 1.0)
    assert ret[0].tolist() == pytest.approx([6.0, 5.0, 3.0, 0.0])


@SETTINGS
@given(padded_batches(n_tensors=2), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_gae_matches_plain_loop(batch, gamma, lam):
    (rewards, values), mask = batch
    # garbage at padded positions must not leak in
    noisy_values = torch.where(mask, values, float("nan")).requires_grad_()
    adv, ret = gae(rewards, noisy_values, mask, gamma, lam)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)
    for b, (r_row, v_row) in enumerate(zip(valid_lists(rewards, mask), valid_lists(values, mask))):
        exp_adv, exp_ret = gae_loop(r_row, v_row, gamma, lam)
        n = len(r_row)
        assert adv[b, :n].tolist() == pytest.approx(exp_adv, rel=1e-9, abs=1e-9)
        assert ret[b, :n].tolist() == pytest.approx(exp_ret, rel=1e-9, abs=1e-9)


def test_gae_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"rows \[0\].*no valid token"):
        gae(x, x, mask_from_lengths([0, 2], 3), 1.0, 0.95)
    with pytest.raises(ValueError, match="right-padded"):
        gae(x, x, torch.tensor([[True, False, True], [True, True, True]]), 1.0, 0.95)
    with pytest.raises(ValueError, match="gamma"):
        gae(x, x, mask_from_lengths([1, 2], 3), 1.5, 0.95)
    with pytest.raises(ValueError, match="lam"):
        gae(x, x, mask_from_lengths([1, 2], 3), 1.0, -0.1)
    with pytest.raises(ValueError, match="values"):
        gae(x, torch.zeros(2, 4), mask_from_lengths([1, 2], 3), 1.0, 0.9)
    with pytest.raises(ValueError, match="2-D"):
        gae(torch.zeros(3), torch.zeros(3), torch.ones(3, dtype=torch.bool), 1.0, 0.9)


# ---------------------------------------------------------------- policy loss


def test_policy_loss_clipping_cases_by_hand():
    eps = 0.2
    # one token per row: (advantage, ratio) -> which term wins
    cases = [
        (2.0, 1.5),  # A > 0, ratio above 1 + eps: clipped (-2 * 1.2), no gradient
        (2.0, 0.5),  # A > 0, ratio below 1 - eps: unclipped (-2 * 0.5), gradient
        (-2.0, 1.5),  # A < 0, ratio above 1 + eps: unclipped (2 * 1.5), gradient
        (-2.0, 0.5),  # A < 0, ratio below 1 - eps: clipped (2 * 0.8), no gradient
        (1.0, 1.1),  # inside the range: unclipped
    ]
    adv = torch.tensor([[a] for a, _ in cases], dtype=torch.float64)
    old = torch.zeros(5, 1, dtype=torch.float64)
    logp = torch.tensor([[math.log(r)] for _, r in cases], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(5, 1, dtype=torch.bool)
    loss, stats = ppo_policy_loss(logp, old, adv, mask, eps)
    expected_terms = [-2 * 1.2, -2 * 0.5, 2 * 1.5, 2 * 0.8, -1.1]
    assert loss.item() == pytest.approx(sum(expected_terms) / 5)
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio / N; clipped tokens get exactly 0
    assert logp.grad[:, 0].tolist() == pytest.approx([0.0, -2 * 0.5 / 5, 2 * 1.5 / 5, 0.0, -1.1 / 5])
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[3, 0].item() == 0.0
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    ratios = [r for _, r in cases]
    assert stats["approxkl"].item() == pytest.approx(statistics.fmean(r - 1 - math.log(r) for r in ratios))
    assert stats["ratio_mean"].item() == pytest.approx(statistics.fmean(ratios))
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["ratio_min"].item() == pytest.approx(0.5)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_policy_loss_on_policy_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -3.0, 99.0]])
    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, mask_from_lengths([2], 3), 0.2)
    assert loss.item() == pytest.approx(1.0)
    assert stats["clipfrac"].item() == 0.0 and stats["approxkl"].item() == 0.0


@SETTINGS
@given(padded_batches(n_tensors=3), st.floats(0.05, 0.5))
def test_policy_loss_matches_loop(batch, eps):
    (logp, old, adv), mask = batch
    logp = logp * 0.2  # keep ratios in a plausible range
    old = old * 0.2
    garbage_logp = torch.where(mask, logp, float("inf")).requires_grad_()
    loss, stats = ppo_policy_loss(garbage_logp, old, adv, mask, eps)
    terms, clipped, grads = [], [], []
    n = int(mask.sum())
    for lp_row, o_row, a_row in zip(valid_lists(logp, mask), valid_lists(old, mask), valid_lists(adv, mask)):
        for lp, o, a in zip(lp_row, o_row, a_row):
            r = math.exp(lp - o)
            un, cl = -a * r, -a * min(max(r, 1 - eps), 1 + eps)
            terms.append(max(un, cl))
            clipped.append(cl > un)
            grads.append(0.0 if cl > un else -a * r / n)
    assert loss.item() == pytest.approx(statistics.fmean(terms), rel=1e-9, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / n)
    loss.backward()
    assert torch.all(garbage_logp.grad[~mask] == 0)
    assert garbage_logp.grad[mask].tolist() == pytest.approx(grads, rel=1e-9, abs=1e-12)


def test_policy_loss_errors():
    x = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(x, x, x, mask, 0.0)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(x, x, torch.zeros(1, 3), mask, 0.2)
    with pytest.raises(ValueError, match="no valid entry"):
        ppo_policy_loss(x, x, x, torch.zeros(1, 2, dtype=torch.bool), 0.2)


# ---------------------------------------------------------------- value loss


def test_value_loss_clipping_by_hand():
    c = 0.2
    old = torch.tensor([[1.0], [1.0], [1.0]], dtype=torch.float64)
    values = torch.tensor([[2.0], [2.0], [1.1]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[3.0], [0.0], [2.0]], dtype=torch.float64)
    mask = torch.ones(3, 1, dtype=torch.bool)
    loss, stats = ppo_value_loss(values, old, returns, mask, c)
    # row 0: V_clip = 1.2, err 1 vs clipped 3.24 -> clipped taken (no gradient)
    # row 1: V_clip = 1.2, err 4 vs clipped 1.44 -> unclipped; row 2: inside the range, both 0.81
    assert loss.item() == pytest.approx(0.5 * (3.24 + 4.0 + 0.81) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert values.grad[:, 0].tolist() == pytest.approx([0.0, (2.0 - 0.0) / 3, (1.1 - 2.0) / 3])

    loss_none, stats_none = ppo_value_loss(values, old, returns, mask, None)
    assert loss_none.item() == pytest.approx(0.5 * (1.0 + 4.0 + 0.81) / 3)
    assert stats_none["clipfrac"].item() == 0.0
    assert stats_none["value_mean"].item() == pytest.approx((2.0 + 2.0 + 1.1) / 3)
    assert stats_none["return_mean"].item() == pytest.approx(5.0 / 3)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = mask_from_lengths([3], 4)
    perfect = ppo_value_loss(returns.clone(), returns, returns, mask, None)[1]["explained_variance"]
    assert perfect.item() == pytest.approx(1.0)
    constant = ppo_value_loss(torch.full((1, 4), 2.0), returns, returns, mask, None)[1]["explained_variance"]
    assert constant.item() == pytest.approx(0.0)
    # var(R - V) = var([1, 1, 0]) = 2/9, var(R) = 2/3 -> 1 - 1/3
    half = ppo_value_loss(torch.tensor([[0.0, 1.0, 3.0, 0.0]]), returns, returns, mask, None)[1]
    assert half["explained_variance"].item() == pytest.approx(2 / 3)
    flat = ppo_value_loss(torch.zeros(1, 4), returns, torch.ones(1, 4), mask, None)[1]
    assert flat["explained_variance"].item() == 0.0  # var(R) = 0: defined as 0, not NaN


@SETTINGS
@given(padded_batches(n_tensors=3), st.one_of(st.none(), st.floats(0.05, 2.0)))
def test_value_loss_matches_loop(batch, c):
    (values, old, returns), mask = batch
    noisy = torch.where(mask, values, float("nan")).requires_grad_()
    loss, stats = ppo_value_loss(noisy, old, returns, mask, c)
    terms, clipped = [], []
    for v_row, o_row, r_row in zip(valid_lists(values, mask), valid_lists(old, mask), valid_lists(returns, mask)):
        for v, o, r in zip(v_row, o_row, r_row):
            err = (v - r) ** 2
            if c is None:
                terms.append(err)
                clipped.append(False)
            else:
                err_c = (o + min(max(v - o, -c), c) - r) ** 2
                terms.append(max(err, err_c))
                clipped.append(err_c > err)
    assert loss.item() == pytest.approx(0.5 * statistics.fmean(terms), rel=1e-9)
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    loss.backward()
    assert torch.all(noisy.grad[~mask] == 0)


def test_value_loss_errors():
    x = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip_range_value"):
        ppo_value_loss(x, x, x, mask, -1.0)
    with pytest.raises(ValueError, match="returns"):
        ppo_value_loss(x, x, torch.zeros(2, 2), mask, 0.2)

"""The stability options' math (decoupled / length-adaptive GAE lambda, importance weights for a separate sampler,
the weighted policy loss) against plain loops and hand computations."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.core import gae, importance_weights, length_adaptive_lam, ppo_policy_loss
from tests.core._core_helpers import gae_loop, mask_from_lengths, padded_batches, valid_lists

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(padded_batches(n_tensors=2), st.floats(0.0, 1.0), st.data())
def test_gae_with_one_lambda_per_row_matches_the_loop(batch, gamma, data):
    (rewards, values), mask = batch
    lams = data.draw(st.lists(st.floats(0.0, 1.0), min_size=mask.shape[0], max_size=mask.shape[0]))
    adv, ret = gae(rewards, values, mask, gamma, torch.tensor(lams, dtype=torch.float64))
    for i, (r, v) in enumerate(zip(valid_lists(rewards, mask), valid_lists(values, mask))):
        a_ref, ret_ref = gae_loop(r, v, gamma, lams[i])
        assert valid_lists(adv, mask)[i] == pytest.approx(a_ref, abs=1e-9)
        assert valid_lists(ret, mask)[i] == pytest.approx(ret_ref, abs=1e-9)


def test_gae_lambda_tensor_is_checked():
    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        gae(r, r, mask_from_lengths([3, 2], 3), 1.0, torch.tensor([0.9]))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        gae(r, r, mask_from_lengths([3, 2], 3), 1.0, torch.tensor([0.9, 1.5]))


def test_decoupled_lambda_value_targets_are_monte_carlo():
    """lam_value = 1 (VC-PPO / VAPO): the value targets are the sums of future rewards, whatever the values; the
    policy's advantages at lam = 0.95 are not."""
    rewards = torch.tensor([[0.0, -0.1, 1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.3, 0.2, 0.5, 9.0]], dtype=torch.float64)
    mask = mask_from_lengths([3], 4)
    _, ret = gae(rewards, values, mask, 1.0, 1.0)
    assert ret[0].tolist() == pytest.approx([0.9, 0.9, 1.0, 0.0])
    adv, _ = gae(rewards, values, mask, 1.0, 0.95)
    assert adv[0, 0].item() == pytest.approx(gae_loop([0.0, -0.1, 1.0], [0.3, 0.2, 0.5], 1.0, 0.95)[0][0])


def test_length_adaptive_lambda_hand_computed():
    lam = length_adaptive_lam(torch.tensor([1, 20, 100, 1000]), alpha=0.05)
    # 1 - 1/(0.05 * L): L=1 -> -19 -> clipped to 0; L=20 -> 0; L=100 -> 0.8; L=1000 -> 0.98
    assert lam.tolist() == pytest.approx([0.0, 0.0, 0.8, 0.98])
    with pytest.raises(ValueError, match="lengths"):
        length_adaptive_lam(torch.tensor([0, 3]), 0.05)


def test_importance_weights_hand_computed():
    trainer = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2), 0.0]])
    sampler = torch.tensor([[math.log(0.25), math.log(0.9), math.log(0.8), 5.0]])
    mask = mask_from_lengths([3], 4)
    # rho = trainer / sampler = [2.0, 1.0, 0.25]; threshold 1.5
    w, stats = importance_weights(trainer, sampler, mask, "tis", 1.5)
    assert w[0].tolist() == pytest.approx([1.5, 1.0, 0.25, 0.0])
    assert stats["clipped_frac"].item() == pytest.approx(1 / 3)
    assert stats["logprob_diff_mean"].item() == pytest.approx((math.log(2) + 0 + math.log(4)) / 3)
    w, _ = importance_weights(trainer, sampler, mask, "mis", 1.5)
    assert w[0].tolist() == pytest.approx([0.0, 1.0, 0.25, 0.0])  # the token over the threshold is dropped
    with pytest.raises(ValueError, match="unknown kind"):
        importance_weights(trainer, sampler, mask, "xis", 1.5)
    with pytest.raises(ValueError, match="threshold"):
        importance_weights(trainer, sampler, mask, "tis", 0.5)


@SETTINGS
@given(padded_batches(n_tensors=4), st.floats(0.05, 0.5))
def test_weighted_policy_loss_matches_a_plain_loop(batch, eps):
    (logp, old_logp, adv, w), mask = batch
    logp, old_logp, w = logp / 10, old_logp / 10, w.abs()
    loss, _ = ppo_policy_loss(logp, old_logp, adv, mask, eps, weights=w)
    terms = []
    for lp, olp, a, wt in zip(*(valid_lists(x, mask) for x in (logp, old_logp, adv, w))):
        for x, y, z, k in zip(lp, olp, a, wt):
            ratio = math.exp(x - y)
            terms.append(k * max(-z * ratio, -z * min(max(ratio, 1 - eps), 1 + eps)))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9, abs=1e-12)


def test_weights_of_one_give_the_plain_loss_and_weights_carry_no_gradient():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    old, adv = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    mask = mask_from_lengths([5, 3, 1], 5)
    plain, _ = ppo_policy_loss(logp, old, adv, mask, 0.2)
    w = torch.ones(3, 5, dtype=torch.float64, requires_grad=True)
    ones, _ = ppo_policy_loss(logp, old, adv, mask, 0.2, weights=w)
    assert ones.item() == plain.item()
    ones.backward()
    assert w.grad is None and logp.grad is not None

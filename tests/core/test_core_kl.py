import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.core import AdaptiveKLController, FixedKLController, kl_estimate, shape_rewards
from tests.core._core_helpers import mask_from_lengths, padded_batches


def test_kl_estimate_hand_computed():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)  # d = [0.5, -1.0]
    assert kl_estimate(logp, ref, "k1")[0].tolist() == pytest.approx([0.5, -1.0])
    assert kl_estimate(logp, ref, "k2")[0].tolist() == pytest.approx([0.125, 0.5])
    assert kl_estimate(logp, ref, "k3")[0].tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0])


def test_kl_estimate_k3_accurate_for_tiny_differences():
    d = torch.tensor([1e-6], dtype=torch.float32)
    # k3 ~ d^2 / 2 for small d; exp(-d) - 1 in float32 would lose it entirely
    assert kl_estimate(d, torch.zeros(1), "k3").item() == pytest.approx(0.5e-12, rel=1e-3)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_k1_and_k3_expectations_equal_closed_form_kl(v, seed):
    """Averaged over exact samples from pi (weights pi(x)), k1 and k3 give KL(pi || ref) = sum pi log(pi / ref)."""
    gen = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(v, generator=gen, dtype=torch.float64), 0)
    ref = torch.log_softmax(torch.randn(v, generator=gen, dtype=torch.float64), 0)
    p = [math.exp(x) for x in logp.tolist()]
    closed = sum(pi * (a - b) for pi, a, b in zip(p, logp.tolist(), ref.tolist()))
    for kind in ("k1", "k3"):
        est = kl_estimate(logp, ref, kind).tolist()
        assert sum(pi * e for pi, e in zip(p, est)) == pytest.approx(closed, abs=1e-12)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()


def test_kl_estimate_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(x, x, "abs")
    with pytest.raises(ValueError, match="shape"):
        kl_estimate(x, torch.zeros(2, 2), "k1")


def test_fixed_controller():
    c = FixedKLController(0.05)
    assert c.update(100.0, 512) == 0.05 and c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05
    with pytest.raises(ValueError, match="coef"):
        FixedKLController(-0.1)
    with pytest.raises(ValueError, match="'fixed'"):
        AdaptiveKLController(0.1, 6.0, 10000).load_state_dict(c.state_dict())


def test_adaptive_controller_sequence_by_hand():
    c = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    # kl 9: error 0.5 clipped to 0.2 -> x (1 + 0.2 * 256 / 10000) = x 1.00512
    assert c.update(9.0, 256) == pytest.approx(0.2 * 1.00512)
    # kl 3 (a tensor, as it comes from the rollout): error -0.5 clipped to -0.2 -> x 0.99488
    assert c.update(torch.tensor(3.0), 256) == pytest.approx(0.2 * 1.00512 * 0.99488)
    # kl 6.6: error 0.1, not clipped -> x (1 + 0.1 * 100 / 10000) = x 1.001
    assert c.update(6.6, 100) == pytest.approx(0.2 * 1.00512 * 0.99488 * 1.001)
    # kl on target: unchanged
    before = c.value
    assert c.update(6.0, 1000) == pytest.approx(before)

    resumed = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    resumed.load_state_dict(c.state_dict())
    assert resumed.value == c.value
    assert resumed.update(7.0, 64) == c.update(7.0, 64)


def test_adaptive_controller_errors():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 100)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 6.0, -1)
    c = AdaptiveKLController(0.1, 6.0, 100)
    with pytest.raises(ValueError, match="diverged"):
        c.update(float("nan"), 10)
    with pytest.raises(ValueError, match="larger horizon"):
        c.update(0.0, 600)
    assert c.value == 0.1


def test_shape_rewards_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -9.0, 0.0]])
    mask = mask_from_lengths([3, 1], 3)
    scores = torch.tensor([2.0, -1.0])
    out = shape_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # row 0: -0.1 * [0.5, -1, 0] and +2 at t=2; row 1 (length 1): -0.1 * 0.5 - 1 at t=0
    assert out[0].tolist() == pytest.approx([-0.05, 0.1, 2.0])
    assert out[1].tolist() == pytest.approx([-1.05, 0.0, 0.0])
    k3 = shape_rewards(scores, logp, ref, mask, kl_coef=0.1, kind="k3")
    assert k3[0, 0].item() == pytest.approx(-0.1 * (math.exp(-0.5) - 0.5))


@settings(max_examples=60, deadline=None)
@given(padded_batches(n_tensors=3), st.sampled_from(["k1", "k2", "k3"]), st.floats(0.0, 1.0))
def test_shape_rewards_matches_loop(batch, kind, coef):
    (logp, ref, garbage), mask = batch
    scores = garbage[:, 0]
    logp = torch.where(mask, logp, float("-inf"))  # padding garbage must not matter
    out = shape_rewards(scores, logp, ref, mask, coef, kind)
    for b, row in enumerate(mask.tolist()):
        n = sum(row)
        for t in range(len(row)):
            if t >= n:
                assert out[b, t].item() == 0.0
                continue
            d = logp[b, t].item() - ref[b, t].item()
            kl = {"k1": d, "k2": d * d / 2, "k3": math.exp(-d) - 1 + d}[kind]
            expected = -coef * kl + (scores[b].item() if t == n - 1 else 0.0)
            assert out[b, t].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_shape_rewards_gradient_ignores_padding_garbage():
    logp = torch.tensor([[-1.0, float("-inf")]], dtype=torch.float64, requires_grad=True)
    out = shape_rewards(torch.tensor([1.0]), logp, torch.zeros(1, 2), mask_from_lengths([1], 2), 0.5, "k3")
    out.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 1] == 0


def test_shape_rewards_errors():
    logp = torch.zeros(2, 3)
    scores = torch.zeros(2)
    with pytest.raises(ValueError, match=r"rows \[1\].*no valid token"):
        shape_rewards(scores, logp, logp, mask_from_lengths([2, 0], 3), 0.1)
    with pytest.raises(ValueError, match=r"rows \[0\].*right-padded"):
        shape_rewards(scores, logp, logp, torch.tensor([[False, True, True], [True, False, False]]), 0.1)
    with pytest.raises(ValueError, match="scores"):
        shape_rewards(torch.zeros(3), logp, logp, mask_from_lengths([1, 1], 3), 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        shape_rewards(scores, logp, logp, mask_from_lengths([1, 1], 3), -0.1)
    with pytest.raises(ValueError, match="bool"):
        shape_rewards(scores, logp, logp, torch.ones(2, 3), 0.1)

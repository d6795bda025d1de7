import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.core import aggregate_loss, discounted_returns, grpo_advantages, rloo_advantages
from tests.core._core_helpers import mask_from_lengths, padded_batches, valid_lists

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def grouped_scores(draw, max_groups: int = 5, max_k: int = 5):
    """(scores (B,), group_ids (B,)): groups of unequal sizes >= 2, ids not contiguous, members shuffled."""
    sizes = draw(st.lists(st.integers(2, max_k), min_size=1, max_size=max_groups))
    ids = [g * 7 + 3 for g, k in enumerate(sizes) for _ in range(k)]  # arbitrary, non-contiguous ids
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ids), generator=gen)
    scores = torch.randn(len(ids), generator=gen, dtype=torch.float64) * 3
    if draw(st.booleans()):  # ties: scores on a coarse grid, so some groups are constant
        scores = scores.round()
    return scores, torch.tensor(ids)[perm]


def _members(group_ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return out


# ---------------------------------------------------------------- RLOO


def rloo_loop(scores: list[float], group_ids: list[int]) -> list[float]:
    """Ahmadian et al. 2024: score minus the mean of the *other* members of its group, one response at a time."""
    out = []
    for i, g in enumerate(group_ids):
        others = [scores[j] for j in range(len(scores)) if group_ids[j] == g and j != i]
        out.append(scores[i] - sum(others) / len(others))
    return out


def test_rloo_hand_computed():
    scores = torch.tensor([1.0, 2.0, 6.0, 10.0, 0.0])
    ids = torch.tensor([0, 0, 0, 5, 5])
    # group 0: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - 1.5 = 4.5; group 5: 10 - 0, 0 - 10
    assert rloo_advantages(scores, ids).tolist() == pytest.approx([-3.0, -1.5, 4.5, 10.0, -10.0])


@SETTINGS
@given(grouped_scores())
def test_rloo_matches_loop(batch):
    scores, ids = batch
    got = rloo_advantages(scores.clone().requires_grad_(), ids)
    assert not got.requires_grad and got.shape == scores.shape
    assert got.tolist() == pytest.approx(rloo_loop(scores.tolist(), ids.tolist()), rel=1e-9, abs=1e-9)
    # the leave-one-out baseline is k/(k-1) x the centred score: every group's advantages sum to 0
    for members in _members(ids.tolist()).values():
        assert float(got[members].sum()) == pytest.approx(0.0, abs=1e-9)


def test_rloo_errors():
    with pytest.raises(ValueError, match=r"groups \[4\] hold a single response"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 4]))
    with pytest.raises(ValueError, match="does not match"):
        rloo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        rloo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        rloo_advantages(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))


# ---------------------------------------------------------------- GRPO


def grpo_loop(scores: list[float], group_ids: list[int], scale_by_std: bool, eps: float) -> list[float]:
    """Shao et al. 2024 eq. 3: (r - mean(group)) / std(group), the std unbiased (statistics.stdev)."""
    out = []
    for i, g in enumerate(group_ids):
        group = [scores[j] for j in range(len(scores)) if group_ids[j] == g]
        if len(set(group)) == 1:  # a constant group: no signal, 0 (not 0/0)
            out.append(0.0)
            continue
        centred = scores[i] - statistics.fmean(group)
        out.append(centred / (statistics.stdev(group) + eps) if scale_by_std else centred)
    return out


def test_grpo_hand_computed():
    scores = torch.tensor([1.0, 3.0, 5.0, 5.0], dtype=torch.float64)
    ids = torch.tensor([2, 2, 9, 9])
    # group 2: mean 2, unbiased std sqrt(2) -> -1/sqrt(2), +1/sqrt(2); group 9: constant -> 0
    got = grpo_advantages(scores, ids, eps=0.0)
    assert got[:2].tolist() == pytest.approx([-(0.5**0.5), 0.5**0.5])
    assert got[2:].tolist() == [0.0, 0.0]
    assert grpo_advantages(scores, ids, scale_by_std=False).tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])


@SETTINGS
@given(grouped_scores(), st.booleans(), st.sampled_from([0.0, 1e-6, 0.1]))
def test_grpo_matches_loop(batch, scale_by_std, eps):
    scores, ids = batch
    got = grpo_advantages(scores, ids, scale_by_std=scale_by_std, eps=eps)
    assert got.tolist() == pytest.approx(grpo_loop(scores.tolist(), ids.tolist(), scale_by_std, eps),
                                         rel=1e-9, abs=1e-9)


def test_grpo_constant_group_gives_zero_advantage_whatever_eps():
    # std 0 is "no learning signal": 0, not 0/0 = NaN, even with eps = 0
    # (0.7 * 3 / 3 is not 0.7 in floating point: the residue over a ~0 std must not become an advantage)
    for eps in (0.0, 1e-6):
        for scale in (True, False):
            got = grpo_advantages(torch.tensor([0.7, 0.7, 0.7, 1.0, 2.0]), torch.tensor([0, 0, 0, 1, 1]), scale, eps)
            assert got[:3].tolist() == [0.0, 0.0, 0.0] and torch.isfinite(got).all() and got[3] < 0 < got[4]


def test_grpo_errors():
    with pytest.raises(ValueError, match="single response"):
        grpo_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), eps=-1.0)


# ---------------------------------------------------------------- return-to-go


def returns_loop(rewards: list[float], gamma: float) -> list[float]:
    out, g = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


@SETTINGS
@given(padded_batches(), st.floats(0.0, 1.0))
def test_discounted_returns_matches_loop(batch, gamma):
    (rewards,), mask = batch
    noisy = torch.where(mask, rewards, float("nan"))  # garbage at padding must not leak in
    got = discounted_returns(noisy, mask, gamma)
    assert torch.all(got[~mask] == 0)
    for b, row in enumerate(valid_lists(rewards, mask)):
        assert got[b, :len(row)].tolist() == pytest.approx(returns_loop(row, gamma), rel=1e-9, abs=1e-9)


def test_discounted_returns_hand_computed_and_errors():
    got = discounted_returns(torch.tensor([[1.0, 2.0, 4.0]]), mask_from_lengths([3], 3), 0.5)
    assert got.tolist() == [[1.0 + 0.5 * 2.0 + 0.25 * 4.0, 2.0 + 0.5 * 4.0, 4.0]]
    with pytest.raises(ValueError, match="right-padded"):
        discounted_returns(torch.zeros(1, 3), torch.tensor([[True, False, True]]), 1.0)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.zeros(1, 3), mask_from_lengths([2], 3), 1.5)


# ---------------------------------------------------------------- aggregation


def aggregate_loop(x: torch.Tensor, mask: torch.Tensor, mode: str, norm: float | None) -> float:
    rows = valid_lists(x, mask)
    if mode == "token-mean":
        flat = [v for r in rows for v in r]
        return sum(flat) / len(flat)
    if mode == "seq-mean-token-mean":
        return statistics.fmean(sum(r) / len(r) for r in rows)
    return statistics.fmean(sum(r) / norm for r in rows)


@SETTINGS
@given(padded_batches(), st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]))
def test_aggregate_loss_matches_loop(batch, mode):
    (x,), mask = batch
    norm = float(mask.shape[1]) if mode == "seq-mean-token-sum-norm" else None
    garbage = torch.where(mask, x, float("inf")).requires_grad_()
    got = aggregate_loss(garbage, mask, mode, norm)
    assert got.dim() == 0
    assert got.item() == pytest.approx(aggregate_loop(x, mask, mode, norm), rel=1e-9, abs=1e-9)
    got.backward()
    assert torch.all(garbage.grad[~mask] == 0) and torch.isfinite(garbage.grad).all()


def test_aggregate_modes_weigh_lengths_differently():
    # one long row of 1s and one short row of 3s: token-mean weighs tokens, seq-mean weighs rows
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = mask_from_lengths([4, 1], 4)
    assert aggregate_loss(x, mask, "token-mean").item() == pytest.approx(7 / 5)
    assert aggregate_loss(x, mask, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert aggregate_loss(x, mask, "seq-mean-token-sum-norm", norm=4).item() == pytest.approx((4 / 4 + 3 / 4) / 2)


def test_aggregate_errors():
    x, mask = torch.zeros(2, 3), mask_from_lengths([1, 2], 3)
    with pytest.raises(ValueError, match="unknown mode"):
        aggregate_loss(x, mask, "sum")
    with pytest.raises(ValueError, match="needs `norm`"):
        aggregate_loss(x, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="no valid token"):
        aggregate_loss(x, mask_from_lengths([0, 2], 3), "seq-mean-token-mean")


# ---------------------------------------------------------------- the policy loss's aggregation and REINFORCE form


@SETTINGS
@given(padded_batches(n_tensors=3), st.sampled_from(["seq-mean-token-mean", "seq-mean-token-sum-norm"]))
def test_policy_loss_aggregation_matches_the_per_token_terms(batch, mode):
    from rlhf.core import ppo_policy_loss

    (logp, old, adv), mask = batch
    logp, old = logp * 0.2, old * 0.2
    norm = float(mask.shape[1])
    got, stats = ppo_policy_loss(logp, old, adv, mask, 0.2, aggregation=mode, norm=norm)
    ratio = torch.exp(logp - old)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    assert got.item() == pytest.approx(aggregate_loop(per_token, mask, mode, norm), rel=1e-9, abs=1e-9)
    _, token_stats = ppo_policy_loss(logp, old, adv, mask, 0.2)  # the stats stay token means
    assert stats["clipfrac"].item() == token_stats["clipfrac"].item()


def test_unclipped_policy_loss_is_reinforce_on_policy():
    from rlhf.core import ppo_policy_loss

    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[2.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    mask = mask_from_lengths([2, 1], 2)
    loss, stats = ppo_policy_loss(logp, logp.detach().clone(), adv, mask, None)
    loss.backward()
    # -A * ratio at ratio 1 has the gradient of -A * logp: -A / N at every valid token
    assert logp.grad.flatten().tolist() == pytest.approx([-2 / 3, -2 / 3, 1 / 3, 0.0])
    # far off-policy, nothing is clipped
    far, stats = ppo_policy_loss(logp.detach() + 1.0, logp.detach(), adv, mask, None)
    assert stats["clipfrac"].item() == 0.0 and far.item() == pytest.approx(-(2 + 2 - 1) * math.e / 3)

"""The conservative-reward math (rlhf.core.reward_shaping) against hand-computed cases."""

import pytest
import torch

from rlhf.core import aggregate_members, clip_scores, fit_length, length_correct

# 3 members x 2 responses: column 0 = (1, 3, 2): mean 2, min 1, sample std 1; column 1 = (4, 0, 2): mean 2, min 0,
# sample std 2
MEMBERS = torch.tensor([[1.0, 4.0], [3.0, 0.0], [2.0, 2.0]])


def test_aggregates_by_hand():
    assert aggregate_members(MEMBERS, "mean").tolist() == [2.0, 2.0]
    assert aggregate_members(MEMBERS, "min").tolist() == [1.0, 0.0]
    assert aggregate_members(MEMBERS, "mean_minus_std").tolist() == [1.0, 0.0]  # k = 1
    assert aggregate_members(MEMBERS, "mean_minus_std", std_coef=0.5).tolist() == [1.5, 1.0]
    assert aggregate_members(MEMBERS, "mean_minus_std", std_coef=0.0).tolist() == [2.0, 2.0]


def test_mean_is_the_plain_mean_exactly_and_a_single_member_is_itself():
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(aggregate_members(x, "mean"), x.mean(0))
    assert torch.equal(aggregate_members(x[:1], "mean"), x[0])


def test_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match=">= 2 members"):
        aggregate_members(MEMBERS[:1], "min")
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate_members(MEMBERS, "median")
    with pytest.raises(ValueError, match="members, batch"):
        aggregate_members(MEMBERS[0], "mean")
    with pytest.raises(ValueError, match="> 0"):
        clip_scores(MEMBERS[0], 0.0)


def test_clip_and_which_were_clipped():
    clipped, was = clip_scores(torch.tensor([-3.0, 0.5, 2.5, 2.0]), 2.0)
    assert clipped.tolist() == [-2.0, 0.5, 2.0, 2.0]
    assert was.tolist() == [True, False, True, False]  # exactly at the bound is not clipped


def test_length_fit_and_correction_by_hand():
    # y = 1 + 2x at x = 1, 2, 3: slope 2 around mean length 2; the correction flattens it to the mean score 5
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 5.0, 7.0])
    slope, mean_x = fit_length(3, float(x.sum()), float(y.sum()), float((x * x).sum()), float((x * y).sum()))
    assert slope == pytest.approx(2.0) and mean_x == pytest.approx(2.0)
    assert length_correct(y, x, slope, mean_x).tolist() == pytest.approx([5.0, 5.0, 5.0])
    # noisy points: the slope is cov / var; a constant length has none
    x, y = torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([0.0, 2.0, 1.0, 5.0])  # means 1, 2; cov 1; var 1
    assert fit_length(4, float(x.sum()), float(y.sum()), float((x * x).sum()), float((x * y).sum()))[0] == 1.0
    assert fit_length(3, 6.0, 9.0, 12.0, 18.0) == (0.0, 2.0)
    with pytest.raises(ValueError):
        fit_length(0, 0.0, 0.0, 0.0, 0.0)

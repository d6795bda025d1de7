import statistics

import pytest
import torch
from hypothesis import given, settings

from rlhf.core import masked_mean, masked_var, masked_whiten
from tests.core._core_helpers import padded_batches, valid_lists

SETTINGS = settings(max_examples=60, deadline=None)


def test_masked_mean_hand_computed():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, 200.0, 300.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4) / 3)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])
    mask0 = torch.tensor([[True, True, False], [True, False, True]])  # not right-padded: fine for a mean
    assert masked_mean(x, mask0, dim=0).tolist() == pytest.approx([2.5, 2.0, 300.0])


def test_masked_mean_ignores_inf_and_nan_at_masked_positions():
    x = torch.tensor([[1.0, float("inf")], [3.0, float("nan")]], requires_grad=True)
    mask = torch.tensor([[True, False], [True, False]])
    out = masked_mean(x, mask)
    assert out.item() == 2.0
    out.backward()
    assert x.grad.tolist() == [[0.5, 0.0], [0.5, 0.0]]


def test_masked_mean_all_masked_raises():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="no valid entry"):
        masked_mean(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="dim=1"):
        masked_mean(x, torch.tensor([[True, False, False], [False, False, False]]), dim=1)


def test_mask_validation():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="torch.bool"):
        masked_mean(x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="does not match"):
        masked_mean(x, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="torch.Tensor"):
        masked_mean([[1.0]], torch.ones(1, 1, dtype=torch.bool))


def test_masked_var_matches_statistics_module():
    x = torch.tensor([[1.0, 2.0, 7.0], [4.0, -9.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    vals = [1.0, 2.0, 7.0, 4.0]
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(vals))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(vals))


def test_masked_var_single_entry():
    x = torch.tensor([[5.0, 1.0]])
    mask = torch.tensor([[True, False]])
    assert masked_var(x, mask, unbiased=False).item() == 0.0
    with pytest.raises(ValueError, match="at least 2 valid entries"):
        masked_var(x, mask)
    with pytest.raises(ValueError, match="at least 2 valid entries"):
        masked_whiten(x, mask)


def test_masked_whiten_hand_computed():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    # mean 2, unbiased var 1
    expected = [(v - 2.0) / (1.0 + 1e-8) ** 0.5 for v in (1.0, 2.0, 3.0)]
    assert masked_whiten(x, mask)[0].tolist() == pytest.approx(expected + [0.0])
    assert masked_whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([e + 2.0 for e in expected] + [0.0])


def test_masked_whiten_constant_input_gives_zeros_not_nan():
    x = torch.full((2, 3), 4.0)
    out = masked_whiten(x, torch.ones(2, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 3))


@SETTINGS
@given(padded_batches(n_tensors=2))
def test_masked_mean_property(batch):
    (x, noise), mask = batch
    flat = [v for row in valid_lists(x, mask) for v in row]
    assert masked_mean(x, mask).item() == pytest.approx(statistics.fmean(flat))
    # Invariant to whatever sits at masked positions.
    y = torch.where(mask, x, noise * 1e6)
    assert masked_mean(y, mask).item() == masked_mean(x, mask).item()
    per_row = masked_mean(x, mask, dim=1).tolist()
    assert per_row == pytest.approx([statistics.fmean(r) for r in valid_lists(x, mask)])


@SETTINGS
@given(padded_batches())
def test_masked_whiten_property(batch):
    (x,), mask = batch
    flat = [v for row in valid_lists(x, mask) for v in row]
    if len(flat) < 2:
        with pytest.raises(ValueError):
            masked_whiten(x, mask)
        return
    out = masked_whiten(x, mask)
    assert torch.all(out[~mask] == 0)
    w = [v for row in valid_lists(out, mask) for v in row]
    assert statistics.fmean(w) == pytest.approx(0.0, abs=1e-9)
    var = statistics.variance(flat)
    # var/(var + 1e-8) is ~1 except for near-constant batches
    assert statistics.variance(w) == pytest.approx(var / (var + 1e-8), rel=1e-9)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert statistics.fmean([v for row in valid_lists(kept, mask) for v in row]) == pytest.approx(
        statistics.fmean(flat), abs=1e-9
    )

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.core import entropy_from_logits, logprobs_from_logits


def naive_log_softmax(row: list[float], temperature: float) -> list[float]:
    z = [v / temperature for v in row]
    lse = math.log(sum(math.exp(v) for v in z))
    return [v - lse for v in z]


def naive_entropy(row: list[float], temperature: float) -> float:
    logp = naive_log_softmax(row, temperature)
    return -sum(math.exp(lp) * lp for lp in logp)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 4),
    v=st.integers(1, 7),
    temperature=st.sampled_from([1.0, 0.7, 2.5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_logprobs_and_entropy_match_naive_loop(b, t, v, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=gen, dtype=torch.float64) * 4
    tokens = torch.randint(0, v, (b, t), generator=gen)
    before = logits.clone()
    logp = logprobs_from_logits(logits, tokens, temperature)
    ent = entropy_from_logits(logits, temperature)
    assert logp.shape == (b, t) and ent.shape == (b, t)
    assert torch.equal(logits, before), "the caller's logits must not be modified"
    for i in range(b):
        for j in range(t):
            row = logits[i, j].tolist()
            assert logp[i, j].item() == pytest.approx(naive_log_softmax(row, temperature)[tokens[i, j]], abs=1e-12)
            assert ent[i, j].item() == pytest.approx(naive_entropy(row, temperature), abs=1e-12)


def test_hand_computed_uniform():
    logits = torch.zeros(1, 2, 4)
    tokens = torch.tensor([[0, 3]])
    assert logprobs_from_logits(logits, tokens)[0].tolist() == pytest.approx([math.log(0.25)] * 2)
    assert entropy_from_logits(logits, temperature=0.3)[0].tolist() == pytest.approx([math.log(4)] * 2)


def test_half_precision_is_computed_in_float32_and_not_modified():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 50, generator=gen) * 5).to(torch.bfloat16)
    before = logits.clone()
    tokens = torch.randint(0, 50, (2, 3), generator=gen)
    out = logprobs_from_logits(logits, tokens, temperature=0.5)
    assert out.dtype == torch.float32
    assert torch.equal(logits, before)
    ref = torch.log_softmax(logits.double() / 0.5, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    ent = entropy_from_logits(logits, temperature=0.5)
    p = torch.softmax(logits.double() / 0.5, -1)
    assert torch.allclose(ent.double(), -(p * p.log()).sum(-1), atol=1e-5)


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda z: logprobs_from_logits(z, tokens, 0.8), (logits,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, 1.3), (logits,))


def test_bad_inputs():
    logits = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, torch.zeros(1, 2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        entropy_from_logits(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="shift"):
        logprobs_from_logits(logits, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        logprobs_from_logits(logits, torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="integer"):
        logprobs_from_logits(logits, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="floating"):
        entropy_from_logits(torch.zeros(1, 2, 4, dtype=torch.long))

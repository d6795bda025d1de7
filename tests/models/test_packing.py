"""Padding-free (packed) forwards equal the padded ones on every family we test: log-probs, entropies and values of
response tokens, per-token scalars and the score at the last real token, and the gradients of a loss built from
them (rlhf.models.packing; the work it removes is measured by benchmarks/ppo_step.py --preset smollm2)."""

import pytest
import torch

from rlhf.models.generation import Batch, left_pad, response_forward, right_pad
from rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from rlhf.models.packing import needs_packing, pack
from rlhf.models.scalar import per_token_scalars, score_at_last_token
from rlhf.models.value import PolicyWithValueHead
from tests.support.families import FAMILIES, MORE_FAMILIES, save_family

NAMES = list(FAMILIES) + [n for n in MORE_FAMILIES if n != "opt"]
# OPT (transformers 5.24) builds its causal mask without masking_utils' packed-sequence detection: the probe finds it
# and its forwards stay padded (test_a_family_that_mixes_packed_sequences_stays_padded)
UNPACKABLE = ["opt"]
# float32, the same weights: only the summation order of differently shaped matmuls differs
ATOL, RTOL = 2e-5, 1e-4
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack-bases")
    return {name: save_family(name, d / name) for name in NAMES + UNPACKABLE}


def _enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _batch(tok) -> Batch:
    """Three prompts of different lengths (left-padded), responses of 1, 3 and 6 tokens (right-padded)."""
    prompts = [_enc(tok, "the hotel near the station was"), _enc(tok, "a film"), _enc(tok, "hi there, the book")]
    body = _enc(tok, " clean and quiet and very good fun")
    p_ids, p_mask = left_pad(prompts, tok.pad_token_id)
    r_ids, r_mask = right_pad([body[:1], body[:3] + [tok.eos_token_id], body[:6]], tok.pad_token_id)
    return Batch(p_ids, p_mask, r_ids, r_mask.bool(), torch.tensor([False, True, False]))


def test_pack_layout_and_unpack():
    ids = torch.tensor([[0, 0, 5, 6, 7, 0], [1, 2, 3, 4, 0, 0], [0, 9, 9, 9, 9, 9]])
    mask = (torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]]))
    pk = pack(ids, mask)
    assert pk.ids.tolist() == [[5, 6, 7, 1, 2, 3, 4, 9, 9, 9, 9, 9]]
    assert pk.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]]
    assert pk.index_of(torch.tensor([0, 1, 2]), torch.tensor([4, 0, 5])).tolist() == [2, 3, 11]
    back = pk.unpack(pk.ids[..., None].float())[..., 0]
    assert torch.equal(back, (ids * mask).float())
    assert needs_packing(mask) and not needs_packing(torch.ones(2, 3))


def test_pack_refuses_rows_with_holes_or_no_tokens():
    with pytest.raises(ValueError, match="contiguous"):
        pack(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="all zeros"):
        pack(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[1, 1], [0, 0]]))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", NAMES)
def test_packed_response_forward_equals_padded(name, bases):
    """Policy log-probs and entropies, and a shared value head's values, with their gradients."""
    tok = load_tokenizer(bases[name], padding_side="left")
    torch.manual_seed(0)
    model = PolicyWithValueHead(load_causal_lm(bases[name]))
    torch.nn.init.normal_(model.v_head.weight, std=0.5)  # a non-zero head, so values and their gradients mean something
    b = _batch(tok)
    assert needs_packing(b.attention_mask)
    out = {}
    for packed in (False, True):
        model.zero_grad()
        logp, ent, values = response_forward(model, b, 0.7, with_entropy=True, packed=packed)
        w = torch.arange(1.0, 1.0 + logp.numel()).view_as(logp)  # a loss that weighs every token differently
        ((logp * w).sum() + ent.sum() + (values * w).sum()).backward()
        out[packed] = (logp.detach(), ent.detach(), values.detach(), _grads(model))
    for a, b_ in zip(out[False][:3], out[True][:3]):
        torch.testing.assert_close(b_, a, atol=ATOL, rtol=RTOL)
    assert (out[True][0][~b.response_mask] == 0).all()
    g0, g1 = out[False][3], out[True][3]
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=GRAD_ATOL, rtol=GRAD_RTOL)


@pytest.mark.parametrize("name", list(FAMILIES))  # Granite and Cohere have no *ForSequenceClassification
def test_packed_scalars_and_scores_equal_padded(name, bases):
    """The value model's per-token scalars (at real tokens) and the reward at the last real token."""
    tok = load_tokenizer(bases[name], padding_side="left")
    torch.manual_seed(0)
    model = load_scalar_model(bases[name], init_head_std=0.5, pad_token_id=tok.pad_token_id)
    b = _batch(tok)
    ids, mask = b.input_ids, b.attention_mask
    out = {}
    for packed in (False, True):
        model.zero_grad()
        v = per_token_scalars(model, ids, mask, packed=packed)
        s = score_at_last_token(model, ids, mask, packed=packed)
        ((v * mask).sum() + (s * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
        out[packed] = ((v * mask).detach(), s.detach(), _grads(model))
    torch.testing.assert_close(out[True][0], out[False][0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out[True][1], out[False][1], atol=ATOL, rtol=RTOL)
    for n in out[False][2]:
        torch.testing.assert_close(out[True][2][n], out[False][2][n], atol=GRAD_ATOL, rtol=GRAD_RTOL)


def test_packing_really_removes_the_padded_positions(bases):
    """The packed forward runs the transformer on the real tokens only (N = 19 here, not B x T = 3 x 13)."""
    tok = load_tokenizer(bases["llama"], padding_side="left")
    model = load_causal_lm(bases["llama"])
    b = _batch(tok)
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        for packed in (False, True):
            response_forward(model, b, packed=packed)
    finally:
        hook.remove()
    n_real = int(b.attention_mask.sum())
    # the padded forward, the probe's three small ones (once per model), the packed forward
    assert seen[0] == tuple(b.input_ids.shape) and seen[-1] == (1, n_real) and len(seen) == 5
    assert n_real < b.input_ids.numel()


@pytest.mark.parametrize("name", NAMES + UNPACKABLE)
def test_the_probe_says_which_families_keep_packed_sequences_apart(name, bases):
    from rlhf.models.packing import separates_packed_sequences

    tok = load_tokenizer(bases[name], padding_side="left")
    model = load_causal_lm(bases[name]).train()
    b = _batch(tok)
    ok = separates_packed_sequences(model, lambda **kw: model(**kw, use_cache=False).logits,
                                    b.input_ids[b.attention_mask.bool()])
    assert ok == (name not in UNPACKABLE)
    assert model.training  # the probe restores the modes it found


def test_a_family_that_mixes_packed_sequences_stays_padded(bases, caplog):
    """OPT: the probe says no, so packed=True gives the padded forward's results exactly, with a warning."""
    tok = load_tokenizer(bases["opt"], padding_side="left")
    model = load_causal_lm(bases["opt"]).eval()
    b = _batch(tok)
    with torch.no_grad():
        plain = response_forward(model, b, 0.7)[0]
        packed = response_forward(model, b, 0.7, packed=True)[0]
    assert torch.equal(packed, plain)
    assert "does not keep packed sequences apart" in caplog.text

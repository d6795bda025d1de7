"""Early exit of finished rows in PPO's sampler (rlhf.models.generation.sample_with_logprobs, drop_finished): a row
that has its EOS leaves the batch and the KV cache, and the sampled tokens, masks, log-probs and entropies are the
ones of the loop that keeps computing it, and of transformers' generate, on every family we test."""

import pytest
import torch

from rlhf.models.generation import generate, left_pad, sample_with_logprobs
from rlhf.models.loading import load_causal_lm, load_tokenizer
from tests.support.families import FAMILIES, save_family

NAMES = list(FAMILIES)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("exit-bases")
    return {name: save_family(name, d / name) for name in NAMES}


def _eos_prone(lm, eos_id: int, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Make EOS about as likely as the top token, so that rows end at different steps: its output row set along the
    mean final hidden state, scaled to 2.5 above the mean top logit (a tied output layer is untied first, so the EOS input
    embedding stays as it was)."""
    with torch.no_grad():
        out = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h = out.hidden_states[-1][mask.bool()].mean(0)
        top = out.logits[mask.bool()].max(-1).values.mean()
        head = lm.get_output_embeddings()
        if lm.config.tie_word_embeddings:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
        head.weight[eos_id] = h * ((top + 2.5) / h.dot(h))


@pytest.mark.parametrize("name", NAMES)
def test_dropping_finished_rows_keeps_every_token(name, bases):
    tok = load_tokenizer(bases[name], padding_side="left")
    lm = load_causal_lm(bases[name]).eval()
    prompts = ["the hotel near the station", "a film", "hi", "the book was", "we stayed two nights at", "good"]
    p_ids, p_mask = left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in prompts], tok.pad_token_id)
    _eos_prone(lm, tok.eos_token_id, p_ids, p_mask)
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=0, top_p=1.0, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id)
    runs = []
    for drop in (False, True):
        torch.manual_seed(3)
        runs.append(sample_with_logprobs(lm, p_ids, p_mask, drop_finished=drop, **kw))
    keep, drop = runs
    lengths = drop.response_mask.sum(1)
    assert len(set(lengths.tolist())) >= 3 and bool(drop.ended.any()), lengths  # rows really ended at different steps
    assert torch.equal(drop.response_ids, keep.response_ids) and torch.equal(drop.response_mask, keep.response_mask)
    torch.testing.assert_close(drop.logprobs, keep.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(drop.entropy, keep.entropy, atol=1e-5, rtol=0)
    torch.manual_seed(3)
    ref = generate(lm, p_ids, p_mask, **kw)  # transformers' own loop (no early exit)
    assert torch.equal(drop.response_ids, ref.response_ids)

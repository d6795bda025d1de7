import json
import subprocess
import sys

import pytest
import torch

from rlhf.models.generation import (
    Batch,
    generate,
    left_pad,
    response_forward,
    response_logprobs,
    right_pad,
    sample_with_logprobs,
    truncate_after_eos,
)
from rlhf.models.scalar import last_token_index, per_token_scalars, score_at_last_token


def test_tokenizer_special_tokens_and_bos(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    ids = tokenizer("the hotel was clean")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the hotel was clean"
    assert tokenizer("the", add_special_tokens=False)["input_ids"][0] != tokenizer.bos_token_id
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<bos>user: hi\nassistant:"


def test_saved_tokenizer_and_model_load_without_rlhf(tokenizer, tiny_lm, tmp_path):
    tiny_lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(tmp_path)!r}); m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "ids = t('the hotel was', return_tensors='pt')['input_ids']\n"
        "print(json.dumps({'rlhf': 'rlhf' in sys.modules, 'ids': ids[0].tolist(), 'pad': t.pad_token_id,"
        " 'logit': float(m(ids).logits[0, -1, 5])}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert out["rlhf"] is False
    assert out["ids"] == tokenizer("the hotel was")["input_ids"]
    assert out["pad"] == tokenizer.pad_token_id
    ids = torch.tensor([out["ids"]])
    with torch.no_grad():
        assert abs(tiny_lm(ids).logits[0, -1, 5].item() - out["logit"]) < 1e-5


def test_truncate_after_eos():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 9, 9, 9]])
    out, mask, ended = truncate_after_eos(ids, eos_token_id=1, pad_token_id=0)
    assert out.tolist() == [[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert ended.tolist() == [True, False, True]


def test_padding_helpers():
    ids, mask = left_pad([[3, 4], [5]], pad_id=0)
    assert ids.tolist() == [[3, 4], [0, 5]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = right_pad([[3, 4], [5]], pad_id=0)
    assert ids.tolist() == [[3, 4], [5, 0]] and mask.tolist() == [[True, True], [True, False]]


def test_response_logprobs_match_a_plain_forward_per_row(tokenizer, tiny_lm):
    """Batched, left-padded prompts give the same response log-probs as each row run alone without padding."""
    prompts = [tokenizer("the hotel near the station")["input_ids"], tokenizer("a film")["input_ids"]]
    p_ids, p_mask = left_pad(prompts, tokenizer.pad_token_id)
    torch.manual_seed(0)
    batch = generate(tiny_lm, p_ids, p_mask, max_new_tokens=6, temperature=0.7, eos_token_id=1, pad_token_id=0)
    logp, ent = response_logprobs(tiny_lm, batch, temperature=0.7, with_entropy=True)
    assert logp.shape == batch.response_ids.shape == ent.shape
    for b, prompt in enumerate(prompts):
        n = int(batch.response_mask[b].sum())
        resp = batch.response_ids[b, :n].tolist()
        full = torch.tensor([prompt + resp])
        with torch.no_grad():
            logits = tiny_lm(full).logits[0, len(prompt) - 1: -1] / 0.7
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)
        torch.testing.assert_close(logp[b, :n], ref, atol=1e-5, rtol=1e-5)
        assert (logp[b, n:] == 0).all()


def test_generate_respects_eos_and_length(tokenizer, tiny_lm):
    p_ids, p_mask = left_pad([tokenizer("the staff")["input_ids"]] * 4, tokenizer.pad_token_id)
    torch.manual_seed(1)
    b = generate(tiny_lm, p_ids, p_mask, max_new_tokens=5, temperature=1.0, eos_token_id=1, pad_token_id=0)
    assert b.response_ids.shape[1] <= 5
    for row in range(4):
        n = int(b.response_mask[row].sum())
        eos_pos = (b.response_ids[row] == 1).nonzero()
        if len(eos_pos):
            assert int(eos_pos[0]) == n - 1 and b.ended[row]
        else:
            assert not b.ended[row]


@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(temperature=1.3, top_k=20, top_p=0.9, min_new_tokens=3),
                                dict(temperature=0.7, stop_at_eos=False)])
@pytest.mark.parametrize("padded", [True, False])
def test_sampler_draws_generates_tokens_and_gives_full_forward_logprobs(tokenizer, tiny_lm, kw, padded):
    """The PPO sampler draws exactly the tokens `generate` draws under the same seed (same processors, same order,
    pad after EOS), and its per-step log-probs and entropies equal a full forward's: PPO's first ratio is 1."""
    texts = ["the hotel near the station", "a film", "the staff were"] if padded else ["the staff were"] * 3
    p_ids, p_mask = left_pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id)
    assert bool((p_mask == 0).any()) is padded
    common = dict(max_new_tokens=10, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kw)
    torch.manual_seed(3)
    ref = generate(tiny_lm, p_ids, p_mask, **common)
    torch.manual_seed(3)
    got = sample_with_logprobs(tiny_lm, p_ids, p_mask, **common)
    assert torch.equal(got.response_ids, ref.response_ids) and torch.equal(got.response_mask, ref.response_mask)
    assert torch.equal(got.ended, ref.ended)
    logp, ent, _ = response_forward(tiny_lm, got, kw["temperature"], with_entropy=True)
    torch.testing.assert_close(got.logprobs, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy, ent, atol=1e-5, rtol=0)
    assert (got.logprobs[~got.response_mask] == 0).all() and (got.logprobs[got.response_mask] < 0).all()
    # the outputs are ordinary tensors (not inference tensors): the training forward can save them for backward
    assert not got.response_ids.is_inference() and not got.logprobs.is_inference()
    assert not tiny_lm.training


@pytest.mark.parametrize("side", ["left", "right"])
def test_scalar_read_at_last_real_token(tokenizer, side, tmp_path):
    from rlhf.models.loading import default_head_std, load_scalar_model
    from rlhf.models.registry import build_tiny_causal_lm

    lm = build_tiny_causal_lm("tiny", tokenizer, seed=3)
    lm.save_pretrained(tmp_path)
    rm = load_scalar_model(tmp_path, init_head_std=default_head_std(lm)).eval()
    seqs = [tokenizer("the food was great")["input_ids"], tokenizer("bad")["input_ids"]]
    pad = left_pad if side == "left" else right_pad
    ids, mask = pad(seqs, tokenizer.pad_token_id)
    mask = mask.long()
    with torch.no_grad():
        scores = score_at_last_token(rm, ids, mask)
        alone = [per_token_scalars(rm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0, -1] for s in seqs]
    torch.testing.assert_close(scores, torch.stack(alone), atol=1e-5, rtol=1e-5)
    assert last_token_index(mask).tolist() == ([ids.shape[1] - 1] * 2 if side == "left" else [len(seqs[0]) - 1, len(seqs[1]) - 1])


def test_value_head_zero_init(tokenizer, tmp_path):
    from rlhf.models.loading import load_scalar_model
    from rlhf.models.registry import build_tiny_causal_lm

    build_tiny_causal_lm("tiny", tokenizer).save_pretrained(tmp_path)
    vm = load_scalar_model(tmp_path, init_head_std=0.0)
    ids = torch.tensor([tokenizer("the film")["input_ids"]])
    assert per_token_scalars(vm, ids, torch.ones_like(ids)).abs().max().item() == 0.0


def test_make_optimizer_uses_the_fused_kernel_on_cpu(tiny_lm):
    from rlhf.stages.common import make_optimizer

    opt = make_optimizer(torch.optim.AdamW, tiny_lm.parameters(), lr=1e-3, weight_decay=0.0, eps=1e-8)
    assert opt.defaults["fused"] is True and opt.defaults["lr"] == 1e-3
    groups = make_optimizer(torch.optim.Adam, [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.1}], eps=1e-5)
    assert groups.defaults["fused"] is True and groups.param_groups[0]["lr"] == 0.1


def test_batch_index():
    b = Batch(torch.ones(3, 2), torch.ones(3, 2), torch.zeros(3, 4), torch.ones(3, 4, dtype=torch.bool),
              torch.tensor([True, False, True]))
    sub = b.index(torch.tensor([0, 2]))
    assert sub.ended.tolist() == [True, True] and sub.input_ids.shape == (2, 6)
    assert sub.logprobs is None
    b.logprobs = torch.arange(12.0).view(3, 4)
    assert b.index(torch.tensor([2])).logprobs.tolist() == [[8.0, 9.0, 10.0, 11.0]]

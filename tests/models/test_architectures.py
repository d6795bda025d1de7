"""The architecture matrix: SFT -> sample -> reward -> PPO end to end on tiny random Llama, Qwen2, Mistral, Gemma,
GPT-2 and GPT-NeoX (Pythia) models, each with a tokenizer that behaves like its family's; the reward is read at the
right token in every case; conversational data goes through the chat template with an exact token layout."""

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.errors import UserError
from rlhf.io import read_jsonl, write_jsonl
from rlhf.models.chat import encode_chat_prompt, encode_chat_response
from rlhf.models.generation import Batch, generate, left_pad, response_forward, right_pad, sample_with_logprobs
from rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from rlhf.models.scalar import (
    per_token_scalars,
    score_at_last_token,
    score_with_shared_prefix,
    shared_prefix_layout,
)
from rlhf.models.value import PolicyWithValueHead
from rlhf.stages import ppo, reward, sample, sft
from tests.models.families_helpers import write_data
from tests.support.families import FAMILIES, family_model, family_tokenizer, save_family

NAMES = list(FAMILIES)
# what each real family does (the table in tests/support/families.py)
EXPECTED = {  # name: (adds BOS, has its own pad, padding side, chat template, tied embeddings)
    "llama": (True, False, "right", True, False),
    "qwen2": (False, True, "right", True, True),
    "mistral": (True, False, "left", True, False),
    "gemma": (True, True, "left", True, True),
    "gpt2": (False, False, "right", False, True),
    "gpt_neox": (False, False, "right", False, False),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("matrix") / "data")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("bases")
    return {name: save_family(name, d / name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_and_model_behave_like_the_family(name, bases, caplog):
    adds_bos, has_pad, side, chat, tied = EXPECTED[name]
    tok = family_tokenizer(name)
    ids = tok("the hotel")["input_ids"]
    assert (ids[0] == tok.bos_token_id) is adds_bos
    assert (tok.pad_token is not None) is has_pad and tok.padding_side == side
    assert bool(tok.chat_template) is chat
    model = family_model(name, tok)
    assert model.config.model_type == FAMILIES[name].model_type
    shares = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shares is tied
    # loading sets a missing pad token to EOS and says so; an existing pad is kept
    with caplog.at_level(logging.WARNING, logger="rlhf.models.loading"):
        loaded = load_tokenizer(bases[name])
    assert ("has no pad token; using EOS" in caplog.text) is (not has_pad)
    assert loaded.pad_token_id == (tok.pad_token_id if has_pad else tok.eos_token_id)


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_end_to_end(name, bases, data, tmp_path):
    """SFT (the loss falls) -> sample -> reward -> PPO; every output loads with plain transformers."""
    s = sft.run(sft.SFTConfig(model=str(bases[name]), data=str(data["pairs"]), out=str(tmp_path / "sft"),
                              max_steps=8, batch_size=6, lr=1e-2, warmup_steps=0, save_every=0, log_every=1,
                              device="cpu"))
    losses = [r["sft/loss"] for r in read_jsonl(s / "metrics.jsonl") if "sft/loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses
    samples = sample.run(sample.SampleConfig(model=str(s), prompts=str(data["prompts"]), k=2, max_new_tokens=6,
                                             out=str(tmp_path / "samples.jsonl"), device="cpu"))
    rows = read_jsonl(samples)
    assert len(rows) == 6 and all(len(r["responses"]) == 2 for r in rows)
    rm = reward.run(reward.RewardConfig(model=str(s), data=str(data["prefs"]), out=str(tmp_path / "rm"),
                                        max_steps=3, batch_size=6, eval_fraction=0, save_every=0, device="cpu",
                                        norm_samples=str(samples)))
    assert json.loads((rm / "reward_config.json").read_text())["n"] == 12
    out = ppo.run(ppo.PPOConfig(policy=str(s), reward=str(rm), prompts=str(data["prompts"]), out=str(tmp_path / "ppo"),
                                updates=1, rollout_batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=6,
                                save_every=0, log_samples_every=0, tensorboard=False, device="cpu"))
    m = read_jsonl(out / "metrics.jsonl")[0]
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("objective/scores", "objective/kl", "loss/policy"))
    policy = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(policy).__name__ == type(load_causal_lm(bases[name])).__name__
    assert policy.config.tie_word_embeddings == EXPECTED[name][4]
    assert tok.pad_token_id is not None  # the pad we set is saved with the model


def _rollout_batch(tok, eos_early: bool = True) -> Batch:
    """Two prompts of different lengths (left-padded) and responses (right-padded): one ends with EOS after two
    tokens, one runs to the end without EOS; pad may equal EOS."""
    eos = tok.eos_token_id
    body = tok(" was clean and quiet", add_special_tokens=False)["input_ids"]
    p_ids, p_mask = left_pad([tok("the hotel near the station")["input_ids"], tok("a film")["input_ids"]],
                             tok.pad_token_id)
    r_ids, r_mask = right_pad([body[:2] + [eos], body[:5]], tok.pad_token_id)
    return Batch(p_ids, p_mask, r_ids, r_mask, torch.tensor([True, False]))


@pytest.mark.parametrize("name", NAMES)
def test_reward_is_read_at_the_last_real_token(name, bases):
    """The score of each rollout equals the head at the last position of that sequence run alone, unpadded: the EOS
    when the response ended, else its last token. The stock HF pooling (last non-pad *id*) gets it wrong when
    pad == EOS; ours goes by the attention mask."""
    tok = load_tokenizer(bases[name], padding_side="left")
    model = load_scalar_model(bases[name], init_head_std=0.5, pad_token_id=tok.pad_token_id).eval()
    b = _rollout_batch(tok)
    with torch.no_grad():
        got = score_at_last_token(model, b.input_ids, b.attention_mask)
        for i in range(2):
            seq = b.input_ids[i][b.attention_mask[i].bool()]
            if i == 0:
                assert seq[-1] == tok.eos_token_id  # read at the EOS
            alone = per_token_scalars(model, seq[None], torch.ones_like(seq)[None])[0, -1]
            torch.testing.assert_close(got[i], alone, atol=1e-4, rtol=1e-4)
        if tok.pad_token_id == tok.eos_token_id:
            stock = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, 0]
            assert abs(float(stock[0] - got[0])) > 1e-4  # it skipped the EOS, taking it for padding


@pytest.mark.parametrize("name", NAMES)
def test_shared_prefix_scores_and_gradients_equal_the_plain_forward(name, bases):
    """Reward training's shared_prefix path (each prompt once into a KV cache, gathered per response; prompts of
    different lengths left-padded; absolute or rotary positions) gives the plain forward's scores and gradients."""
    tok = load_tokenizer(bases[name])
    model = load_scalar_model(bases[name], init_head_std=0.5, pad_token_id=tok.pad_token_id).eval()
    p1, p2 = _enc(tok, "the hotel near the station was"), _enc(tok, "a boring book")
    rows = [p1 + _enc(tok, " great fun"), p1 + _enc(tok, " awful and loud, never again"), p1 + _enc(tok, " fine"),
            p2 + _enc(tok, " with a weak plot"), p2 + _enc(tok, " i liked")]
    ids, mask = right_pad(rows, tok.pad_token_id)
    mask = mask.long()
    layout = shared_prefix_layout(ids, mask, torch.tensor([0, 0, 0, 1, 1]), min_saving=0.0)
    lcp = layout["prefix_len"].tolist()
    assert lcp[0] >= len(p1) and lcp[1] >= len(p2)  # each group's prompt (and any shared start) runs once
    grads = []
    for fn in (lambda: score_at_last_token(model, ids, mask), lambda: score_with_shared_prefix(model, layout)):
        model.zero_grad()
        scores = fn()
        (scores * torch.arange(1.0, 6.0)).sum().backward()
        grads.append((scores.detach(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}))
    (plain, g_plain), (shared, g_shared) = grads
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    assert g_plain.keys() == g_shared.keys()
    for n in g_plain:
        torch.testing.assert_close(g_shared[n], g_plain[n], atol=1e-4, rtol=1e-3)  # float32 summation order


@pytest.mark.parametrize("name", NAMES)
def test_ppo_sampler_draws_generates_tokens_with_full_forward_logprobs(name, bases):
    """sample_with_logprobs (PPO's fp32 rollout sampler) on each family: the tokens `generate` draws under the same
    seed, with log-probs and entropies equal to a full forward's (left-padded prompts, each family's own EOS)."""
    tok = load_tokenizer(bases[name], padding_side="left")
    lm = load_causal_lm(bases[name]).eval()
    p_ids, p_mask = left_pad([_enc(tok, t) for t in ("the hotel near the station", "a film", "hi")], tok.pad_token_id)
    kw = dict(max_new_tokens=10, temperature=0.8, top_k=30, top_p=0.95, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id)
    torch.manual_seed(7)
    ref = generate(lm, p_ids, p_mask, **kw)
    torch.manual_seed(7)
    got = sample_with_logprobs(lm, p_ids, p_mask, **kw)
    assert torch.equal(got.response_ids, ref.response_ids) and torch.equal(got.response_mask, ref.response_mask)
    logp, ent, _ = response_forward(lm, got, 0.8, with_entropy=True)
    torch.testing.assert_close(got.logprobs, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy, ent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_shared_value_head_gives_the_lm_log_probs(name, bases):
    """PolicyWithValueHead reaches the backbone through base_model_prefix (model, transformer, gpt_neox) and the
    output embeddings (tied, untied, Gemma's scaled input): its log-probs equal the plain LM's."""
    tok = load_tokenizer(bases[name], padding_side="left")
    lm = load_causal_lm(bases[name]).eval()
    b = _rollout_batch(tok)
    with torch.no_grad():
        plain, _, _ = response_forward(lm, b)
        shared, _, values = response_forward(PolicyWithValueHead(lm), b)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    assert values.shape == b.response_ids.shape


# --- conversational data -----------------------------------------------------------------------------------------

CHAT_PROMPT = [{"role": "user", "content": "how was the hotel?"}]


def _enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chat_token_layout_llama(bases):
    tok = load_tokenizer(bases["llama"])
    t = tok.convert_tokens_to_ids
    prompt = encode_chat_prompt(tok, CHAT_PROMPT)
    assert prompt == ([t("<|begin_of_text|>"), t("<|start_header_id|>")] + _enc(tok, "user") + [t("<|end_header_id|>")]
                      + _enc(tok, "\n\nhow was the hotel?") + [t("<|eot_id|>"), t("<|start_header_id|>")]
                      + _enc(tok, "assistant") + [t("<|end_header_id|>")] + _enc(tok, "\n\n"))
    assert prompt.count(tok.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
    assert encode_chat_response(tok, CHAT_PROMPT, "clean.") == _enc(tok, "clean.") + [tok.eos_token_id]
    assert encode_chat_response(tok, CHAT_PROMPT, "clean.", ended=False) == _enc(tok, "clean.")


def test_chat_token_layout_qwen2(bases):
    tok = load_tokenizer(bases["qwen2"])
    t = tok.convert_tokens_to_ids
    prompt = encode_chat_prompt(tok, CHAT_PROMPT)
    assert prompt == ([t("<|im_start|>")] + _enc(tok, "user\nhow was the hotel?") + [t("<|im_end|>")]
                      + _enc(tok, "\n") + [t("<|im_start|>")] + _enc(tok, "assistant\n"))
    # ChatML ends the turn with "<|im_end|>\n": the response stops at the EOS (<|im_end|>), as generation does
    assert encode_chat_response(tok, CHAT_PROMPT, "clean.") == _enc(tok, "clean.") + [t("<|im_end|>")]
    assert t("<|im_end|>") == tok.eos_token_id != tok.pad_token_id


def test_chat_needs_a_template(bases):
    with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
        encode_chat_prompt(load_tokenizer(bases["gpt2"]), CHAT_PROMPT)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_conversational_data_through_sft_reward_and_ppo(name, bases, tmp_path):
    """TRL conversational files: SFT on messages (loss on the assistant turn only), a reward model on a
    conversational preference file (explicit and implicit prompt), PPO on conversational prompts; each stage's
    tokens are the chat template's."""
    tok = load_tokenizer(bases[name])
    convs = [("how was the hotel?", "clean and quiet.", "bad bad."), ("how was the film?", "slow and cheap.", "no."),
             ("how was the food?", "great.", "bad."), ("how was the lamp?", "it broke.", "ok ok.")]
    user = [[{"role": "user", "content": q}] for q, _, _ in convs]
    write_jsonl(tmp_path / "sft.jsonl", [{"messages": u + [{"role": "assistant", "content": a}]}
                                         for u, (_, a, _) in zip(user, convs)] * 2)
    prefs = [{"prompt": u, "chosen": [{"role": "assistant", "content": c}],
              "rejected": [{"role": "assistant", "content": r}]} for u, (_, c, r) in zip(user, convs)]
    prefs += [{"chosen": u + [{"role": "assistant", "content": c}],  # TRL's implicit prompt
               "rejected": u + [{"role": "assistant", "content": r}]} for u, (_, c, r) in zip(user, convs)]
    write_jsonl(tmp_path / "prefs.jsonl", prefs)
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt_id": str(i), "prompt": u} for i, u in enumerate(user)])

    # SFT: prompt tokens are masked, the labels are exactly the assistant turn through EOS
    (ids, labels), = sft.tokenize_examples(read_jsonl(tmp_path / "sft.jsonl")[:1], tok, 256, "sft.jsonl")
    p, r = encode_chat_prompt(tok, user[0]), encode_chat_response(tok, user[0], convs[0][1])
    assert ids == p + r and labels == [sft.IGNORE] * len(p) + r and r[-1] == tok.eos_token_id
    s = sft.run(sft.SFTConfig(model=str(bases[name]), data=str(tmp_path / "sft.jsonl"), out=str(tmp_path / "sft"),
                              max_steps=2, batch_size=4, lr=1e-3, warmup_steps=0, save_every=0, device="cpu"))

    # reward: both row forms give the same sequences, prompt (template) + response turn
    table = reward.SequenceTable(tok, 256)
    pairs, skips = reward.read_pairs(tmp_path / "prefs.jsonl", table, "skip")
    assert not skips and len(pairs) == 8 and len(table.seqs) == 8  # implicit-prompt rows map onto the same rows
    assert table.seqs[pairs[0].chosen] == p + r
    rm = reward.run(reward.RewardConfig(model=str(s), data=str(tmp_path / "prefs.jsonl"), out=str(tmp_path / "rm"),
                                        max_steps=2, batch_size=4, eval_fraction=0, save_every=0, device="cpu"))

    # PPO: the rollout prompts are the chat template's tokens
    cfg = ppo.PPOConfig(policy=str(s), reward=str(rm), prompts=str(tmp_path / "prompts.jsonl"), out=str(tmp_path / "p"),
                        updates=1, rollout_batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=6,
                        save_every=0, log_samples_every=1, tensorboard=False, device="cpu")
    assert ppo.encode_prompts(cfg, tok, 256) == [encode_chat_prompt(tok, u) for u in user]
    out = ppo.run(cfg)
    shown = read_jsonl(Path(out) / "samples.jsonl")[0]["prompt"]
    assert "how was the" in shown and "assistant" in shown  # the rendered template, decoded


# --- hub ids ----------------------------------------------------------------------------------------------------


def test_a_hub_id_without_network_is_one_clear_line(data, tmp_path, capsys):
    import os

    from rlhf.cli import main

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: nothing may be downloaded
    with pytest.raises(UserError, match="could not load a causal LM from 'someorg/somemodel'.*HF_HUB_OFFLINE is set"):
        load_causal_lm("someorg/somemodel")
    code = main(["sft", "--model", "someorg/somemodel", "--data", str(data["pairs"]), "--out", str(tmp_path / "o"),
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "someorg/somemodel" in err[0] and "Traceback" not in err[0]

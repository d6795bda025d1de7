"""PPO's stability options on tiny real models: critic warm-up, value pre-training, decoupled / length-adaptive GAE
lambda, PPO-ptx and the importance-sampling correction for a sampler that is not the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import rlhf.models.generation as generation
from rlhf.core import length_adaptive_lam
from rlhf.errors import UserError
from rlhf.io import read_jsonl
from rlhf.stages import ppo, value_pretrain
from tests.stages.test_ppo import _cfg as ppo_cfg
from tests.stages.test_ppo import tiny_ppo_setup


@pytest.fixture(scope="module")
def stable(tmp_path_factory):
    """test_ppo's tiny base LM and prompts, with a reward head 20x the default scale: scores that vary enough between
    responses for a value function to have something to explain."""
    from rlhf.models.loading import default_head_std, load_scalar_model, load_tokenizer

    setup = tiny_ppo_setup(tmp_path_factory.mktemp("stability"))
    torch.manual_seed(0)
    rm = load_scalar_model(setup["base"], init_head_std=default_head_std(load_scalar_model(setup["base"])) * 20)
    rm.save_pretrained(setup["dir"] / "rm_x20")
    load_tokenizer(setup["base"]).save_pretrained(setup["dir"] / "rm_x20")
    return {**setup, "rm": setup["dir"] / "rm_x20", "train": setup["dir"] / "train.jsonl"}


def _cfg(stable, out, **kw):
    return ppo_cfg(stable, out, **{"reward": str(stable["rm"]), "lr": 1e-3, **kw})


def _rows(out):
    return read_jsonl(out / "metrics.jsonl")


def _snapshots(monkeypatch):
    """Record (update, policy state before, after, value state before, after) around every ppo_update."""
    seen = []
    real = ppo.ppo_update

    def spy(cfg, update, acc, s, *a, **k):
        def state(m):
            return {n: t.detach().clone() for n, t in acc.unwrap_model(m).state_dict().items()}

        before = state(s.m.policy), state(s.m.value)
        out = real(cfg, update, acc, s, *a, **k)
        seen.append((update, before[0], state(s.m.policy), before[1], state(s.m.value)))
        return out

    monkeypatch.setattr(ppo, "ppo_update", spy)
    return seen


def _moved(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_critic_warmup_freezes_the_policy_and_trains_the_value(stable, tmp_path, monkeypatch):
    """critic_warmup_updates 1 of 2: update 1 leaves the policy exactly as it was and moves the value model;
    update 2 trains both; the warm-up row says so and carries no policy loss."""
    seen = _snapshots(monkeypatch)
    out = ppo.run(_cfg(stable, tmp_path / "warm", updates=2, critic_warmup_updates=1))
    (u1, p0, p1, v0, v1), (u2, _, p2, _, v2) = seen
    assert u1 == 1 and _moved(p0, p1) == 0.0 and _moved(v0, v1) > 1e-6
    assert _moved(p1, p2) > 1e-6 and _moved(v1, v2) > 1e-6
    rows = _rows(out)
    assert [r["policy/warmup"] for r in rows] == [1, 0]
    assert "loss/policy" not in rows[0] and "loss/value" in rows[0] and "loss/policy" in rows[1]
    assert "rollout/logprob_diff_mean" not in rows[0] and rows[1]["rollout/logprob_diff_mean"] < 1e-4
    with pytest.raises(UserError, match="critic_warmup_updates.*shared value head"):
        ppo.run(_cfg(stable, tmp_path / "shared", critic_warmup_updates=1, shared_value_head=True))


def test_decoupled_and_length_adaptive_lambda(stable, tmp_path, monkeypatch):
    """lam_value 1.0: the value model is fitted to GAE(lambda = 1) returns while the advantages keep lam; with
    lam_policy_alpha the advantages use VAPO's per-response lambda 1 - 1/(alpha * length)."""
    calls, targets = [], []
    real_gae, real_vloss = ppo.gae, ppo.ppo_value_loss

    def gae_spy(rewards, values, mask, gamma, lam):
        out = real_gae(rewards, values, mask, gamma, lam)
        calls.append((lam.clone() if isinstance(lam, torch.Tensor) else lam, mask.clone(), out))
        return out

    def vloss_spy(values, old_values, returns, mask, clip):
        targets.append(returns.clone())
        return real_vloss(values, old_values, returns, mask, clip)

    monkeypatch.setattr(ppo, "gae", gae_spy)
    monkeypatch.setattr(ppo, "ppo_value_loss", vloss_spy)
    ppo.run(_cfg(stable, tmp_path / "a", updates=1, lam_value=1.0, lam_policy_alpha=0.2))
    (lam_pol, mask, _), (lam_val, _, (_, mc_returns)) = calls
    assert torch.equal(lam_pol, length_adaptive_lam(mask.sum(1), 0.2)) and lam_val == 1.0
    rows = {tuple(r.tolist()) for r in mc_returns}
    assert all(tuple(r.tolist()) in rows for t in targets for r in t)  # every value target is a lambda-1 return
    # and they are not the lam-0.95 returns the advantages' GAE call produced (the decoupling changed the targets)
    assert not torch.allclose(calls[0][2][1], mc_returns)


def test_ptx_adds_the_language_modelling_loss_and_resumes_its_data(stable, tmp_path, monkeypatch):
    """ptx_coef > 0: loss/ptx is the policy's cross-entropy on the ptx data (checked against a plain loop over one
    micro-batch), its gradient changes the update, and a resumed run draws the same ptx micro-batches."""
    from rlhf.models.loading import load_causal_lm

    plain = ppo.run(_cfg(stable, tmp_path / "plain", updates=1))
    ptx = ppo.run(_cfg(stable, tmp_path / "ptx", updates=1, ptx_coef=1.0, ptx_data=str(stable["train"]),
                       ptx_batch_size=4))
    row = _rows(ptx)[0]
    assert 0 < row["loss/ptx"] < 10 and "loss/ptx" not in _rows(plain)[0]
    wa, wb = load_file(plain / "model.safetensors"), load_file(ptx / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) > 1e-5
    # lm_loss against a plain loop: mean over predicted tokens of -log softmax(logits)[next token]
    tok_model = load_causal_lm(stable["base"]).eval()
    from rlhf.models.loading import load_tokenizer

    b = ppo.PtxBatches(_cfg(stable, tmp_path / "x", ptx_coef=1.0, ptx_data=str(stable["train"]), ptx_batch_size=2),
                       load_tokenizer(stable["base"]), _OneProcess()).next("cpu")
    with torch.no_grad():
        got = ppo.lm_loss(tok_model, b).item()
        logits = tok_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    terms = [-torch.log_softmax(logits[i, t], -1)[b["labels"][i, t + 1]].item()
             for i in range(b["labels"].shape[0]) for t in range(b["labels"].shape[1] - 1) if b["labels"][i, t + 1] >= 0]
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # resume: crash in update 3 after the update-2 checkpoint; the resumed run equals the straight one
    kw = dict(updates=3, save_every=2, ptx_coef=1.0, ptx_data=str(stable["train"]), ptx_batch_size=4)
    straight = ppo.run(_cfg(stable, tmp_path / "s", **kw))
    real, calls = ppo.ppo_update, {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(ppo, "ppo_update", crash)
    with pytest.raises(RuntimeError):
        ppo.run(_cfg(stable, tmp_path / "r", **kw))
    monkeypatch.setattr(ppo, "ppo_update", real)
    resumed = ppo.run(_cfg(stable, tmp_path / "r", resume=True, **kw))
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss/ptx"] for r in _rows(straight)] == [r["loss/ptx"] for r in _rows(resumed)]


class _OneProcess:
    process_index, num_processes = 0, 1


def test_importance_correction_weights_and_loss_by_hand(stable, tmp_path, monkeypatch):
    """is_correction tis with a known mismatch: the sampler reports log-probs lower than the trainer's by log 3 on
    every token of the first response and by log 1.5 on the second's. The weights given to the policy loss are
    min(rho, C) = 2 and 1.5 on those tokens, 1 elsewhere, and the loss is the hand-computed weighted clipped loss."""
    real_sampler, real_loss = generation.sample_with_logprobs, ppo.ppo_policy_loss
    shifts = {0: math.log(3.0), 1: math.log(1.5)}

    def mismatched(model, *a, **k):
        b = real_sampler(model, *a, **k)
        for row, d in shifts.items():
            b.logprobs[row] = (b.logprobs[row] - d) * b.response_mask[row]
        return b

    seen = []

    def loss_spy(logp, old_logp, advantages, mask, clip_range, weights=None):
        seen.append((logp.detach(), old_logp, advantages, mask, clip_range, weights))
        return real_loss(logp, old_logp, advantages, mask, clip_range, weights=weights)

    monkeypatch.setattr(generation, "sample_with_logprobs", mismatched)
    monkeypatch.setattr(ppo, "ppo_policy_loss", loss_spy)
    out = ppo.run(_cfg(stable, tmp_path / "is", updates=1, num_minibatches=1, ppo_epochs=1, is_correction="tis",
                       is_threshold=2.0, generation_batch_size=8))
    logp, old_logp, adv, mask, eps, w = seen[0]
    assert w is not None
    # rows are in minibatch (permuted) order: each row's weights are all 2 (rho 3, truncated), all 1.5 or all ~1
    kinds = []
    for i in range(w.shape[0]):
        vals = w[i][mask[i]]
        kind = next((c for c in (2.0, 1.5, 1.0) if torch.allclose(vals, torch.full_like(vals, c), atol=1e-4)), None)
        kinds.append(kind)
    assert sorted(kinds, key=lambda k: -1 if k is None else k) == [1.0] * (w.shape[0] - 2) + [1.5, 2.0], kinds
    ratio = torch.exp(logp - old_logp)
    terms = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)) * w
    hand = (terms * mask).sum() / mask.sum()
    row = _rows(out)[0]
    assert row["loss/policy"] == pytest.approx(hand.item(), rel=1e-5, abs=1e-7)
    assert row["rollout/is_clipped_frac"] > 0 and row["rollout/logprob_diff_mean"] > 0.1
    with pytest.raises(UserError, match="is_correction"):
        _cfg(stable, tmp_path / "bad", is_correction="tis", rollout_logprobs="sampler").validate()


def test_value_pretraining_explains_the_returns_and_ppo_starts_from_it(stable, tmp_path):
    """rlhf value-pretrain fits the value model to the SFT policy's returns (held-out explained variance rises from
    ~0 to clearly positive); PPO with --value keeps its head (value_head_init auto) and its first update's explained
    variance is the pre-trained one, not the zero head's 0."""
    vp = value_pretrain.run(value_pretrain.ValuePretrainConfig(
        policy=str(stable["base"]), reward=str(stable["rm"]), prompts=str(stable["prompts"]), out=str(tmp_path / "v"),
        rollouts=128, max_new_tokens=12, epochs=15, batch_size=8, lr=2e-3, device="cpu"))
    summary = json.loads((vp / "summary.json").read_text())
    assert abs(summary["before"]["eval/value_explained_variance"]) < 0.05
    assert summary["after"]["eval/value_explained_variance"] > 0.3, summary
    assert json.loads((vp / "value_config.json").read_text())["format"] == "rlhf-value-v1"
    default = _rows(ppo.run(_cfg(stable, tmp_path / "d", updates=1)))[0]
    warm = _rows(ppo.run(_cfg(stable, tmp_path / "w", updates=1, value=str(vp))))[0]
    assert abs(default["value/explained_variance"]) < 0.05
    assert warm["value/explained_variance"] > 0.2, warm["value/explained_variance"]

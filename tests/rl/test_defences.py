"""The reward-hacking defences of every on-policy algorithm (rlhf.rl.defences) on a real tiny ensemble: the default
is today's score to the bit, each option changes the score as its formula says, bad combinations are refused with
the fix, and a short run with each option trains and logs its documented metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.models.generation import Batch
from rlhf.models.reward import load_reward_model
from rlhf.rl.defences import RewardDefences
from rlhf.rl.rollout import score
from rlhf.stages import grpo, ppo
from tests.stages.test_ppo import tiny_ppo_setup

GAINS, BIASES = [1.5, 0.8, 2.0], [0.1, -0.3, 0.0]


class OneProcess:
    device, num_processes = torch.device("cpu"), 1


ACC = OneProcess()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The PPO tests' tiny models plus a 3-member ensemble folder (heads drawn with seeds 0, 1, 2) in the layout
    `rlhf reward --ensemble 3` writes, with distinct gains and biases."""
    from rlhf.models.loading import default_head_std, load_scalar_model, load_tokenizer

    s = tiny_ppo_setup(tmp_path_factory.mktemp("defences"))
    ens, tok = s["dir"] / "ens", load_tokenizer(s["base"])
    for i in range(3):
        torch.manual_seed(i)
        folder = ens / ("." if i == 0 else f"members/{i}")
        load_scalar_model(s["base"], init_head_std=default_head_std(load_scalar_model(s["base"]))
                          ).save_pretrained(folder)
        tok.save_pretrained(folder)
    members = [{"path": "." if i == 0 else f"members/{i}", "gain": GAINS[i], "bias": BIASES[i]} for i in range(3)]
    (ens / "reward_config.json").write_text(json.dumps({"format": "rlhf-reward-v1", "gain": GAINS[0],
                                                        "bias": BIASES[0], "members": members}))
    s["ens"] = ens
    return s


@pytest.fixture(scope="module")
def scored(setup):
    """(the ensemble, a batch of 6 responses of lengths 1..6, the members' normalised scores by hand)."""
    from rlhf.models.loading import load_tokenizer

    rm = load_reward_model(setup["ens"])
    tok = load_tokenizer(setup["base"])
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, tok.vocab_size, (6, 3), generator=g)
    responses = torch.randint(5, tok.vocab_size, (6, 6), generator=g)
    mask = torch.arange(6)[None, :] < torch.arange(1, 7)[:, None]
    responses[~mask] = tok.pad_token_id
    batch = Batch(prompts, torch.ones_like(prompts, dtype=torch.bool), responses, mask, torch.ones(6, dtype=torch.bool))
    with torch.no_grad():
        raw = rm.raw_scores(batch.input_ids, batch.attention_mask)
    by_hand = raw * torch.tensor(GAINS)[:, None] + torch.tensor(BIASES)[:, None]
    return rm, batch, by_hand


def _defaults_cfg(setup, **kw):
    base = dict(policy=str(setup["base"]), reward=str(setup["ens"]), prompts=str(setup["prompts"]), out="unused")
    base.update(kw)
    return ppo.PPOConfig(**base)


def test_mean_is_todays_score_exactly(setup, scored):
    rm, batch, by_hand = scored
    assert RewardDefences.from_config(_defaults_cfg(setup)) is None  # the defaults leave the score path untouched
    with torch.no_grad():
        today, members = score(rm, batch)
        same, _ = score(rm, batch, defences=RewardDefences("mean"), acc=ACC)
    assert torch.equal(today, same) and torch.equal(today, members.mean(0))
    assert torch.allclose(members, by_hand, atol=1e-6)  # the members' gains and biases are applied
    assert members.std(0).min() > 1e-3  # the members disagree, so the aggregates below differ from the mean


@pytest.mark.parametrize("kw,formula", [
    (dict(aggregate="min"), lambda m, n: m.min(0).values),
    (dict(aggregate="mean_minus_std"), lambda m, n: m.mean(0) - m.std(0)),
    (dict(aggregate="mean_minus_std", std_coef=2.5), lambda m, n: m.mean(0) - 2.5 * m.std(0)),
    (dict(clip=0.8), lambda m, n: m.mean(0).clamp(-0.8, 0.8)),
    (dict(length_penalty=0.1), lambda m, n: m.mean(0) - 0.1 * n),
    (dict(aggregate="min", clip=0.8, length_penalty=0.1), lambda m, n: m.min(0).values.clamp(-0.8, 0.8) - 0.1 * n),
])
def test_each_option_changes_the_score_as_its_formula_says(scored, kw, formula):
    rm, batch, by_hand = scored
    d = RewardDefences(**kw)
    with torch.no_grad():
        got, _ = score(rm, batch, defences=d, acc=ACC)
    lengths = torch.arange(1, 7).float()
    assert torch.allclose(got, formula(by_hand, lengths), atol=1e-5)
    assert not torch.allclose(got, by_hand.mean(0), atol=1e-4)
    stats = d.stats()
    assert stats["objective/reward_mean"] == pytest.approx(float(by_hand.mean()), abs=1e-5)
    pre_clip = aggregate(by_hand, kw)
    if "clip" in kw:  # the share of responses whose score was outside [-C, C]
        assert stats["objective/reward_clipfrac"] == pytest.approx(float((pre_clip.abs() > kw["clip"]).float().mean()))
        assert 0 < stats["objective/reward_clipfrac"] < 1
    if kw.get("aggregate", "mean") != "mean":
        assert stats["objective/reward_aggregated"] == pytest.approx(float(pre_clip.mean()), abs=1e-5)


def aggregate(m, kw):
    how = kw.get("aggregate", "mean")
    return m.mean(0) if how == "mean" else m.min(0).values if how == "min" else m.mean(0) - kw.get("std_coef", 1.0) * m.std(0)


def test_length_regression_is_fitted_on_the_first_batch_then_frozen(scored):
    rm, batch, by_hand = scored
    mean, lengths = by_hand.mean(0), torch.arange(1, 7).float()
    slope = float(((lengths - 3.5) * (mean - mean.mean())).sum() / ((lengths - 3.5) ** 2).sum())  # least squares
    d = RewardDefences(length_regress=True)
    with torch.no_grad():
        got, _ = score(rm, batch, defences=d, acc=ACC)
    assert d.slope == pytest.approx(slope, abs=1e-5) and d.mean_length == pytest.approx(3.5)
    assert torch.allclose(got, mean - slope * (lengths - 3.5), atol=1e-5)
    assert abs(float(((lengths - 3.5) * (got - got.mean())).sum())) < 1e-4  # no length effect left in the fit batch
    assert got.mean() == pytest.approx(float(mean.mean()), abs=1e-5)  # the mean score is kept
    # a second batch (the first four responses only) is corrected with the same, frozen line
    with torch.no_grad():
        again, _ = score(rm, batch.index(slice(0, 4)), defences=d, acc=ACC)
    assert d.slope == pytest.approx(slope, abs=1e-5)
    assert torch.allclose(again, mean[:4] - slope * (lengths[:4] - 3.5), atol=1e-5)
    restored = RewardDefences(length_regress=True)
    restored.load_state_dict(d.state_dict())  # what a resumed run continues with
    assert (restored.slope, restored.mean_length) == (d.slope, d.mean_length)


def test_bad_combinations_are_refused_with_the_fix(setup):
    for how in ("min", "mean_minus_std"):
        with pytest.raises(ConfigError, match=r"reward_aggregate.*>= 2 members.*has 1.*rlhf reward --ensemble 4"):
            RewardDefences.from_config(_defaults_cfg(setup, reward=str(setup["rm"]), reward_aggregate=how))
    with pytest.raises(ConfigError, match="reward_aggregate"):  # through the stage, before any model loads
        ppo.run(_defaults_cfg(setup, reward=str(setup["rm"]), reward_aggregate="min", out=str(setup["dir"] / "x")))
    for field, value in (("reward_std_coef", -1.0), ("reward_clip", -2.0), ("length_penalty", -0.1)):
        with pytest.raises(ConfigError, match=field):
            _defaults_cfg(setup, **{field: value}).validate()
    with pytest.raises(ConfigError, match="reward_aggregate"):  # a typo in the choice
        _defaults_cfg(setup, reward_aggregate="median").validate()


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kw,logged", [
    (dict(reward_aggregate="min"), ["objective/reward_aggregated"]),
    (dict(reward_aggregate="mean_minus_std", reward_std_coef=1.0), ["objective/reward_aggregated"]),
    (dict(reward_clip=0.5), ["objective/reward_clipfrac"]),
    (dict(length_penalty=0.01), []),
    (dict(length_regress=True), ["objective/length_slope"]),
])
def test_a_short_ppo_run_with_each_option(setup, tmp_path, kw, logged):
    out = ppo.run(ppo.PPOConfig(policy=str(setup["base"]), reward=str(setup["ens"]), prompts=str(setup["prompts"]),
                                out=str(tmp_path / "ppo"), updates=2, rollout_batch_size=8, num_minibatches=2,
                                ppo_epochs=1, max_new_tokens=8, lr=1e-4, save_every=0, log_samples_every=0,
                                tensorboard=False, device="cpu", seed=0, kl_coef=0.0, **kw))
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for k in ["objective/reward_mean", *logged]:
        assert all(k in r for r in rows) and f"`{k}`" in documented, k
    if "length_regress" in kw:  # the fit is frozen after update 1
        assert rows[0]["objective/length_slope"] == rows[1]["objective/length_slope"]
    if "reward_clip" in kw:
        assert all(abs(r["objective/scores"]) <= 0.5 + 1e-6 for r in rows)


def test_the_options_are_shared_by_the_other_algorithms(setup, tmp_path):
    out = grpo.run(grpo.GRPOConfig(policy=str(setup["base"]), reward=str(setup["ens"]), prompts=str(setup["prompts"]),
                                   out=str(tmp_path / "grpo"), updates=1, rollout_batch_size=8, num_samples=2,
                                   num_minibatches=2, ppo_epochs=1, max_new_tokens=8, save_every=0,
                                   log_samples_every=0, tensorboard=False, device="cpu", seed=0,
                                   reward_aggregate="min", reward_clip=1.0))
    row = _metrics(out)[0]
    assert "objective/reward_aggregated" in row and "objective/reward_clipfrac" in row


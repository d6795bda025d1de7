"""Several objectives: the combined score and the Lagrange multiplier against hand-computed cases, and the
multiplier's dynamics through `Objectives` with stub cost models (no language model)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf.errors import ConfigError
from rlhf.rl.objectives import Objectives, combine_scores, lagrange_step

ACC = SimpleNamespace(device=torch.device("cpu"), num_processes=1)


def test_combine_scores_fixed_weights_by_hand():
    reward = torch.tensor([1.0, 0.0, -1.0])
    costs = torch.tensor([[2.0, 1.0, 0.0], [0.0, 4.0, 1.0]])  # 2 cost models x 3 responses
    got = combine_scores(reward, costs, torch.tensor([0.5, 0.25]))
    # 1 - 0.5*2 - 0.25*0 = 0; 0 - 0.5 - 1 = -1.5; -1 - 0 - 0.25 = -1.25
    assert torch.allclose(got, torch.tensor([0.0, -1.5, -1.25]))


def test_combine_scores_normalised_like_safe_rlhf():
    reward, costs = torch.tensor([3.0]), torch.tensor([[1.0]])
    # (r - lambda c) / (1 + lambda) with lambda = 2: (3 - 2) / 3
    assert combine_scores(reward, costs, torch.tensor([2.0]), normalise=True).item() == pytest.approx(1 / 3)
    # lambda = 0: the reward alone
    assert combine_scores(reward, costs, torch.tensor([0.0]), normalise=True).item() == pytest.approx(3.0)


def test_lagrange_step_by_hand():
    lam, d = torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])
    got = lagrange_step(lam, torch.tensor([0.3, 0.2]), d, lr=0.1)
    # 0.5 + 0.1*(0.3 - 0) = 0.53; 0.5 + 0.1*(0.2 - 1) = 0.42
    assert torch.allclose(got, torch.tensor([0.53, 0.42]))
    # the projection: a step below 0 stops at 0
    assert lagrange_step(torch.tensor([0.05]), torch.tensor([-1.0]), torch.tensor([0.0]), lr=0.1).item() == 0.0


class ConstantCost(torch.nn.Module):
    """A stand-in cost model: every response costs `value` (the reward model's (scores, member scores) pair)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, input_ids, attention_mask):
        s = torch.full((input_ids.shape[0],), self.value)
        return s, s[None]


def _batch(n=4):
    return SimpleNamespace(input_ids=torch.zeros(n, 3, dtype=torch.long), attention_mask=torch.ones(n, 3))


def test_multiplier_rises_while_violated_then_falls_to_zero():
    model = ConstantCost(1.0)
    obj = Objectives([model], [], thresholds=[0.0], lagrange_lr=0.5, lagrange_init=0.0)
    lams = []
    for _ in range(4):  # cost 1 > threshold 0: lambda 0.5, 1.0, 1.5, 2.0
        scores = obj.combine(_batch(), torch.full((4,), 2.0), ACC)
        lams.append(obj.stats(None)["objective/lagrange_multiplier"])
    assert lams == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # the score that update optimises: (2 - 2 * 1) / (1 + 2)
    assert torch.allclose(scores, torch.zeros(4))
    model.value = -1.0  # now satisfied by 1: lambda falls by 0.5 per update and stops at 0
    for _ in range(6):
        obj.combine(_batch(), torch.full((4,), 2.0), ACC)
        lams.append(obj.stats(None)["objective/lagrange_multiplier"])
    assert lams[4:] == pytest.approx([1.5, 1.0, 0.5, 0.0, 0.0, 0.0])
    row = obj.stats(None)
    assert row["objective/cost"] == pytest.approx(-1.0) and row["objective/reward"] == pytest.approx(2.0)


def test_fixed_weights_and_state_round_trip():
    obj = Objectives([ConstantCost(1.0), ConstantCost(3.0)], [0.5, 0.1], thresholds=None, lagrange_lr=0.1,
                     lagrange_init=0.0)
    scores = obj.combine(_batch(2), torch.tensor([1.0, 2.0]), ACC)
    assert torch.allclose(scores, torch.tensor([1.0 - 0.5 - 0.3, 2.0 - 0.5 - 0.3]))  # not normalised
    stats = obj.stats(None)
    assert stats["objective/cost_weight"] == 0.5 and stats["objective/cost_2"] == pytest.approx(3.0)

    a = Objectives([ConstantCost(1.0)], [], thresholds=[0.2], lagrange_lr=0.3, lagrange_init=1.0)
    for _ in range(3):
        a.combine(_batch(), torch.zeros(4), ACC)
    b = Objectives([ConstantCost(1.0)], [], thresholds=[0.2], lagrange_lr=0.3, lagrange_init=1.0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.lam, b.lam)
    a.combine(_batch(), torch.zeros(4), ACC)
    b.combine(_batch(), torch.zeros(4), ACC)
    assert torch.equal(a.lam, b.lam)


# ---------------------------------------------------------------------------------------------------------------
# PPO with a cost model on tiny real models


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.stages.test_ppo import tiny_ppo_setup

    return tiny_ppo_setup(tmp_path_factory.mktemp("objectives"))


def _ppo(setup, out, **kw):
    from rlhf.stages import ppo

    base = dict(policy=str(setup["base"]), reward=str(setup["rm"]), prompts=str(setup["prompts"]), out=str(out),
                cost_reward=[str(setup["rm"])], updates=3, rollout_batch_size=8, num_minibatches=2, ppo_epochs=1,
                max_new_tokens=8, lr=1e-4, save_every=0, log_samples_every=0, tensorboard=False, device="cpu", seed=0)
    base.update(kw)
    return ppo.run(ppo.PPOConfig(**base))


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_ppo_with_a_cost_model_logs_each_objective_and_the_multiplier(setup, tmp_path):
    # the cost model is the reward model itself: its normalised scores sit near 0, far above a threshold of -5
    rows = _rows(_ppo(setup, tmp_path / "up", cost_threshold=[-5.0], lagrange_lr=0.2, gold="demo"))
    documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for name in ("objective/reward", "objective/cost", "objective/lagrange_multiplier", "gold/cost"):
        assert all(name in r for r in rows), name
        assert f"`{name}`" in documented, name
    lam = 0.0
    for r in rows:  # the multiplier steps on each update's own mean cost before that update's scores use it
        lam = max(0.0, lam + 0.2 * (r["objective/cost"] + 5.0))
        assert r["objective/lagrange_multiplier"] == pytest.approx(lam, rel=1e-5)
        # the optimised score is (reward - lambda cost) / (1 + lambda), batch means included (cost = reward here)
        assert r["objective/scores"] == pytest.approx((1 - lam) / (1 + lam) * r["objective/reward"], abs=1e-4)
    assert rows[-1]["objective/lagrange_multiplier"] > rows[0]["objective/lagrange_multiplier"] > 0
    assert all(0.0 <= r["gold/cost"] <= 1.0 for r in rows)

    # satisfied by far: a multiplier that starts at 1 falls to 0 and stays there
    rows = _rows(_ppo(setup, tmp_path / "down", cost_threshold=[5.0], lagrange_lr=0.5, lagrange_init=1.0))
    assert [r["objective/lagrange_multiplier"] for r in rows][-1] == 0.0
    assert rows[-1]["objective/scores"] == pytest.approx(rows[-1]["objective/reward"], abs=1e-5)


def test_fixed_weight_and_config_errors(setup, tmp_path):
    rows = _rows(_ppo(setup, tmp_path / "w", cost_weight=[0.5], updates=1))
    r = rows[0]
    assert r["objective/cost_weight"] == 0.5
    assert r["objective/scores"] == pytest.approx(r["objective/reward"] - 0.5 * r["objective/cost"], abs=1e-4)
    from rlhf.stages import ppo

    for kw, field in ((dict(cost_weight=[1.0], cost_threshold=[0.0]), "cost_weight"),
                      (dict(cost_reward=[], cost_threshold=[0.0]), "cost_threshold"),
                      (dict(cost_threshold=[0.0, 1.0]), "cost_threshold"), (dict(lagrange_lr=0.0), "lagrange_lr")):
        with pytest.raises(ConfigError, match=field):
            ppo.PPOConfig(policy="p", reward="r", prompts="x", cost_reward=kw.pop("cost_reward", ["c"]), **kw).validate()


def test_resume_continues_the_multiplier_exactly(setup, tmp_path, monkeypatch):
    from rlhf.stages import ppo

    kw = dict(updates=4, save_every=2, cost_threshold=[-5.0], lagrange_lr=0.2)
    straight = _rows(_ppo(setup, tmp_path / "a", **kw))
    calls, real = {"n": 0}, ppo.ppo_update

    def crash_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", crash_on_fourth)
    with pytest.raises(RuntimeError):
        _ppo(setup, tmp_path / "b", **kw)
    monkeypatch.setattr(ppo, "ppo_update", real)
    resumed = _rows(_ppo(setup, tmp_path / "b", resume=True, **kw))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("objective/lagrange_multiplier", "objective/cost", "objective/scores"):
        assert [r[key] for r in resumed] == [r[key] for r in straight], key
    assert straight[-1]["objective/lagrange_multiplier"] > 0


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_critic_free_algorithms_take_cost_models_too(setup, tmp_path, algo):
    """The combination sits in the shared rollout (rlhf.rl.collect), so the group estimators optimise it as well."""
    import importlib

    mod = importlib.import_module(f"rlhf.stages.{algo}")
    cfg_cls = {"rloo": "RLOOConfig", "grpo": "GRPOConfig"}[algo]
    out = mod.run(getattr(mod, cfg_cls)(
        policy=str(setup["base"]), reward=str(setup["rm"]), prompts=str(setup["prompts"]), out=str(tmp_path / algo),
        cost_reward=[str(setup["rm"])], cost_threshold=[-5.0], lagrange_lr=0.2, updates=2, rollout_batch_size=8,
        num_samples=2, num_minibatches=2, ppo_epochs=1, max_new_tokens=8, save_every=0, log_samples_every=0,
        tensorboard=False, device="cpu", seed=0))
    rows = _rows(out)
    assert 0 < rows[0]["objective/lagrange_multiplier"] < rows[1]["objective/lagrange_multiplier"]
    lam = rows[1]["objective/lagrange_multiplier"]
    assert rows[1]["objective/scores"] == pytest.approx((1 - lam) / (1 + lam) * rows[1]["objective/reward"], abs=1e-4)


def test_second_gold_judge_and_its_simulated_labels_name():
    from rlhf.data.gold import cost_score
    from rlhf.labeling.simulate import load_judge

    assert cost_score("It was wonderful.") == 1.0 and cost_score("Wonderfully made, really.") == 1.0
    assert cost_score("It was great and lovely.") == 0.0 and cost_score("") == 0.0
    assert load_judge("cost") is cost_score
    with pytest.raises(TypeError):
        cost_score(None)

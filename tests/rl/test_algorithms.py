"""RLOO, GRPO and REINFORCE++ on the tiny models of the PPO tests: each trains, its first ratio is 1, its folder is
a policy that `rlhf eval` accepts, and the seam's guarantees (accumulation, resume, processes) hold for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.errors import UserError
from rlhf.stages import grpo, reinforce_pp, rloo
from tests.stages.test_ppo import tiny_ppo_setup
from tests.support.runs import run_one_and_two_processes

ALGOS = {"rloo": (rloo, rloo.RLOOConfig), "grpo": (grpo, grpo.GRPOConfig),
         "reinforce_pp": (reinforce_pp, reinforce_pp.ReinforcePPConfig)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_ppo_setup(tmp_path_factory.mktemp("rl"))


def _cfg(name, setup, out, **kw):
    base = dict(policy=str(setup["base"]), reward=str(setup["rm"]), prompts=str(setup["prompts"]), out=str(out),
                updates=2, rollout_batch_size=8, num_samples=2, num_minibatches=2, ppo_epochs=2, max_new_tokens=10,
                lr=1e-4, save_every=0, log_samples_every=0, tensorboard=False, device="cpu", seed=0)
    base.update(kw)
    return ALGOS[name][1](**base)


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(folder):
    return load_file(Path(folder) / "model.safetensors")


@pytest.mark.parametrize("name", list(ALGOS))
def test_trains_with_first_ratio_one_and_writes_a_policy_folder(name, setup, tmp_path, monkeypatch):
    module = ALGOS[name][0]
    seen = []
    real = module.ppo_policy_loss

    def spy(logp, old_logp, advantages, mask, clip_range, **kw):
        seen.append((logp.detach().clone(), old_logp.clone(), advantages.clone(), mask.clone()))
        return real(logp, old_logp, advantages, mask, clip_range, **kw)

    monkeypatch.setattr(module, "ppo_policy_loss", spy)
    out = module.run(_cfg(name, setup, tmp_path / name))
    logp, old_logp, adv, mask = seen[0]
    assert (logp - old_logp)[mask].abs().max().item() < 1e-5  # same temperature, dropout off: ratio 1
    assert adv[mask].abs().max() > 0  # there was a learning signal
    assert max((a - b)[m].abs().max().item() for a, b, _, m in seen[1:]) > 1e-5  # and the policy moved
    assert torch.all(adv[~mask] == 0)

    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert not any(k.startswith("value/") for r in rows for k in r), "no critic, so no value metrics"
    assert rows[0]["rollout/logprob_diff_max"] < 1e-5
    documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for k in rows[0]:
        assert f"`{k}`" in documented or k == "lr/policy", f"{k} is not defined in docs/metrics.md"
    if name in ("rloo", "grpo"):
        assert "objective/group_score_std" in rows[0]
    if name == "grpo":
        assert "loss/kl" in rows[0] and rows[0]["objective/non_score_reward"] == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == name and summary["algorithm"] == name and summary["updates"] == 2
    assert (out / "config.yaml").exists() and not (out / "value").exists()
    base, trained = _weights(setup["base"]), _weights(out)
    assert trained.keys() == base.keys() and any(not torch.equal(base[k], trained[k]) for k in base)


def test_groups_are_k_copies_of_a_prompt_whatever_the_process_count():
    from rlhf.rl import group_prompt_indices, prompt_indices

    idx, groups = group_prompt_indices(update=3, rollouts=12, k=3, n=5, seed=7)
    assert idx == [p for p in prompt_indices(3, 4, 5, 7) for _ in range(3)]
    assert groups == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert group_prompt_indices(3, 4, 1, 5, 7) == (prompt_indices(3, 4, 5, 7), [0, 1, 2, 3])  # PPO's batch


def test_rollout_groups_share_their_prompt(setup, tmp_path, monkeypatch):
    seen = []
    real = rloo.collect

    def spy(*a, **kw):
        r = real(*a, **kw)
        seen.append(r)
        return r

    monkeypatch.setattr(rloo, "collect", spy)
    rloo.run(_cfg("rloo", setup, tmp_path / "g", updates=1, num_samples=4, ppo_epochs=1))
    r = seen[0]
    assert r.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert r.prompt_indices[:4] == [r.prompt_indices[0]] * 4 and r.prompt_indices[4] != r.prompt_indices[0]
    for g in (0, 1):  # the 4 members of a group were sampled from one prompt, with different random draws
        rows = (r.group_ids == g).nonzero().flatten()
        prompts = r.batch.prompt_ids[rows]
        assert torch.equal(prompts, prompts[:1].expand_as(prompts))


def test_grpo_constant_reward_gives_zero_advantage_and_no_update(setup, tmp_path, monkeypatch):
    """A reward model whose head is zero scores every response 0: every group's std is 0, every advantage is 0, and
    the policy does not move (the KL term's gradient is 0 while the policy equals the reference)."""
    from rlhf.models.loading import load_scalar_model, load_tokenizer

    flat = tmp_path / "flat_rm"
    rm = load_scalar_model(setup["rm"])
    with torch.no_grad():
        for p in rm.score.parameters():
            p.zero_()
    rm.save_pretrained(flat)
    load_tokenizer(setup["rm"]).save_pretrained(flat)
    seen = []
    real = grpo.grpo_advantages
    monkeypatch.setattr(grpo, "grpo_advantages", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    # padded forwards: "does not move" needs the training forward to equal the rollout's bit for bit (a packed row's
    # rounding depends on the rows packed with it, and Adam turns a 1e-7 KL gradient into an lr-sized step)
    out = grpo.run(_cfg("grpo", setup, tmp_path / "z", reward=str(flat), updates=1, pack_sequences="off"))
    assert all(torch.all(a == 0) for a in seen)
    row = _metrics(out)[0]
    assert row["objective/group_score_std"] == 0.0 and row["loss/policy"] == 0.0
    base, trained = _weights(setup["base"]), _weights(out)
    for k in base:
        assert torch.equal(base[k], trained[k]), k


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_grpo_accumulation_does_not_change_the_update(setup, tmp_path, aggregation):
    """Micro-batches are weighted by their share of the minibatch's sequences (or tokens): the split is memory only."""
    a = grpo.run(_cfg("grpo", setup, tmp_path / "a", updates=1, loss_aggregation=aggregation))
    b = grpo.run(_cfg("grpo", setup, tmp_path / "b", updates=1, loss_aggregation=aggregation, grad_accum=2))
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    ma, mb = _metrics(a)[0], _metrics(b)[0]
    # the token statistics (clipfrac) are weighted like the loss, by sequences in a per-sequence aggregation: only
    # the losses are invariant there
    keys = ("loss/policy", "loss/kl", "objective/scores") + (("policy/clipfrac",) if aggregation == "token-mean" else ())
    for k in keys:
        assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k


def test_grpo_resume_is_bit_identical(setup, tmp_path, monkeypatch):
    straight = grpo.run(_cfg("grpo", setup, tmp_path / "a", updates=3, save_every=1))
    calls, real = {"n": 0}, grpo.grpo_update

    def crash_at_three(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(grpo, "grpo_update", crash_at_three)
    with pytest.raises(RuntimeError):
        grpo.run(_cfg("grpo", setup, tmp_path / "b", updates=3, save_every=1))
    monkeypatch.setattr(grpo, "grpo_update", real)
    resumed = grpo.run(_cfg("grpo", setup, tmp_path / "b", updates=3, save_every=1, resume=True))
    wa, wb = _weights(straight), _weights(resumed)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3]
    assert _metrics(resumed)[2]["loss/policy"] == _metrics(straight)[2]["loss/policy"]


def test_config_errors(setup, tmp_path):
    with pytest.raises(UserError, match="num_samples"):
        _cfg("rloo", setup, tmp_path, num_samples=1).validate()
    with pytest.raises(UserError, match="num_samples"):
        _cfg("grpo", setup, tmp_path, num_samples=1).validate()
    with pytest.raises(UserError, match="num_samples"):
        _cfg("grpo", setup, tmp_path, num_samples=3).validate()  # 8 rollouts are not whole groups of 3
    with pytest.raises(UserError, match="loss_aggregation"):
        _cfg("grpo", setup, tmp_path, loss_aggregation="sum").validate()
    with pytest.raises(UserError, match="group_baseline"):
        _cfg("reinforce_pp", setup, tmp_path, num_samples=1, group_baseline=True).validate()


@pytest.mark.slow
def test_reinforce_pp_two_processes_match_one(setup, tmp_path):
    """2 CPU processes (gloo): the global batch normalisation and the group baseline see the same batch as 1."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys; from rlhf.stages import reinforce_pp as r\n"
        "cfg = r.ReinforcePPConfig(policy=sys.argv[1], reward=sys.argv[2], prompts=sys.argv[3], out=sys.argv[4],"
        " updates=2, rollout_batch_size=8, num_samples=2, group_baseline=True, generation_batch_size=2,"
        " num_minibatches=1, ppo_epochs=2, max_new_tokens=10, lr=1e-4, save_every=0, log_samples_every=0,"
        " tensorboard=False, device='cpu')\n"
        "r.run(cfg)\n")
    one, two = run_one_and_two_processes(
        script, [str(setup["base"]), str(setup["rm"]), str(setup["prompts"])], tmp_path)
    for r1, r2 in zip(_metrics(one), _metrics(two)):
        for k in ("objective/scores", "objective/kl", "loss/policy", "policy/clipfrac", "advantages/mean_raw"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-4, abs=1e-5), (k, r1[k], r2[k])
    w1, w2 = _weights(one), _weights(two)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


def test_eval_accepts_the_run_folder(setup, tmp_path):
    from rlhf.stages import evaluate

    out = rloo.run(_cfg("rloo", setup, tmp_path / "rloo", updates=1, ppo_epochs=1))
    ev = evaluate.run(evaluate.EvalConfig(policy=str(out), reward=str(setup["rm"]), prompts=str(setup["prompts"]),
                                          out=str(tmp_path / "eval"), max_new_tokens=6, device="cpu"))
    report = json.loads((Path(ev) / "eval.json").read_text())
    assert report["kl"] is not None and json.loads((Path(ev) / "summary.json").read_text())["kind"] == "eval"
    # the baseline and the reference default to the run's own reference (its config.yaml's policy): the SFT model
    import yaml

    resolved = yaml.safe_load((Path(ev) / "config.yaml").read_text())
    assert resolved["baseline"] == str(setup["base"])

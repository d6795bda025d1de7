"""The doctor on the other algorithms: a run is diagnosed as the kind its summary.json records (GRPO as GRPO, not
as PPO); the critic-free on-policy algorithms get every PPO policy/KL/EOS/length/reward rule and no value rule; DPO
gets its own rules. Synthetic stage folders (metrics rows written by hand, as tiny_runs.write_stage): the rules read
only metrics.jsonl and summary.json, and each pattern (a KL blow-up, likelihood displacement) would take a long
real run to produce."""

from __future__ import annotations

import math

import pytest

from rlhf.artifacts import load_stage, write_summary
from rlhf.diagnose import diagnose
from rlhf.diagnose.rules import RULES
from tests.diagnose.tiny_runs import ppo_rows, write_stage

NO_CRITIC = {"value/explained_variance": None, "loss/value": None, "lr/value": None}


def _hits(path):
    return {f.rule: f for f in diagnose(path).findings}


def _kinds(rule_id):
    return next(r.kinds for r in RULES if r.id == rule_id)


@pytest.mark.parametrize("kind", ["rloo", "grpo", "reinforce_pp"])
def test_critic_free_runs_get_the_policy_rules_and_no_value_rule(tmp_path, kind):
    # the KL blows up, and value numbers that would fail value-not-learning on a PPO run (a critic-free stage has
    # no value function, so whatever a value/* key says is not its problem): only the KL rule fires
    rows = ppo_rows(12, **{"objective/kl": lambda u: 3.0 * u, "value/explained_variance": -1.0})
    folder = write_stage(tmp_path / kind, rows, config={"kl_coef": 0.05, "max_new_tokens": 32}, summary={"kind": kind})
    d = diagnose(folder)
    assert [s.kind for s in d.stages] == [kind]
    assert "kl-blowup" in d.rules_hit()
    assert "value-not-learning" not in d.rules_hit()
    for rule_id in ("kl-blowup", "missing-eos", "length-exploitation", "reward-out-of-range", "entropy-collapse",
                    "over-optimisation", "stage-incomplete"):
        assert kind in _kinds(rule_id)
    assert kind not in _kinds("value-not-learning")


def test_value_rule_still_fires_for_ppo(tmp_path):
    rows = ppo_rows(12, **{"objective/kl": lambda u: 3.0 * u, "value/explained_variance": -1.0})
    assert {"value-not-learning", "kl-blowup"} <= set(_hits(write_stage(tmp_path / "ppo", rows, summary={"kind": "ppo"})))


def test_kind_comes_from_summary_then_from_the_metric_names(tmp_path):
    grpo = ppo_rows(6, **{**NO_CRITIC, "loss/kl": 0.01, "objective/group_score_std": 0.5})
    write_stage(tmp_path / "a", grpo, summary={})  # no kind recorded (a run from before the kind): sniffed
    assert load_stage(tmp_path / "a").kind == "grpo"
    rloo = ppo_rows(6, **{**NO_CRITIC, "objective/group_score_std": 0.5})
    assert load_stage(write_stage(tmp_path / "b", rloo, summary={})).kind == "rloo"
    assert load_stage(write_stage(tmp_path / "c", ppo_rows(6, **NO_CRITIC), summary={})).kind == "reinforce_pp"
    # REINFORCE++ sampling k per prompt logs the group spread as RLOO does: its config's group_baseline tells them apart
    assert load_stage(write_stage(tmp_path / "c2", rloo, config={"group_baseline": False}, summary={})).kind \
        == "reinforce_pp"
    assert load_stage(write_stage(tmp_path / "d", ppo_rows(6), summary={})).kind == "ppo"
    vpt = [{"step": i, "vpt/loss": 1.0 / i} for i in range(1, 5)]
    assert load_stage(write_stage(tmp_path / "e", vpt, summary={})).kind == "value-pretrain"
    # summary.json's kind wins over the names (a GRPO run that logged no loss/kl is still GRPO)
    write_stage(tmp_path / "f", ppo_rows(6, **NO_CRITIC))
    write_summary(tmp_path / "f", {"updates": 6}, kind="grpo", algorithm="dr-grpo")
    s = load_stage(tmp_path / "f")
    assert (s.kind, s.algorithm, s.summary["updates"]) == ("grpo", "dr-grpo", 6)


def test_a_value_pretrain_folder_is_not_an_unknown_stage(tmp_path):
    rows = [{"step": i, "vpt/loss": 1.0 / i, "eval/value_loss": 1.0 / i} for i in range(1, 6)]
    d = diagnose(write_stage(tmp_path / "value", rows, summary=None))
    assert [s.kind for s in d.stages] == ["value-pretrain"]
    assert "stage-incomplete" not in d.rules_hit()  # write_stage wrote a summary: finished


def test_no_group_signal(tmp_path):
    rows = ppo_rows(10, **{**NO_CRITIC, "objective/group_score_std": 0.0})
    f = _hits(write_stage(tmp_path / "rloo", rows, summary={"kind": "rloo"}))["no-group-signal"]
    assert f.severity == "severe" and "group_score_std 0" in f.evidence
    varied = ppo_rows(10, **{**NO_CRITIC, "objective/group_score_std": 0.4})
    assert "no-group-signal" not in _hits(write_stage(tmp_path / "ok", varied, summary={"kind": "rloo"}))
    # REINFORCE++: only with group_baseline does a flat group zero the advantage (else the batch mean is the baseline)
    for baseline, hit in ((True, True), (False, False)):
        folder = write_stage(tmp_path / f"rpp-{baseline}", rows, config={"group_baseline": baseline, "num_samples": 4},
                             summary={"kind": "reinforce_pp"})
        assert ("no-group-signal" in _hits(folder)) is hit


def dpo_rows(n: int, chosen, margin, heldout=0.7, train_acc=0.7) -> list[dict]:
    rows = []
    for u in range(1, n + 1):
        c, m = chosen(u), margin(u)
        rows.append({"step": u, "dpo/loss": math.log1p(math.exp(-m)), "dpo/accuracy": train_acc, "dpo/margin": m,
                     "dpo/chosen_logratio": c, "dpo/rejected_logratio": c - m})
        if u % 2 == 0:
            rows.append({"step": u, "eval/dpo_loss": math.log1p(math.exp(-m)), "eval/dpo_accuracy": heldout})
    return rows


def test_dpo_likelihood_displacement(tmp_path):
    # the margin rises while the chosen log-ratio falls by 3 nats: both pushed down, rejected faster
    rows = dpo_rows(12, chosen=lambda u: -0.25 * u, margin=lambda u: 0.3 * u)
    f = _hits(write_stage(tmp_path / "dpo", rows, summary={"kind": "dpo"}))["dpo-likelihood-displacement"]
    assert f.severity == "severe" and "dpo/chosen_logratio" in f.evidence and "dpo/margin rose" in f.evidence
    # small fall: a warning
    rows = dpo_rows(12, chosen=lambda u: -0.07 * u, margin=lambda u: 0.3 * u)
    assert _hits(write_stage(tmp_path / "w", rows, summary={"kind": "dpo"}))["dpo-likelihood-displacement"].severity \
        == "warning"
    # healthy: the chosen log-ratio rises with the margin
    rows = dpo_rows(12, chosen=lambda u: 0.05 * u, margin=lambda u: 0.3 * u)
    hits = _hits(write_stage(tmp_path / "ok", rows, summary={"kind": "dpo"}))
    assert hits == {}, [(f.rule, f.evidence) for f in hits.values()]


def test_dpo_not_learning(tmp_path):
    rows = dpo_rows(12, chosen=lambda u: 0.05 * u, margin=lambda u: 0.3 * u, heldout=0.5, train_acc=0.95)
    f = _hits(write_stage(tmp_path / "dpo", rows, summary={"kind": "dpo"}))["dpo-not-learning"]
    assert f.severity == "severe" and "eval/dpo_accuracy 0.500" in f.evidence and "memorised" in f.evidence
    # the DPO loss rules of SFT/reward apply to dpo's names too
    flat = dpo_rows(12, chosen=lambda u: 0.0, margin=lambda u: 0.0)
    assert "loss-not-falling" in _hits(write_stage(tmp_path / "flat", flat, summary={"kind": "dpo"}))


def test_a_real_grpo_run_is_read_as_grpo_by_doctor_report_and_eval(tiny, tmp_path):
    """A real tiny GRPO run: its summary.json says grpo, the doctor looks at it as GRPO (no value rule could apply),
    the report titles its section GRPO, and eval takes its folder as the policy with the run's own settings."""
    from rlhf.report.build import sections
    from rlhf.stages import evaluate, grpo

    out = grpo.run(grpo.GRPOConfig(policy=str(tiny["base"]), reward=str(tiny["rm"]), prompts=str(tiny["prompts"]),
                                   out=str(tmp_path / "run" / "grpo"), updates=3, rollout_batch_size=8, num_samples=4,
                                   num_minibatches=2, ppo_epochs=1, max_new_tokens=8, temperature=0.9, save_every=0,
                                   log_samples_every=0, device="cpu", seed=0))
    s = load_stage(out)
    assert (s.kind, s.summary["kind"]) == ("grpo", "grpo") and not s.has_critic
    d = diagnose(out)
    assert [x.kind for x in d.stages] == ["grpo"] and "value-not-learning" not in d.rules_hit()
    assert [sec.title for sec in sections(d)] == [f"GRPO ({out.name})"]
    cfg = evaluate.resolve(evaluate.EvalConfig(policy=str(out), reward=str(tiny["rm"]), prompts=str(tiny["prompts"])))
    assert (cfg.baseline, cfg.temperature, cfg.max_new_tokens) == (str(tiny["base"]), 0.9, 8)

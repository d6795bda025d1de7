"""The doctor's PPO rules on real tiny PPO runs, each deliberately broken one way, against one healthy run.

Each broken run must trigger its rule(s); the healthy run must trigger none of the PPO rules. Where our PPO cannot
be broken that way from its config (it prevents the bug by construction), the run is synthetic: metrics rows
written by hand, said so at the test."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf.diagnose import diagnose
from rlhf.diagnose.rules import RULES
from tests.diagnose.tiny_runs import ppo_rows, ppo_run, write_stage

PPO_RULES = {r.id for r in RULES if "ppo" in r.kinds}


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _hits(path):
    d = diagnose(path)
    return {f.rule: f for f in d.findings}


@pytest.fixture(scope="module")
def healthy(tiny, tmp_path_factory):
    return ppo_run(tiny, tmp_path_factory.mktemp("healthy") / "ppo")


def test_healthy_run_has_no_findings(healthy):
    d = diagnose(healthy)
    assert [s.kind for s in d.stages] == ["ppo"]
    assert d.findings == [], [(f.rule, f.evidence) for f in d.findings]
    assert not d.severe
    rows = _metrics(healthy)
    # the rules were really evaluated on this run (not skipped for lack of data), and it is healthy by their measure
    assert len(rows) == 8 and all("objective/gold" in r for r in rows)
    assert sum(r["value/explained_variance"] for r in rows[-2:]) / 2 > 0.1


def test_value_lr_zero_means_value_not_learning(tiny, tmp_path, healthy):
    out = ppo_run(tiny, tmp_path / "ppo", value_lr=1e-12)
    hits = _hits(out)
    f = hits["value-not-learning"]
    assert f.severity == "warning" and "lr/value at most 8.8e-13" in f.evidence and "value_lr" in f.fix
    # explained variance is exactly 0: a zero-initialised value head that never moves predicts V = 0
    assert all(r["value/explained_variance"] == 0 for r in _metrics(out))
    assert f.steps == (7, 8)
    assert "value-not-learning" not in _hits(healthy)


def test_reward_model_with_swapped_labels_is_over_optimised(tiny, tmp_path, healthy):
    """A reward model that learned the labels backwards (it prefers the negative reviews): PPO raises its score
    while the demo's gold judge (sentiment) falls."""
    out = ppo_run(tiny, tmp_path / "ppo", reward=str(tiny["rm_swapped"]), lr=2e-3, value_lr=0.0, updates=10,
                  max_new_tokens=16, seed=1)
    f = _hits(out)["over-optimisation"]
    assert f.severity == "severe" and f.steps == (1, 10)
    rows = _metrics(out)
    gold = [r["objective/gold"] for r in rows]
    proxy = [r["objective/scores"] for r in rows]
    assert sum(gold[-3:]) < sum(gold[:3]) - 0.3 and sum(proxy[-3:]) > sum(proxy[:3])
    assert "over-optimisation" not in _hits(healthy)


def test_huge_lr_without_kl_penalty_blows_up_kl_and_collapses_entropy_and_diversity(tiny, tmp_path, healthy):
    out = ppo_run(tiny, tmp_path / "ppo", lr=3e-2, kl_coef=0.0)
    hits = _hits(out)
    assert hits["kl-blowup"].severity == "severe" and "kl_coef is 0" in hits["kl-blowup"].fix
    assert hits["entropy-collapse"].severity == "severe"
    assert hits["repetition"].severity == "severe"
    rows = _metrics(out)
    assert rows[-1]["objective/entropy"] < 0.1 * rows[0]["objective/entropy"]
    assert max(r["objective/kl"] for r in rows) > 20
    assert not {"kl-blowup", "entropy-collapse", "repetition"} & set(_hits(healthy))


def test_tiny_cliprange_gives_high_clipfrac(tiny, tmp_path, healthy):
    """A clip range of 0.002 with lr 1e-3 and 4 epochs: most tokens leave the trust region every update."""
    out = ppo_run(tiny, tmp_path / "ppo", lr=1e-3, cliprange=0.002, ppo_epochs=4, updates=5, max_new_tokens=12)
    f = _hits(out)["clipfrac-high"]
    assert f.severity in ("warning", "severe") and "cliprange=0.002" in f.fix
    assert "clipfrac-high" not in _hits(healthy) and "approxkl-high" not in _hits(healthy)


def test_short_max_new_tokens_means_missing_eos_and_crash_leaves_stage_incomplete(tiny, tmp_path, monkeypatch,
                                                                                    healthy):
    from rlhf.stages import ppo

    real, calls = ppo.ppo_update, {"n": 0}

    def crash_at_update_4(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(ppo, "ppo_update", crash_at_update_4)
    with pytest.raises(RuntimeError):
        ppo_run(tiny, tmp_path / "ppo", max_new_tokens=2, updates=6, save_every=2)
    hits = _hits(tmp_path / "ppo")
    assert hits["missing-eos"].severity == "severe" and "max_new_tokens=2" in hits["missing-eos"].evidence
    inc = hits["stage-incomplete"]
    assert inc.severity == "info" and "last logged step 3 of 6" in inc.evidence
    assert "checkpoint/ is present" in inc.evidence
    assert "missing-eos" not in _hits(healthy) and "stage-incomplete" not in _hits(healthy)


def test_scaled_reward_is_out_of_range(tiny, tmp_path, healthy):
    out = ppo_run(tiny, tmp_path / "ppo", reward=str(tiny["rm_hot"]), updates=3, max_new_tokens=12)
    f = _hits(out)["reward-out-of-range"]
    assert f.severity == "severe" and "rm_hot" in f.evidence
    # the healthy run uses the same head with gain 1: the rule looked at it (it is normalised) and stayed quiet
    assert "reward-out-of-range" not in _hits(healthy)


def test_non_finite_metrics(healthy, tmp_path):
    """Synthetic: our PPO stops at the first non-finite loss, after logging that row; append such a row."""
    run = tmp_path / "ppo"
    shutil.copytree(healthy, run)
    rows = _metrics(run)
    rows.append({**rows[-1], "step": 9, "loss/policy": float("nan"), "objective/kl": float("inf")})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = _hits(run)["non-finite"]
    assert f.severity == "severe" and f.steps == (9, 9)
    assert "loss/policy (nan at step 9)" in f.evidence and "objective/kl (inf at step 9)" in f.evidence
    assert "non-finite" not in _hits(healthy)


def test_negative_kl_from_logprob_mismatch(tmp_path):
    """Synthetic: a sampler/log-prob mismatch cannot be configured (PPO computes every log-prob at the sampling
    temperature). These rows are what it produces: KL != 0 at update 1 and negative on average."""
    bad = write_stage(tmp_path / "bad", ppo_rows(8, **{"objective/kl": lambda u: -1.5 - 0.1 * u}),
                      config={"ref": "", "temperature": 0.7, "top_p": 1.0, "top_k": 0})
    hits = _hits(bad)
    assert hits["negative-kl"].severity == "severe" and "100% of the updates" in hits["negative-kl"].evidence
    assert hits["kl-nonzero-at-start"].severity == "warning"
    # noise: single negative updates around a positive mean are not flagged (the healthy real run has some too)
    noisy = write_stage(tmp_path / "noisy", ppo_rows(8, **{"objective/kl": lambda u: [0, -0.15, -0.13, 0.5, 0.1,
                                                                                      0.08, 0.2, 0.4][u - 1]}),
                        config={"ref": ""})
    assert not {"negative-kl", "kl-nonzero-at-start"} & set(_hits(noisy))
    # a different reference model starts at KL > 0 legitimately
    other_ref = write_stage(tmp_path / "ref", ppo_rows(8, **{"objective/kl": lambda u: 2.0}), config={"ref": "x"})
    assert "kl-nonzero-at-start" not in _hits(other_ref)


def test_ensemble_disagreement_rising(tmp_path):
    """Synthetic: a real ensemble run needs trained reward models that agree on-distribution (random heads
    disagree from the start)."""
    rising = write_stage(tmp_path / "rising", ppo_rows(12, **{"ensemble/disagreement": lambda u: 0.1 + 0.05 * u}))
    flat = write_stage(tmp_path / "flat", ppo_rows(12, **{"ensemble/disagreement": lambda u: 0.3 + 0.01 * (u % 2)}))
    f = _hits(rising)["ensemble-disagreement"]
    assert f.severity == "warning" and "0.200 (updates 1-3) -> 0.650 (updates 10-12)" in f.evidence
    assert "ensemble-disagreement" not in _hits(flat)


def test_length_exploitation(tmp_path):
    """Synthetic: the tiny runs' responses are capped by max_new_tokens long before length could be exploited."""
    grow = write_stage(tmp_path / "grow", ppo_rows(12, **{"response/length_mean": lambda u: 10.0 + 3 * u,
                                                          "objective/scores": lambda u: 0.2 * u}),
                       config={"max_new_tokens": 44})
    f = _hits(grow)["length-exploitation"]
    assert "correlation with objective/scores 1.00" in f.evidence and "max_new_tokens=44" in f.evidence
    # longer but not rewarded for it (score unrelated): no finding
    unrelated = write_stage(tmp_path / "unrelated", ppo_rows(12, **{"response/length_mean": lambda u: 10.0 + 3 * u,
                                                                    "objective/scores": lambda u: (-1) ** u}))
    assert "length-exploitation" not in _hits(unrelated)


def test_proxy_rising_after_gold_plateaued(tmp_path):
    """Synthetic, shaped like the demo task run with kl_coef=0 for 120 updates (the gold judge saturates near +0.9
    while the reward-model score keeps climbing and the KL runs away); that real run takes ~10 minutes, too long
    for the suite, and the doctor's finding on it is quoted in the project notes."""
    rows = ppo_rows(40, **{"objective/scores": lambda u: 0.05 * u, "objective/gold": lambda u: min(0.9, 0.1 * u),
                           "objective/kl": lambda u: 5.0 * u})
    f = _hits(write_stage(tmp_path / "plateau", rows))["over-optimisation"]
    assert f.severity == "warning" and "objective/gold changed by +0.000" in f.evidence
    # the same proxy rise while gold still improves is learning, not over-optimisation
    rows = ppo_rows(40, **{"objective/scores": lambda u: 0.05 * u, "objective/gold": lambda u: 0.02 * u,
                           "objective/kl": lambda u: 5.0 * u})
    assert "over-optimisation" not in _hits(write_stage(tmp_path / "learning", rows))


def test_adaptive_kl_far_above_target(tmp_path):
    rows = ppo_rows(8, **{"objective/kl": lambda u: 3.0 * u, "response/length_mean": 200.0})
    over = write_stage(tmp_path / "over", rows, config={"adaptive_kl": True, "kl_target": 4.0, "kl_coef": 0.05})
    f = _hits(over)["kl-blowup"]
    assert f.severity == "severe" and "kl_target is 4" in f.evidence  # 22.5 > 4 x 4 at 0.11 nats/token
    under = write_stage(tmp_path / "under", rows, config={"adaptive_kl": True, "kl_target": 20.0})
    assert "kl-blowup" not in _hits(under)


def test_every_ppo_rule_is_exercised():
    tested = {"value-not-learning", "kl-blowup", "negative-kl", "kl-nonzero-at-start", "entropy-collapse",
              "clipfrac-high", "approxkl-high", "over-optimisation", "ensemble-disagreement", "length-exploitation",
              "repetition", "reward-out-of-range", "missing-eos", "non-finite", "stage-incomplete",
              "logprob-mismatch",  # on a real run with a stale sampler: tests/stages/test_checkpoint_traps.py
              "constraint-violated"}  # on real tiny runs with a cost model: tests/diagnose/test_constraint_rule.py
    assert tested >= PPO_RULES | {"non-finite", "stage-incomplete"}

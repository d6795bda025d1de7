"""The doctor's constraint-violated rule on two real tiny PPO runs with a cost model (the reward model itself,
whose normalised scores sit near 0): a threshold far below that is violated throughout, one far above it holds;
and the report's figure of the cost and the multiplier."""

from __future__ import annotations

from rlhf.diagnose import diagnose
from tests.diagnose.tiny_runs import ppo_run


def _hits(path):
    return {f.rule: f for f in diagnose(path).findings}


def test_violated_constraint_is_flagged_and_a_kept_one_is_not(tiny, tmp_path):
    kw = dict(updates=4, max_new_tokens=12, ppo_epochs=1, cost_reward=[str(tiny["rm"])], lagrange_lr=0.1)
    run = ppo_run(tiny, tmp_path / "violated" / "ppo", cost_threshold=[-3.0], **kw)
    violated = _hits(run)
    assert "constraint-violated" in violated
    f = violated["constraint-violated"]
    assert f.severity == "severe"  # about 3 normalised units above: far beyond 0.5
    assert "cost_threshold -3.000" in f.evidence and "objective/lagrange_multiplier" in f.evidence
    kept = _hits(ppo_run(tiny, tmp_path / "kept" / "ppo", cost_threshold=[3.0], **kw))
    assert "constraint-violated" not in kept
    # fixed weights have no constraint to violate
    weighted = _hits(ppo_run(tiny, tmp_path / "weighted" / "ppo", cost_weight=[0.5], **kw))
    assert "constraint-violated" not in weighted

    # the report shows the cost against its threshold and the multiplier's trajectory
    from rlhf.report.build import build_report

    html = build_report(run, None).read_text()
    assert "Competing objectives: cost and Lagrange multiplier" in html
    assert "objective/lagrange_multiplier" in html

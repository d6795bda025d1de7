"""The report's section per algorithm kind: the on-policy algorithms get PPO's curves without the value panel
(named after the algorithm, with GRPO's KL loss and the group score spread when logged), DPO its own curves.
Synthetic stage folders (metrics written by hand, as tests/diagnose/tiny_runs.write_stage): the sections read only
metrics.jsonl and summary.json."""

from __future__ import annotations

import pytest

from rlhf.diagnose import diagnose
from rlhf.report import build_report, plots
from rlhf.report.build import sections
from tests.diagnose.test_algorithm_rules import dpo_rows
from tests.diagnose.tiny_runs import ppo_rows, write_stage


@pytest.fixture
def panels(monkeypatch):
    """The panels each curves() call drew (title -> labels of lines with data), PNGs skipped: structure only."""
    drawn: list[dict[str, list[str]]] = []

    def record(panel_list, xlabel, ncols=3):
        drawn.append({t: [lab for lab, (x, _) in lines if x] for t, lines in panel_list if any(p[0] for _, p in lines)})
        return "png"

    monkeypatch.setattr(plots, "curves", record)
    monkeypatch.setattr(plots, "to_png", lambda fig: plots.plt.close(fig) or "png")
    return drawn


@pytest.mark.parametrize("kind, title", [("grpo", "GRPO"), ("rloo", "RLOO"), ("reinforce_pp", "REINFORCE++")])
def test_on_policy_sections_without_the_value_panel(tmp_path, panels, kind, title):
    # a stray value/* key (a critic-free run has no value function) must not give it a value panel
    rows = ppo_rows(6, **{"value/explained_variance": 0.5, "loss/kl": 0.01, "objective/group_score_std": 0.3})
    write_stage(tmp_path / kind, rows, summary={"kind": kind})
    (sec,) = sections(diagnose(tmp_path / kind))
    assert sec.title == f"{title} ({kind})"
    assert [f.title for f in sec.figures][:2] == [f"{title} training curves", "Reward vs KL frontier"]
    drawn = panels[0]
    assert not any("value/" in t for t in drawn)
    assert "KL loss term  loss/kl" in drawn and "Score std within a group  objective/group_score_std" in drawn
    assert "KL to reference (nats)  objective/kl" in drawn


def test_ppo_keeps_its_value_panel(tmp_path, panels):
    write_stage(tmp_path / "ppo", ppo_rows(6), summary={"kind": "ppo"})
    (sec,) = sections(diagnose(tmp_path / "ppo"))
    assert sec.title == "PPO (ppo)"
    assert "Value explained variance  value/explained_variance" in panels[0]


def test_dpo_section(tmp_path, panels):
    rows = dpo_rows(8, chosen=lambda u: 0.05 * u, margin=lambda u: 0.3 * u)
    write_stage(tmp_path / "dpo", rows, summary={"kind": "dpo", "eval/dpo_accuracy": 0.7, "steps": 8})
    (sec,) = sections(diagnose(tmp_path / "dpo"))
    assert sec.title == "DPO (dpo)" and [f.title for f in sec.figures] == ["DPO training curves"]
    assert panels[0] == {
        "DPO loss": ["train  dpo/loss", "held-out  eval/dpo_loss"],
        "Pair accuracy": ["train  dpo/accuracy", "held-out  eval/dpo_accuracy"],
        "Margin  dpo/margin": ["dpo/margin"],
        "Log-ratio to the reference": ["chosen  dpo/chosen_logratio", "rejected  dpo/rejected_logratio"]}
    assert dict(sec.tables[0].rows) == {"eval/dpo_accuracy": "0.7", "steps": "8"}


def test_a_run_with_every_algorithm_renders(tmp_path):
    run = tmp_path / "run"
    write_stage(run / "ppo", ppo_rows(4), summary={"kind": "ppo"})
    write_stage(run / "grpo", ppo_rows(4, **{"value/explained_variance": None, "loss/value": None, "lr/value": None}),
                summary={"kind": "grpo"})
    write_stage(run / "dpo", dpo_rows(4, chosen=lambda u: 0.0, margin=lambda u: 0.1 * u), summary={"kind": "dpo"})
    html = build_report(run).read_text()
    for heading in ("PPO training curves", "GRPO training curves", "DPO training curves"):
        assert heading in html

"""The doctor's SFT, reward-model and evaluation rules, and how it reads run folders.

SFT runs are real (tiny model, seconds). Reward and eval stages are synthetic: the rules read only their
summary.json / eval.json / metrics rows, and a reward model at chance needs no training to describe."""

from __future__ import annotations

import json

import pytest

from rlhf.diagnose import diagnose, load_run
from rlhf.errors import UserError
from tests.conftest import SENTENCES
from tests.diagnose.tiny_runs import ppo_rows, sft_run, write_stage


def _hits(path):
    return {f.rule: f for f in diagnose(path).findings}


# --- SFT (real runs) -------------------------------------------------------------------------------------------


def test_healthy_sft_has_no_findings(tiny):
    d = diagnose(tiny["base"])
    assert [s.kind for s in d.stages] == ["sft"]
    assert d.findings == [], [(f.rule, f.evidence) for f in d.findings]
    ev = d.stages[0].series("eval/loss").values
    assert len(ev) >= 3 and ev[-1] < ev[0]  # the rules had eval points to look at


def test_sft_on_one_sentence_overfits(tmp_path):
    out = sft_run(tmp_path / "sft", SENTENCES[:1] * 20, SENTENCES[1:], max_steps=15)
    f = _hits(out)["eval-loss-rising"]
    assert f.severity == "warning" and "eval/loss was lowest" in f.evidence
    ev = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval/loss" in x]
    assert ev[-1]["eval/loss"] > min(r["eval/loss"] for r in ev) * 1.05


def test_sft_with_tiny_lr_does_not_learn(tmp_path, tiny):
    out = sft_run(tmp_path / "sft", SENTENCES * 5, SENTENCES, lr=1e-7, max_steps=10, log_every=2, eval_every=5)
    f = _hits(out)["loss-not-falling"]
    assert f.severity == "severe" and "The lr is 1e-07" in f.fix
    assert "loss-not-falling" not in _hits(tiny["base"]) and "eval-loss-rising" not in _hits(tiny["base"])


# --- reward model and evaluation (synthetic) -------------------------------------------------------------------


def _reward_rows(acc_end: float, eval_losses: list[float]):
    rows = [{"step": 10 * i, "rm/loss": 0.69 - 0.04 * i, "rm/accuracy": 0.5 + 0.04 * i} for i in range(1, 6)]
    rows += [{"step": 10 * i, "eval/rm_loss": v, "eval/rm_accuracy": acc_end} for i, v in enumerate(eval_losses)]
    return rows


@pytest.mark.parametrize("acc,bayes,pairs,expect", [
    (0.51, 0.85, 400, "severe"),  # chance
    (0.62, None, 24, "warning"),  # not distinguishable from chance on 24 pairs: 0.5 + 2 * sqrt(0.25 / 24) = 0.70
    (0.70, 0.90, 400, "warning"),  # 78% of what the labels allow
    (0.84, 0.86, 400, None),  # healthy: near the Bayes-optimal accuracy
    (0.80, None, 400, None),
])
def test_reward_model_near_chance(tmp_path, acc, bayes, pairs, expect):
    summary = {"eval/rm_accuracy": acc, "eval_pairs": pairs}
    if bayes:
        summary["eval/rm_bayes_accuracy"] = bayes
    stage = write_stage(tmp_path / "reward", _reward_rows(acc, [0.69, 0.6, 0.55]), summary=summary)
    assert diagnose(stage).stages[0].kind == "reward"
    f = _hits(stage).get("rm-near-chance")
    assert (f.severity if f else None) == expect


def test_reward_accuracy_read_from_eval_json_or_last_eval_row(tmp_path):
    # no summary (stage still running): the last logged eval row is used
    stage = write_stage(tmp_path / "reward", _reward_rows(0.5, [0.69, 0.69, 0.69]), summary=None)
    (stage / "summary.json").unlink()
    hits = _hits(stage)
    assert hits["rm-near-chance"].severity == "severe" and hits["stage-incomplete"].severity == "info"


def test_reward_training_rules(tmp_path):
    overfit = write_stage(tmp_path / "overfit", _reward_rows(0.8, [0.69, 0.5, 0.45, 0.52, 0.6]),
                          summary={"eval/rm_accuracy": 0.8})
    f = _hits(overfit)["eval-loss-rising"]
    assert "eval/rm_loss was lowest (0.45) at step 20 and rose to 0.6 by step 40 (+33%)" in f.evidence
    flat_rows = [{"step": i, "rm/loss": 0.693 + 0.001 * (i % 2)} for i in range(1, 9)]
    flat = write_stage(tmp_path / "flat", flat_rows, summary={"eval/rm_accuracy": 0.8}, config={"lr": 3e-4})
    assert _hits(flat)["loss-not-falling"].severity == "severe"
    healthy = write_stage(tmp_path / "ok", _reward_rows(0.8, [0.69, 0.5, 0.45, 0.44]),
                          summary={"eval/rm_accuracy": 0.8})
    assert _hits(healthy) == {}


EVAL = {"gold": {"baseline": 0.20, "policy": 0.45}, "reward": {"baseline": 0.0, "policy": 1.1}, "kl": 4.2,
        "win_rate": {"gold": 0.7, "reward": 0.8}, "length": {"baseline": 20, "policy": 22},
        "rm": {"accuracy": 0.81, "bayes_accuracy": 0.86}}


def test_eval_stage_rules(tmp_path):
    good = write_stage(tmp_path / "good", [], eval=EVAL)
    assert diagnose(good).stages[0].kind == "eval" and _hits(good) == {}
    hacked = write_stage(tmp_path / "hacked", [], eval={**EVAL, "gold": {"baseline": 0.2, "policy": -0.1},
                                                       "win_rate": {"gold": 0.3, "reward": 0.9}})
    f = _hits(hacked)["eval-gold-below-baseline"]
    assert f.severity == "severe" and "reward model prefers the policy (+1.100 vs +0.000)" in f.evidence
    worse_both = write_stage(tmp_path / "worse", [], eval={**EVAL, "gold": {"baseline": 0.2, "policy": 0.1},
                                                           "reward": {"baseline": 0.0, "policy": -0.2}})
    assert _hits(worse_both)["eval-gold-below-baseline"].severity == "warning"
    chance = write_stage(tmp_path / "chance", [], eval={**EVAL, "rm": {"accuracy": 0.5, "bayes_accuracy": 0.86}})
    assert _hits(chance)["rm-near-chance"].severity == "severe"


# --- reading run folders -----------------------------------------------------------------------------------------


def test_run_folder_with_several_stages_in_pipeline_order(tmp_path, tiny):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny["base"], run / "sft")
    write_stage(run / "ppo", ppo_rows(8, **{"response/eos_fraction": 0.1}))
    write_stage(run / "eval", [], eval=EVAL)
    write_stage(run / "reward", _reward_rows(0.8, [0.69, 0.5, 0.45]), summary={"eval/rm_accuracy": 0.8})
    (run / "data").mkdir()  # no metrics: not a stage
    d = diagnose(run)
    assert [(s.name, s.kind) for s in d.stages] == [("sft", "sft"), ("reward", "reward"), ("ppo", "ppo"),
                                                    ("eval", "eval")]
    assert [(f.stage, f.rule) for f in d.findings] == [("ppo", "missing-eos")] and d.severe


def test_truncated_last_line_is_a_note_and_a_bad_middle_line_an_error(tmp_path):
    stage = write_stage(tmp_path / "ppo", ppo_rows(6))
    with (stage / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "objective/sc')  # killed mid-write
    d = diagnose(stage)
    assert [f.rule for f in d.findings] == ["read-problem"] and "metrics.jsonl:7" in d.findings[0].evidence
    assert len(d.stages[0].rows) == 6
    lines = (stage / "metrics.jsonl").read_text().splitlines()
    (stage / "metrics.jsonl").write_text("\n".join([lines[0], "not json", *lines[1:6]]) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a valid metrics row"):
        diagnose(stage)


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics found"):
        load_run(tmp_path / "empty")
    (tmp_path / "f.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="not a folder"):
        load_run(tmp_path / "f.jsonl")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no metrics found"):
        load_run(tmp_path / "blank")

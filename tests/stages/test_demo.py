"""`rlhf demo --preset tiny`: the whole pipeline end to end, through the real CLI."""

import json

import pytest

from rlhf.cli import main


@pytest.mark.slow
def test_tiny_demo_writes_eval_and_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    ev = json.loads((out / "eval" / "eval.json").read_text())
    for key in ("gold", "reward", "length"):
        assert set(ev[key]) >= {"baseline", "policy"}
        assert all(isinstance(v, float) for v in ev[key].values())
    assert isinstance(ev["kl"], float) and set(ev["win_rate"]) >= {"gold", "reward"}
    assert set(ev["rm"]) >= {"accuracy", "bayes_accuracy"} and 0.5 < ev["rm"]["bayes_accuracy"] <= 1
    assert (out / "report.html").exists()
    for stage in ("base", "sft", "reward", "ppo", "eval"):
        assert (out / stage / "summary.json").exists(), stage
    prefs = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    assert prefs and {"prompt", "chosen", "rejected"} <= set(prefs[0])
    capsys.readouterr()
    # a second run finds every stage done and only rewrites the report and the summary
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("already done, skipped") == 8

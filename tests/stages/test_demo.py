"""`rlhf demo --preset tiny`: the whole pipeline end to end, through the real CLI."""

import json
import shutil

import pytest
import yaml

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
    reward = json.loads((out / "reward" / "summary.json").read_text())
    assert reward["early_stopping"]["best_step"] in {r["step"] for r in _rows(out / "reward") if "eval/rm_loss" in r}
    capsys.readouterr()
    # a second run finds every stage done and only rewrites the report and the summary
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("already done, skipped") == 8

    # --seeds: the whole demo per seed into OUT/seed-N, then the table over the seeds. Seed 0 is the run above
    # (copied: every stage done, so it is skipped); seed 1 is a fresh run of every stage
    seeds = tmp_path / "seeds"
    shutil.copytree(out, seeds / "seed-0")
    assert main(["demo", "--preset", "tiny", "--seeds", "0,1", "--out", str(seeds), "--device", "cpu"]) == 0
    assert capsys.readouterr().err.count("already done, skipped") == 8
    for stage in ("base", "sft", "reward", "ppo", "eval"):  # the seed reaches every stage
        assert yaml.safe_load((seeds / "seed-1" / stage / "config.yaml").read_text())["seed"] == 1, stage
    assert yaml.safe_load((seeds / "seed-1" / "samples.config.yaml").read_text())["seed"] == 1
    assert (seeds / "seed-1/data/prompts_train.jsonl").read_text() != (out / "data/prompts_train.jsonl").read_text()
    table = json.loads((seeds / "seeds.json").read_text())
    assert table["seeds"] == [0, 1] and table["preset"] == "tiny"
    evals = [json.loads((seeds / f"seed-{s}" / "eval" / "eval.json").read_text()) for s in (0, 1)]
    kl = table["figures"]["kl"]
    assert kl["values"] == {"0": evals[0]["kl"], "1": evals[1]["kl"]} and evals[0]["kl"] != evals[1]["kl"]
    assert kl["median"] == pytest.approx((evals[0]["kl"] + evals[1]["kl"]) / 2)  # the median of two is their mean
    assert (kl["min"], kl["max"]) == (min(kl["values"].values()), max(kl["values"].values()))
    ratio = table["figures"]["rm_accuracy_vs_bayes"]["values"]["1"]
    assert ratio == pytest.approx(evals[1]["rm"]["accuracy"] / evals[1]["rm"]["bayes_accuracy"])
    for key in ("win_rate_gold", "gold_policy", "length_policy", "doctor_findings"):
        fig = table["figures"][key]
        assert fig["min"] <= fig["median"] <= fig["max"] and set(fig["values"]) == {"0", "1"}, key
    assert set(table["doctor"]) == {"0", "1"}
    md = (seeds / "seeds.md").read_text()
    assert "| figure | median [min, max] | seed 0 | seed 1 |" in md and "win rate vs the baseline, gold judge" in md


def test_seeds_must_be_distinct_integers(tmp_path, capsys):
    assert main(["demo", "--preset", "tiny", "--seeds", "0,x", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds" in err[0] and "0,1,2" in err[0]
    assert not (tmp_path / "d").exists()


def _rows(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]

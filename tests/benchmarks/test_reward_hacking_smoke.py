"""benchmarks/reward_hacking.py end to end on the tiny demo (two updates per defence): a row per defence with finite
figures, each PPO run got kl_coef 0, the ensemble and its defence's options, the plots are written, a second run
resumes without training again, and a bad --defences is one line."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.runs import run_benchmark, tiny_demo

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reward_hacking.py"
DEFENCES = ("mean", "min", "mean_minus_std", "clip", "length_penalty", "length_regress")


def _run(*args: object) -> subprocess.CompletedProcess:
    return run_benchmark(SCRIPT, *args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return tiny_demo(tmp_path_factory, "hacking")


@pytest.mark.slow
def test_a_row_per_defence_with_finite_figures_and_resume(tiny_run, tmp_path):
    out = tmp_path / "study"
    r = _run("--run", tiny_run, "--out", out, "--ensemble", "2", "--updates", "2", "--window", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(last["rows"]) == list(DEFENCES) and last["latest_gold_peak"] in DEFENCES
    result = json.loads((out / "reward_hacking.json").read_text())
    ens = yaml.safe_load((Path(result["ensemble"]) / "config.yaml").read_text())
    assert ens["ensemble"] == 2 and Path(ens["data"]) == tiny_run / "preferences.jsonl"
    for row in result["defences"]:
        for key in ("gold_first", "gold_final", "gold_peak", "proxy_final", "kl_final"):
            assert math.isfinite(row[key]), (row["name"], key)
        assert row["updates"] == 2 and row["gold_peak_update"] in (1, 2)
        cfg = yaml.safe_load((out / row["name"] / "config.yaml").read_text())
        assert cfg["kl_coef"] == 0.0 and Path(cfg["reward"]) == Path(result["ensemble"]) and cfg["gold"] == "demo"
        for key, value in row["options"].items():
            assert cfg[key] == value
        metrics = [json.loads(x) for x in (out / row["name"] / "metrics.jsonl").read_text().splitlines()]
        assert row["curve"]["gold"] == [m["objective/gold"] for m in metrics]
        assert (out / f"reward_hacking_{row['name']}.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "reward_hacking.md").read_text().splitlines()
    assert len(table) == 2 + len(DEFENCES) and not any("nan" in line for line in table)

    r2 = _run("--run", tiny_run, "--out", out, "--ensemble", "2", "--updates", "2", "--window", "1")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "rlhf ppo" not in r2.stderr and "rlhf reward" not in r2.stderr
    assert json.loads(r2.stdout.strip().splitlines()[-1])["rows"] == last["rows"]


def test_bad_defence_is_one_line(tmp_path):
    r = _run("--run", tmp_path, "--out", tmp_path / "x", "--defences", "mean,median")
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("--defences: unknown median")
    r = _run("--run", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "is missing" in r.stderr

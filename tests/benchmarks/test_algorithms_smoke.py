"""benchmarks/algorithms.py end to end on the tiny demo (one update each): a row per algorithm with finite figures in
the JSON and the table, the demo's PPO settings given to every on-policy algorithm, DPO offline, the plot written,
a second run (one job at a time) resumes without training again, and a bad --algorithms is one line."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.runs import run_benchmark, tiny_demo

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "algorithms.py"
ALGOS = ("ppo", "rloo", "grpo", "reinforce_pp", "dpo")
FIGURES = ("win_rate_gold", "kl", "reward_policy", "gold_policy", "wall_s", "peak_rss_mb")


def _run(*args: object) -> subprocess.CompletedProcess:
    return run_benchmark(SCRIPT, *args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return tiny_demo(tmp_path_factory, "algorithms")


@pytest.mark.slow
def test_algorithms_table_has_a_finite_row_per_algorithm_and_resumes(tiny_run, tmp_path):
    out = tmp_path / "alg"
    r = _run("--run", tiny_run, "--out", out, "--updates", "1", "--eval_prompts", "8", "--jobs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last["rows"]) == set(ALGOS)
    result = json.loads((out / "algorithms.json").read_text())
    rows = {row["name"]: row for row in result["algorithms"]}
    assert list(rows) == list(ALGOS)
    ppo_cfg = yaml.safe_load((tiny_run / "ppo" / "config.yaml").read_text())
    for name, row in rows.items():
        for key in FIGURES:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key, row[key])
        lo, hi = row["win_rate_gold_ci95"]
        assert 0 <= lo <= row["win_rate_gold"] <= hi <= 1
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 50  # a real child process holding torch and a model
        assert row["kind"] == name
        assert json.loads((out / f"eval-{name}" / "eval.json").read_text())["win_rate"]["gold"] == row["win_rate_gold"]
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())
        if name == "dpo":
            assert row["tokens_generated"] == 0 and row["responses_generated"] == 0 and row["curve"] == []
            assert Path(cfg["data"]) == tiny_run / "preferences.jsonl" and Path(cfg["model"]) == tiny_run / "sft"
            continue
        # the demo's PPO budget and settings, one update: every on-policy algorithm samples the same responses
        for key in ("rollout_batch_size", "max_new_tokens", "temperature", "lr", "kl_coef", "ppo_epochs",
                    "num_minibatches", "seed"):
            assert cfg[key] == ppo_cfg[key], (name, key)
        assert cfg["updates"] == 1 and Path(cfg["policy"]) == tiny_run / "sft"
        assert row["responses_generated"] == ppo_cfg["rollout_batch_size"]
        assert 0 < row["tokens_generated"] <= ppo_cfg["rollout_batch_size"] * ppo_cfg["max_new_tokens"]
        assert len(row["curve"]) == 1 and all(math.isfinite(v) for v in row["curve"][0])
        assert row["num_samples"] == (4 if name in ("rloo", "grpo") else 1)
    # every eval compares with the same SFT responses: one baseline
    assert len({(row["reward_baseline"], row["gold_baseline"]) for row in rows.values()}) == 1
    table = (out / "algorithms.md").read_text().splitlines()
    assert len(table) == 3 + len(ALGOS)  # header, rule, SFT, one row each
    for label, line in zip(("PPO", "RLOO", "GRPO", "REINFORCE++", "DPO"), table[3:]):
        assert line.startswith(f"| {label} |") and "nan" not in line and "inf" not in line
    assert (out / "algorithms_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resumable: every eval exists, so nothing is trained or evaluated again and the figures are the same
    r2 = _run("--run", tiny_run, "--out", out, "--updates", "1", "--eval_prompts", "8")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "training:" not in r2.stderr and "eval:" not in r2.stderr
    assert json.loads(r2.stdout.strip().splitlines()[-1]) == last


def test_bad_algorithm_is_one_line(tmp_path):
    r = _run("--run", tmp_path, "--out", tmp_path / "x", "--algorithms", "ppo,trpo")
    assert r.returncode != 0 and r.stderr.strip() == (
        "--algorithms: unknown algorithm 'trpo' (choose from ppo, rloo, grpo, reinforce_pp, dpo)")
    r = _run("--run", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "is missing" in r.stderr

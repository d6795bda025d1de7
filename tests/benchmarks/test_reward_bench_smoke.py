"""The reward benchmark runs end to end (--smoke: a few steps) and ends with one JSON line with its key figures."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reward_benchmark_smoke_prints_json_last():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reward_train.py"), "--smoke", "--threads", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"pairs_per_s", "peak_rss_mb", "s_per_step_median"} <= set(last)
    assert last["smoke"] is True and last["params"] == 1_180_928 and last["steps_per_repeat"] == 2
    assert last["pairs_per_s"] > 0 and last["s_per_step_median"] > 0 and last["peak_rss_mb"] > 0

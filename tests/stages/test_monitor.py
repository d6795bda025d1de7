"""`rlhf monitor RUN --log FILE`: drift of logged traffic against the run's own eval, on a real tiny demo run.

One `rlhf demo --preset tiny` per module, its eval re-run on 64 held-out prompts (the preset's 16 are too few for a
baseline), a policy trained with kl_coef 0 (a different, reward-hacking policy: the tiny demo's PPO policy is still
within 0.1 nats of its SFT model, so the SFT model is not a different policy there) and a two-member reward ensemble.
The logs are sampled from those models on the held-out prompts the eval did not use. The same thresholds decide in
every test (checked), so the no-drift case cannot pass by a threshold set out of reach.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.diagnose import monitor as mon
from rlhf.errors import UserError

pytestmark = pytest.mark.slow
EVAL_PROMPTS = 64  # the eval's held-out prompts; the logs use the held-out prompts after them


# ---------------------------------------------------------------------------------------------------------------
# the run and its logs


def _sample_log(model: Path, prompts: list[dict], out: Path, seed: int, max_new_tokens: int = 16) -> Path:
    """A production log: one response per prompt sampled from `model` as the run samples (temperature 0.7)."""
    from rlhf.io import write_jsonl
    from rlhf.stages import sample

    src = out.with_suffix(".prompts.jsonl")
    write_jsonl(src, prompts)
    samples = out.with_suffix(".samples.jsonl")
    sample.run(sample.SampleConfig(model=str(model), prompts=str(src), out=str(samples), k=1, temperature=0.7,
                                   max_new_tokens=max_new_tokens, seed=seed, device="cpu"))
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    write_jsonl(out, [{"prompt": r["prompt"], "response": r["responses"][0]} for r in rows])
    return out


def _shifted_prompts(n: int) -> list[dict]:
    """Prompts from another distribution: another template, words the review corpus never uses."""
    rng = random.Random(0)
    verbs = ["Explain how to configure", "Summarise the tax rules for", "Write a haiku about",
             "List the side effects of", "Translate into French the notice about"]
    things = ["the kernel scheduler", "quarterly VAT returns", "a volcano at dawn", "mortgage refinancing",
              "ibuprofen tablets", "a Kubernetes cluster", "the Byzantine emperors", "photosynthesis in algae"]
    return [{"prompt_id": f"shift-{i}", "prompt": f"{rng.choice(verbs)} {rng.choice(things)}"} for i in range(n)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    from rlhf.stages import evaluate, ppo, reward

    d = tmp_path_factory.mktemp("monitor")
    run = d / "run"
    assert main(["demo", "--preset", "tiny", "--out", str(run), "--device", "cpu"]) == 0
    shutil.rmtree(run / "eval")
    evaluate.run(evaluate.EvalConfig(policy=str(run / "ppo"), reward=str(run / "reward"),
                                     prompts=str(run / "data" / "prompts_heldout.jsonl"), out=str(run / "eval"),
                                     n_prompts=EVAL_PROMPTS, gold="demo", device="cpu"))
    # a policy that left the reference: kl_coef 0 and a 10x learning rate, 8 updates (it hacks the tiny RM)
    ppo.run(ppo.PPOConfig(policy=str(run / "sft"), reward=str(run / "reward"),
                          prompts=str(run / "data" / "prompts_train.jsonl"), out=str(d / "kl0"), kl_coef=0.0,
                          lr=1e-3, updates=8, rollout_batch_size=16, max_new_tokens=16, save_every=100, seed=0,
                          device="cpu"))
    reward.run(reward.RewardConfig(model=str(run / "sft"), data=str(run / "preferences.jsonl"),
                                   norm_samples=str(run / "samples.jsonl"), out=str(d / "ensemble"), ensemble=2,
                                   epochs=1, batch_size=32, lr=1e-3, save_every=100, seed=0, device="cpu"))
    held = [json.loads(x) for x in (run / "data" / "prompts_heldout.jsonl").read_text().splitlines()]
    fresh = held[EVAL_PROMPTS:]
    return {"run": run, "dir": d, "ensemble": d / "ensemble",
            "own": _sample_log(run / "ppo", fresh, d / "own.jsonl", seed=1),
            "kl0": _sample_log(d / "kl0", fresh, d / "kl0.jsonl", seed=1),
            "shift": _sample_log(run / "ppo", _shifted_prompts(len(fresh)), d / "shift.jsonl", seed=1)}


def _monitor(demo: dict[str, Path], log: Path, name: str, *extra: str) -> tuple[int, dict]:
    out = demo["dir"] / f"mon-{name}"
    rc = main(["monitor", str(demo["run"]), "--log", str(log), "--out", str(out), "--device", "cpu", *extra])
    return rc, json.loads((out / "monitor.json").read_text())


@pytest.fixture(scope="module")
def own(demo):
    return _monitor(demo, demo["own"], "own")


@pytest.fixture(scope="module")
def kl0(demo):
    return _monitor(demo, demo["kl0"], "kl0")


def _drift(report: dict) -> dict[str, str]:
    return {f["rule"]: f["severity"] for f in report["findings"] if f["severity"] != "info"}


SIGNALS = ("reward", "kl", "logp", "length", "distinct1", "distinct2", "prompt_jsd")


# ---------------------------------------------------------------------------------------------------------------
# (a) own policy: no drift; (b) another policy: drift; (c) shifted prompts: prompt drift


def test_own_policy_log_reports_no_drift(own):
    rc, r = own
    assert rc == 0
    assert _drift(r) == {}, r["findings"]
    w = r["windows"][0]
    assert w["window"] == "all" and w["n"] == r["rows"] == 200 - EVAL_PROMPTS and r["baseline_rows"] == EVAL_PROMPTS
    for key in SIGNALS:  # every figure is there and finite
        fig = w[key]
        assert fig["severity"] is None
        assert all(math.isfinite(v) for v in fig.values() if isinstance(v, float)), (key, fig)
    assert w["prompt_jsd"]["value"] <= w["prompt_jsd"]["threshold"]
    assert "stands in for the deployed model" in r["models"]["policy_source"]


def test_other_policy_log_reports_drift_with_each_figure(own, kl0):
    rc, r = kl0
    assert rc == 1  # severe
    drift = _drift(r)
    assert drift.get("monitor-logp") == "severe"  # the deployed policy finds these responses unlikely
    assert {"monitor-reward", "monitor-length"} <= set(drift)  # at least warnings
    assert r["thresholds"] == own[1]["thresholds"]  # the same thresholds that stayed quiet in (a)
    w, w_own = r["windows"][0], own[1]["windows"][0]
    assert w["length"]["mean"] > w_own["length"]["mean"] and w["logp"]["mean"] < w_own["logp"]["mean"]
    assert abs(w["logp"]["smd"]) >= mon.SMD_SEVERE > mon.SMD_WARN > abs(w_own["logp"]["smd"])
    assert abs(w["reward"]["smd"]) >= mon.SMD_WARN > abs(w_own["reward"]["smd"])
    f = next(f for f in r["findings"] if f["rule"] == "monitor-reward")
    assert f"{w['reward']['smd']:+.2f}" in f["evidence"] and f["why"] and f["fix"]


def test_shifted_prompts_report_prompt_drift(own, demo):
    rc, r = _monitor(demo, demo["shift"], "shift")
    assert _drift(r).get("monitor-prompt-jsd") == "severe" and rc == 1
    pj, pj_own = r["windows"][0]["prompt_jsd"], own[1]["windows"][0]["prompt_jsd"]
    assert pj["value"] > pj["severe_threshold"] and pj_own["value"] <= pj_own["threshold"]
    assert pj["unseen_word_fraction"] > 0.3 > pj_own["unseen_word_fraction"]


def test_json_on_stdout_and_report_section(demo, capsys):
    out = demo["run"] / "monitor"  # the default output folder: RUN/monitor, picked up by the HTML report
    capsys.readouterr()
    assert main(["monitor", str(demo["run"]), "--log", str(demo["kl0"]), "--json", "--device", "cpu"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "monitor.json").read_text())
    assert json.loads((out / "summary.json").read_text())["kind"] == "monitor"
    assert len((out / "scored.jsonl").read_text().splitlines()) == printed["rows"]
    from rlhf.report import build_report

    html = build_report(demo["run"]).read_text()
    assert "Monitoring after deployment" in html and "Signals per window" in html
    assert "Reward-model scores of the traffic have shifted" in html
    shutil.rmtree(out)


# ---------------------------------------------------------------------------------------------------------------
# (e) windows over time, (f) user feedback, ensemble support


def test_time_windows_find_the_window_that_drifted(demo):
    """The first hour is the run's own policy, the second the kl_coef-0 policy: only the second window drifts."""
    own = [json.loads(x) for x in demo["own"].read_text().splitlines()]
    other = [json.loads(x) for x in demo["kl0"].read_text().splitlines()]
    rows = [{**r, "timestamp": f"2026-12-01T10:{i % 60:02d}:00Z"} for i, r in enumerate(own)]
    rows += [{**r, "timestamp": 1796122800 + i} for i, r in enumerate(other)]  # epoch seconds: 11:00 UTC
    log = demo["dir"] / "timed.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, r = _monitor(demo, log, "timed", "--window", "1h")
    assert rc == 1
    names = [w["window"] for w in r["windows"]]
    assert names == ["all", "2026-12-01T10:00:00Z/2026-12-01T11:00:00Z", "2026-12-01T11:00:00Z/2026-12-01T12:00:00Z"]
    first, second = r["windows"][1], r["windows"][2]
    assert first["n"] == len(own) and second["n"] == len(other)
    assert all(first[k]["severity"] is None for k in SIGNALS)
    assert second["logp"]["severity"] == "severe"
    f = next(f for f in r["findings"] if f["rule"] == "monitor-logp")
    assert f["evidence"].startswith("window 2026-12-01T11:00:00Z/") and "windows fire" in f["evidence"]
    # a row count also windows (in timestamp order)
    rc, r = _monitor(demo, log, "rows", "--window", str(len(own)))
    assert [w["n"] for w in r["windows"]] == [len(rows), len(own), len(other)]


def test_user_feedback_agreement(demo, own):
    """Feedback that follows the RM's own scores agrees perfectly (AUC 1); reversed, the RM ranks against the users
    (AUC 0, severe). The AUC is checked against a direct count over the scored rows."""
    scored = [json.loads(x) for x in (demo["dir"] / "mon-own" / "scored.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in demo["own"].read_text().splitlines()]
    median = sorted(s["reward"] for s in scored)[len(scored) // 2]
    for sign, name in ((1, "agree"), (-1, "reverse")):
        log = demo["dir"] / f"fb-{name}.jsonl"
        fb = [sign * (1 if s["reward"] >= median else -1) for s in scored]
        fb[0] = None  # no feedback on this row
        log.write_text("".join(json.dumps({**r, "user_feedback": f}) + "\n" for r, f in zip(rows, fb)))
        rc, r = _monitor(demo, log, f"fb-{name}")
        entry = r["windows"][0]["feedback_agreement"]
        up = [s["reward"] for s, f in zip(scored, fb) if f == 1]
        down = [s["reward"] for s, f in zip(scored, fb) if f == -1]
        expected = sum((u > d) + 0.5 * (u == d) for u in up for d in down) / (len(up) * len(down))
        assert entry["up"] == len(up) and entry["down"] == len(down)
        assert entry["auc"] == pytest.approx(expected, abs=1e-9)
        if sign == 1:
            assert entry["auc"] == 1.0 and entry["severity"] is None and rc == 0
        else:
            assert entry["auc"] == 0.0 and entry["severity"] == "severe" and rc == 1
            assert "monitor-feedback-agreement" in _drift(r)


def test_ensemble_support_threshold_comes_from_the_rm_training_responses(demo):
    rc, r = _monitor(demo, demo["own"], "ens-own", "--reward", str(demo["ensemble"]))
    assert r["models"]["reward_members"] == 2
    t = r["thresholds"]
    assert t["support_std"] > 0 and "preferences.jsonl" in t["support_source"]
    own = r["windows"][0]["outside_support"]
    assert own["expected"] == pytest.approx(1 - mon.SUPPORT_QUANTILE)
    assert own["severity"] is None and own["value"] < mon.SUPPORT_WARN and rc == 0
    _, r = _monitor(demo, demo["kl0"], "ens-kl0", "--reward", str(demo["ensemble"]))
    other = r["windows"][0]["outside_support"]
    assert other["threshold_std"] == own["threshold_std"]  # the same threshold, from the run, not from the log
    assert other["value"] > own["value"]


# ---------------------------------------------------------------------------------------------------------------
# (d) bad input


@pytest.mark.parametrize("line, message", [
    ('{"response": "ok"}', "missing field 'prompt'"),
    ('{"prompt": "a", "response": 3}', "field 'response' must be a string"),
    ('{"prompt": "a", "response": "b", "timestamp": "yesterday"}', "field 'timestamp'"),
    ('{"prompt": "a", "response": "b", "user_feedback": 5}', "field 'user_feedback'"),
    ('not json', "not valid JSON"),
])
def test_bad_log_rows_name_the_line_and_field(demo, tmp_path, capsys, line, message):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"prompt": "The hotel", "response": " was fine."}\n\n' + line + "\n")
    rc = main(["monitor", str(demo["run"]), "--log", str(log), "--out", str(tmp_path / "m"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{log}:3:" in err and message in err
    assert not (tmp_path / "m").exists()  # nothing written for a bad log


def test_bad_options_and_missing_baseline(demo, tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text('{"prompt": "The hotel", "response": " was fine."}\n'
                   '{"prompt": "The film", "response": " was slow.", "timestamp": 5}\n')
    base = ["monitor", str(demo["run"]), "--log", str(log), "--out", str(tmp_path / "m"), "--device", "cpu"]
    assert main(base) == 2 and "field 'timestamp' is missing while other rows have one" in capsys.readouterr().err
    assert main(base + ["--window", "3 days"]) == 2 and "'3 days' is not a window" in capsys.readouterr().err
    log.write_text('{"prompt": "The hotel", "response": " was fine."}\n')
    assert main(base + ["--window", "1h"]) == 2 and "no 'timestamp' field" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    for sub in ("ppo", "sft", "reward"):
        (bare / sub).symlink_to(demo["run"] / sub)
    assert main(["monitor", str(bare), "--log", str(log), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "samples.jsonl does not exist" in err and "rlhf eval" in err and "--baseline sample" in err
    assert main(["monitor", str(bare), "--log", str(log), "--baseline", "sample", "--device", "cpu"]) == 2
    assert "needs the run's held-out prompts" in capsys.readouterr().err
    # with its held-out prompts, a run without eval is monitored against the policy sampled there now
    (bare / "data").symlink_to(demo["run"] / "data")
    rc = main(["monitor", str(bare), "--log", str(demo["own"]), "--baseline", "sample", "--baseline_prompts",
               str(EVAL_PROMPTS), "--device", "cpu"])
    r = json.loads((bare / "monitor" / "monitor.json").read_text())
    assert rc == 0 and _drift(r) == {} and r["baseline_rows"] == EVAL_PROMPTS
    assert r["baseline"]["source"] == str(bare / "monitor" / "baseline.jsonl")
    assert main(["monitor", "--log", str(log)]) == 2 and "no run folder given" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# the statistics (pure; no run needed)


def test_statistics_against_hand_computed_cases():
    a, b = [1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]
    assert mon.smd(a, b) == pytest.approx(-2 / math.sqrt(5 / 3))
    assert mon.permutation_p(a, a) == 1.0
    # the exact permutation p: the share of the 70 ways to split the 8 values 4/4 with |mean difference| >= 2
    pooled = a + b
    splits = list(itertools.combinations(range(8), 4))
    exact = sum(abs(sum(pooled[i] for i in c) / 4 - sum(pooled[i] for i in range(8) if i not in c) / 4) >= 2
                for c in splits) / len(splits)
    assert mon.permutation_p(a, b, n_perm=20000) == pytest.approx(exact, abs=0.01)
    assert mon.permutation_p([0.0] * 3000, [1.0] * 3000) < 1e-6  # Welch's z for large samples
    p, q = mon.ngram_counts(["good food"]), mon.ngram_counts(["bad film"])
    assert mon.js_divergence(p, p) == 0.0 and mon.js_divergence(p, q) == pytest.approx(math.log(2))
    assert mon.auc([2.0, 3.0], [1.0, 2.0])[0] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert mon.matched_distinct(["a b", "a b", "c d", "e f"], 4, 2) == pytest.approx(3 / 4)
    assert mon.quantile([0.0, 1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.8)
    assert mon.parse_window("500") == ("rows", 500.0) and mon.parse_window("6h") == ("time", 21600.0)
    with pytest.raises(UserError):
        mon.parse_window("0")


def test_log_rows_read_chat_messages_timestamps_and_feedback(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "Review the hotel"}], "response": [{"role": "assistant",
                                                                                        "content": "Lovely."}],
             "timestamp": "2026-12-01T10:00:00", "user_feedback": "up"},
            {"prompt": "The film", "response": "", "timestamp": 1796119200.5, "user_feedback": None},
            {"prompt": "The lamp", "response": " broke.", "timestamp": "2026-12-01T11:00:00+01:00", "user_feedback": -1}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = mon.read_log(log)
    assert [r.line for r in got] == [1, 2, 3] and [r.feedback for r in got] == [1, None, -1]
    # no zone = UTC; 1796119200 = 2026-12-01T10:00:00Z; +01:00 is 10:00 UTC too
    assert [r.timestamp for r in got] == [1796119200.0, 1796119200.5, 1796119200.0]
    assert mon.text_of(got[0].prompt) == "Review the hotel" and got[1].response == ""
    assert [n for n, _ in mon.windows(got, "1h")] == ["all", "2026-12-01T10:00:00Z/2026-12-01T11:00:00Z"]

"""`rlhf report` on a tiny real run (SFT -> reward model -> PPO with the demo's gold judge), checked as HTML and in
a real browser (Playwright driving Debian's Chromium)."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

from rlhf.cli import main as rlhf_main
from rlhf.diagnose import diagnose
from rlhf.report import build_report
from rlhf.report.build import sections
from tests.diagnose.tiny_runs import build_base, ppo_rows, ppo_run, write_stage

CHROMIUM = "/usr/bin/chromium"
EVIL = "<script>window.hacked = 1</script>"
EVAL = {"gold": {"baseline": 0.12, "policy": 0.31}, "reward": {"baseline": -0.05, "policy": 0.9}, "kl": 3.2,
        "win_rate": {"gold": 0.62, "reward": 0.8}, "length": {"baseline": 17.5, "policy": 15.2},
        "rm": {"accuracy": 0.83, "bayes_accuracy": 0.9}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real run folder: base/ (SFT with held-out eval), reward/ (a real reward model on synthetic preferences),
    ppo/ (against that reward model, gold judge on, samples stored). eval/ is written by hand in the documented
    eval.json format (the eval stage is not part of this test), with a hostile string in a sample."""
    from rlhf.io import write_jsonl
    from rlhf.stages import reward
    from tests.stages.reward_data import pair_rows

    d = tmp_path_factory.mktemp("run")
    tiny = build_base(d)
    write_jsonl(d / "prefs.jsonl", pair_rows(120, seed=0))
    rm = reward.run(reward.RewardConfig(model=str(tiny["base"]), data=str(d / "prefs.jsonl"), out=str(d / "reward"),
                                        batch_size=16, lr=3e-3, warmup_steps=2, eval_every=3, log_every=3,
                                        save_every=0, max_length=96, eval_fraction=0.2, bayes_accuracy=0.95,
                                        device="cpu", seed=0))
    ppo_run(tiny, d / "ppo", reward=str(rm), updates=6, log_samples_every=2)
    write_stage(d / "eval", [], eval=EVAL)
    write_jsonl(d / "eval" / "samples.jsonl", [
        {"prompt": f"the hotel {EVIL}", "baseline": "was clean and quiet.", "policy": f"was great {EVIL} & <b>bold</b>",
         "baseline_gold": 0.4, "policy_gold": 0.62},
        {"prompt": "this film", "baseline": "was slow.", "policy": "was lovely.", "baseline_gold": -0.3,
         "policy_gold": 0.5}])
    return d


@pytest.fixture(scope="module")
def report(run) -> Path:
    return build_report(run)


def _png_size(b64: str) -> tuple[int, int]:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])  # IHDR width, height


def test_report_is_self_contained_and_escaped(run, report):
    path = report
    assert path == run / "report.html"
    html = path.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == html.count("<img ")
    assert all(w > 200 and h > 100 for w, h in map(_png_size, images))
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere
    assert "<script" not in html.replace("&lt;script", "")  # the hostile sample is text, not a tag
    assert "&lt;script&gt;window.hacked = 1&lt;/script&gt;" in html and "&amp; &lt;b&gt;bold&lt;/b&gt;" in html
    for heading in ("Doctor's findings", "Supervised fine-tuning (base)", "Reward model (reward)", "PPO (ppo)",
                    "Evaluation (eval)", "Reward vs KL frontier", "Proxy vs gold (over-optimisation)",
                    "Held-out accuracy vs Bayes-optimal", "Baseline vs policy on the same prompts"):
        assert heading in html, heading


def test_sections_hold_the_figures_for_each_stage(run, monkeypatch):
    from rlhf.report import plots

    monkeypatch.setattr(plots, "to_png", lambda fig: plots.plt.close(fig) or "png")  # structure only: fast
    secs = {s.stage: s for s in sections(diagnose(run))}
    assert list(secs) == ["base", "reward", "ppo", "eval"]
    titles = {k: [f.title for f in s.figures] for k, s in secs.items()}
    assert titles["base"] == ["SFT training curves"]
    assert titles["reward"] == ["Reward-model training curves", "Held-out accuracy vs Bayes-optimal"]
    assert titles["ppo"] == ["PPO training curves", "Reward vs KL frontier", "Proxy vs gold (over-optimisation)"]
    # the RM accuracy is shown once, with the reward stage
    assert titles["eval"] == ["Gold score: baseline vs policy", "Win rate against the baseline"]
    samples = secs["eval"].tables[-1]
    assert samples.columns == ["prompt", "baseline (SFT)", "policy (PPO)", "baseline_gold", "policy_gold"]
    assert samples.rows[1] == ["this film", "was slow.", "was lovely.", "-0.3", "0.5"]
    reward_numbers = dict(secs["reward"].tables[0].rows)
    summary = json.loads((run / "reward" / "summary.json").read_text())
    assert reward_numbers["eval/rm_accuracy"] == f"{summary['eval/rm_accuracy']:.4g}"


def test_subset_of_stages_ppo_only_without_gold(tmp_path):
    """A lone PPO folder without a gold judge, eval or samples: the report says what is missing instead of failing."""
    stage = write_stage(tmp_path / "ppo", ppo_rows(6))
    html = build_report(stage).read_text()
    assert "PPO training curves" in html and "Reward vs KL frontier" in html
    assert "No proxy-vs-gold curve: objective/gold was not logged" in html
    assert "No problems found." in html


def test_ppo_samples_are_shown_without_an_eval_stage(run, tmp_path):
    import shutil

    from rlhf.artifacts import load_stage
    from rlhf.report.build import _ppo_samples

    shutil.copytree(run / "ppo", tmp_path / "ppo")
    table = _ppo_samples(load_stage(tmp_path / "ppo"))
    updates = sorted({json.loads(x)["update"] for x in (run / "ppo" / "samples.jsonl").read_text().splitlines()})
    assert table.title.startswith(f"PPO rollouts at updates {updates[0]} and {updates[-1]}")
    assert table.columns == ["update", "prompt", "response", "score"] and table.rows


def test_cli(tmp_path, capsys):
    stage = write_stage(tmp_path / "ppo", ppo_rows(4))
    out = tmp_path / "r.html"
    assert rlhf_main(["report", str(stage), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 10_000
    assert rlhf_main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert rlhf_main(["report", str(stage), "--out", str(tmp_path)]) == 2  # a folder is not a file name
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium")
def test_report_in_a_real_browser(report, page, artifacts_dir):
    from playwright.sync_api import expect

    path = report
    page.set_viewport_size({"width": 1300, "height": 900})
    page.goto(path.as_uri())
    expect(page.locator("h1")).to_have_text("RLHF run report")
    for name in ("Doctor's findings", "PPO (ppo)", "Reward model (reward)", "Evaluation (eval)"):
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    for name in ("Reward vs KL frontier", "Proxy vs gold (over-optimisation)", "Held-out accuracy vs Bayes-optimal"):
        expect(page.get_by_role("heading", name=name, exact=True).first).to_be_visible()
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 7 and all(w > 0 for w in widths), widths
    assert page.evaluate("window.hacked") is None  # the hostile sample did not run
    expect(page.get_by_text(EVIL).first).to_be_visible()  # ... it is shown as text
    page.screenshot(path=str(artifacts_dir / "report.png"), full_page=True)
    assert (artifacts_dir / "report.png").stat().st_size > 50_000

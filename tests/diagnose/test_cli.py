"""`rlhf doctor` as a command: exit status, terminal report, JSON."""

from __future__ import annotations

import argparse
import json

from rlhf.cli import main as rlhf_main
from rlhf.diagnose.cli import register
from tests.diagnose.tiny_runs import ppo_rows, write_stage


def main(argv: list[str]) -> int:
    """`rlhf doctor ARGV` through the one entry point (its parsing and one-line errors)."""
    return rlhf_main(["doctor", *argv])


def test_exit_status_and_json(tmp_path, capsys):
    ok = write_stage(tmp_path / "ok", ppo_rows(8))
    warn = write_stage(tmp_path / "warn", ppo_rows(8, **{"response/eos_fraction": 0.3}))
    bad = write_stage(tmp_path / "bad", ppo_rows(8, **{"objective/entropy": lambda u: 1.0 / u ** 3}))
    assert main([str(ok)]) == 0
    assert "No problems found" in capsys.readouterr().out
    assert main([str(warn)]) == 0  # warnings alone do not fail
    assert "WARNING" in capsys.readouterr().out
    assert main([str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == {"severe": 1, "warning": 0, "info": 0}
    f = out["findings"][0]
    assert set(f) == {"rule", "severity", "stage", "title", "evidence", "why", "fix", "steps"}
    assert f["rule"] == "entropy-collapse" and f["steps"] == [1, 8] and f["stage"] == "bad"
    assert out["stages"] == [{"name": "bad", "kind": "ppo", "path": str(bad), "rows": 8, "last_step": 8,
                              "finished": True}]


def test_terminal_report_shows_evidence_why_and_fix(tmp_path, capsys):
    bad = write_stage(tmp_path / "ppo", ppo_rows(8, **{"value/explained_variance": -0.8}))
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    for text in ("SEVERE", "Value function is not learning", "evidence", "why", "fix", "value-not-learning",
                 "1 severe"):
        assert text in out, text


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: error: ") and "no such folder" in err and err.count("\n") == 1


def test_register_adds_the_doctor_command(tmp_path):
    parser = argparse.ArgumentParser(prog="rlhf")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", str(write_stage(tmp_path / "ok", ppo_rows(8))), "--json"])
    assert args.command == "doctor" and args.json and args.func(args) == 0

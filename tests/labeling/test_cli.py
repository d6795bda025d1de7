"""`rlhf label ...` subcommands through `main([...])` (and once as a subprocess)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.labeling.cli import main, register
from rlhf.labeling.store import Store


def samples(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROW = {"prompt_id": "p1", "prompt": "Say something", "responses": ["r0", "r1", "r2", "r3"], "model": "m", "sampling": {"t": 1}}


def test_register_wires_every_subcommand() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    for sub in ("add-tasks", "add-user", "invite", "serve", "simulate", "import", "export", "stats"):
        args = parser.parse_args(["label", sub, "--db", "x.db", *{"add-tasks": ["s.jsonl"], "add-user": ["n"],
                                  "invite": ["n"], "import": ["f"], "export": ["--out", "o"]}.get(sub, [])])  # fmt: skip
        assert callable(args.func), sub


def test_add_tasks_pairs_rankings_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    good = samples(tmp_path / "s.jsonl", [ROW])
    assert main(["label", "add-tasks", str(good), "--db", db, "--overlap", "2"]) == 0
    tasks = Store(db).tasks()
    assert [t.responses for t in tasks] == [["r0", "r1"], ["r2", "r3"]]  # disjoint pairs
    assert tasks[0].source == {"prompt_id": "p1", "model": "m", "sampling": {"t": 1}, "file": "s.jsonl", "line": 1,
                               "response_indices": [0, 1]} and tasks[0].overlap == 2  # fmt: skip
    assert main(["label", "add-tasks", str(good), "--db", db, "--pairs", "all"]) == 0
    assert len(Store(db).tasks()) == 6  # all 6 pairs; the 2 disjoint ones were already there
    assert main(["label", "add-tasks", str(good), "--db", db, "--kind", "ranking", "--overlap", "3"]) == 0
    assert [t.kind for t in Store(db).tasks()].count("ranking") == 1
    out = capsys.readouterr().out
    assert "added 2 pairwise tasks" in out and "added 1 ranking tasks" in out

    bad = samples(tmp_path / "bad.jsonl", [ROW, {"prompt": "x", "responses": ["only one"]}, "{oops"])
    assert main(["label", "add-tasks", str(bad), "--db", db]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'responses'" in err and "nothing added" in err
    assert main(["label", "add-tasks", str(bad), "--db", db, "--skip-bad", "--kind", "ranking"]) == 0
    assert "2 bad rows skipped" in capsys.readouterr().out
    ten = samples(tmp_path / "ten.jsonl", [{"prompt": "x", "responses": [str(i) for i in range(10)]}])
    assert main(["label", "add-tasks", str(ten), "--db", db, "--kind", "ranking"]) == 2
    assert "use --kind pairwise" in capsys.readouterr().err
    assert main(["label", "add-tasks", str(tmp_path / "missing.jsonl"), "--db", db]) == 2


def test_gold_ranks_become_gold_tasks(tmp_path: Path) -> None:
    db = str(tmp_path / "labels.db")
    path = samples(tmp_path / "g.jsonl", [{**ROW, "gold_ranks": [4, 1, 2, 3]}])
    assert main(["label", "add-tasks", str(path), "--db", db]) == 0
    assert [t.gold_ranks for t in Store(db).tasks()] == [[2, 1], [1, 2]]  # re-ranked within each pair


def test_add_user_prints_invite_and_token_last(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    assert main(["label", "add-user", "ann", "--role", "admin", "--db", db, "--base-url", "https://x.org/"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split(": ", 1)[1].startswith("https://x.org/invite/")
    store = Store(db)
    assert store.user_by_api_token(lines[-1]).name == "ann"
    assert store.redeem_invite(lines[1].rsplit("/", 1)[1]).role == "admin"
    assert main(["label", "add-user", "ann", "--db", db]) == 2
    assert main(["label", "invite", "ann", "--db", db]) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert store.redeem_invite(link.rsplit("/", 1)[1]).name == "ann"


def test_stats_and_export_on_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    assert main(["label", "stats", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["krippendorff_alpha"] is None
    assert main(["label", "export", "--db", db, "--out", str(tmp_path / "p.jsonl")]) == 0
    assert (tmp_path / "p.jsonl").read_text() == "" and (tmp_path / "p.raw.jsonl").exists()
    assert json.loads((tmp_path / "p.meta.json").read_text())["counts"]["pairs"] == 0


def test_bad_database_url_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["label", "stats", "--db", "postgresql+psycopg://u:pw@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --db") and "\n" not in err and "pw@" not in err


def test_module_runs_as_a_script() -> None:
    r = subprocess.run([sys.executable, "-m", "rlhf.labeling.cli", "label", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "add-tasks" in r.stdout and "simulate" in r.stdout

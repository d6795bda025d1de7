"""`rlhf label ...` subcommands through `main([...])` (and once as a subprocess)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import timedelta
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
    for sub in ("add-tasks", "add-user", "invite", "revoke", "activate", "serve", "simulate", "import", "export", "stats"):
        args = parser.parse_args(["label", sub, "--db", "x.db", *{"add-tasks": ["s.jsonl"], "add-user": ["n"],
                                  "invite": ["n"], "revoke": ["n"], "activate": ["n"],
                                   "import": ["f"], "export": ["--out", "o"]}.get(sub, [])])  # fmt: skip
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
    Store(db).close()  # an existing store without tasks (read-only commands refuse a missing one)
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


def test_read_only_commands_refuse_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "labels.db"
    good = samples(tmp_path / "s.jsonl", [ROW])
    assert main(["label", "add-tasks", str(good), "--db", str(db)]) == 0
    assert main(["label", "simulate", "--db", str(db), "--labelers", "1"]) == 0
    out = tmp_path / "preferences.jsonl"
    assert main(["label", "export", "--db", str(db), "--out", str(out)]) == 0
    exported = out.read_text()
    assert len(exported.splitlines()) == 2
    capsys.readouterr()
    typo = tmp_path / "lables.db"
    for argv in (["export", "--out", str(out)], ["stats"], ["invite", "ann"], ["revoke", "ann"], ["activate", "ann"]):
        assert main(["label", argv[0], "--db", str(typo), *argv[1:]]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "no such database" in err and str(typo) in err and "\n" not in err
    assert not typo.exists() and out.read_text() == exported  # nothing created, the good export untouched
    # A URL with no labeling tables is refused the same way.
    empty = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty).close()
    assert main(["label", "stats", "--db", f"sqlite:///{empty}"]) == 2
    assert "holds no labeling tables" in capsys.readouterr().err


def test_add_tasks_on_an_empty_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        path = tmp_path / name
        path.write_text(text)
        assert main(["label", "add-tasks", str(path), "--db", str(tmp_path / "labels.db")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {path}: no rows (the file is empty); write it with `rlhf sample`"


@pytest.mark.parametrize(
    "flags, field",
    [(["--max-body-kb", "-1"], "--max-body-kb"), (["--gold-rate", "5"], "--gold-rate"), (["--burst", "0"], "--burst"),
     (["--rate-limit", "-1"], "--rate-limit")],
)  # fmt: skip
def test_serve_refuses_bad_limits(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list, field: str) -> None:
    assert main(["label", "serve", "--db", str(tmp_path / "labels.db"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}") and err.count("\n") == 1


def test_simulate_refuses_a_gold_rate_above_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["label", "simulate", "--db", str(tmp_path / "labels.db"), "--gold-rate", "5"]) == 2
    assert "--gold-rate must be a probability" in capsys.readouterr().err


def test_revoke_and_activate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    store = Store(db)
    new = store.create_user("ann", "labeler")
    session = store.create_session(new.user.id, timedelta(days=1))
    assert main(["label", "revoke", "ann", "--sessions", "--db", db]) == 0
    assert capsys.readouterr().out.strip() == "ann: 1 sessions ended"
    assert store.session_user(session) is None and store.user_by_api_token(new.api_token) == new.user
    assert main(["label", "revoke", "ann", "--tokens", "--new-token", "--db", db]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "ann: API token voided, 1 unused invites voided"
    assert store.user_by_api_token(new.api_token) is None and store.redeem_invite(new.invite_token) is None
    assert store.user_by_api_token(lines[-1]) == new.user  # the replacement works
    assert main(["label", "revoke", "ann", "--deactivate", "--db", db]) == 0
    assert store.user_by_api_token(lines[-1]) is None
    assert main(["label", "invite", "ann", "--db", db]) == 2
    assert "rlhf label activate ann" in capsys.readouterr().err
    assert main(["label", "activate", "ann", "--db", db]) == 0
    assert main(["label", "invite", "ann", "--db", db]) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert store.redeem_invite(link.rsplit("/", 1)[1]) == new.user
    assert main(["label", "revoke", "nobody", "--db", db]) == 2

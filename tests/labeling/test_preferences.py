"""Preference file formats: HH, TRL and UltraFeedback import; errors with file, line and field; round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.data.preferences import read_preference_file, read_preferences, write_preferences
from rlhf.errors import UserError
from rlhf.labeling.cli import main
from rlhf.labeling.export import export
from rlhf.labeling.importer import import_file
from rlhf.labeling.store import Store

HH = [
    {
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: It is 5.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken...",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No.",
    },
]
TRL = [
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {"prompt": "Say hi <script>alert(1)</script>", "chosen": "hi", "rejected": "<b>no</b>"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_hh_rows_split_at_the_last_assistant_turn(tmp_path: Path) -> None:
    rep = read_preference_file(write_jsonl(tmp_path / "hh.jsonl", HH))
    assert rep.format == "hh" and rep.rows_read == 2 and not rep.errors
    first, second = rep.records
    assert first.prompt == "\n\nHuman: What is 2+2?" and first.responses == ["It is 4.", "It is 5."]
    assert first.ranks == [1, 2]
    assert second.prompt.endswith("\n\nHuman: Tell me a joke") and second.responses[1] == "No."
    assert first.location == f"{tmp_path / 'hh.jsonl'}:1"


def test_trl_plain_conversational_and_implicit_prompt(tmp_path: Path) -> None:
    msgs = [
        {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "No."}]},
    ]  # fmt: skip
    rep = read_preference_file(write_jsonl(tmp_path / "trl.jsonl", TRL + msgs))
    assert rep.format == "trl" and not rep.errors
    assert [r.prompt for r in rep.records] == [TRL[0]["prompt"], TRL[1]["prompt"], "Hi?", "System: Be kind.\n\nUser: Hi?"]
    assert rep.records[2].responses == ["Hello.", "Go away."] and rep.records[3].responses == ["Hello.", "No."]


def test_ultrafeedback_ranks_by_score_with_ties(tmp_path: Path) -> None:
    row = {
        "instruction": "Write a haiku",
        "completions": [
            {"model": "a", "response": "one", "overall_score": 7.5},
            {"model": "b", "response": "two", "overall_score": "9"},
            {"model": "c", "response": "three", "fine-grained_score": 7.5},
        ],
    }
    rep = read_preference_file(write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert rep.format == "ultrafeedback" and rep.records[0].ranks == [2, 1, 2]


def test_bad_rows_are_reported_with_file_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            HH[0],
            "{not json",
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: c"},
            {"chosen": "no markers here", "rejected": "\n\nHuman: a\n\nAssistant: c"},
            {"chosen": HH[0]["chosen"], "rejected": HH[0]["chosen"]},
            [1, 2],
            {"rejected": "x"},
        ],
    )
    rep = read_preference_file(path)
    assert (rep.rows_read, len(rep.records), len(rep.errors)) == (7, 1, 6)
    got = [(e.location.rsplit(":", 1)[1], e.field) for e in rep.errors]
    assert got == [("2", "(line)"), ("3", "rejected"), ("4", "chosen"), ("5", "rejected"), ("6", "(row)"), ("7", "chosen")]
    assert "not valid JSON" in str(rep.errors[0]) and str(path) in str(rep.errors[0])
    assert "identical" in rep.errors[3].reason
    summary = "\n".join(rep.summary())
    assert "7 rows read, 1 parsed, 6 rejected" in summary and "field 'rejected'" in summary

    uf = write_jsonl(
        tmp_path / "uf.jsonl",
        [{"instruction": "x", "completions": [{"response": "a", "overall_score": 1}, {"response": "b", "rating": "N/A"}]}],
    )
    err = read_preference_file(uf).errors[0]
    assert err.field == "completions[1].rating" and "number" in err.reason


def test_parquet_and_datasets_folders(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(TRL), tmp_path / "trl.parquet")
    rep = read_preference_file(tmp_path / "trl.parquet")
    assert [r.responses for r in rep.records] == [["Paris.", "Lyon."], ["hi", "<b>no</b>"]]
    assert rep.records[1].location.endswith("trl.parquet:row 2")

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(HH[:1]), "test": datasets.Dataset.from_list(HH[1:])})
    dd.save_to_disk(str(tmp_path / "hh_ds"))
    rep = read_preference_file(tmp_path / "hh_ds")
    assert rep.format == "hh" and [r.split for r in rep.records] == ["train", "heldout"]
    with pytest.raises(UserError, match="not a `datasets`"):
        read_preference_file(tmp_path)


def test_hh_and_trl_round_trip_through_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "labels.db")
    hh = write_jsonl(tmp_path / "hh.jsonl", HH)
    trl = write_jsonl(tmp_path / "trl.jsonl", TRL)
    assert import_file(store, hh)[1:] == (2, 0)
    assert import_file(store, trl)[1:] == (2, 0)
    assert import_file(store, trl)[1:] == (0, 2)  # re-import adds nothing
    out = tmp_path / "preferences.jsonl"
    meta = export(store, out)
    rows = read_preferences(out)
    assert meta["counts"]["pairs"] == 4 == len(rows)
    # HH: prompt + "\n\nAssistant: " + answer rebuilds the original transcripts exactly.
    rebuilt = [{"chosen": r["prompt"] + "\n\nAssistant: " + r["chosen"],
                "rejected": r["prompt"] + "\n\nAssistant: " + r["rejected"]} for r in rows[:2]]  # fmt: skip
    assert rebuilt == HH
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[2:]] == TRL
    assert all(r["agreement"] == 1.0 and "margin" not in r and r["n_votes"] == 1 for r in rows)
    raw = [json.loads(x) for x in (tmp_path / "preferences.raw.jsonl").read_text().splitlines()]
    assert {r["user"] for r in raw} == {"import:hh.jsonl", "import:trl.jsonl"} and len(raw) == 4


def test_ultrafeedback_ranking_exports_all_pairs_with_a_group(tmp_path: Path) -> None:
    store = Store(tmp_path / "labels.db")
    row = {"prompt": "p", "completions": [{"text": t, "score": s} for t, s in (("a", 1), ("b", 3), ("c", 2), ("d", 2))]}
    import_file(store, write_jsonl(tmp_path / "uf.jsonl", [row]))
    out = tmp_path / "p.jsonl"
    export(store, out)
    rows = read_preferences(out)
    # ranks [4, 1, 2, 2]: every strictly ordered pair, none for the c/d tie.
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [("b", "a"), ("b", "c"), ("b", "d"), ("c", "a"), ("d", "a")]
    assert {r["group_id"] for r in rows} == {rows[0]["group_id"]}


def test_cli_import_reports_counts_and_strict_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "labels.db")
    path = write_jsonl(tmp_path / "hh.jsonl", [*HH, "{bad", {"chosen": "x", "rejected": "y"}])
    assert main(["label", "import", str(path), "--db", db, "--strict"]) == 2
    assert "nothing imported" in capsys.readouterr().err
    assert main(["label", "import", str(path), "--db", db]) == 0
    out, err = capsys.readouterr()
    assert "4 rows read, 2 parsed, 2 rejected" in out and "2 imported, 0 already present" in out
    assert f"{path}:3: field '(line)'" in err and f"{path}:4: field 'chosen'" in err


def test_export_rows_are_validated(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="row 1: field 'agreement'"):
        write_preferences(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "agreement": 2}])
    bad = write_jsonl(tmp_path / "y.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "agreement": 1, "split": "dev"}])
    with pytest.raises(UserError, match=r"y.jsonl:1: field 'split'"):
        read_preferences(bad)

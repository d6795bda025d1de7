"""Import layouts (binarized UltraFeedback single- and multi-turn, ties, bad rows, auto-detection of every listed
layout, a mixed file) from the small real files in tests/labeling/data/formats/, and the datasets/Parquet export
round trip with its dataset card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.data.preferences import read_preference_file, read_preferences
from rlhf.errors import UserError
from rlhf.labeling.cli import main
from rlhf.labeling.export import export
from rlhf.labeling.importer import import_file
from rlhf.labeling.store import Store

DATA = Path(__file__).parent / "data" / "formats"


def test_ultrafeedback_binarized_single_turn_prompt_is_the_string(tmp_path: Path) -> None:
    rep = read_preference_file(DATA / "ultrafeedback_binarized.jsonl", "ultrafeedback")
    assert not rep.errors and rep.rows_read == 3
    first, tie, xss = rep.records
    assert first.prompt == "Name a primary colour." and first.prompt_messages is None
    assert first.responses == ["Red.", "Purple."] and first.ranks == [1, 2] and first.prompt_id == "p-001"
    assert tie.ranks == [1, 1]  # equal scores: a tie
    assert xss.responses == ["hi", "<b>no</b>"]


def test_ultrafeedback_multi_turn_prompt_is_kept_as_messages(tmp_path: Path) -> None:
    rep = read_preference_file(DATA / "ultrafeedback_multiturn.jsonl")
    assert rep.format == "ultrafeedback" and not rep.errors
    trip, translate = rep.records
    assert [m["role"] for m in trip.prompt_messages] == ["user", "assistant", "user"]
    assert trip.prompt_messages[-1]["content"] == "And day 2?"
    assert trip.responses == ["Day 2: the Vatican.", "Stay home."]
    assert trip.prompt == "User: Plan a trip to Rome.\n\nAssistant: Day 1: the Colosseum.\n\nUser: And day 2?"
    assert [m["role"] for m in translate.prompt_messages] == ["system", "user"]  # a system turn: messages too

    # through the store: the export writes conversational rows the reward stage reads (prompt, chosen, rejected as
    # message lists), which rebuild the original conversations.
    store = Store(tmp_path / "labels.db")
    assert import_file(store, DATA / "ultrafeedback_multiturn.jsonl")[1:] == (2, 0)
    export(store, tmp_path / "p.jsonl")
    rows = read_preferences(tmp_path / "p.jsonl")
    src = [json.loads(x) for x in (DATA / "ultrafeedback_multiturn.jsonl").read_text().splitlines()]
    assert [r["prompt"] + r["chosen"] for r in rows] == [s["chosen"] for s in src]
    assert [r["prompt"] + r["rejected"] for r in rows] == [s["rejected"] for s in src]
    tasks = store.tasks()
    assert tasks[0].source["prompt_id"] == "m-001" and tasks[0].source["format"] == "ultrafeedback"


def test_ultrafeedback_tie_is_the_stores_tie(tmp_path: Path) -> None:
    store = Store(tmp_path / "labels.db")
    assert import_file(store, DATA / "ultrafeedback_binarized.jsonl")[1:] == (3, 0)
    tie_task = next(t for t in store.tasks() if t.prompt == "What is 2+2?")
    (j,) = [j for j in store.judgments() if j.task_id == tie_task.id]
    assert j.kind == "pairwise" and j.answer["choice"] == "tie"
    meta = export(store, tmp_path / "p.jsonl")
    rows = read_preferences(tmp_path / "p.jsonl")
    assert meta["counts"]["no_consensus"] == 1 and len(rows) == 2  # a tie exports no pair, and is counted
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("Red.", "Purple."), ("hi", "<b>no</b>")]


def test_bad_ultrafeedback_rows_name_file_line_field_and_fix() -> None:
    path = DATA / "ultrafeedback_bad.jsonl"
    rep = read_preference_file(path)
    assert rep.format == "ultrafeedback" and (rep.rows_read, len(rep.records), len(rep.errors)) == (9, 1, 8)
    got = [(int(e.location.rsplit(":", 1)[1]), e.field) for e in rep.errors]
    assert got == [(2, "score_chosen"), (3, "score_chosen"), (4, "prompt"), (5, "chosen[1]"), (6, "chosen[0]"),
                   (7, "rejected"), (8, "score_rejected"), (9, "rejected")]
    reasons = {int(e.location.rsplit(":", 1)[1]): str(e) for e in rep.errors}
    assert str(path) in reasons[2] and "swap" in reasons[2]
    assert "expected a number" in reasons[3] and "one assistant turn" in reasons[5]
    assert "give both scores or neither" in reasons[8] and "identical" in reasons[9]


@pytest.mark.parametrize("name, fmt", [
    ("hh.jsonl", "hh"), ("trl_plain.jsonl", "trl"), ("trl_conversational.jsonl", "trl"),
    ("trl_implicit.jsonl", "trl"), ("ultrafeedback_raw.jsonl", "ultrafeedback"),
    ("ultrafeedback_binarized.jsonl", "ultrafeedback"), ("ultrafeedback_multiturn.jsonl", "ultrafeedback"),
])  # fmt: skip
def test_auto_detects_every_listed_layout(name: str, fmt: str) -> None:
    rep = read_preference_file(DATA / name, "auto")
    assert rep.format == fmt and rep.records and not rep.errors


def test_a_file_mixing_layouts_is_refused_with_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = DATA / "mixed.jsonl"
    with pytest.raises(UserError, match=r"mixed.jsonl:3: this row is a valid ultrafeedback row .*layout is trl "
                       r"\(from .*mixed.jsonl:1\).*refused, nothing imported"):
        read_preference_file(path)
    db = str(tmp_path / "labels.db")
    assert main(["label", "import", str(path), "--db", db]) == 2
    assert "mixed.jsonl:3" in capsys.readouterr().err
    assert Store(db).tasks() == []  # nothing imported
    # an explicit --format that does not fit says which layout the row is
    with pytest.raises(UserError, match=r"hh.jsonl:1: this row is a valid hh row.*--format hh"):
        read_preference_file(DATA / "hh.jsonl", "trl")


def _store_with_pairs(tmp_path: Path) -> Store:
    store = Store(tmp_path / "labels.db")
    for name in ("ultrafeedback_binarized.jsonl", "trl_plain.jsonl", "hh.jsonl", "ultrafeedback_raw.jsonl"):
        import_file(store, DATA / name)
    return store


@pytest.mark.parametrize("fmt", ["datasets", "parquet"])
def test_export_datasets_and_parquet_read_back_equal_to_jsonl(tmp_path: Path, fmt: str) -> None:
    import datasets

    store = _store_with_pairs(tmp_path)
    export(store, tmp_path / "p.jsonl")
    jsonl = read_preferences(tmp_path / "p.jsonl")
    out = tmp_path / f"prefs_{fmt}"
    assert main(["label", "export", "--db", str(tmp_path / "labels.db"), "--out", str(out), "--format", fmt]) == 0
    if fmt == "datasets":
        back = datasets.load_from_disk(str(out)).to_list()
    else:
        import pyarrow.parquet as pq

        back = pq.read_table(out / "preferences.parquet").to_pylist()
    assert [{k: v for k, v in r.items() if v is not None} for r in back] == jsonl  # null = the key's absence
    card = (out / "README.md").read_text()
    for needed in ("| pairs | 5 |", "import ultrafeedback_binarized.jsonl (ultrafeedback)", "import:hh.jsonl",
                   "`agreement`", "`prompt`", "Exported by `rlhf label export"):
        assert needed in card, needed
    meta = json.loads((out / "preferences.meta.json").read_text())
    assert meta["counts"]["pairs"] == 5 and (out / "preferences.raw.jsonl").exists()
    again = out if fmt == "datasets" else out / "preferences.parquet"
    assert read_preference_file(again).format == "trl"  # the import reads its own export back
    # exporting again replaces the folder; a folder holding something else is refused
    assert main(["label", "export", "--db", str(tmp_path / "labels.db"), "--out", str(out), "--format", fmt]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="holds something other than an earlier export"):
        export(store, other, fmt=fmt)
    assert (other / "keep.txt").read_text() == "mine"


def test_arrow_export_refuses_text_and_conversational_prompts_together(tmp_path: Path) -> None:
    store = _store_with_pairs(tmp_path)
    import_file(store, DATA / "ultrafeedback_multiturn.jsonl")
    with pytest.raises(UserError, match="mixes text prompts .* and conversational ones"):
        export(store, tmp_path / "ds", fmt="datasets")
    export(store, tmp_path / "p.jsonl")  # JSONL holds both
    assert len(read_preferences(tmp_path / "p.jsonl")) == 7

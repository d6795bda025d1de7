"""`ended` survives labeling: a response cut at max_new_tokens (ended=false in the `rlhf sample` file) reaches the
reward stage without an EOS appended, one that stopped by itself gets it, like PPO scores its rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.errors import UserError
from rlhf.labeling.cli import main
from rlhf.labeling.store import Store
from rlhf.stages import reward

ROWS = [
    {"prompt_id": "p1", "prompt": "the hotel near the station", "model": "m",
     "responses": ["was clean and quiet.", "was clean and", "the staff were friendly.", "the food was"],
     "ended": [True, False, True, False]},
    {"prompt_id": "p2", "prompt": "this film", "model": "m",
     "responses": ["was slow and the ending", "was great.", "felt cheap."], "ended": [False, True, True]},
]  # fmt: skip


def labeled_export(tmp_path: Path, kind: str) -> tuple[Path, dict[tuple[str, str], bool]]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    db, out = str(tmp_path / f"{kind}.db"), tmp_path / f"{kind}.jsonl"
    assert main(["label", "add-tasks", str(samples), "--db", db, "--kind", kind]) == 0
    assert main(["label", "simulate", "--db", db, "--labelers", "1", "--seed", "3"]) == 0
    assert main(["label", "export", "--db", db, "--out", str(out)]) == 0
    ended = {(r["prompt"], text): e for r in ROWS for text, e in zip(r["responses"], r["ended"])}
    return out, ended


@pytest.mark.parametrize("kind", ["pairwise", "ranking"])
def test_cut_off_responses_get_no_eos_in_the_reward_stage(tmp_path: Path, tokenizer: object, kind: str) -> None:
    out, ended = labeled_export(tmp_path, kind)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == {"pairwise": 3, "ranking": 6 + 3}[kind]
    for r in rows:  # the export says, per response, whether it stopped at EOS
        assert r["chosen_ended"] is ended[(r["prompt"], r["chosen"])]
        assert r["rejected_ended"] is ended[(r["prompt"], r["rejected"])]
    assert {r["chosen_ended"] for r in rows} | {r["rejected_ended"] for r in rows} == {True, False}

    table = reward.SequenceTable(tokenizer, 128)
    pairs, skipped = reward.read_pairs(out, table, "skip")
    assert len(pairs) == len(rows) and not skipped
    eos = tokenizer.eos_token_id
    for row, pair in zip(rows, pairs):
        for key, seq_row in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            seq = table.seqs[seq_row]
            body = reward.encode_prompt(tokenizer, row["prompt"]) + tokenizer(row[key], add_special_tokens=False)["input_ids"]
            assert seq == (body + [eos] if ended[(row["prompt"], row[key])] else body), (key, row)


def test_flags_default_to_ended_and_are_validated(tmp_path: Path, tokenizer: object) -> None:
    table = reward.SequenceTable(tokenizer, 128)
    plain = reward.parse_row({"prompt": "the film", "chosen": "was great.", "rejected": "felt cheap."}, "x:1", table, "skip")
    assert table.seqs[plain.chosen][-1] == tokenizer.eos_token_id  # other formats (TRL, HH) keep working
    with pytest.raises(UserError, match="x:2: field 'rejected_ended' must be true or false"):
        reward.parse_row({"prompt": "p", "chosen": "a", "rejected": "b", "rejected_ended": "no"}, "x:2", table, "skip")


def test_ended_is_checked_in_the_sample_file_and_kept_in_the_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**ROWS[0], "ended": [True, False]}) + "\n")
    assert main(["label", "add-tasks", str(bad), "--db", str(tmp_path / "x.db")]) == 2
    assert f"{bad}:1: field 'ended': expected one true/false per response" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({k: v for k, v in ROWS[1].items() if k != "ended"}) + "\n")
    assert main(["label", "add-tasks", str(good), "--db", str(tmp_path / "x.db")]) == 0
    assert [t.ended for t in Store(tmp_path / "x.db").tasks()] == [[True, False], [True, False], None]

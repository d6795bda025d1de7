"""Data sources: JSONL files, `datasets` save_to_disk folders (with :split) and hub ids ORG/NAME[:split], read by
every stage through rlhf.models.data_source; offline, a hub id is one clear error."""

import pytest
from datasets import Dataset, DatasetDict

from rlhf.errors import UserError
from rlhf.io import write_jsonl
from rlhf.models.data_source import read_rows
from rlhf.stages import reward, sft
from tests.support.families import save_family

ROWS = [{"prompt": "the hotel", "response": " was clean."}, {"prompt": "the film", "response": " was slow."}]


def test_jsonl_disk_dataset_and_split_give_the_same_rows(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    Dataset.from_list(ROWS).save_to_disk(tmp_path / "flat")
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(tmp_path / "dd")
    assert read_rows(tmp_path / "a.jsonl") == ROWS
    assert read_rows(tmp_path / "flat") == ROWS
    assert read_rows(f"{tmp_path / 'dd'}:train") == ROWS and read_rows(f"{tmp_path / 'dd'}:test") == ROWS[:1]
    with pytest.raises(UserError, match="choose a split with .*:SPLIT \\(one of train, test\\)"):
        read_rows(tmp_path / "dd")
    with pytest.raises(UserError, match="no split 'dev'"):
        read_rows(f"{tmp_path / 'dd'}:dev")
    with pytest.raises(UserError, match="missing field 'text'"):
        read_rows(tmp_path / "flat", required=("text",))


def test_hub_dataset_offline_is_one_clear_error():
    with pytest.raises(UserError, match="could not load dataset 'someorg/somedata' split 'test'.*HF_HUB_OFFLINE"):
        read_rows("someorg/somedata:test")
    with pytest.raises(UserError, match="no such file or folder"):
        read_rows("./missing_folder")


def test_stages_read_a_saved_dataset(tmp_path):
    """SFT on a save_to_disk folder; the reward model on UltraFeedback-binarized-style rows (a prompt string,
    whole conversations in chosen/rejected) from a DatasetDict split."""
    base = save_family("qwen2", tmp_path / "base")
    Dataset.from_list(ROWS * 3).save_to_disk(tmp_path / "sft_ds")
    out = sft.run(sft.SFTConfig(model=str(base), data=str(tmp_path / "sft_ds"), out=str(tmp_path / "sft"), max_steps=1,
                                batch_size=2, save_every=0, device="cpu"))
    assert (out / "summary.json").exists()
    u = [{"role": "user", "content": q} for q in ("how was the hotel?", "how was the film?", "and the food?")]
    rows = [{"prompt": m["content"], "chosen": [m, {"role": "assistant", "content": "good."}],
             "rejected": [m, {"role": "assistant", "content": "bad."}], "score_chosen": 8.0} for m in u]
    DatasetDict({"train_prefs": Dataset.from_list(rows * 2)}).save_to_disk(tmp_path / "uf")
    table = reward.SequenceTable(sft._tokenizer(sft.SFTConfig(model=str(base), data="x"), []), 256)
    pairs, skips = reward.read_pairs(f"{tmp_path / 'uf'}:train_prefs", table, "skip")
    assert len(pairs) == 6 and not skips and pairs[0].where.endswith("train_prefs row 1")

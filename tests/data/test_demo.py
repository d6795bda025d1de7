"""The demo data files: determinism, split disjointness, SFT pair form, neutral prompts, argument errors."""

from __future__ import annotations

import re
import statistics

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf.data.demo import FILES, corpus_sentences, tokenizer_training_texts, write_demo_data
from rlhf.errors import UserError
from rlhf.io import read_jsonl

SMALL = {"n_reviews": 2000, "n_prompts": 200}
REQUIRED = {
    "pretrain_train": ("text",),
    "pretrain_val": ("text",),
    "sft_train": ("prompt", "response"),
    "sft_val": ("prompt", "response"),
    "prompts_train": ("prompt_id", "prompt"),
    "prompts_heldout": ("prompt_id", "prompt"),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = write_demo_data(out, seed=0, **SMALL)
    return paths, {name: read_jsonl(paths[name], required=REQUIRED[name]) for name in FILES}


def test_writes_the_six_files_by_name(demo, tmp_path):
    paths, rows = demo
    assert set(paths) == set(FILES)
    for name, path in paths.items():
        assert path.name == f"{name}.jsonl" and path.is_file()
        assert all(set(row) == set(REQUIRED[name]) for row in rows[name])
    assert len(rows["pretrain_train"]) + len(rows["pretrain_val"]) == 2000
    assert len(rows["pretrain_val"]) == 100  # 5%
    assert len(rows["prompts_train"]) + len(rows["prompts_heldout"]) == 200
    assert len(rows["prompts_heldout"]) == 40  # 20%
    assert not list(paths["sft_train"].parent.glob("*.tmp"))  # atomic writes leave no temporaries


def test_same_seed_identical_files_different_seed_different(demo, tmp_path):
    paths, _ = demo
    again = write_demo_data(tmp_path / "again", seed=0, **SMALL)
    other = write_demo_data(tmp_path / "other", seed=1, **SMALL)
    for name in FILES:
        assert again[name].read_bytes() == paths[name].read_bytes(), name
        assert other[name].read_bytes() != paths[name].read_bytes(), name


def test_splits_are_disjoint(demo):
    _, rows = demo
    train_prompts = {r["prompt"] for r in rows["prompts_train"]}
    heldout = {r["prompt"] for r in rows["prompts_heldout"]}
    assert not train_prompts & heldout
    train_texts = {r["text"] for r in rows["pretrain_train"]}
    val_texts = {r["text"] for r in rows["pretrain_val"]}
    assert not train_texts & val_texts
    assert len(train_texts) == len(rows["pretrain_train"])  # no duplicate reviews either
    # no training or validation review starts with a held-out prompt
    assert not {r["prompt"] for r in rows["sft_train"] + rows["sft_val"]} & heldout


def test_sft_pairs_concatenate_to_the_reviews(demo):
    _, rows = demo
    for split in ("train", "val"):
        for pair, review in zip(rows[f"sft_{split}"], rows[f"pretrain_{split}"], strict=True):
            prompt, response = pair["prompt"], pair["response"]
            assert prompt + response == review["text"]
            assert prompt == prompt.rstrip() and response.startswith(" ") and not response[1].isspace()
            # reads naturally: a new sentence after a full stop, a lower-case continuation mid-sentence
            first_word = response.split()[0]
            if prompt.endswith("."):
                assert first_word[0].isupper(), prompt + "|" + response
            else:
                assert first_word == "I" or first_word.islower(), prompt + "|" + response


def test_prompt_ids(demo):
    _, rows = demo
    for split in ("train", "heldout"):
        ids = [r["prompt_id"] for r in rows[f"prompts_{split}"]]
        assert ids == [f"{split}-{i:06d}" for i in range(len(ids))]
    assert all(re.fullmatch(r"[A-Z][^{}]*[a-z.]", r["prompt"]) for r in rows["prompts_train"])


def test_prompts_are_sentiment_neutral(demo):
    _, rows = demo
    vader = SentimentIntensityAnalyzer()
    prompts = [r["prompt"] for r in rows["prompts_train"] + rows["prompts_heldout"]]
    assert statistics.mean(abs(vader.polarity_scores(p)["compound"]) for p in prompts) < 0.02
    # ... while their continuations are not: the sentiment is the policy's choice
    responses = [r["response"] for r in rows["sft_val"]]
    assert statistics.mean(abs(vader.polarity_scores(r)["compound"]) for r in responses) > 0.4


def test_corpus_sentences():
    sentences = corpus_sentences(500, seed=0)
    assert len(sentences) == 500
    assert sentences == corpus_sentences(500, seed=0)
    assert sentences != corpus_sentences(500, seed=1)
    assert corpus_sentences(0) == []
    for s in sentences:
        assert s[0].isupper() and s[-1] in ".!" and s == s.strip()
    assert len(set(sentences)) > 250


def test_tokenizer_training_texts_are_the_training_reviews(demo):
    _, rows = demo
    assert tokenizer_training_texts(seed=0, **SMALL) == [r["text"] for r in rows["pretrain_train"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_reviews": 10}, "n_reviews must be at least 20"),
        ({"n_prompts": 2}, "n_prompts must be at least 5"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"n_reviews": 100.0}, "n_reviews must be an integer"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        write_demo_data(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing half-written

"""Shared fixtures: a tokenizer trained on generated text and tiny models built from config (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLHF_NO_PROGRESS", "1")

SENTENCES = [
    "the blender works well and the price was fair.",
    "this film was slow and the ending felt cheap.",
    "the hotel near the station was clean and quiet.",
    "i bought this lamp last week and it broke on the second day.",
    "the staff were friendly and the food was great.",
    "a boring book with a weak plot and flat characters.",
]


@pytest.fixture(scope="session")
def tokenizer():
    from rlhf.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(SENTENCES * 20, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    from rlhf.models.registry import build_tiny_causal_lm

    return build_tiny_causal_lm("tiny", tokenizer, seed=0).eval()

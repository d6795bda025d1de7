"""Shared fixtures: a tokenizer trained on generated text and tiny models built from config (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

# One thread per test process: tiny models gain nothing from more, and OpenMP threads that spin-wait on a busy
# 2-core machine make every forward tens of times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLHF_NO_PROGRESS", "1")

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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

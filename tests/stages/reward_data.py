"""Synthetic preference data for the reward-model tests: a chosen response contains a positive word, a rejected one
a negative word, so a reward model must learn the property (chance is 0.5)."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["great", "friendly", "clean", "quiet", "fair", "well"]
NEGATIVE = ["boring", "weak", "cheap", "slow", "broke", "flat"]
NOUNS = ["hotel", "film", "lamp", "staff", "food", "book", "price", "plot", "station", "ending"]
PROMPTS = ["the hotel near the station", "this film was", "i bought this lamp", "the staff were",
           "a book with", "the food was", "the price was", "the ending felt"]


def response(rng: random.Random, words: list[str]) -> str:
    verb = rng.choice(["was", "felt"])
    return f" the {rng.choice(NOUNS)} was {rng.choice(words)} and the {rng.choice(NOUNS)} {verb}."


def pair_rows(n: int, seed: int = 0, **extra) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        rows.append({"prompt": rng.choice(PROMPTS), "chosen": response(rng, POSITIVE),
                     "rejected": response(rng, NEGATIVE), "agreement": 1.0, **extra})
    return rows


def ranking_rows(n_groups: int, k: int, seed: int = 0) -> list[dict]:
    """k-wise rankings of k responses with 0..k-1 positive words (more = better), exported as all k(k-1)/2 pairs."""
    rng = random.Random(seed)
    rows = []
    for g in range(n_groups):
        prompt = rng.choice(PROMPTS)
        texts = []
        for n_pos in range(k):
            words = [rng.choice(POSITIVE) for _ in range(n_pos)] + [rng.choice(NEGATIVE) for _ in range(k - 1 - n_pos)]
            texts.append(" " + " and ".join(f"the {rng.choice(NOUNS)} was {w}" for w in words) + ".")
        for better in range(k):
            for worse in range(better):
                rows.append({"prompt": prompt, "chosen": texts[better], "rejected": texts[worse],
                             "agreement": 1.0, "group_id": f"g{g}"})
    return rows


def sample_rows(n_prompts: int, k: int, seed: int) -> list[dict]:
    """`rlhf sample`-style rows: half positive, half negative responses (the normalisation distribution)."""
    rng = random.Random(seed)
    return [{"prompt_id": f"p{i}", "prompt": rng.choice(PROMPTS),
             "responses": [response(rng, POSITIVE if rng.random() < 0.5 else NEGATIVE) for _ in range(k)],
             "ended": [True] * k} for i in range(n_prompts)]


def save_base_model(tokenizer, folder: Path, seed: int = 0) -> Path:
    """A tiny random causal LM + tokenizer saved as an HF folder (stands in for the SFT model)."""
    from rlhf.models.registry import build_tiny_causal_lm

    model = build_tiny_causal_lm("tiny", tokenizer, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""The demo task's data files: pretraining text, SFT pairs and prompt sets, all generated (nothing downloaded).

Task (Ziegler et al. 2019, "positive sentiment continuation"): given the sentiment-neutral opening of a review,
continue it; the gold judge (`rlhf.data.gold`) prefers positive continuations.

`write_demo_data(out_dir, seed)` writes, atomically, JSONL files:
  pretrain_train.jsonl / pretrain_val.jsonl   {"text": review}
  sft_train.jsonl / sft_val.jsonl             {"prompt": opening, "response": continuation}; the prompt has no
                                              trailing space and the response starts with one, so
                                              prompt + response is the review's text
  prompts_train.jsonl / prompts_heldout.jsonl {"prompt_id": "train-000123" | "heldout-000012", "prompt": opening}
Splits: the held-out prompts are disjoint from the train prompts, and no review (pretrain or SFT, train or val)
starts with a held-out prompt, so held-out evaluation uses openings never seen verbatim in training. The SFT
pairs are the same reviews as the pretraining text, cut at the opening; validation reviews are not in train.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rlhf.data.corpus import generate_openings, iter_reviews, split_sentences
from rlhf.errors import UserError
from rlhf.io import write_jsonl

DEFAULT_N_REVIEWS = 20000
DEFAULT_N_PROMPTS = 1000
VAL_FRACTION = 0.05  # of the reviews
HELDOUT_FRACTION = 0.2  # of the prompts
FILES = ("pretrain_train", "pretrain_val", "sft_train", "sft_val", "prompts_train", "prompts_heldout")


def write_demo_data(
    out_dir: Path, seed: int = 0, n_reviews: int = DEFAULT_N_REVIEWS, n_prompts: int = DEFAULT_N_PROMPTS
) -> dict[str, Path]:
    """Write the six demo files into `out_dir` (created if missing); return their paths by name (see FILES)."""
    rows = build_demo_data(seed, n_reviews, n_prompts)
    out_dir = Path(out_dir)
    return {name: write_jsonl(out_dir / f"{name}.jsonl", rows[name]) for name in FILES}


def build_demo_data(
    seed: int = 0, n_reviews: int = DEFAULT_N_REVIEWS, n_prompts: int = DEFAULT_N_PROMPTS
) -> dict[str, list[dict[str, str]]]:
    """The rows of the six demo files, by name; deterministic for a given (seed, n_reviews, n_prompts)."""
    _check_int("seed", seed, minimum=None)
    _check_int("n_reviews", n_reviews, minimum=20)  # 5% validation must hold at least one review
    _check_int("n_prompts", n_prompts, minimum=5)  # 20% held out must hold at least one prompt

    # Prompts: distinct openings, already in random order; the first 20% are held out.
    openings = generate_openings(n_prompts, seed=_subseed(seed, "prompts"))
    n_heldout = max(1, round(n_prompts * HELDOUT_FRACTION))
    heldout, train_prompts = openings[:n_heldout], openings[n_heldout:]

    # Reviews: distinct texts, none starting with a held-out prompt; the first 5% (a random sample) validate.
    banned, seen, reviews = set(heldout), set(), []
    for review in iter_reviews(_subseed(seed, "reviews")):
        if len(reviews) == n_reviews:
            break
        if review.text in seen or review.opening in banned:
            continue
        seen.add(review.text)
        reviews.append(review)
    n_val = max(1, round(n_reviews * VAL_FRACTION))
    val, train = reviews[:n_val], reviews[n_val:]

    return {
        "pretrain_train": [{"text": r.text} for r in train],
        "pretrain_val": [{"text": r.text} for r in val],
        "sft_train": [{"prompt": r.opening, "response": r.continuation} for r in train],
        "sft_val": [{"prompt": r.opening, "response": r.continuation} for r in val],
        "prompts_train": [{"prompt_id": f"train-{i:06d}", "prompt": p} for i, p in enumerate(train_prompts)],
        "prompts_heldout": [{"prompt_id": f"heldout-{i:06d}", "prompt": p} for i, p in enumerate(heldout)],
    }


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` generated sentences (reviews split at sentence ends, in order; repeats possible, as in real text)."""
    _check_int("n", n, minimum=0)
    out: list[str] = []
    for review in iter_reviews(_subseed(seed, "sentences")):
        if len(out) >= n:
            break
        out.extend(split_sentences(review.text))
    return out[:n]


def tokenizer_training_texts(
    seed: int = 0, n_reviews: int = DEFAULT_N_REVIEWS, n_prompts: int = DEFAULT_N_PROMPTS
) -> list[str]:
    """The texts the demo tokenizer is trained on: the training reviews of `write_demo_data` with the same
    arguments (so the tokenizer sees what the model will, and nothing from validation)."""
    return [row["text"] for row in build_demo_data(seed, n_reviews, n_prompts)["pretrain_train"]]


def _subseed(seed: int, name: str) -> int:
    """An independent, stable seed per use (prompts, reviews, ...) so changing one stream leaves the others."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big")


def _check_int(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")

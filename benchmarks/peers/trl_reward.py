"""The reward-model benchmark workload (benchmarks/reward_train.py) on TRL 1.12.0's RewardTrainer, for compare.sh.

Runs in the TRL venv (benchmarks/peers/setup_trl.sh). Same work as reward_train.py, done in-process as it does it
(so the peak RSS counts the same things): the corpus and byte-level BPE tokenizer of benchmarks/_workload.py, the
seed-0 LlamaForSequenceClassification(num_labels=1) of the tiny shape (1,180,928 parameters), 512 pairs whose sides
are 48 ids (the same 16-id prompt + 31 response ids + <eos>, windows cut from the tokenised corpus with
random.Random(0), as reward_train.py cuts them), given pre-tokenised (`chosen_ids` / `rejected_ids`); 16 pairs per
step (one 32 x 48 forward), 1 epoch = 32 AdamW steps, gradient clipping at 1.0, fp32, 2 torch threads.
TRL settings changed from its defaults: bf16=False and gradient_checkpointing=False (ours does neither; both
default to True in RewardConfig), report_to=none, save_strategy=no, use_cpu=True.

A warm-up run of 1 step first, then `--repeats` epochs, each from a fresh seed-0 model; the time of an epoch runs
from `on_train_begin` to the last `on_step_end` (it includes TRL's data loading and logging).

    benchmarks/peers/.venv-trl/bin/python benchmarks/peers/trl_reward.py [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _workload import EOS, PROMPT_LEN, build_scalar, build_tokenizer, get_shape  # noqa: E402

RESPONSE_IDS, BATCH_PAIRS = 31, 16


def build_pairs(tok, sentences: list[str], n_pairs: int, prompt_len: int = PROMPT_LEN,
                response_ids: int = RESPONSE_IDS) -> list[dict]:
    """As benchmarks/reward_train.py: windows of the id stream of " " + sentence, with random.Random(0)."""
    stream = [i for s in sentences for i in tok.encode(" " + s).ids]
    rng = random.Random(0)

    def window(n: int) -> list[int]:
        start = rng.randrange(len(stream) - n)
        return stream[start: start + n]

    pairs = []
    for _ in range(n_pairs):
        prompt = window(prompt_len)
        chosen, rejected = prompt + window(response_ids) + [EOS], prompt + window(response_ids) + [EOS]
        pairs.append({"chosen_ids": chosen, "rejected_ids": rejected})
    assert all(len(p["chosen_ids"]) == len(p["rejected_ids"]) == prompt_len + response_ids + 1 for p in pairs)
    return pairs


def train_epoch(pairs: list[dict], tokenizer, out: Path, max_steps: int = -1) -> tuple[float, int]:
    # RoPE has no position parameters: a longer context changes nothing but the limit
    shape = replace(get_shape("tiny"), response_length=max(32, len(pairs[0]["chosen_ids"]) - PROMPT_LEN))
    """One epoch (or max_steps) of RewardTrainer from a fresh seed-0 model; returns (seconds, optimiser steps)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            marks.append(time.perf_counter())

    args = RewardConfig(output_dir=str(out), per_device_train_batch_size=BATCH_PAIRS, num_train_epochs=1,
                        max_steps=max_steps, learning_rate=1e-4, max_grad_norm=1.0, bf16=False, fp16=False,
                        gradient_checkpointing=False, report_to="none", save_strategy="no", use_cpu=True,
                        dataloader_num_workers=0, disable_tqdm=True, max_length=None)
    trainer = RewardTrainer(model=build_scalar(shape), args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list(pairs), callbacks=[Clock()])
    trainer.train()
    return marks[-1] - marks[0], len(marks) - 1


def main() -> None:
    import trl
    from transformers import PreTrainedTokenizerFast

    from rlhf.data.demo import corpus_sentences

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a minimal run (few sentences and steps)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the standard workload uses 2)")
    ap.add_argument("--prompt_len", type=int, default=PROMPT_LEN, help="prompt ids per pair (standard 16)")
    ap.add_argument("--response_len", type=int, default=RESPONSE_IDS + 1, help="response ids incl. EOS (standard 32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_sentences, n_pairs, repeats = (2000, 64, 1) if args.smoke else (20000, 512, args.repeats)
    max_steps = 2 if args.smoke else -1

    sentences = corpus_sentences(n_sentences, seed=0)
    tok = build_tokenizer(sentences)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    pairs = build_pairs(tok, sentences, n_pairs, args.prompt_len, args.response_len - 1)
    pairs_per_s = []
    with tempfile.TemporaryDirectory(prefix="trl-reward-bench-") as tmp:
        train_epoch(pairs[:BATCH_PAIRS], fast, Path(tmp) / "warmup", max_steps=1)
        for r in range(repeats):
            seconds, steps = train_epoch(pairs, fast, Path(tmp) / f"r{r}", max_steps)
            pairs_per_s.append(steps * BATCH_PAIRS / seconds)
            print(f"repeat {r + 1}: {steps} steps, {seconds:.2f} s, {pairs_per_s[-1]:.1f} pairs/s")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"TRL {trl.__version__} RewardTrainer: pairs/s median {statistics.median(pairs_per_s):.1f} "
          f"min {min(pairs_per_s):.1f} max {max(pairs_per_s):.1f}; peak RSS {peak_rss_mb:.0f} MB")
    print(json.dumps({
        "benchmark": "reward_train", "impl": f"trl {trl.__version__}", "smoke": args.smoke, "pairs": len(pairs),
        "batch_pairs": BATCH_PAIRS, "repeats": repeats, "threads": torch.get_num_threads(),
        "pairs_per_s": statistics.median(pairs_per_s), "pairs_per_s_min": min(pairs_per_s),
        "pairs_per_s_max": max(pairs_per_s), "peak_rss_mb": peak_rss_mb, "torch": torch.__version__,
        "loadavg_1m": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()

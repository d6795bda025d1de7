"""Reward-model training speed on the standard tiny workload, through the stage's own batching, forward and loss.

Workload: byte-level BPE tokenizer (256-byte alphabet, no prefix space) trained here on 20,000 generated sentences
(`rlhf.data.demo.corpus_sentences`), vocab exactly 4096 (BPE stops at 1,802 on this regular corpus; the rest are
unused added tokens, as in benchmarks/_workload.py) with <pad>=0 and <eos>=1 (no BOS/UNK);
LlamaForSequenceClassification(num_labels=1) from config with torch.manual_seed(0): hidden 128, 4 layers, 4 heads
(4 KV), intermediate 256, 128 positions, fp32, SDPA (1,180,928 parameters); 512 pairs, each side 48 ids (16-id
prompt + 31 response ids + <eos>); 16 pairs per step (one 32 x 48 forward; with the stage's default
shared_prefix, a 16 x 16 forward of the pairs' prompts into a KV cache, then 32 x 32 over the responses),
1 epoch = 32 AdamW steps (the stage's fused AdamW) with gradient clipping at 1.0 (the stage default); 2 torch
threads. Each repeat starts from the same seed-0 model; one untimed warm-up step runs first.

    .venv/bin/python benchmarks/reward_train.py [--smoke] [--repeats 3] [--threads 2]

Prints per-step and per-repeat figures, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import time

import torch
from _workload import build_tokenizer  # the same 4,096-id tokenizer as the PPO workload (benchmarks/ is on sys.path)

from rlhf.data.demo import corpus_sentences
from rlhf.models.reward import LastTokenScorer
from rlhf.models.scalar import shared_prefix_layout
from rlhf.stages.common import make_optimizer
from rlhf.stages.reward import Pair, SequenceTable, collate_pairs, group_batches, preference_loss

VOCAB, PAD, EOS = 4096, 0, 1
PROMPT_IDS, RESPONSE_IDS = 16, 31
N_PARAMS = 1_180_928


def build_model(max_positions: int = 128):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=256, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                         num_labels=1, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).float()
    n = sum(p.numel() for p in model.parameters())
    assert n == N_PARAMS, f"{n} parameters, expected {N_PARAMS}"
    return model


def build_pairs(tok, sentences: list[str], n_pairs: int, prompt_ids: int = PROMPT_IDS,
                response_ids: int = RESPONSE_IDS) -> tuple[SequenceTable, list[Pair]]:
    """Pairs of exact lengths cut from the tokenised sentence stream: prompt 16 ids, each response 31 ids + EOS."""
    stream = [i for s in sentences for i in tok.encode(" " + s).ids]
    rng = random.Random(0)
    table = SequenceTable(tokenizer=None, max_length=max(128, prompt_ids + response_ids + 1))
    pairs = []

    def window(n: int) -> list[int]:
        start = rng.randrange(len(stream) - n)
        return stream[start: start + n]

    for k in range(n_pairs):
        prompt = window(prompt_ids)
        chosen, rejected = prompt + window(response_ids) + [EOS], prompt + window(response_ids) + [EOS]
        pairs.append(Pair(table.add_ids(chosen), table.add_ids(rejected), margin=None, agreement=None, tie=False,
                          group=f"p{k}", split=None, where=f"pair {k}"))
    assert all(len(s) == prompt_ids + response_ids + 1 for s in table.seqs)
    return table, pairs


def train_epoch(table: SequenceTable, pairs: list[Pair], batch_size: int, max_steps: int,
                shared_prefix: bool = True) -> list[float]:
    """One epoch (or max_steps) from a fresh seed-0 model, as the stage trains (`shared_prefix` as its option of
    that name: the 16-id prompt of a pair runs once); returns seconds per optimiser step."""
    scorer = LastTokenScorer(build_model(max(128, len(table.seqs[0])))).train()
    opt = make_optimizer(torch.optim.AdamW, scorer.parameters(), lr=1e-4)  # the stage's (fused) AdamW
    times = []
    for batch in group_batches(pairs, batch_size, seed=0)[:max_steps]:
        t = time.perf_counter()
        b = collate_pairs(batch, table, PAD)
        layout = shared_prefix_layout(b["input_ids"], b["attention_mask"], b["group"]) if shared_prefix else None
        rewards = scorer(b["input_ids"], b["attention_mask"], layout)
        assert rewards.shape == (2 * len(batch),)
        loss, _ = preference_loss(rewards, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a minimal run (few sentences and steps) for the tests")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the standard workload uses 2)")
    ap.add_argument("--prompt_len", type=int, default=PROMPT_IDS, help="prompt ids per pair (not the standard "
                    "workload unless 16)")
    ap.add_argument("--response_len", type=int, default=RESPONSE_IDS + 1, help="response ids incl. EOS (standard 32)")
    ap.add_argument("--no_shared_prefix", action="store_true", help="the stage with shared_prefix false: every "
                    "sequence runs whole, one 32 x 48 forward per step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_sentences, n_pairs, repeats = (2000, 64, 1) if args.smoke else (20000, 512, args.repeats)
    batch_size, max_steps = 16, (2 if args.smoke else 10**9)

    t = time.perf_counter()
    sentences = corpus_sentences(n_sentences, seed=0)
    tok = build_tokenizer(sentences)
    table, pairs = build_pairs(tok, sentences, n_pairs, args.prompt_len, args.response_len - 1)
    setup_s = time.perf_counter() - t
    # warm-up: first-call overheads stay out of the timings
    train_epoch(table, pairs[:batch_size], batch_size, 1, not args.no_shared_prefix)

    step_s, pairs_per_s = [], []
    for r in range(repeats):
        times = train_epoch(table, pairs, batch_size, max_steps, not args.no_shared_prefix)
        step_s += times
        pairs_per_s.append(len(times) * batch_size / sum(times))
        print(f"repeat {r + 1}: {len(times)} steps, {sum(times):.2f} s, {pairs_per_s[-1]:.1f} pairs/s")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"s/step median {statistics.median(step_s):.4f} min {min(step_s):.4f} max {max(step_s):.4f}; "
          f"pairs/s median {statistics.median(pairs_per_s):.1f} min {min(pairs_per_s):.1f} "
          f"max {max(pairs_per_s):.1f}; peak RSS {peak_rss_mb:.0f} MB")
    print(json.dumps({
        "benchmark": "reward_train", "smoke": args.smoke, "shared_prefix": not args.no_shared_prefix,
        "pairs": len(pairs), "batch_pairs": batch_size,
        "steps_per_repeat": len(step_s) // repeats, "repeats": repeats, "threads": torch.get_num_threads(),
        "params": N_PARAMS, "vocab": tok.get_vocab_size(), "seq_len": args.prompt_len + args.response_len,
        "pairs_per_s": statistics.median(pairs_per_s), "pairs_per_s_min": min(pairs_per_s),
        "pairs_per_s_max": max(pairs_per_s), "s_per_step_median": statistics.median(step_s),
        "s_per_step_min": min(step_s), "s_per_step_max": max(step_s), "peak_rss_mb": peak_rss_mb,
        "setup_s": setup_s, "torch": torch.__version__,
        "loadavg_1m": os.getloadavg()[0],  # other work on the machine slows a 2-thread run a lot: check this
    }))


if __name__ == "__main__":
    main()

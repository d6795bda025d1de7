"""The PPO benchmark workload on TRL 1.12.0's PPOTrainer (`trl.experimental.ppo`), for benchmarks/compare.sh.

Runs in the TRL venv (benchmarks/peers/setup_trl.sh), never in ours. Same workload folder as benchmarks/ppo_step.py
(benchmarks/_workload.py: same tokenizer, same saved policy / reward weights, same 64 x 16 prompt ids), configured as
close as TRL allows:
  per_device_train_batch_size=16, gradient_accumulation_steps=1, num_mini_batches=4, num_ppo_epochs=1
      -> 16 rollouts per update, 4 minibatches of 4, one optimiser step each (with gradient_accumulation_steps=4
         TRL's `accelerator.accumulate` would skip 3 of the 4 optimiser steps)
  response_length=32, temperature=0.7 (TRL samples with top_k 0, top_p 1), stop_token=None (no stop: exactly 32
  tokens), missing_eos_penalty=None, kl_coef=0.05, kl_estimator=k1, gamma=1, lam=0.95, whiten_rewards=False,
  cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, learning_rate=1e-5, adam_epsilon=1e-5, weight_decay=0
  bf16=False (TRL's default is True) and gradient_checkpointing=False (default True; PPOTrainer never applies it),
  num_sample_generations=0 (no extra sampling), report_to=none, save_strategy=no, use_cpu=True.
The value model is the reward model's weights with a zeroed head (as ours), the reference TRL's own copy of the
policy. Differences TRL does not let us remove: it takes the old log-probs from the sampling logits (no extra
policy forward; ours runs one), its reward/value forwards ask for all hidden states, and it treats every <pad> id
(0) in a sampled response as padding in later forwards.

Timing: an update is the time between consecutive `on_step_end` callbacks (so each timed update holds one of each
of TRL's per-update steps, including the gc.collect() that runs after `on_step_end`); generation is timed by
wrapping the module's `batch_generation`, and gc.collect() by wrapping the module's `gc`.

    benchmarks/peers/.venv-trl/bin/python benchmarks/peers/trl_ppo.py [--scale] [--response_length N] [--batch B]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # PPO lives in trl.experimental in 1.x: we know

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _workload import PROMPT_LEN, ensure_workload, get_shape, parse_ppo_args, ppo_arg_parser  # noqa: E402


def run_trl(workload: Path, out: Path, response_length: int, batch: int, updates: int, warmup: int) -> dict:
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(workload / "policy")
    policy = AutoModelForCausalLM.from_pretrained(workload / "policy", dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(workload / "reward", num_labels=1,
                                                                dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(workload / "reward", num_labels=1,
                                                               dtype=torch.float32)
    with torch.no_grad():
        value.score.weight.zero_()
    prompts = json.loads((workload / "prompt_ids.json").read_text())
    assert all(len(p) == PROMPT_LEN for p in prompts)
    dataset = Dataset.from_dict({"input_ids": prompts})

    args = PPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_mini_batches=4,
        num_ppo_epochs=1, total_episodes=(warmup + updates) * batch, local_rollout_forward_batch_size=batch,
        response_length=response_length, temperature=0.7, stop_token=None, missing_eos_penalty=None,
        kl_coef=0.05, kl_estimator="k1", gamma=1.0, lam=0.95, whiten_rewards=False, cliprange=0.2,
        cliprange_value=0.2, vf_coef=0.1, learning_rate=1e-5, adam_epsilon=1e-5, weight_decay=0.0,
        bf16=False, fp16=False, gradient_checkpointing=False, num_sample_generations=0, report_to="none",
        save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0, logging_steps=1,
    )

    marks: list[float] = []
    gen_s: list[float] = []
    gc_calls: list[tuple[float, float]] = []  # (start, seconds)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            marks.append(time.perf_counter())

    inner_gen, inner_gc = ppo_mod.batch_generation, ppo_mod.gc

    def timed_generation(*a, **kw):
        t = time.perf_counter()
        res = inner_gen(*a, **kw)
        gen_s.append(time.perf_counter() - t)
        return res

    def timed_collect(*a, **kw):
        t = time.perf_counter()
        res = inner_gc.collect(*a, **kw)
        gc_calls.append((t, time.perf_counter() - t))
        return res

    ppo_mod.batch_generation = timed_generation
    ppo_mod.gc = types.SimpleNamespace(collect=timed_collect)
    try:
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                             train_dataset=dataset, value_model=value, eval_dataset=dataset, callbacks=[Clock()])
        trainer.train()
    finally:
        ppo_mod.batch_generation, ppo_mod.gc = inner_gen, inner_gc
    update_s = [b - a for a, b in zip(marks, marks[1:])]
    assert len(update_s) == warmup + updates, (len(update_s), warmup + updates)
    # gc.collect() seconds inside each timed interval (two calls per update: one before the advantages, and one
    # after on_step_end, which falls in the next interval)
    gc_per_update = [sum(d for t, d in gc_calls if a <= t < b) for a, b in zip(marks, marks[1:])]
    return {"update_s": update_s[warmup:], "generate_s": gen_s[warmup:], "gc_s": gc_per_update[warmup:]}


def main() -> None:
    import transformers
    import trl

    ap = ppo_arg_parser(__doc__.splitlines()[0])
    args = parse_ppo_args(ap)
    torch.set_num_threads(args.threads)
    shape = get_shape("scale" if args.scale else "tiny", args.response_length or None)
    R = shape.response_length

    with tempfile.TemporaryDirectory(prefix="trl-ppo-bench-") as tmp:
        workload = args.workload or Path(tmp) / "workload"
        ensure_workload(workload, shape, args.smoke)
        res = run_trl(workload, Path(tmp) / "run", R, args.batch, args.updates, args.warmup)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = res["update_s"]
    med = statistics.median(s)
    gen = statistics.median(res["generate_s"])
    gc_med = statistics.median(res["gc_s"]) if res["gc_s"] else 0.0
    print(f"TRL {trl.__version__} ({shape.name}, batch {args.batch}, response {R}, {torch.get_num_threads()} "
          f"threads): s/update median {med:.4f} min {min(s):.4f} max {max(s):.4f}; generate {gen:.4f} s; "
          f"gc.collect {gc_med:.4f} s ({100 * gc_med / med:.0f}%); peak RSS {peak_rss_mb:.0f} MB")
    print(json.dumps({
        "benchmark": "ppo_step", "impl": f"trl {trl.__version__}", "smoke": args.smoke,
        "s_per_update": med, "s_per_update_min": min(s), "s_per_update_max": max(s), "generate_s": gen,
        "gc_s": gc_med, "gen_tokens_per_s": args.batch * R / gen, "tokens_per_s": args.batch * (PROMPT_LEN + R) / med,
        "peak_rss_mb": peak_rss_mb, "floor_s": None, "floor_ratio": None,
        "updates": args.updates, "warmup": args.warmup, "batch": args.batch, "response_length": R,
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "shape": shape.name, "loadavg_1m": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()

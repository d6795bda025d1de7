"""Peak memory of PPO with a frozen reference copy vs LoRA (the reference = the policy with adapters disabled).

    python benchmarks/lora_memory.py [--model medium] [--smoke]

Each variant runs in its own process (2 PPO updates) so peak RSS is comparable; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def child(folder: str, lora_r: int, out: str) -> None:
    import torch

    from rlhf.stages import ppo

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ppo.run(ppo.PPOConfig(policy=f"{folder}/policy", reward=f"{folder}/rm", prompts=f"{folder}/prompts.jsonl",
                          out=out, updates=2, rollout_batch_size=8, num_minibatches=2, ppo_epochs=1,
                          max_new_tokens=16, lora_r=lora_r, save_every=0, log_samples_every=0, tensorboard=False,
                          device="cpu"))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="medium", help="tiny config name (tiny, small, medium)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, for tests")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    from rlhf.io import write_jsonl
    from rlhf.models.loading import load_scalar_model
    from rlhf.models.registry import build_tiny_causal_lm
    from rlhf.models.tokenizer import train_bpe_tokenizer

    name = "tiny" if args.smoke else args.model
    with tempfile.TemporaryDirectory() as tmp:
        texts = [f"the {w} was {a} and the staff were {b}." for w in ("hotel", "film", "lamp", "food")
                 for a in ("clean", "slow", "great", "cheap") for b in ("kind", "rude", "quick")]
        tok = train_bpe_tokenizer(texts * 10, vocab_size=512, min_frequency=1)
        model = build_tiny_causal_lm(name, tok, seed=0)
        model.save_pretrained(f"{tmp}/policy")
        tok.save_pretrained(f"{tmp}/policy")
        load_scalar_model(f"{tmp}/policy", init_head_std=0.02).save_pretrained(f"{tmp}/rm")
        tok.save_pretrained(f"{tmp}/rm")
        write_jsonl(f"{tmp}/prompts.jsonl", [{"prompt": t.split(" was")[0]} for t in texts])
        n_params = sum(p.numel() for p in model.parameters())
        result = {"model": name, "params": n_params}
        for key, r in (("full_reference_copy", 0), ("lora_reference", 8)):
            proc = subprocess.run([sys.executable, __file__, "--child", tmp, str(r), f"{tmp}/out{r}"],
                                  capture_output=True, text=True, env={**os.environ, "RLHF_NO_PROGRESS": "1"})
            if proc.returncode:
                sys.exit(proc.stderr[-2000:])
            result[f"{key}_peak_rss_mb"] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        result["saving_mb"] = result["full_reference_copy_peak_rss_mb"] - result["lora_reference_peak_rss_mb"]
        result["policy_fp32_mb"] = n_params * 4 / 2**20
    print(f"{name}: {n_params / 1e6:.1f}M parameters; peak RSS with a reference copy "
          f"{result['full_reference_copy_peak_rss_mb']:.0f} MB, with LoRA {result['lora_reference_peak_rss_mb']:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()

"""PPO's stability options side by side on the demo task: the same SFT model, reward model, seed and budget.

    .venv/bin/rlhf demo --out runs/demo                                   # once: SFT, reward model, data
    .venv/bin/python benchmarks/ppo_stability.py --run runs/demo --out runs/stability

Variants (each a `rlhf ppo` run with the demo's settings plus the option, then `rlhf eval` on the held-out prompts):
  default            the demo's PPO
  critic_warmup      critic_warmup_updates 5
  value_pretrain     rlhf value-pretrain first, then ppo --value
  lam_value          lam_value 1.0 (Monte-Carlo value targets)
  lam_adaptive       lam_policy_alpha 0.05 (VAPO's length-adaptive policy lambda)
  ptx                ptx_coef --ptx_coef on the pre-training corpus (the alignment-tax study)
Per variant: value/explained_variance at update 1 and its mean over updates 1-10, the gold win rate against the SFT
model with its Wilson 95% interval, KL, and the held-out perplexity of the policy on the pre-training corpus (the
SFT model's too). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RLHF_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("default", "critic_warmup", "value_pretrain", "lam_value", "lam_adaptive", "ptx")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished demo run folder (sft/, reward/, data/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--ptx_coef", type=float, default=1.0)
    ap.add_argument("--updates", type=int, default=0, help="PPO updates (0 = the demo preset's)")
    ap.add_argument("--eval_prompts", type=int, default=0, help="held-out prompts (0 = the demo preset's)")
    ap.add_argument("--ppl_texts", type=int, default=500, help="held-out pre-training texts for the perplexity")
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from rlhf.stages import evaluate, ppo, value_pretrain
    from rlhf.stages.demo import PRESETS

    p = PRESETS[args.preset]
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = run / "data"
    updates = args.updates or p["ppo_updates"]
    base = dict(policy=str(run / "sft"), reward=str(run / "reward"), prompts=str(data / "prompts_train.jsonl"),
                gold="demo", updates=updates, rollout_batch_size=p["ppo_batch"], num_minibatches=4, ppo_epochs=4,
                max_new_tokens=p["max_new_tokens"], lr=p["ppo_lr"], kl_coef=p["kl_coef"], save_every=0,
                log_samples_every=0, tensorboard=False, seed=0, device="cpu")
    ppl_texts = _texts(data / "pretrain_val.jsonl", args.ppl_texts)
    results = {"sft_perplexity": perplexity(run / "sft", ppl_texts)}
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        kw = dict(base, out=str(out / name / "ppo"))
        if name == "critic_warmup":
            kw["critic_warmup_updates"] = 5
        elif name == "value_pretrain":
            vp = value_pretrain.run(value_pretrain.ValuePretrainConfig(
                policy=base["policy"], reward=base["reward"], prompts=base["prompts"], out=str(out / name / "value"),
                rollouts=512, max_new_tokens=base["max_new_tokens"], kl_coef=base["kl_coef"], epochs=4, batch_size=32,
                lr=1e-4, device="cpu"))
            kw["value"] = str(vp)
        elif name == "lam_value":
            kw["lam_value"] = 1.0
        elif name == "lam_adaptive":
            kw["lam_policy_alpha"] = 0.05
        elif name == "ptx":
            kw.update(ptx_coef=args.ptx_coef, ptx_data=str(data / "pretrain_train.jsonl"), ptx_batch_size=8)
        elif name != "default":
            raise SystemExit(f"unknown variant {name}; use {', '.join(VARIANTS)}")
        policy = ppo.run(ppo.PPOConfig(**kw))
        ev = json.loads((evaluate.run(evaluate.EvalConfig(
            policy=str(policy), reward=base["reward"], prompts=str(data / "prompts_heldout.jsonl"),
            out=str(out / name / "eval"), n_prompts=args.eval_prompts or p["eval_prompts"], gold="demo", seed=0,
            device="cpu")) / "eval.json").read_text())
        rows = [json.loads(x) for x in (policy / "metrics.jsonl").read_text().splitlines()]
        evs = [r["value/explained_variance"] for r in rows[:10]]
        results[name] = {
            "ev_update1": evs[0], "ev_mean_1_10": sum(evs) / len(evs),
            "gold_win_rate": ev["win_rate"]["gold"], "gold_win_rate_ci95": ev["win_rate_ci95"]["gold"],
            "kl": ev["kl"], "gold_policy": ev["gold"]["policy"], "perplexity": perplexity(policy, ppl_texts),
            "time_s": time.perf_counter() - t0}
        print(name, json.dumps(results[name]), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


def _texts(path: Path, n: int) -> list[str]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["text"] for r in rows[:n]]


def perplexity(folder: Path, texts: list[str], batch_size: int = 32) -> float:
    """exp(mean next-token cross-entropy) of a model folder over texts (BOS given, EOS predicted), as `rlhf sft`
    measures its eval/perplexity."""
    import torch

    from rlhf.models.loading import load_causal_lm, load_tokenizer
    from rlhf.stages.sft import IGNORE, collate, tokenize_examples

    tok = load_tokenizer(folder)
    model = load_causal_lm(folder).eval()
    ex = tokenize_examples([{"text": t} for t in texts], tok, 10**6, "ppl texts")
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ex), batch_size):
            b = collate(ex[i:i + batch_size], tok.pad_token_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(),
                                                             ignore_index=IGNORE, reduction="sum"))
            count += int((b["labels"][:, 1:] != IGNORE).sum())
    return math.exp(total / count)


if __name__ == "__main__":
    main()

"""The compute floor of one PPO update: the model passes an update needs, timed bare, with no RLHF logic.

Per update, on the same models and shapes as benchmarks/ppo_step.py:
  generate  a plain KV-cache sampling loop (softmax(logits / T), multinomial; no HF generate) for R new tokens
  score     reference LM forward, value forward and reward forward on B x (16 + R), without autograd
  train     per minibatch (B / 4 rollouts): policy forward + value forward, a stand-in loss of the same shape
            (log-probs x advantages, squared value error), backward, one (fused) Adam step for each model
This is what a perfect implementation of the update approaches: everything else an implementation does (log-prob
bookkeeping, KL, GAE, whitening, clipping, metrics, tokenisation, Python around it) is overhead above it.

    .venv/bin/python benchmarks/compute_floor.py [--scale] [--response_length N] [--batch B] [--smoke]

Prints per-update figures, then one JSON object as the last line (`floor_s` = median seconds per update).
"""

from __future__ import annotations

import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import get_shape, parse_ppo_args, ppo_arg_parser  # noqa: E402  (benchmarks/ is not a package)

TEMPERATURE, NUM_MINIBATCHES, LR, ADAM_EPS, VF_COEF = 0.7, 4, 1e-5, 1e-5, 0.1


def load_models(workload: Path):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    policy = LlamaForCausalLM.from_pretrained(workload / "policy", dtype=torch.float32)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    reward = LlamaForSequenceClassification.from_pretrained(workload / "reward", dtype=torch.float32)
    reward.eval().requires_grad_(False)
    value = LlamaForSequenceClassification.from_pretrained(workload / "reward", dtype=torch.float32)
    with torch.no_grad():
        value.score.weight.zero_()  # as the stage's value_head_init=zero
    for m in (policy, ref, reward, value):
        assert m.config._attn_implementation == "sdpa", m.config._attn_implementation
    return policy, ref, reward, value


@torch.inference_mode()
def sample(model, prompt_ids: torch.Tensor, new_tokens: int, temperature: float) -> torch.Tensor:
    """(B, P) -> (B, R) sampled ids: one prompt forward into the model's KV cache, then one token per step."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, cache=cache, use_cache=True, logits_to_keep=1)  # the cache fills in place
    tokens = []
    for t in range(new_tokens):
        probs = torch.softmax(out.logits[:, -1] / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1)
        tokens.append(nxt)
        if t + 1 < new_tokens:
            out = model(input_ids=nxt, cache=cache, use_cache=True, logits_to_keep=1)
    return torch.cat(tokens, dim=1)


def response_logp(lm, ids: torch.Tensor, R: int, temperature: float) -> torch.Tensor:
    """(B, P+R) -> (B, R) log-probs of the response tokens (the LM head runs on the R+1 last positions only)."""
    logits = lm(input_ids=ids, use_cache=False, logits_to_keep=R + 1).logits[:, :-1] / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -R:, None]).squeeze(-1)


def per_token_values(scalar_model, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) the scalar head at every position."""
    hidden = scalar_model.model(input_ids=ids, use_cache=False).last_hidden_state
    return scalar_model.score(hidden).squeeze(-1)


def floor_update(models, optims, prompt_ids: torch.Tensor, R: int) -> tuple[float, float, float]:
    """One bare update; returns (generate_s, score_s, train_s)."""
    policy, ref, reward, value = models
    t0 = time.perf_counter()
    policy.eval()
    response = sample(policy, prompt_ids, R, TEMPERATURE)
    ids = torch.cat([prompt_ids, response], dim=1)
    t1 = time.perf_counter()
    with torch.inference_mode():
        ref_logp = response_logp(ref, ids, R, TEMPERATURE)
        old_values = per_token_values(value, ids)[:, -R - 1:-1]
        score = reward.score(reward.model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]).squeeze(-1)
    t2 = time.perf_counter()
    # stand-ins of the right shapes for the advantages and returns (their arithmetic is not part of the floor)
    returns = (score[:, None] - 0.05 * ref_logp).clone()
    advantages = returns - old_values
    policy.train()
    value.train()
    B = ids.shape[0]
    mb = B // NUM_MINIBATCHES
    for s in range(0, B, mb):
        logp = response_logp(policy, ids[s:s + mb], R, TEMPERATURE)
        values = per_token_values(value, ids[s:s + mb])[:, -R - 1:-1]
        loss = -(logp * advantages[s:s + mb]).mean() + VF_COEF * ((values - returns[s:s + mb]) ** 2).mean()
        loss.backward()
        for opt in optims:
            opt.step()
            opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def setup(workload: Path) -> tuple:
    """The models, their optimisers (the fused Adam kernel, as `rlhf ppo` uses: the floor is the fastest optimiser
    step, not the default one) and the prompt ids."""
    models = load_models(workload)
    optims = [torch.optim.Adam(m.parameters(), lr=LR, eps=ADAM_EPS, fused=True) for m in (models[0], models[3])]
    prompts = torch.tensor(json.loads((workload / "prompt_ids.json").read_text()), dtype=torch.long)
    torch.manual_seed(0)
    return models, optims, prompts


def update_n(state: tuple, u: int, batch: int, response_length: int) -> tuple[float, float, float]:
    """Bare update number u (prompts u*batch ... as the stage takes them)."""
    models, optims, prompts = state
    idx = torch.arange(u * batch, (u + 1) * batch) % prompts.shape[0]
    return floor_update(models, optims, prompts[idx], response_length)


def summarise(timed: list) -> dict:
    """Medians etc. (seconds) over the timed (generate_s, score_s, train_s) rows."""
    total = [sum(r) for r in timed]
    return {"floor_s": statistics.median(total), "floor_s_min": min(total), "floor_s_max": max(total),
            "floor_generate_s": statistics.median(r[0] for r in timed),
            "floor_score_s": statistics.median(r[1] for r in timed),
            "floor_train_s": statistics.median(r[2] for r in timed), "floor_updates": len(timed)}


def measure_floor(workload: Path, response_length: int, batch: int = 16, updates: int = 10,
                  warmup: int = 2) -> dict:
    """Time `warmup` + `updates` bare updates back to back."""
    state = setup(workload)
    rows = [update_n(state, u, batch, response_length) for u in range(warmup + updates)]
    return summarise(rows[warmup:])


def serve(workload: Path, response_length: int, batch: int) -> None:
    """Interleaved mode for ppo_step.py: load the models, print "ready", then for each line "U" on stdin run bare
    update U and print its (generate_s, score_s, train_s) as a JSON list; stop at end of input. Floor and stage
    updates then alternate, one at a time, so that both see the same machine (a 2-core VM drifts by +-25% over
    the half minute that two back-to-back measurements take)."""
    state = setup(workload)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(update_n(state, int(line), batch, response_length)), flush=True)


def main() -> None:
    from _workload import ensure_workload

    ap = ppo_arg_parser(__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help="interleaved mode for ppo_step.py (needs --workload)")
    args = parse_ppo_args(ap)
    torch.set_num_threads(args.threads)
    if args.serve:
        return serve(args.workload, args.response_length, args.batch)
    shape = get_shape("scale" if args.scale else "tiny", args.response_length or None)
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        workload = args.workload or Path(tmp) / "workload"
        ensure_workload(workload, shape, args.smoke)
        res = measure_floor(workload, shape.response_length, args.batch, args.updates, args.warmup)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"floor: {res['floor_s']:.4f} s/update (min {res['floor_s_min']:.4f}, max {res['floor_s_max']:.4f}); "
          f"generate {res['floor_generate_s']:.4f} s, score {res['floor_score_s']:.4f} s, "
          f"train {res['floor_train_s']:.4f} s; peak RSS {peak_rss_mb:.0f} MB")
    print(json.dumps({"benchmark": "compute_floor", "smoke": args.smoke, **res, "batch": args.batch,
                      "gen_tokens_per_s": args.batch * shape.response_length / res["floor_generate_s"],
                      "peak_rss_mb": peak_rss_mb, "threads": torch.get_num_threads(),
                      "torch_version": torch.__version__, "shape": shape.name,
                      "response_length": shape.response_length, "loadavg_1m": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()

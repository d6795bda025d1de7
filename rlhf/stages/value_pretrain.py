"""Value pre-training: fit the value model to the returns of the SFT policy's own rollouts before PPO starts.

    rlhf value-pretrain --policy runs/x/sft --reward runs/x/reward --prompts runs/x/data/prompts_train.jsonl \
        --out runs/x/value
    rlhf ppo ... --value runs/x/value            # starts with a value function that already predicts the score

PPO's value model usually starts from the reward model with a zero head (values 0 everywhere), so its first
updates' advantages are the raw, noisy returns and `value/explained_variance` starts near 0. Here the SFT policy
(PPO's policy at update 1) samples rollouts, the reward model scores them, and the value model is regressed on
their Monte-Carlo returns (GAE with lambda = 1: every token's target is the sum of the rewards after it, which is
the score minus beta times the remaining KL; KL is 0 while the policy is its own reference). That is the critic
warm start of NeMo-RL and of VAPO's value pre-training (Yue et al. 2025), here as its own stage so that its fit is
measured on held-out rollouts before PPO uses it. Every metric: docs/metrics.md.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.artifacts import write_summary
from rlhf.config import OptimOptions, RunOptions, check, opt, save_config
from rlhf.core import gae, shape_rewards
from rlhf.io import MetricsLogger, atomic_write_text
from rlhf.models.data_source import read_rows
from rlhf.models.value import VALUE_CONFIG
from rlhf.stages.common import stage_outputs
from rlhf.train.optim import make_optimizer
from rlhf.train.progress import say
from rlhf.train.seeds import set_seed


@dataclass
class ValuePretrainConfig(OptimOptions, RunOptions):
    policy: str = opt("", "the SFT model folder: it samples the rollouts, as PPO's policy does at update 1")
    ref: str = opt("", "reference model for the KL term of the returns; empty = the policy itself (KL = 0)")
    reward: str = opt("", "reward model folder (from `rlhf reward`)")
    value: str = opt("", "value model init; empty = the reward model's backbone with a zero head (as PPO)")
    prompts: str = opt("", "JSONL of training prompts {'prompt_id', 'prompt'} (PPO's)")
    out: str = opt("runs/value", "output folder: the value model (HF format), value_config.json, metrics.jsonl")
    rollouts: int = opt(256, "rollouts to sample and fit")
    heldout_fraction: float = opt(0.2, "share of the rollouts kept out of the fit to measure it")
    generation_batch_size: int = opt(32, "rollouts generated together")
    max_new_tokens: int = opt(48, "longest response (PPO's)")
    temperature: float = opt(0.7, "sampling temperature (PPO's)")
    kl_coef: float = opt(0.05, "PPO's initial KL coefficient beta, for the returns when --ref differs from the policy")
    gamma: float = opt(1.0, "discount (PPO's)")
    epochs: int = opt(4, "passes over the training rollouts")
    batch_size: int = opt(16, "rollouts per optimiser step")
    lr: float = opt(1e-4, "Adam learning rate")
    weight_decay: float = opt(0.0, "Adam weight decay (L2)")
    adam_eps: float = opt(1e-5, "Adam epsilon (PPO's)")
    seed: int = opt(0, "seed for prompt order, sampling and the held-out split")

    def validate(self) -> None:
        super().validate()  # the shared groups: choices, optimiser (rlhf.config)
        check(bool(self.policy), "policy", "no policy model given", "pass --policy SFT_FOLDER")
        check(bool(self.reward), "reward", "no reward model given", "pass --reward REWARD_FOLDER")
        check(bool(self.prompts), "prompts", "no prompt file given", "pass --prompts FILE.jsonl")
        check(self.rollouts >= 10, "rollouts", f"{self.rollouts} rollouts", "use at least 10 (e.g. 256)")
        check(0 < self.heldout_fraction < 1, "heldout_fraction", f"{self.heldout_fraction} outside (0, 1)",
              "use e.g. 0.2")
        check(self.temperature > 0, "temperature", "must be > 0", "use PPO's temperature, e.g. 0.7")
        check(self.epochs >= 1 and self.batch_size >= 1 and self.generation_batch_size >= 1, "epochs",
              "epochs, batch_size and generation_batch_size must be >= 1", "set them to 1 or more")


@stage_outputs(out="dir")
def run(cfg: ValuePretrainConfig) -> Path:
    from rlhf.models.generation import left_pad, response_forward, sample_with_logprobs, stop_token_ids
    from rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
    from rlhf.models.precision import resolve_device
    from rlhf.models.prompts import encode_prompts
    from rlhf.models.reward import load_reward_model
    from rlhf.models.scalar import PerTokenScalar
    from rlhf.models.value import response_values
    from rlhf.rl.rollout import prompt_indices

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    save_config(cfg, out / "config.yaml")
    set_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    t0 = time.perf_counter()

    # 1. models: the SFT policy (samples), reward model (scores), value model (fitted)
    tok = load_tokenizer(cfg.policy, padding_side="left")
    policy = load_causal_lm(cfg.policy).to(device).eval().requires_grad_(False)
    ref = load_causal_lm(cfg.ref).to(device).eval().requires_grad_(False) if cfg.ref else None
    reward = load_reward_model(cfg.reward, device=str(device))
    value = PerTokenScalar(load_scalar_model(cfg.value or cfg.reward, pad_token_id=tok.pad_token_id,
                                             init_head_std=0.0)).to(device)
    from rlhf.models.dropout import disable_dropout

    disable_dropout(value)
    eos = stop_token_ids(policy, tok)
    context = getattr(policy.config.get_text_config(), "max_position_embeddings", None)
    prompts = encode_prompts(read_rows(cfg.prompts, required=("prompt",)), tok, cfg.prompts, context,
                             cfg.max_new_tokens)

    # 2. rollouts of the SFT policy, scored; Monte-Carlo returns (GAE, lambda = 1) of PPO's shaped rewards
    idx = prompt_indices(1, cfg.rollouts, len(prompts), cfg.seed)
    rollouts = []
    for c in range(0, cfg.rollouts, cfg.generation_batch_size):
        torch.manual_seed(cfg.seed * 1_000_003 + c)
        p_ids, p_mask = left_pad([prompts[i] for i in idx[c:c + cfg.generation_batch_size]], tok.pad_token_id)
        b = sample_with_logprobs(policy, p_ids.to(device), p_mask.to(device), max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        with torch.inference_mode():
            scores, _ = reward(b.input_ids, b.attention_mask)
            ref_logp = response_forward(ref, b, cfg.temperature)[0] if ref is not None else b.logprobs
        rewards = shape_rewards(scores.float().clone(), b.logprobs.clone(), ref_logp.clone(), b.response_mask,
                                cfg.kl_coef)
        _, returns = gae(rewards, torch.zeros_like(rewards), b.response_mask, cfg.gamma, 1.0)  # values unused at 1
        for i in range(b.prompt_ids.shape[0]):
            rollouts.append((b.index(slice(i, i + 1)), returns[i:i + 1]))
    say(f"[value-pretrain] {len(rollouts)} rollouts sampled and scored in {time.perf_counter() - t0:.0f}s")
    order = list(range(len(rollouts)))
    random.Random(cfg.seed).shuffle(order)
    n_held = max(1, int(len(order) * cfg.heldout_fraction))
    held, train = [rollouts[i] for i in order[:n_held]], [rollouts[i] for i in order[n_held:]]

    # 3. regression of V(s_t) on the returns: 0.5 * mean (V - R)^2 over response tokens
    optimizer = make_optimizer(torch.optim.Adam, value.parameters(), lr=cfg.lr, eps=cfg.adam_eps,
                               weight_decay=cfg.weight_decay)
    metrics = MetricsLogger(out / "metrics.jsonl")
    best = evaluate(value, held, tok.pad_token_id, device)
    metrics.log({"step": 0, "epoch": 0, **best})
    step = 0
    rng = random.Random(cfg.seed + 1)
    try:
        for epoch in range(1, cfg.epochs + 1):
            value.train()
            rng.shuffle(train)
            for start in range(0, len(train), cfg.batch_size):
                batch, ret, mask = _collate(train[start:start + cfg.batch_size], tok.pad_token_id, device)
                v = response_values(value, batch)
                loss = 0.5 * ((v - ret) ** 2 * mask).sum() / mask.sum()
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(value.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics.log({"step": step, "epoch": epoch - 1 + min(1.0, (start + cfg.batch_size) / len(train)),
                             "vpt/loss": float(loss)})
            ev = evaluate(value, held, tok.pad_token_id, device)
            metrics.log({"step": step, "epoch": epoch, **ev})
            say(f"[value-pretrain] epoch {epoch}: held-out value loss {ev['eval/value_loss']:.4f}, explained "
                f"variance {ev['eval/value_explained_variance']:.3f}")
    finally:
        metrics.close()

    # 4. save: a scalar-head HF folder PPO loads with --value (value_config.json: keep its head)
    value.model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    atomic_write_text(out / VALUE_CONFIG, json.dumps({
        "format": "rlhf-value-v1", "policy": cfg.policy, "reward": cfg.reward, "ref": cfg.ref or cfg.policy,
        "returns": "Monte-Carlo (GAE lambda 1) of PPO's shaped rewards", "kl_coef": cfg.kl_coef, "gamma": cfg.gamma,
        "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "heldout": ev}, indent=2) + "\n")
    write_summary(out, {"rollouts": len(rollouts), "train": len(train), "heldout": len(held), "steps": step,
                        "before": best, "after": ev, "time_s": time.perf_counter() - t0}, kind="value-pretrain")
    say(f"[value-pretrain] done -> {out} (held-out explained variance {best['eval/value_explained_variance']:.3f} "
        f"-> {ev['eval/value_explained_variance']:.3f}); use it with rlhf ppo --value {out}")
    return out


def _collate(items: list, pad_id: int, device: torch.device) -> tuple:
    from rlhf.rl.rollout import concat_batches

    batch = concat_batches([b for b, _ in items], pad_id)
    width = batch.response_ids.shape[1]
    ret = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for _, r in items]).to(device)
    batch = type(batch)(*(x.to(device) if isinstance(x, torch.Tensor) else x for x in (
        batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, batch.ended)))
    return batch, ret, batch.response_mask.float()


@torch.no_grad()
def evaluate(value: torch.nn.Module, held: list, pad_id: int, device: torch.device, batch_size: int = 32
             ) -> dict[str, float]:
    """Held-out value loss 0.5 * mean (V - R)^2 and explained variance 1 - Var(R - V) / Var(R) over all tokens."""
    from rlhf.models.value import response_values

    value.eval()
    vs, rs = [], []
    for start in range(0, len(held), batch_size):
        batch, ret, mask = _collate(held[start:start + batch_size], pad_id, device)
        v = response_values(value, batch)
        m = mask.bool()
        vs.append(v[m])
        rs.append(ret[m])
    v, r = torch.cat(vs), torch.cat(rs)
    var_r = r.var(unbiased=False)
    ev = float(1 - (r - v).var(unbiased=False) / var_r) if var_r > 0 else 0.0
    return {"eval/value_loss": float(0.5 * ((v - r) ** 2).mean()), "eval/value_explained_variance": ev}

"""PPO: train the policy (and a value function) against a reward model, with a KL penalty to a frozen reference.

    rlhf ppo --policy runs/x/sft --reward runs/x/reward --prompts runs/x/data/prompts_train.jsonl --out runs/x/ppo

Each update reads like the algorithm (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022):
rollout -> score -> log-probs and values -> KL-shaped rewards -> GAE -> epochs of clipped minibatch updates.
The shared on-policy pieces (rollout, scoring, minibatch optimiser, metrics, the run's shell) are rlhf.rl; what
is PPO's own is here: the value function, GAE and the loss. Every option, its default and its source: docs/ppo.md.
Every metric: docs/metrics.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.config import check, opt
from rlhf.core import (
    gae,
    importance_weights,
    length_adaptive_lam,
    ppo_policy_loss,
    ppo_value_loss,
    shape_rewards,
)
from rlhf.errors import UserError
from rlhf.models.data_source import read_rows
from rlhf.models.value import is_value_model, response_values
from rlhf.rl import (
    LogprobGap,
    OnPolicyOptions,
    Session,
    collect,
    encode_prompts,
    finish,
    global_masked_mean,
    global_whiten,
    optimise,
    policy_term,
    save_policy,
    start,
    train,
    update_stats,
)
from rlhf.rl.distributed import explained_variance
from rlhf.rl.rollout import concat_batches, prompt_indices, reference
from rlhf.stages.common import say, stage_outputs

# names other modules and tests import from here (value pre-training samples its rollouts the same way)
_concat, _reference = concat_batches, reference
__all__ = ["PPOConfig", "encode_prompts", "prompt_indices", "response_values", "run"]


@dataclass
class PPOConfig(OnPolicyOptions):
    """PPO options"""

    out: str = opt("runs/ppo", "output folder: the trained policy (HF format), value/, metrics.jsonl, checkpoint/")
    # the value function
    value: str = opt("", "value model init; empty = the reward model's backbone (Stiennon et al. 2020)")
    value_head_init: Literal["auto", "zero", "keep"] = opt(
        "auto", "value head start: zero (lm-human-preferences) or keep (the reward head); auto = keep for a value "
        "model from `rlhf value-pretrain` (its value_config.json), zero otherwise")
    shared_value_head: bool = opt(False, "value head on the policy's backbone (one forward, less memory) instead of "
                                  "a separate value model (the default, as in Stiennon et al. 2020)")
    cliprange_value: float | None = opt(0.2, "value clip around the rollout values (None = unclipped MSE)")
    vf_coef: float = opt(0.1, "value loss coefficient (TRL: 0.1)")
    value_lr: float = opt(0.0, "value learning rate (0 = same as lr)")
    critic_warmup_updates: int = opt(0, "critic warm-up: the first N updates train only the value function (the "
                                     "policy is frozen, rollouts are still collected; OpenRLHF freezing_steps, veRL "
                                     "critic_warmup, NeMo-RL)")
    # rewards and advantages
    gamma: float = opt(1.0, "discount (1.0: episodes are short and the score comes at the end)")
    lam: float = opt(0.95, "GAE lambda of the policy's advantages")
    lam_value: float | None = opt(None, "GAE lambda of the value targets (returns); empty = lam. 1.0: Monte-Carlo "
                                  "targets, unbiased by the value's own errors (VC-PPO, Yuan et al. 2025; VAPO)")
    lam_policy_alpha: float = opt(0.0, "length-adaptive lambda for the advantages, lam = 1 - 1/(alpha * length) per "
                                  "response (VAPO, Yue et al. 2025: alpha 0.05); 0 = off (use lam)")
    whiten_rewards: bool = opt(False, "whiten the per-token rewards (scale only) before GAE")
    # PPO-ptx
    ptx_coef: float = opt(0.0, "PPO-ptx: weight gamma of a language-modelling loss on ptx_data added to the policy "
                          "loss each optimiser step (Ouyang et al. 2022, eq. 2); 0 = off")
    ptx_data: str = opt("", "pre-training / SFT data for PPO-ptx (JSONL, as `rlhf sft --data`: text or prompt/response "
                        "or chat rows)")
    ptx_batch_size: int = opt(8, "ptx sequences per optimiser step (per process), split like the minibatch into "
                              "grad_accum micro-batches")
    ptx_max_length: int = opt(256, "longest ptx example in tokens (longer is an error naming the row)")

    def validate(self) -> None:
        super().validate()
        check(self.lam_value is None or 0 <= self.lam_value <= 1, "lam_value", f"{self.lam_value} outside [0, 1]",
              "use 1.0 (Monte-Carlo value targets) or leave it empty")
        check(self.lam_policy_alpha >= 0, "lam_policy_alpha", "must be >= 0", "use 0 (off) or e.g. 0.05 (VAPO)")
        check(0 <= self.critic_warmup_updates < self.updates, "critic_warmup_updates",
              f"{self.critic_warmup_updates} warm-up updates of {self.updates}", "use fewer than --updates")
        check(self.ptx_coef >= 0, "ptx_coef", "must be >= 0", "use 0 (off) or e.g. 1.0")
        check(not self.ptx_coef or bool(self.ptx_data), "ptx_data", "ptx_coef > 0 needs pre-training data",
              "pass --ptx_data FILE.jsonl (rows as for rlhf sft)")
        check(self.ptx_batch_size >= self.grad_accum and self.ptx_batch_size % self.grad_accum == 0, "ptx_batch_size",
              f"{self.ptx_batch_size} is not a multiple of grad_accum={self.grad_accum}", "use a multiple of grad_accum")
        check(not self.load_in or self.shared_value_head, "load_in", "a separate value model cannot be trained in "
              "4/8-bit", "add --shared_value_head true (the value head then sits on the LoRA policy)")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: PPOConfig) -> Path:
    # models (policy, reference, reward, and the value function: its own model or a head on the policy), prompts,
    # one optimiser with the policy's and the value function's parameter groups
    s = start(cfg, "ppo", prompts=encode_prompts, load_value=None if cfg.shared_value_head else load_value,
              wrap_policy=_value_head if cfg.shared_value_head else None, param_groups=lambda m: param_groups(cfg, m),
              check=_check_ppo, needs_forward="shared_value_head needs the forward for its values anyway"
              if cfg.shared_value_head else "")
    if cfg.ptx_coef:
        s.ptx = PtxBatches(cfg, s.m.tokenizer, s.acc)
        s.extra_state = lambda: {"ptx_position": s.ptx.position}
        s.restore_extra = lambda state: setattr(s, "ptx", PtxBatches(cfg, s.m.tokenizer, s.acc,  # the batches drawn
                                                                     position=int(state.get("ptx_position", 0))))
    last, train_s = train(s, lambda update: ppo_update(cfg, update, s.acc, s),
                          info=lambda st: f" ev {st['value/explained_variance']:.2f}")
    # the policy (HF format, loads with plain transformers) and the value model; summary.json marks it done
    return finish(s, last, train_s, save=lambda: save_models(cfg, s))


def ppo_update(cfg: PPOConfig, update: int, acc: Any, s: Session, *_: Any) -> dict[str, float]:
    """One PPO update (lm-human-preferences' step): respond and analyse -> rewards -> advantages -> train.
    Returns the logged metrics (reduced over processes)."""
    t0 = time.perf_counter()
    rollout = collect(cfg, update, acc, s, values_fn=_values_fn(acc, s))  # samples, scores, log-probs, values
    is_w = sampler_correction(cfg, rollout)
    kl_coef = s.kl_ctl.value
    rewards = kl_rewards(cfg, acc, rollout, kl_coef)
    advantages, returns, adv_mean_raw = estimate_advantages(cfg, acc, rollout, rewards)
    warmup = update <= cfg.critic_warmup_updates  # critic warm-up: only the value function trains
    train_stats, early_stopped, gap = train_policy_and_value(cfg, update, acc, s, rollout, advantages, returns, is_w,
                                                             warmup)
    t_train = time.perf_counter()

    mask = rollout.mask
    return update_stats(cfg, update, acc, s, rollout, kl_coef, train_stats, early_stopped, gap, t0, t_train, is_w=is_w,
                        extra={"value/explained_variance": explained_variance(rollout.values, returns, mask, acc),
                               "value/mean": global_masked_mean(rollout.values, mask, acc),
                               "returns/mean": global_masked_mean(returns, mask, acc),
                               "advantages/mean_raw": adv_mean_raw, "policy/warmup": int(warmup),
                               "lr/value": s.schedulers[-1].get_last_lr()[-1]})


def sampler_correction(cfg: PPOConfig, rollout: Any) -> torch.Tensor | None:
    """Importance weights of the trainer's old log-probs over the sampler's (is_correction; Yao et al. 2025)."""
    if cfg.is_correction == "none":
        return None
    w, _ = importance_weights(rollout.old_logp, rollout.batch.logprobs, rollout.mask, cfg.is_correction,
                              cfg.is_threshold)
    return w


def kl_rewards(cfg: PPOConfig, acc: Any, rollout: Any, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -beta * KL per token, plus the score at the last token (Ziegler et al. 2019)."""
    rewards = shape_rewards(rollout.scores.clone(), rollout.old_logp, rollout.ref_logp, rollout.mask, kl_coef,
                            cfg.kl_estimator)
    return global_whiten(rewards, rollout.mask, acc, shift_mean=False) if cfg.whiten_rewards else rewards


def estimate_advantages(cfg: PPOConfig, acc: Any, rollout: Any, rewards: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """GAE, then whitened over the whole batch (all processes). The value targets may use their own lambda
    (lam_value; VC-PPO / VAPO: 1.0) and the policy's a length-adaptive one (VAPO). Returns (advantages, returns,
    the mean advantage before whitening)."""
    mask = rollout.mask
    lam = length_adaptive_lam(mask.sum(1), cfg.lam_policy_alpha) if cfg.lam_policy_alpha else cfg.lam
    advantages, returns = gae(rewards, rollout.values, mask, cfg.gamma, lam)
    if cfg.lam_value is not None:
        _, returns = gae(rewards, rollout.values, mask, cfg.gamma, cfg.lam_value)
    adv_mean_raw = global_masked_mean(advantages, mask, acc)
    return global_whiten(advantages, mask, acc), returns, adv_mean_raw


def train_policy_and_value(cfg: PPOConfig, update: int, acc: Any, s: Session, rollout: Any, advantages: torch.Tensor,
                           returns: torch.Tensor, is_w: torch.Tensor | None, warmup: bool
                           ) -> tuple[dict[str, float], int, LogprobGap]:
    """Epochs x minibatches x accumulation of PPO's loss: clipped policy + vf_coef x clipped value - entropy bonus
    (Schulman et al. 2017, eq. 9), plus gamma x the LM loss on ptx data after each minibatch (PPO-ptx)."""
    policy, value = s.m.policy, s.m.value
    gap = LogprobGap(rollout)

    def loss(mb: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        ix, m_ = mb.ix, mb.mask
        if warmup:  # the value model alone (the policy's forward is skipped: it gets no gradient)
            vf_loss, vf_stats = ppo_value_loss(response_values(value, mb.batch), rollout.values[ix], returns[ix], m_,
                                               cfg.cliprange_value)
            return cfg.vf_coef * vf_loss, {"loss/value": vf_loss.detach(), "value/clipfrac": vf_stats["clipfrac"]}
        _, values, pg_loss, stats = policy_term(cfg, policy, rollout, mb, advantages, gap, is_w=is_w,
                                                policy_loss=ppo_policy_loss)
        if value is not None:
            values = response_values(value, mb.batch)
        vf_loss, vf_stats = ppo_value_loss(values, rollout.values[ix], returns[ix], m_, cfg.cliprange_value)
        stats.update({"loss/value": vf_loss.detach(), "value/clipfrac": vf_stats["clipfrac"]})
        # PPO objective (Schulman et al. 2017, eq. 9): policy - c2 * entropy (in pg_loss) + c1 * value
        return pg_loss + cfg.vf_coef * vf_loss, stats

    def ptx(acc_stats: dict[str, list[float]]) -> None:
        if s.ptx is None or warmup:
            return
        for _ in range(cfg.grad_accum):  # PPO-ptx (Ouyang et al. 2022, eq. 2): + gamma * LM loss
            nll = lm_loss(policy, s.ptx.next(acc.device))
            acc.backward(cfg.ptx_coef * nll / cfg.grad_accum)
            acc_stats.setdefault("loss/ptx", []).append(float(nll) / cfg.grad_accum / acc.num_processes)

    stats, early_stopped = optimise(cfg, update, acc, s, rollout, loss, [x for x in (policy, value) if x is not None],
                                    after_minibatch=ptx)
    return stats, early_stopped, gap


# ---------------------------------------------------------------------------------------------------------------
# the value function, PPO-ptx, saving


def load_value(cfg: PPOConfig, tok: Any, device: Any) -> Any:
    """The separate value model: the reward model's backbone (or --value), its head zeroed unless kept."""
    from rlhf.models.loading import load_scalar_model
    from rlhf.models.precision import enable_gradient_checkpointing
    from rlhf.models.scalar import PerTokenScalar

    zero_head = cfg.value_head_init == "zero" or (cfg.value_head_init == "auto" and not is_value_model(cfg.value))
    if cfg.value_head_init == "auto" and not zero_head:
        say(f"[ppo] value model {cfg.value} is from `rlhf value-pretrain`: its head is kept")
    value = PerTokenScalar(load_scalar_model(cfg.value or cfg.reward, "fp32", pad_token_id=tok.pad_token_id,
                                             init_head_std=0.0 if zero_head else None), packed=cfg.packed)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(value.model)
    return value


def _value_head(policy: Any) -> Any:
    from rlhf.models.value import PolicyWithValueHead

    return PolicyWithValueHead(policy)


def param_groups(cfg: PPOConfig, m: Any) -> list[dict[str, Any]]:
    """One optimiser, two parameter groups: the policy at lr, the value function (its own model, or the head on the
    policy's backbone) at value_lr. One, not two: accelerate's fp16 loss scaler unscales every prepared optimiser in
    clip_grad_norm_ and resets its state in each optimiser's step(), so with two the second model's gradients were
    unscaled twice (a 1/scale step). Adam is per parameter, so the update is the same as two optimisers'."""
    if m.value is None:
        head = set(m.policy.v_head.parameters())
        value_params = list(head)
        policy_params = [p for p in m.policy.parameters() if p.requires_grad and p not in head]
    else:
        value_params = list(m.value.parameters())
        policy_params = [p for p in m.policy.parameters() if p.requires_grad]
    return [{"params": policy_params, "lr": cfg.lr}, {"params": value_params, "lr": cfg.value_lr or cfg.lr}]


def _values_fn(acc: Any, s: Session) -> Any:
    """V(s_t) at rollout time from the separate value model (the shared head's come with the policy's forward)."""
    if s.m.value is None:
        return None
    return lambda batch: response_values(acc.unwrap_model(s.m.value), batch)


def save_models(cfg: PPOConfig, s: Session) -> None:
    """The policy as a plain HF folder (rlhf.rl.save_policy); the value model in out/value (or the head in
    value_head.safetensors: no pickle). Every process calls this: under FSDP/ZeRO-3 state dicts are gathered."""
    acc, m, out = s.acc, s.m, s.out
    save_policy(s)
    value_state = None
    if m.value is not None:
        value_state = {k.removeprefix("model."): v for k, v in acc.get_state_dict(m.value).items()
                       if k.startswith("model.")}
    if not acc.is_main_process:
        return
    if m.value is not None:
        acc.unwrap_model(m.value).model.save_pretrained(out / "value", safe_serialization=True, state_dict=value_state)
        m.tokenizer.save_pretrained(out / "value")
    else:
        from safetensors.torch import save_file

        head = acc.unwrap_model(m.policy).v_head
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out / "value_head.safetensors")


class PtxBatches:
    """PPO-ptx data: endless seeded micro-batches of the pre-training / SFT examples for this process, with the
    position (micro-batches drawn) kept in the checkpoint so that a resumed run draws the same ones."""

    def __init__(self, cfg: PPOConfig, tokenizer: Any, acc: Any, position: int = 0):
        from rlhf.train.lm_data import iter_batches, tokenize_examples

        rows = read_rows(cfg.ptx_data)
        examples = tokenize_examples(rows, tokenizer, cfg.ptx_max_length, cfg.ptx_data)
        self.position = position
        self._it = iter_batches(examples, cfg.ptx_batch_size // cfg.grad_accum, cfg.seed, acc.process_index,
                                acc.num_processes, tokenizer.pad_token_id, start=position)

    def next(self, device: Any) -> dict[str, torch.Tensor]:
        self.position += 1
        return {k: v.to(device) for k, v in next(self._it).items()}


def lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (-100 = not predicted), as `rlhf sft` trains."""
    from rlhf.train.lm_data import IGNORE

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE)


def _check_ppo(cfg: PPOConfig, acc: Any) -> None:
    """Setups PPO's value function cannot run, refused up front rather than failing or hanging mid-run."""
    if acc.distributed_type.name == "DEEPSPEED" and not cfg.shared_value_head:
        raise UserError("config field 'shared_value_head': under DeepSpeed accelerate prepares one model, and a "
                        "separate value model is a second one; set --shared_value_head true (docs/recipes.md)")
    if cfg.critic_warmup_updates and cfg.shared_value_head:
        raise UserError("config field 'critic_warmup_updates': the shared value head trains the policy's own trunk, "
                        "so it cannot warm up with the policy frozen; use a separate value model "
                        "(--shared_value_head false) or --critic_warmup_updates 0")
    if cfg.ptx_coef and cfg.shared_value_head and acc.num_processes > 1:
        raise UserError("config field 'ptx_coef': with the shared value head the ptx forward leaves the head unused, "
                        "which data-parallel gradient sync cannot take; use a separate value model or one process")




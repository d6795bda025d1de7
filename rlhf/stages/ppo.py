"""PPO: train the policy (and a value function) against a reward model, with a KL penalty to a frozen reference.

    rlhf ppo --policy runs/x/sft --reward runs/x/reward --prompts runs/x/data/prompts_train.jsonl --out runs/x/ppo

Each update reads like the algorithm (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022):
rollout -> score -> log-probs and values -> KL-shaped rewards -> GAE -> epochs of clipped minibatch updates.
Every option, its default and its source: docs/ppo.md. Every metric: docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.config import Device, Dtype, Gold, LoadIn, check, check_choices, opt, save_config
from rlhf.core import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    importance_weights,
    kl_estimate,
    length_adaptive_lam,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    shape_rewards,
)
from rlhf.errors import UserError
from rlhf.io import MetricsLogger, truncate_metrics, write_jsonl
from rlhf.models.data_source import read_rows
from rlhf.stages.common import (
    console,
    load_checkpoint_file,
    make_optimizer,
    progress,
    recover_checkpoint_dir,
    rng_state,
    save_checkpoint_dir,
    say,
    set_rng_state,
    set_seed,
    stage_outputs,
    write_summary,
)


@dataclass
class PPOConfig:
    # models and data
    policy: str = opt("", "the SFT model folder or hub id: the initial policy (and the reference unless --ref)")
    ref: str = opt("", "reference model; empty = a frozen copy of --policy (with --lora_r: the policy, adapters off)")
    reward: str = opt("", "reward model folder (from `rlhf reward`; its reward_config.json gain/bias are applied)")
    value: str = opt("", "value model init; empty = the reward model's backbone (Stiennon et al. 2020)")
    value_head_init: Literal["auto", "zero", "keep"] = opt(
        "auto", "value head start: zero (lm-human-preferences) or keep (the reward head); auto = keep for a value "
        "model from `rlhf value-pretrain` (its value_config.json), zero otherwise")
    prompts: str = opt("", "JSONL of training prompts {'prompt_id', 'prompt'}")
    out: str = opt("runs/ppo", "output folder: the trained policy (HF format), value/, metrics.jsonl, checkpoint/")
    gold: Gold = opt("", "optional gold judge to log objective/gold: 'demo' (the demo task's sentiment judge)")
    # rollout
    updates: int = opt(100, "number of PPO updates (each: a rollout batch, then ppo_epochs of minibatch steps)")
    rollout_batch_size: int = opt(64, "rollouts (prompts) per update, over all processes")
    generation_batch_size: int = opt(0, "rollouts generated together; each chunk has its own seed so samples do "
                                     "not depend on the process count (0 = the per-process batch)")
    max_new_tokens: int = opt(48, "longest response in tokens")
    temperature: float = opt(0.7, "sampling temperature, also used for every log-prob (lm-human-preferences: 0.7)")
    top_p: float = opt(1.0, "nucleus sampling mass (1.0 = off, the PPO default: samples must come from the policy)")
    top_k: int = opt(0, "top-k sampling (0 = off)")
    stop_at_eos: bool = opt(True, "stop generating a response at its first EOS (responses are cut there anyway)")
    missing_eos_penalty: float | None = opt(None, "added to the score of a response without EOS: give a negative "
                                            "number, e.g. -1.0 (TRL's missing_eos_penalty=1.0 is -1.0 here)")
    missing_eos_score: float | None = opt(None, "replace the score of a response without EOS by this value, e.g. -1.0 "
                                          "(lm-human-preferences' penalty_reward_value); not with missing_eos_penalty")
    # rewards and advantages
    kl_coef: float = opt(0.05, "KL penalty coefficient beta (initial value when adaptive)")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator in the reward: k1 (unbiased, standard), "
                                                  "k2 (d^2/2) or k3 (>= 0)")
    adaptive_kl: bool = opt(False, "steer beta toward kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "target sequence KL (nats) for the adaptive controller")
    kl_horizon: int = opt(10000, "adaptive controller horizon in rollouts")
    gamma: float = opt(1.0, "discount (1.0: episodes are short and the score comes at the end)")
    lam: float = opt(0.95, "GAE lambda of the policy's advantages")
    lam_value: float | None = opt(None, "GAE lambda of the value targets (returns); empty = lam. 1.0: Monte-Carlo "
                                  "targets, unbiased by the value's own errors (VC-PPO, Yuan et al. 2025; VAPO)")
    lam_policy_alpha: float = opt(0.0, "length-adaptive lambda for the advantages, lam = 1 - 1/(alpha * length) per "
                                  "response (VAPO, Yue et al. 2025: alpha 0.05); 0 = off (use lam)")
    whiten_rewards: bool = opt(False, "whiten the per-token rewards (scale only) before GAE")
    # optimisation
    ppo_epochs: int = opt(4, "passes over each rollout batch (4: Stiennon et al. 2020, TRL)")
    num_minibatches: int = opt(4, "minibatches per epoch (per process)")
    grad_accum: int = opt(1, "micro-batches per minibatch (memory only: the gradient is the same)")
    cliprange: float = opt(0.2, "PPO ratio clip epsilon (Schulman et al. 2017)")
    cliprange_value: float | None = opt(0.2, "value clip around the rollout values (None = unclipped MSE)")
    vf_coef: float = opt(0.1, "value loss coefficient (TRL: 0.1)")
    shared_value_head: bool = opt(False, "value head on the policy's backbone (one forward, less memory) instead of "
                                  "a separate value model (the default, as in Stiennon et al. 2020)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient (0 = off)")
    critic_warmup_updates: int = opt(0, "critic warm-up: the first N updates train only the value function (the "
                                     "policy is frozen, rollouts are still collected; OpenRLHF freezing_steps, veRL "
                                     "critic_warmup, NeMo-RL)")
    ptx_coef: float = opt(0.0, "PPO-ptx: weight gamma of a language-modelling loss on ptx_data added to the policy "
                          "loss each optimiser step (Ouyang et al. 2022, eq. 2); 0 = off")
    ptx_data: str = opt("", "pre-training / SFT data for PPO-ptx (JSONL, as `rlhf sft --data`: text or prompt/response "
                        "or chat rows)")
    ptx_batch_size: int = opt(8, "ptx sequences per optimiser step (per process), split like the minibatch into "
                              "grad_accum micro-batches")
    ptx_max_length: int = opt(256, "longest ptx example in tokens (longer is an error naming the row)")
    target_approx_kl: float = opt(0.0, "stop an update's epochs early once approx KL exceeds this (0 = never)")
    lr: float = opt(1e-5, "policy learning rate (Adam)")
    value_lr: float = opt(0.0, "value learning rate (0 = same as lr)")
    adam_eps: float = opt(1e-5, "Adam epsilon (1e-5: lm-human-preferences, the 37 PPO details)")
    lr_schedule: Literal["linear", "constant"] = opt("linear", "linear decay to 0 over the run, or constant")
    max_grad_norm: float = opt(1.0, "clip each model's gradient norm to this (0 = off)")
    # run
    lora_r: int = opt(0, "train LoRA adapters of this rank instead of the full policy (0 = full fine-tune)")
    lora_alpha: int = opt(16, "LoRA alpha")
    save_every: int = opt(20, "checkpoint every N updates (and on Ctrl-C / SIGTERM)")
    log_samples_every: int = opt(10, "print and store a table of sample responses every N updates (0 = never)")
    tensorboard: bool = opt(True, "also write TensorBoard logs to out/tb")
    seed: int = opt(0, "seed for prompt order and sampling")
    dtype: Dtype = opt("fp32", "precision: fp32; bf16/fp16 = autocast over fp32 master weights of the trained models "
                       "(fp16: CUDA only, with loss scaling); the frozen reward model and LoRA base are stored in "
                       "it; the saved policy is in it")
    ref_dtype: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "storage of a separate reference model (full fine-tune): auto = the policy's own compute path (fp32 "
        "weights under the same autocast, so KL is exactly 0 at update 1); bf16/fp16 halve its memory at a small "
        "KL offset from rounding (docs/ppo.md); with LoRA the reference is the policy's base, adapters off")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass of the policy and value "
                                       "models (less memory, ~30% slower training; generation is unaffected)")
    load_in: LoadIn = opt("", "'' (full precision), 4bit (QLoRA) or 8bit policy base and reward model via "
                          "bitsandbytes: CUDA only, needs lora_r > 0 and shared_value_head")
    rollout_logprobs: Literal["auto", "sampler", "recompute"] = opt(
        "auto", "where the rollout's log-probs come from: sampler (the sampling step's own logits: no extra policy "
        "forward; equal to a full forward to ~1e-6 in fp32), recompute (one more forward after sampling), or auto "
        "(sampler in fp32 with a separate value model, recompute otherwise: bf16/fp16 KV-cache logits drift)")
    is_correction: Literal["none", "tis", "mis"] = opt(
        "none", "importance-sampling correction of the policy loss for a sampler whose log-probs differ from the "
        "trainer's (vLLM, half precision): tis = weights min(rho, is_threshold) (truncated IS, Yao et al. 2025), "
        "mis = tokens with rho > is_threshold dropped; rho = exp(trainer - sampler log-prob); needs the sampler's "
        "log-probs and recomputes the trainer's")
    is_threshold: float = opt(2.0, "truncation / masking threshold C of is_correction (>= 1)")
    generation_backend: Literal["transformers", "vllm"] = opt(
        "transformers", "rollout generation: transformers (default, everywhere) or vllm (one GPU, colocated, weights "
        "synced before each rollout; refused with the reason where it cannot run; docs/ppo.md)")
    vllm_gpu_memory_utilization: float = opt(0.3, "share of the GPU's memory the vLLM engine may claim (weights + "
                                             "KV cache); keep it below 1 - the trainer's peak share")
    device: Device = opt("auto", "auto, cpu or cuda")
    resume: bool = opt(False, "continue from out/checkpoint if present")

    def validate(self) -> None:
        check_choices(self)  # every Literal field holds one of its choices (also for a config made in Python)
        check(bool(self.policy), "policy", "no policy model given", "pass --policy SFT_FOLDER")
        check(bool(self.reward), "reward", "no reward model given", "pass --reward REWARD_FOLDER")
        check(bool(self.prompts), "prompts", "no prompt file given", "pass --prompts FILE.jsonl")
        check(self.updates >= 1, "updates", "must be >= 1", "set --updates")
        check(self.temperature > 0, "temperature", "must be > 0", "use e.g. 0.7; greedy decoding cannot be trained")
        check(0 < self.top_p <= 1, "top_p", f"{self.top_p} outside (0, 1]", "use 1.0")
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0", "use e.g. 0.05")
        check(self.missing_eos_penalty is None or self.missing_eos_penalty <= 0, "missing_eos_penalty",
              f"{self.missing_eos_penalty} would reward responses that never end (it is added to their score)",
              f"give a negative number, e.g. --missing_eos_penalty {-abs(self.missing_eos_penalty or 1.0)} (TRL "
              "subtracts its positive value; here the sign is part of the number)")
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
        check(self.is_threshold >= 1, "is_threshold", f"{self.is_threshold} < 1", "use e.g. 2.0")
        check(self.is_correction == "none" or self.rollout_logprobs != "sampler", "is_correction",
              "the correction compares the sampler's log-probs with the trainer's, so the trainer must recompute them",
              "use --rollout_logprobs auto or recompute")
        check(self.missing_eos_penalty is None or self.missing_eos_score is None, "missing_eos_score",
              "both missing_eos_penalty and missing_eos_score are set", "use one: a penalty added, or a fixed score")
        check(self.ppo_epochs >= 1 and self.num_minibatches >= 1 and self.grad_accum >= 1, "ppo_epochs",
              "ppo_epochs, num_minibatches and grad_accum must be >= 1", "set them to 1 or more")
        check(self.rollout_batch_size % self.num_minibatches == 0, "rollout_batch_size",
              f"{self.rollout_batch_size} is not divisible by num_minibatches={self.num_minibatches}",
              "make rollout_batch_size a multiple of num_minibatches x processes")
        check((self.rollout_batch_size // self.num_minibatches) % self.grad_accum == 0, "grad_accum",
              f"the minibatch of {self.rollout_batch_size // self.num_minibatches} is not divisible by {self.grad_accum}",
              "choose grad_accum dividing rollout_batch_size / num_minibatches")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", "use 1 or more")
        check(not (self.generation_backend == "vllm" and self.load_in), "generation_backend",
              "vllm cannot sync a 4/8-bit policy", "use --generation_backend transformers with load_in")
        check(0 < self.vllm_gpu_memory_utilization < 1, "vllm_gpu_memory_utilization",
              f"{self.vllm_gpu_memory_utilization} outside (0, 1)", "use e.g. 0.3")
        check(not self.load_in or self.shared_value_head, "load_in", "a separate value model cannot be trained in "
              "4/8-bit", "add --shared_value_head true (the value head then sits on the LoRA policy)")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: PPOConfig) -> Path:
    from rlhf.models.precision import (
        check_generation_backend,
        make_training_accelerator,
        quantization_config,
        resolve_device,
        training_mixed_precision,
    )

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # options that cannot apply here are refused before anything loads
    mixed = training_mixed_precision(cfg.dtype, resolve_device(cfg.device))  # autocast over fp32 master weights
    quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r)
    acc = make_training_accelerator(cfg.device, mixed)
    world = acc.num_processes
    check_generation_backend(cfg.generation_backend, world)
    _check_distributed(cfg, acc)
    if cfg.rollout_batch_size % (cfg.num_minibatches * world):
        raise UserError(f"config field 'rollout_batch_size': {cfg.rollout_batch_size} is not divisible by "
                        f"num_minibatches x processes = {cfg.num_minibatches} x {world}; change one of them")
    set_seed(cfg.seed)
    if acc.is_main_process:
        save_config(cfg, out / "config.yaml")
    local_batch = cfg.rollout_batch_size // world
    gen_chunk = cfg.generation_batch_size or local_batch
    if local_batch % gen_chunk:
        raise UserError(f"config field 'generation_batch_size': {gen_chunk} does not divide the per-process batch "
                        f"of {local_batch}; choose a divisor")

    # 1. models: policy (trained), reference (frozen), reward (frozen), value (trained; or a head on the policy)
    m = load_models(cfg, acc.device)
    prompts = encode_prompts(cfg, m.tokenizer, m.context)
    vllm = None
    if cfg.generation_backend == "vllm":  # after the Accelerator: vLLM joins its process group as a world of 1
        from rlhf.models.vllm_backend import VLLMSampler

        vllm = VLLMSampler(cfg.policy, dtype=cfg.dtype, seed=cfg.seed, device=acc.device,
                           max_model_len=max(len(p) for p in prompts) + cfg.max_new_tokens,
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                           # is_correction compares the engine's log-probs of the sampled tokens at the sampling
                           # temperature (vLLM's raw_logprobs default would be before it)
                           **({"logprobs_mode": "processed_logprobs"} if cfg.is_correction != "none" else {}))
    total_opt_steps = cfg.updates * cfg.ppo_epochs * cfg.num_minibatches
    value_lr = cfg.value_lr or cfg.lr
    # one optimiser, two parameter groups: the policy at lr, the value function (its own model, or the head on the
    # policy's backbone) at value_lr. One, not two: accelerate's fp16 loss scaler unscales every prepared optimiser
    # in clip_grad_norm_ and resets its state in each optimiser's step(), so with two the second model's gradients
    # were unscaled twice (a 1/scale step). Adam is per parameter, so the update is the same as two optimisers'.
    if m.value is None:
        head = set(m.policy.v_head.parameters())
        value_params = list(head)
        policy_params = [p for p in m.policy.parameters() if p.requires_grad and p not in head]
    else:
        value_params = list(m.value.parameters())
        policy_params = [p for p in m.policy.parameters() if p.requires_grad]
    optimizers = [make_optimizer(torch.optim.Adam, [{"params": policy_params, "lr": cfg.lr},
                                                    {"params": value_params, "lr": value_lr}], eps=cfg.adam_eps)]

    def lr_lambda(step: int) -> float:
        return 1.0 if cfg.lr_schedule == "constant" else max(0.0, 1.0 - step / total_opt_steps)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda) for o in optimizers]
    prepared = acc.prepare(*[x for x in (m.policy, m.value) if x is not None], *optimizers)
    m.policy = prepared[0]
    m.value = prepared[1] if m.value is not None else None
    optimizers = list(prepared[-len(optimizers):])
    s = State(m, optimizers, schedulers,
              AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef), _gold_judge(cfg.gold), _use_sampler_logprobs(cfg, acc), vllm)
    if cfg.ptx_coef:
        s.ptx = PtxBatches(cfg, m.tokenizer, acc)

    # 2. resume: models, optimisers, schedulers, KL controller, RNG; the prompt position is the update index
    start = 0
    ckpt = recover_checkpoint_dir(out / "checkpoint") if cfg.resume else None
    if ckpt is not None:
        state = load_checkpoint_file(ckpt / "trainer_state.pt")  # weights_only: a planted pickle is refused
        acc.unwrap_model(m.policy).load_state_dict(load_checkpoint_file(ckpt / "policy.pt"), strict=False)
        if m.value is not None:
            acc.unwrap_model(m.value).load_state_dict(load_checkpoint_file(ckpt / "value.pt"))
        if len(state["optimizers"]) != len(s.optimizers):
            raise UserError(f"{ckpt}: this checkpoint holds {len(state['optimizers'])} optimiser states and this "
                            f"version of rlhf keeps {len(s.optimizers)} (one for the policy and the value function); "
                            "it cannot be resumed exactly: start the run again without --resume")
        for o, st in zip(s.optimizers, state["optimizers"]):
            o.load_state_dict(st)
        for sc, st in zip(s.schedulers, state["schedulers"]):
            sc.load_state_dict(st)
        s.kl_ctl.load_state_dict(state["kl_ctl"])
        set_rng_state(state["rng"])
        start = state["update"]
        if s.ptx is not None:  # the ptx micro-batches drawn so far
            s.ptx = PtxBatches(cfg, m.tokenizer, acc, position=int(state.get("ptx_position", 0)))
        say(f"[ppo] resumed from {ckpt} after update {start}")
        if acc.is_main_process:
            truncate_metrics(out / "metrics.jsonl", start)
    metrics = MetricsLogger(out / "metrics.jsonl", append=ckpt is not None) if acc.is_main_process else None
    tb = _tensorboard(out, cfg.tensorboard and acc.is_main_process)

    def save_checkpoint(update: int) -> None:
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return

        def build(tmp: Path) -> None:
            torch.save(_trainable_state(acc.unwrap_model(m.policy)), tmp / "policy.pt")
            if m.value is not None:
                torch.save(acc.unwrap_model(m.value).state_dict(), tmp / "value.pt")
            torch.save({"optimizers": [o.state_dict() for o in s.optimizers],
                        "schedulers": [sc.state_dict() for sc in s.schedulers], "kl_ctl": s.kl_ctl.state_dict(),
                        "rng": rng_state(), "update": update, "ptx_position": s.ptx.position if s.ptx else 0},
                       tmp / "trainer_state.pt")

        save_checkpoint_dir(build, out / "checkpoint")

    stop: dict[str, Any] = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop["signal"] is not None:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        stop["signal"] = signum
        console.print("[ppo] stopping after this update (checkpoint first); press Ctrl-C again to abort now")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t_run = time.perf_counter()
    last: dict[str, float] = {}
    try:
        with progress() as bar:
            task = bar.add_task("ppo", total=cfg.updates, completed=start, info="")
            for update in range(start + 1, cfg.updates + 1):
                stats = ppo_update(cfg, update, acc, s, prompts, local_batch, gen_chunk, out)
                last = stats
                if metrics is not None:
                    metrics.log(stats)
                if tb is not None:
                    for k, v in stats.items():
                        tb.add_scalar(k, v, update)
                bar.update(task, completed=update, info=f"score {stats['objective/scores']:+.3f} "
                           f"kl {stats['objective/kl']:.3f} ev {stats['value/explained_variance']:.2f}")
                if not math.isfinite(stats.get("loss/policy", 0.0)) or not math.isfinite(stats["objective/kl"]):
                    raise UserError(f"update {update}: loss or KL is not finite (NaN/inf); lower --lr (now {cfg.lr}) "
                                    f"or check the reward model's scores; run `rlhf doctor {out}`")
                if stop["signal"] is not None:
                    save_checkpoint(update)
                    say(f"[ppo] stopped by signal {stop['signal']} after update {update}; checkpoint "
                                  "saved; continue with --resume")
                    raise KeyboardInterrupt
                if cfg.save_every and update % cfg.save_every == 0 and update < cfg.updates:
                    save_checkpoint(update)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        if tb is not None:
            tb.close()
        if metrics is not None:
            metrics.close()

    # 3. save the policy (HF format, loads with plain transformers) and the value model; mark done
    acc.wait_for_everyone()
    save_models(cfg, acc, m, out)
    if acc.is_main_process:
        write_summary(out, {"updates": cfg.updates, "train_s": time.perf_counter() - t_run, "last": last})
    say(f"[ppo] done: {cfg.updates} updates -> {out}")
    return out


def ppo_update(cfg: PPOConfig, update: int, acc: Any, s: State, prompts: list[list[int]], local_batch: int,
               gen_chunk: int, out: Path) -> dict[str, float]:
    """One PPO update. Returns the logged metrics (reduced over processes)."""
    from rlhf.models.generation import decode_responses, generate, left_pad, response_forward, sample_with_logprobs

    t0 = time.perf_counter()
    device = acc.device
    tok, policy, ref, reward, value = s.m.tokenizer, s.m.policy, s.m.ref, s.m.reward, s.m.value
    unwrapped = acc.unwrap_model(policy)

    # 1. rollout: this process's prompts; each chunk seeded by (seed, update, chunk) -> independent of process count
    idx = prompt_indices(update, cfg.rollout_batch_size, len(prompts), cfg.seed)
    idx = idx[acc.process_index * local_batch:(acc.process_index + 1) * local_batch]
    # an explicit, complete sampling config (nothing from the checkpoint's generation_config); every declared EOS
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
              eos_token_id=s.m.eos_ids, pad_token_id=tok.pad_token_id, stop_at_eos=cfg.stop_at_eos)
    seed = cfg.seed * 1_000_003 + update * 10_007
    chunks = []
    if s.vllm is not None:  # the policy's current weights into the engine, then the whole batch in one call
        s.vllm.sync_weights(unwrapped)
        chunks.append(s.vllm.sample([prompts[i] for i in idx], seed=seed, device=device,
                                    with_logprobs=cfg.is_correction != "none", **kw))
    else:
        for c in range(0, local_batch, gen_chunk):
            torch.manual_seed(seed + (acc.process_index * local_batch + c) // gen_chunk)  # + the global chunk index
            p_ids, p_mask = left_pad([prompts[i] for i in idx[c:c + gen_chunk]], tok.pad_token_id)
            p_ids, p_mask = p_ids.to(device), p_mask.to(device)
            if s.sampler_logprobs or cfg.is_correction != "none":  # log-probs and entropies from the sampling steps
                chunks.append(sample_with_logprobs(unwrapped, p_ids, p_mask, **kw))
            else:
                chunks.append(generate(unwrapped, p_ids, p_mask, synced_gpus=_sharded(acc), **kw))
    batch = _concat(chunks, tok.pad_token_id)
    mask = batch.response_mask
    t_gen = time.perf_counter()

    # 2. score, and 3. log-probs (same temperature as sampling) and values, all without autograd
    with torch.inference_mode():
        scores, member_scores = reward(batch.input_ids, batch.attention_mask)
        if cfg.missing_eos_penalty is not None:  # TRL: score - penalty; here the (negative) number is added
            scores = torch.where(batch.ended, scores, scores + cfg.missing_eos_penalty)
        if cfg.missing_eos_score is not None:  # lm-human-preferences: a fixed score for a response cut off
            scores = torch.where(batch.ended, scores, torch.full_like(scores, cfg.missing_eos_score))
        if s.sampler_logprobs:
            old_logp, entropy, old_values = batch.logprobs, batch.entropy, None
        else:  # one more policy forward over the rollout (it also gives the shared head's values)
            old_logp, entropy, old_values = response_forward(unwrapped, batch, cfg.temperature, with_entropy=True)
        # the reference under the policy's autocast: same weights, same compute path -> KL 0 before the first step
        with _reference(ref, unwrapped), acc.autocast():
            ref_logp, _, _ = response_forward(ref if ref is not None else unwrapped, batch, cfg.temperature)
        if value is not None:
            old_values = response_values(acc.unwrap_model(value), batch)
    t_score = time.perf_counter()

    # 4. rewards: -beta * KL per token, plus the score at the last token (Ziegler et al. 2019)
    old_logp, ref_logp, old_values = old_logp.clone(), ref_logp.clone(), old_values.clone()
    is_w = is_stats = None
    if cfg.is_correction != "none":  # the trainer's old log-probs over the sampler's (Yao et al. 2025)
        is_w, is_stats = importance_weights(old_logp, batch.logprobs, mask, cfg.is_correction, cfg.is_threshold)
    kl_coef = s.kl_ctl.value
    rewards = shape_rewards(scores.clone(), old_logp, ref_logp, mask, kl_coef, cfg.kl_estimator)
    if cfg.whiten_rewards:
        rewards = global_whiten(rewards, mask, acc, shift_mean=False)

    # 5. advantages: GAE, then whitened over the whole batch (all processes). The value targets may use their own
    # lambda (lam_value; VC-PPO / VAPO: 1.0) and the policy's a length-adaptive one (VAPO)
    lam = length_adaptive_lam(mask.sum(1), cfg.lam_policy_alpha) if cfg.lam_policy_alpha else cfg.lam
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, lam)
    if cfg.lam_value is not None:
        _, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam_value)
    adv_mean_raw = _global_masked_mean(advantages, mask, acc)
    advantages = global_whiten(advantages, mask, acc)

    # 6. optimise: epochs x minibatches x accumulation; token-weighted so that the split never changes the gradient
    mb_size = local_batch // cfg.num_minibatches
    micro_size = mb_size // cfg.grad_accum
    for model in (policy, value):
        if model is not None:
            model.train()  # dropout is off (see disable_dropout); train() only matters for layers that check it
    acc_stats: dict[str, list[float]] = {}
    warmup = update <= cfg.critic_warmup_updates  # critic warm-up: only the value function trains
    # |training forward - sampler| log-prob before the first optimiser step: the sampler's own log-probs where it
    # reported them (transformers' sampling loop, vLLM), else the rollout's recomputed ones
    sampler_logp = batch.logprobs if batch.logprobs is not None else old_logp
    diff_sum, diff_n, diff_max = 0.0, 0.0, 0.0
    early_stopped = 0
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + update)
    for _epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(local_batch, generator=gen).to(device)
        epoch_kl = []
        for mb_start in range(0, local_batch, mb_size):
            mb = perm[mb_start:mb_start + mb_size]
            n_tokens = _global_sum(mask[mb].sum().float(), acc)  # tokens in this minibatch over all processes
            for micro_start in range(0, mb_size, micro_size):
                ix = mb[micro_start:micro_start + micro_size]
                sub, m_ = batch.index(ix), mask[ix]
                # weight: masked_mean over this micro-batch x (its tokens / minibatch tokens) x processes
                # = sum over the whole minibatch / its tokens, after DDP averages over processes
                w = m_.sum().float() / n_tokens * acc.num_processes
                if warmup:  # the value model alone (the policy's forward is skipped: it gets no gradient)
                    vf_loss, vf_stats = ppo_value_loss(response_values(value, sub), old_values[ix], returns[ix], m_,
                                                       cfg.cliprange_value)
                    acc.backward(cfg.vf_coef * vf_loss * w)
                    for k, v in {"loss/value": vf_loss.detach(), "value/clipfrac": vf_stats["clipfrac"]}.items():
                        acc_stats.setdefault(k, []).append(float(v) * float(w) / acc.num_processes)
                    continue
                logp, ent, values = response_forward(policy, sub, cfg.temperature, with_entropy=cfg.entropy_coef > 0)
                # importance weights for a sampler that is not the trainer (is_correction; 1 = none)
                is_kw = {} if is_w is None else {"weights": is_w[ix]}
                pg_loss, pg_stats = ppo_policy_loss(logp, old_logp[ix], advantages[ix], m_, cfg.cliprange, **is_kw)
                if _epoch == 0 and mb_start == 0:  # no step yet: any gap is sampler/trainer mismatch
                    d = (logp.detach() - sampler_logp[ix]).abs()[m_]
                    diff_sum, diff_n = diff_sum + float(d.sum()), diff_n + d.numel()
                    diff_max = max(diff_max, float(d.max()) if d.numel() else 0.0)
                if value is not None:
                    values = response_values(value, sub)
                vf_loss, vf_stats = ppo_value_loss(values, old_values[ix], returns[ix], m_, cfg.cliprange_value)
                ent_loss = -masked_mean(ent, m_) if ent is not None else torch.zeros((), device=device)
                # PPO objective (Schulman et al. 2017, eq. 9): policy + c1 * value - c2 * entropy
                loss = pg_loss + cfg.vf_coef * vf_loss + cfg.entropy_coef * ent_loss
                acc.backward(loss * w)
                for k, v in {"policy/clipfrac": pg_stats["clipfrac"], "policy/approxkl": pg_stats["approxkl"],
                             "policy/ratio_mean": pg_stats["ratio_mean"], "loss/policy": pg_loss.detach(),
                             "loss/value": vf_loss.detach(), "loss/entropy": ent_loss.detach(),
                             "value/clipfrac": vf_stats["clipfrac"]}.items():
                    acc_stats.setdefault(k, []).append(float(v) * float(w) / acc.num_processes)
                acc_stats.setdefault("policy/ratio_max", []).append(float(pg_stats["ratio_max"]))
                epoch_kl.append(float(pg_stats["approxkl"]) * float(w) / acc.num_processes)
            if s.ptx is not None and not warmup:  # PPO-ptx (Ouyang et al. 2022, eq. 2): + gamma * LM loss
                for _ in range(cfg.grad_accum):
                    nll = lm_loss(policy, s.ptx.next(device))
                    acc.backward(cfg.ptx_coef * nll / cfg.grad_accum)
                    acc_stats.setdefault("loss/ptx", []).append(float(nll) / cfg.grad_accum / acc.num_processes)
            clip_each(acc, [x for x in (policy, value) if x is not None], cfg.max_grad_norm)
            for opt_, sched in zip(s.optimizers, s.schedulers):
                opt_.step()
                sched.step()
                opt_.zero_grad(set_to_none=True)
        # early stop (Schulman et al. 2017 baselines / OpenAI Spinning Up): approx KL over this epoch too large
        if cfg.target_approx_kl > 0 and epoch_kl and _global_sum(torch.tensor(sum(epoch_kl) / cfg.num_minibatches), acc
                                                    ) > cfg.target_approx_kl:
            early_stopped = 1
            break
    t_train = time.perf_counter()

    # 7. KL controller and metrics (reduced over processes)
    seq_kl = (kl_estimate(old_logp, ref_logp, "k1") * mask).sum(1)
    seq_kl3 = (kl_estimate(old_logp, ref_logp, "k3") * mask).sum(1)
    non_score = -kl_coef * (kl_estimate(old_logp, ref_logp, cfg.kl_estimator) * mask).sum(1)
    mean_kl = _global_mean(seq_kl, acc)
    s.kl_ctl.update(mean_kl, cfg.rollout_batch_size)
    ev = _explained_variance(old_values, returns, mask, acc)
    texts = decode_responses(tok, batch, s.m.eos_ids)
    stats = {
        "step": update,
        "objective/scores": _global_mean(scores, acc),
        "objective/scores_std": math.sqrt(max(0.0, _global_mean(scores**2, acc) - _global_mean(scores, acc) ** 2)),
        "objective/kl": mean_kl,
        "objective/kl_k3": _global_mean(seq_kl3, acc),
        "objective/kl_coef": kl_coef,
        "objective/entropy": _global_masked_mean(entropy, mask, acc),
        "objective/non_score_reward": _global_mean(non_score, acc),
        "value/explained_variance": ev,
        "value/mean": _global_masked_mean(old_values, mask, acc),
        "returns/mean": _global_masked_mean(returns, mask, acc),
        "advantages/mean_raw": adv_mean_raw,
        "response/length_mean": _global_mean(mask.sum(1).float(), acc),
        "response/eos_fraction": _global_mean(batch.ended.float(), acc),
        "policy/early_stopped": early_stopped,
        "policy/warmup": int(warmup),
        "lr/policy": s.schedulers[0].get_last_lr()[0],
        "lr/value": s.schedulers[-1].get_last_lr()[-1],
    }
    stats["objective/rlhf_reward"] = stats["objective/scores"] + stats["objective/non_score_reward"]
    n_steps = max(1, len(acc_stats["loss/value"]) // cfg.grad_accum)  # optimiser steps taken
    for k, vals in acc_stats.items():
        stats[k] = max(vals) if k == "policy/ratio_max" else _global_sum(torch.tensor(sum(vals)), acc) / n_steps
    if not warmup:  # measured on the first minibatch's policy forward (a warm-up update runs none)
        stats["rollout/logprob_diff_mean"] = _global_sum(torch.tensor(diff_sum), acc) / max(
            1.0, _global_sum(torch.tensor(diff_n), acc))
        stats["rollout/logprob_diff_max"] = float(acc.gather(torch.tensor([diff_max], device=device)).max())
    if is_stats is not None:
        stats["rollout/is_weight_mean"] = _global_masked_mean(is_w, mask, acc)
        stats["rollout/is_clipped_frac"] = _global_masked_mean((torch.exp(old_logp - batch.logprobs) >
                                                                cfg.is_threshold).float(), mask, acc)
    if member_scores.shape[0] > 1:
        stats["ensemble/disagreement"] = _global_mean(member_scores.std(0), acc)
    stats["response/distinct2"] = _distinct_bigrams(texts)
    if s.gold_fn is not None:
        stats["objective/gold"] = _global_mean(torch.tensor(s.gold_fn(texts), device=device), acc)
    stats["time/generate_s"] = t_gen - t0
    stats["time/score_s"] = t_score - t_gen
    stats["time/train_s"] = t_train - t_score
    stats["time/update_s"] = time.perf_counter() - t0
    n_tok = _global_sum(batch.attention_mask.sum().float(), acc)
    stats["throughput/tokens_per_s"] = n_tok / stats["time/update_s"]
    if cfg.log_samples_every and update % cfg.log_samples_every == 0 and acc.is_main_process:
        _log_samples(out, update, tok, batch, texts, scores)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# helpers


@dataclass
class Models:
    tokenizer: Any
    policy: Any  # a causal LM (a PolicyWithValueHead with shared_value_head)
    ref: Any  # None with LoRA: the policy with adapters disabled is the reference
    reward: Any
    value: Any  # a PerTokenScalar; None with shared_value_head
    context: int | None
    eos_ids: list[int]  # every EOS id the policy declares (tokenizer's first): a response ends at any of them


@dataclass
class State:
    m: Models
    optimizers: list[Any]  # one: the policy's and the value function's parameter groups
    schedulers: list[Any]
    kl_ctl: Any
    gold_fn: Any
    sampler_logprobs: bool  # the rollout's log-probs come from the sampling loop (no second policy forward)
    vllm: Any = None  # a VLLMSampler with generation_backend vllm
    ptx: Any = None  # PtxBatches with ptx_coef > 0


class PtxBatches:
    """PPO-ptx data: endless seeded micro-batches of the pre-training / SFT examples for this process, with the
    position (micro-batches drawn) kept in the checkpoint so that a resumed run draws the same ones."""

    def __init__(self, cfg: PPOConfig, tokenizer: Any, acc: Any, position: int = 0):
        from rlhf.stages.sft import iter_batches, tokenize_examples

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
    from rlhf.stages.sft import IGNORE

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE)


def load_models(cfg: PPOConfig, device: torch.device) -> Models:
    from rlhf.models.dropout import disable_dropout
    from rlhf.models.generation import stop_token_ids
    from rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
    from rlhf.models.precision import enable_gradient_checkpointing, prepare_quantized, quantization_config
    from rlhf.models.reward import load_reward_model
    from rlhf.models.scalar import PerTokenScalar

    # trained weights are fp32 master weights (autocast gives the low precision); frozen ones are stored in cfg.dtype
    quant = quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r)
    tok = load_tokenizer(cfg.policy, padding_side="left")
    policy = load_causal_lm(cfg.policy, cfg.dtype if cfg.lora_r else "fp32", quantization=quant)
    policy = prepare_quantized(policy, cfg.load_in, cfg.gradient_checkpointing)
    context = getattr(policy.config.get_text_config(), "max_position_embeddings", None)
    reward = load_reward_model(cfg.reward, dtype=cfg.dtype, device=str(device))
    _check_tokenizers(tok, reward.tokenizer_path, cfg)
    value = None
    if not cfg.shared_value_head:
        zero_head = cfg.value_head_init == "zero" or (cfg.value_head_init == "auto" and not is_value_model(cfg.value))
        if cfg.value_head_init == "auto" and not zero_head:
            say(f"[ppo] value model {cfg.value} is from `rlhf value-pretrain`: its head is kept")
        value = PerTokenScalar(load_scalar_model(cfg.value or cfg.reward, "fp32", pad_token_id=tok.pad_token_id,
                                                 init_head_std=0.0 if zero_head else None))
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(value.model)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    ref = None
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        if cfg.ref:
            raise UserError("config fields 'lora_r' and 'ref': with LoRA the reference is the policy with adapters "
                            "disabled; drop --ref")
        policy = get_peft_model(policy, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules="all-linear", task_type="CAUSAL_LM"))
    else:
        # auto: stored like the policy's master weights (fp32) and run under the same autocast, so that before the
        # first step the reference's log-probs are the policy's bit for bit (a bf16 copy is off by rounding)
        ref_dtype = "fp32" if cfg.ref_dtype == "auto" else cfg.ref_dtype
        ref = load_causal_lm(cfg.ref or cfg.policy, ref_dtype).to(device).eval().requires_grad_(False)
    if cfg.shared_value_head:
        from rlhf.models.value import PolicyWithValueHead

        policy = PolicyWithValueHead(policy)
    for model in (policy, value, ref):  # rollout and training forwards must agree (ratio = 1 before the first step)
        if model is not None:
            disable_dropout(model)
    reward.eval().requires_grad_(False)
    return Models(tok, policy, ref, reward, value, context, stop_token_ids(policy, tok))


def save_models(cfg: PPOConfig, acc: Any, m: Models, out: Path) -> None:
    """The policy as a plain HF folder in cfg.dtype (LoRA merged); the value model in out/value (or the head in
    value_head.safetensors: no pickle). Every process calls this: under FSDP/ZeRO-3 the full state dicts are gathered first."""
    from rlhf.models.precision import cast_state_dict

    def gathered(model: Any, prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in acc.get_state_dict(model).items() if k.startswith(prefix)}

    policy = acc.unwrap_model(m.policy)
    shared = cfg.shared_value_head
    policy_state = gathered(m.policy, "lm." if shared else "") if not cfg.lora_r else None
    value_state = gathered(m.value, "model.") if m.value is not None else None
    if not acc.is_main_process:
        return
    lm = policy.lm if shared else policy
    if cfg.lora_r:
        lm = lm.merge_and_unload()
        policy_state = lm.state_dict()
    lm.save_pretrained(out, safe_serialization=True, state_dict=cast_state_dict(policy_state, cfg.dtype))
    m.tokenizer.save_pretrained(out)
    if m.value is not None:
        acc.unwrap_model(m.value).model.save_pretrained(out / "value", safe_serialization=True, state_dict=value_state)
        m.tokenizer.save_pretrained(out / "value")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in policy.v_head.state_dict().items()}, out / "value_head.safetensors")


def encode_prompts(cfg: PPOConfig, tok: Any, context: int | None) -> list[list[int]]:
    """Tokenise every prompt once (no re-tokenisation per update): strings as `rlhf sample` does, lists of messages
    through the chat template; check they fit with the response."""
    from rlhf.stages.sample import encode_prompts as encode

    out = encode(read_rows(cfg.prompts, required=("prompt",)), tok, cfg.prompts, context, cfg.max_new_tokens)
    if len(out) < cfg.rollout_batch_size:
        say(f"[ppo] note: {len(out)} prompts < rollout_batch_size {cfg.rollout_batch_size}: prompts repeat "
                      "within an update")
    return out


def prompt_indices(update: int, batch: int, n: int, seed: int) -> list[int]:
    """Global prompt indices for an update: consecutive slices of seeded per-epoch shuffles (resume needs only
    the update index)."""
    out = []
    pos = (update - 1) * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = min(batch - len(out), n - offset)
        out.extend(order[offset:offset + take])
        pos += take
    return out


def response_values(value_model: Any, batch: Any) -> torch.Tensor:
    """(B, R) values V(s_t) of the state before each response token: the value head at position P-1+t.
    `value_model` is a `PerTokenScalar` (possibly wrapped by DDP)."""
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    v = value_model(batch.input_ids, batch.attention_mask)[:, P - 1:P - 1 + R]
    return v * batch.response_mask


def global_whiten(x: torch.Tensor, mask: torch.Tensor, acc: Any, shift_mean: bool = True) -> torch.Tensor:
    """masked_whiten with the mean and unbiased variance taken over all processes."""
    if acc.num_processes == 1:
        return masked_whiten(x, mask, shift_mean=shift_mean)
    xm = x * mask
    s = acc.reduce(torch.stack([xm.sum(), (xm * xm).sum(), mask.sum().to(x.dtype)]), "sum")
    mean = s[0] / s[2]
    var = (s[1] - s[2] * mean**2) / (s[2] - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def clip_each(acc: Any, models: list[Any], max_norm: float) -> None:
    """Clip each model's gradient norm to max_norm on its own (0 = off), unscaling fp16 gradients exactly once.
    accelerate's clip_grad_norm_ unscales every prepared optimiser each time it is called, so it serves one model;
    for two, the loss scaler unscales once and torch clips each model's (already unscaled) gradients."""
    if max_norm <= 0:
        return
    if len(models) == 1 or acc.distributed_type.name in ("FSDP", "DEEPSPEED"):  # the engine's own clipping
        for model in models:
            acc.clip_grad_norm_(model.parameters(), max_norm)
        return
    acc.unscale_gradients()  # a no-op unless fp16 loss scaling is on
    for model in models:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def _global_sum(x: torch.Tensor, acc: Any) -> float:
    x = torch.as_tensor(x, dtype=torch.float32, device=acc.device)
    return float(acc.reduce(x, "sum")) if acc.num_processes > 1 else float(x)


def _global_mean(x: torch.Tensor, acc: Any) -> float:
    return _global_sum(x.float().sum(), acc) / _global_sum(torch.tensor(float(x.numel())), acc)


def _global_masked_mean(x: torch.Tensor, mask: torch.Tensor, acc: Any) -> float:
    return _global_sum((x * mask).sum(), acc) / _global_sum(mask.sum().float(), acc)


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, acc: Any) -> float:
    """1 - Var(R - V) / Var(R) over all valid tokens of all processes (V = values at rollout time)."""
    def var(x: torch.Tensor) -> float:
        mean = _global_masked_mean(x, mask, acc)
        return _global_masked_mean((x - mean) ** 2, mask, acc)

    vr = var(returns)
    return 1.0 - var(returns - values) / vr if vr > 0 else 0.0


def _concat(chunks: list[Any], pad_id: int) -> Any:
    """Join generation chunks: prompts re-left-padded, responses re-right-padded to common widths."""
    from rlhf.models.generation import Batch

    if len(chunks) == 1:
        return chunks[0]
    P = max(c.prompt_ids.shape[1] for c in chunks)
    R = max(c.response_ids.shape[1] for c in chunks)

    def pad(x: torch.Tensor, width: int, left: bool, value: Any) -> torch.Tensor:
        extra = width - x.shape[1]
        if extra == 0:
            return x
        fill = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
        return torch.cat([fill, x] if left else [x, fill], dim=1)

    def per_token(name: str) -> torch.Tensor | None:  # sampler log-probs / entropies: 0 at padding
        xs = [getattr(c, name) for c in chunks]
        return None if xs[0] is None else torch.cat([pad(x, R, False, 0.0) for x in xs])

    return Batch(torch.cat([pad(c.prompt_ids, P, True, pad_id) for c in chunks]),
                 torch.cat([pad(c.prompt_mask, P, True, 0) for c in chunks]),
                 torch.cat([pad(c.response_ids, R, False, pad_id) for c in chunks]),
                 torch.cat([pad(c.response_mask, R, False, False) for c in chunks]),
                 torch.cat([c.ended for c in chunks]), per_token("logprobs"), per_token("entropy"))


@contextlib.contextmanager
def _reference(ref: Any, policy: Any):
    """With LoRA (ref is None) the reference is the policy with its adapters disabled: no second copy in memory."""
    if ref is None:
        with policy.disable_adapter():
            yield
    else:
        yield


def _check_distributed(cfg: PPOConfig, acc: Any) -> None:
    """Distributed setups PPO cannot run, refused up front rather than failing or hanging mid-run."""
    kind = acc.distributed_type.name
    if kind == "DEEPSPEED" and not cfg.shared_value_head:
        raise UserError("config field 'shared_value_head': under DeepSpeed accelerate prepares one model, and a "
                        "separate value model is a second one; set --shared_value_head true (docs/recipes.md)")
    if kind == "FSDP" and acc.num_processes > 1:
        raise UserError("PPO rollouts cannot be generated from FSDP-sharded weights here; launch with DeepSpeed "
                        "ZeRO-3 (configs/recipes/accelerate/zero3.yaml) or plain DDP")
    if cfg.critic_warmup_updates and cfg.shared_value_head:
        raise UserError("config field 'critic_warmup_updates': the shared value head trains the policy's own trunk, "
                        "so it cannot warm up with the policy frozen; use a separate value model "
                        "(--shared_value_head false) or --critic_warmup_updates 0")
    if cfg.ptx_coef and cfg.shared_value_head and acc.num_processes > 1:
        raise UserError("config field 'ptx_coef': with the shared value head the ptx forward leaves the head unused, "
                        "which data-parallel gradient sync cannot take; use a separate value model or one process")
    if cfg.is_correction != "none" and _sharded(acc) and cfg.generation_backend == "transformers":
        raise UserError("config field 'is_correction': sharded generation (transformers' generate in lock step) "
                        "reports no sampler log-probs to correct against; use --is_correction none")


def _use_sampler_logprobs(cfg: PPOConfig, acc: Any) -> bool:
    """Resolve `rollout_logprobs`: take the rollout's log-probs from the sampling loop, or recompute them."""
    if cfg.rollout_logprobs == "recompute" or cfg.is_correction != "none":  # the correction needs both log-probs
        return False
    cannot = [why for cond, why in (
        (cfg.shared_value_head, "shared_value_head needs the forward for its values anyway"),
        (_sharded(acc), "parameters sharded across processes generate in lock step with transformers' generate"),
        (cfg.generation_backend != "transformers", f"the {cfg.generation_backend} backend's log-probs come from "
         "another engine"),
    ) if cond]
    if cfg.rollout_logprobs == "sampler" and cannot:
        raise UserError(f"config field 'rollout_logprobs': sampler cannot be used: {cannot[0]}; use auto or recompute")
    # auto: only where the cached and full forwards agree to float32 rounding
    return not cannot and (cfg.rollout_logprobs == "sampler" or cfg.dtype == "fp32")


def is_value_model(folder: str) -> bool:
    """A folder written by `rlhf value-pretrain` (its value_config.json): a trained value head, not a reward head."""
    from rlhf.stages.value_pretrain import VALUE_CONFIG

    return bool(folder) and (Path(folder) / VALUE_CONFIG).is_file()


def _sharded(acc: Any) -> bool:
    """Parameters sharded across processes (DeepSpeed ZeRO-3 / FSDP): generation must run in lock step."""
    return acc.num_processes > 1 and acc.distributed_type.name in ("DEEPSPEED", "FSDP")


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """Full state for a plain model; only the adapter weights for a LoRA model (the base is frozen)."""
    if hasattr(model, "peft_config"):
        return {k: v for k, v in model.state_dict().items() if "lora_" in k}
    return model.state_dict()


def _check_tokenizers(tok: Any, reward_tokenizer_path: str, cfg: PPOConfig) -> None:
    from rlhf.models.loading import load_tokenizer

    rm_tok = load_tokenizer(reward_tokenizer_path)
    if rm_tok.get_vocab() != tok.get_vocab():
        raise UserError(f"the reward model '{cfg.reward}' uses a different tokenizer than the policy '{cfg.policy}'; "
                        "train the reward model from the SFT model (rlhf reward --model SFT_FOLDER) so the token "
                        "ids mean the same thing")


def _gold_judge(name: str) -> Any:
    if name == "demo":
        from rlhf.data.gold import gold_scores

        return gold_scores
    return None


def _distinct_bigrams(texts: list[str]) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        for g in zip(w, w[1:]):
            grams.add(g)
            total += 1
    return len(grams) / total if total else 0.0


def _log_samples(out: Path, update: int, tok: Any, batch: Any, texts: list[str], scores: torch.Tensor) -> None:
    from rich.markup import escape
    from rich.table import Table

    rows = []
    table = Table(title=f"samples after update {update}", show_lines=False)
    table.add_column("prompt")
    table.add_column("response")
    table.add_column("score", justify="right")
    for i in range(min(4, len(texts))):
        prompt = tok.decode(batch.prompt_ids[i][batch.prompt_mask[i].bool()], skip_special_tokens=True)
        rows.append({"update": update, "prompt": prompt, "response": texts[i], "score": float(scores[i])})
        table.add_row(escape(prompt), escape(texts[i]), f"{float(scores[i]):+.2f}")
    console.print(table)
    path = out / "samples.jsonl"
    old = path.read_text().splitlines() if path.exists() else []
    import json

    write_jsonl(path, [json.loads(x) for x in old] + rows)


def _tensorboard(out: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        console.print("[ppo] tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(out / "tb"))

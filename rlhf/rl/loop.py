"""The shell of every on-policy stage's `run()`: the accelerator and the checks that refuse what cannot run, the
models (policy, reference, reward; a critic where the algorithm brings one), the prompts, the optimiser and its
schedule, resume, the update loop with its Ctrl-C / SIGTERM checkpoint, and saving the policy. An algorithm's
stage is its config, its loss and its advantage estimator on top of this."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf.config import save_config
from rlhf.core import AdaptiveKLController, FixedKLController
from rlhf.errors import UserError
from rlhf.io import MetricsLogger, truncate_metrics
from rlhf.rl.defences import RewardDefences
from rlhf.rl.objectives import load_objectives
from rlhf.rl.rollout import sharded
from rlhf.train.checkpoint import load_checkpoint_file, recover_checkpoint_dir, save_checkpoint_dir
from rlhf.train.optim import make_optimizer
from rlhf.train.progress import console, progress, say
from rlhf.train.seeds import rng_state, set_rng_state, set_seed


@dataclass
class Models:
    tokenizer: Any
    policy: Any  # a causal LM (a PolicyWithValueHead with PPO's shared_value_head)
    ref: Any  # None with LoRA: the policy with adapters disabled is the reference
    reward: Any
    value: Any  # a separate critic (PPO's PerTokenScalar); None without one
    context: int | None
    eos_ids: list[int]  # every EOS id the policy declares (tokenizer's first): a response ends at any of them


@dataclass
class Session:
    """Everything an update needs, built once by `start`."""

    cfg: Any
    name: str  # the stage: ppo, rloo, grpo, reinforce_pp
    acc: Any
    out: Path
    m: Models
    prompts: list[list[int]]
    local_batch: int  # rollouts per process per update
    gen_chunk: int  # rollouts generated together
    optimizers: list[Any]  # one: every trained parameter group (policy; PPO adds the value function's)
    schedulers: list[Any]
    kl_ctl: Any
    gold_fn: Any
    sampler_logprobs: bool  # the rollout's log-probs come from the sampling loop (no second policy forward)
    vllm: Any = None  # a VLLMSampler with generation_backend vllm
    objectives: Any = None  # cost models and Lagrange multipliers (rlhf.rl.objectives), None without --cost_reward
    defences: Any = None  # reward_aggregate, reward_clip, length options (rlhf.rl.defences); None at the defaults
    ptx: Any = None  # PPO-ptx batches where the algorithm has them
    # more trainer state for the checkpoint (e.g. the ptx data position) and how to restore it
    extra_state: Callable[[], dict[str, Any]] = field(default=lambda: {})
    restore_extra: Callable[[dict[str, Any]], None] = field(default=lambda state: None)


def start(cfg: Any, name: str, *, prompts: Callable[[Any, Any, int | None], list[list[int]]],
          load_value: Callable[[Any, Any, Any], Any] | None = None, wrap_policy: Callable[[Any], Any] | None = None,
          param_groups: Callable[[Models], list[dict[str, Any]]] | None = None,
          check: Callable[[Any, Any], None] | None = None, needs_forward: str = "") -> Session:
    """Build the session of a run: refuse what cannot run before anything loads, then models, prompts
    (`prompts(cfg, tokenizer, context)`), sampler and optimiser. `load_value(cfg, tokenizer, device)` loads a critic,
    `wrap_policy(policy)` puts a head on the policy, `param_groups(models)` gives the optimiser's groups (default:
    the policy's trainable parameters at cfg.lr), `check(cfg, acc)` refuses algorithm-specific setups, and
    `needs_forward` names why the rollout needs a policy forward anyway (so the sampler's log-probs are not used)."""
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
    _check_distributed(cfg, acc, name)
    if check is not None:
        check(cfg, acc)
    defences = RewardDefences.from_config(cfg)  # refuses an aggregate a single reward model cannot give
    if cfg.rollout_batch_size % (cfg.num_minibatches * world):
        raise UserError(f"config field 'rollout_batch_size': {cfg.rollout_batch_size} is not divisible by "
                        f"num_minibatches x processes = {cfg.num_minibatches} x {world}; change one of them")
    local_batch = cfg.rollout_batch_size // world
    if local_batch % cfg.num_samples:
        raise UserError(f"config field 'num_samples': the per-process batch of {local_batch} rollouts does not hold "
                        f"whole groups of {cfg.num_samples}; make rollout_batch_size a multiple of num_samples x "
                        f"processes ({cfg.num_samples} x {world})")
    set_seed(cfg.seed)
    if acc.is_main_process:
        save_config(cfg, out / "config.yaml")
    gen_chunk = cfg.generation_batch_size or local_batch
    if local_batch % gen_chunk:
        raise UserError(f"config field 'generation_batch_size': {gen_chunk} does not divide the per-process batch "
                        f"of {local_batch}; choose a divisor")

    m = load_models(cfg, acc.device, load_value, wrap_policy)
    encoded = prompts(cfg, m.tokenizer, m.context)
    if len(encoded) < cfg.rollout_batch_size // cfg.num_samples:
        say(f"[{name}] note: {len(encoded)} prompts < {cfg.rollout_batch_size // cfg.num_samples} per update: prompts "
            "repeat within an update")
    vllm = None
    if cfg.generation_backend == "vllm":  # after the Accelerator: vLLM joins its process group as a world of 1
        from rlhf.models.vllm_backend import VLLMSampler

        vllm = VLLMSampler(cfg.policy, dtype=cfg.dtype, seed=cfg.seed, device=acc.device,
                           max_model_len=max(len(p) for p in encoded) + cfg.max_new_tokens,
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                           # is_correction compares the engine's log-probs of the sampled tokens at the sampling
                           # temperature (vLLM's raw_logprobs default would be before it)
                           **({"logprobs_mode": "processed_logprobs"} if cfg.is_correction != "none" else {}))
    total_opt_steps = cfg.updates * cfg.ppo_epochs * cfg.num_minibatches
    groups = param_groups(m) if param_groups is not None else [
        {"params": [p for p in m.policy.parameters() if p.requires_grad], "lr": cfg.lr}]
    optimizers = [make_optimizer(torch.optim.Adam, groups, eps=cfg.adam_eps)]

    def lr_lambda(step: int) -> float:
        return 1.0 if cfg.lr_schedule == "constant" else max(0.0, 1.0 - step / total_opt_steps)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda) for o in optimizers]
    prepared = acc.prepare(*[x for x in (m.policy, m.value) if x is not None], *optimizers)
    m.policy = prepared[0]
    m.value = prepared[1] if m.value is not None else None
    optimizers = list(prepared[-len(optimizers):])
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl \
        else FixedKLController(cfg.kl_coef)
    return Session(cfg, name, acc, out, m, encoded, local_batch, gen_chunk, optimizers, schedulers, kl_ctl,
                   _gold_judge(cfg.gold), _use_sampler_logprobs(cfg, acc, needs_forward), vllm,
                   objectives=load_objectives(cfg, acc.device, m.tokenizer), defences=defences)


def train(s: Session, step: Callable[[int], dict[str, float]], info: Callable[[dict[str, float]], str] = lambda st: ""
          ) -> tuple[dict[str, float], float]:
    """Resume if asked, then run updates start+1..cfg.updates through `step(update) -> metrics`, logging each to
    metrics.jsonl (and TensorBoard), checkpointing every save_every updates and after Ctrl-C / SIGTERM (then
    stopping with KeyboardInterrupt). Returns (the last update's metrics, seconds spent)."""
    cfg, acc, out, m = s.cfg, s.acc, s.out, s.m
    # resume: models, optimisers, schedulers, KL controller, RNG; the prompt position is the update index
    start_update = 0
    ckpt = recover_checkpoint_dir(out / "checkpoint") if cfg.resume else None
    if ckpt is not None:
        state = load_checkpoint_file(ckpt / "trainer_state.pt")  # weights_only: a planted pickle is refused
        acc.unwrap_model(m.policy).load_state_dict(load_checkpoint_file(ckpt / "policy.pt"), strict=False)
        if m.value is not None:
            acc.unwrap_model(m.value).load_state_dict(load_checkpoint_file(ckpt / "value.pt"))
        if len(state["optimizers"]) != len(s.optimizers):
            raise UserError(f"{ckpt}: this checkpoint holds {len(state['optimizers'])} optimiser states and this "
                            f"version of rlhf keeps {len(s.optimizers)} (one for every trained parameter group); "
                            "it cannot be resumed exactly: start the run again without --resume")
        for o, st in zip(s.optimizers, state["optimizers"]):
            o.load_state_dict(st)
        for sc, st in zip(s.schedulers, state["schedulers"]):
            sc.load_state_dict(st)
        s.kl_ctl.load_state_dict(state["kl_ctl"])
        if s.objectives is not None:  # the Lagrange multipliers continue where they were
            s.objectives.load_state_dict(state["objectives"])
        if s.defences is not None and "defences" in state:  # the frozen length fit
            s.defences.load_state_dict(state["defences"])
        set_rng_state(state["rng"])
        start_update = state["update"]
        s.restore_extra(state)
        say(f"[{s.name}] resumed from {ckpt} after update {start_update}")
        if acc.is_main_process:
            truncate_metrics(out / "metrics.jsonl", start_update)
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
                        "rng": rng_state(), "update": update, **s.extra_state(),
                        **({"objectives": s.objectives.state_dict()} if s.objectives is not None else {}),
                        **({"defences": s.defences.state_dict()} if s.defences is not None else {})},
                       tmp / "trainer_state.pt")

        save_checkpoint_dir(build, out / "checkpoint")

    stop: dict[str, Any] = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop["signal"] is not None:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        stop["signal"] = signum
        console.print(f"[{s.name}] stopping after this update (checkpoint first); press Ctrl-C again to abort now",
                      markup=False)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t_run = time.perf_counter()
    last: dict[str, float] = {}
    try:
        with progress() as bar:
            task = bar.add_task(s.name, total=cfg.updates, completed=start_update, info="")
            for update in range(start_update + 1, cfg.updates + 1):
                stats = step(update)
                if s.objectives is not None:  # objective/cost, the multipliers, gold/cost
                    stats.update(s.objectives.stats(s))
                if s.defences is not None:  # objective/reward_mean, reward_clipfrac, ...
                    stats.update(s.defences.stats())
                last = stats
                if metrics is not None:
                    metrics.log(stats)
                if tb is not None:
                    for k, v in stats.items():
                        tb.add_scalar(k, v, update)
                bar.update(task, completed=update, info=f"score {stats['objective/scores']:+.3f} "
                           f"kl {stats['objective/kl']:.3f}{info(stats)}")
                if not math.isfinite(stats.get("loss/policy", 0.0)) or not math.isfinite(stats["objective/kl"]):
                    raise UserError(f"update {update}: loss or KL is not finite (NaN/inf); lower --lr (now {cfg.lr}) "
                                    f"or check the reward model's scores; run `rlhf doctor {out}`")
                if stop["signal"] is not None:
                    save_checkpoint(update)
                    say(f"[{s.name}] stopped by signal {stop['signal']} after update {update}; checkpoint saved; "
                        "continue with --resume")
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
    return last, time.perf_counter() - t_run


def finish(s: Session, last: dict[str, float], train_s: float, save: Callable[[], None] | None = None) -> Path:
    """After the last update: save the models (`save()`, default the policy alone) on every process, then
    summary.json (its kind and algorithm: the stage's name) on the main one. Returns the run folder."""
    from rlhf.artifacts import write_summary

    s.acc.wait_for_everyone()
    (save or (lambda: save_policy(s)))()
    if s.acc.is_main_process:
        write_summary(s.out, {"updates": s.cfg.updates, "train_s": train_s, "last": last}, kind=s.name,
                      algorithm=s.name)
    say(f"[{s.name}] done: {s.cfg.updates} updates -> {s.out}")
    return s.out


def save_policy(s: Session) -> None:
    """The policy as a plain HF folder in cfg.dtype (LoRA merged) with its tokenizer. Every process calls this:
    under FSDP/ZeRO-3 the full state dict is gathered first."""
    from rlhf.models.precision import cast_state_dict

    cfg, acc, m = s.cfg, s.acc, s.m
    policy = acc.unwrap_model(m.policy)
    shared = hasattr(policy, "v_head")  # a PolicyWithValueHead: the LM is policy.lm
    policy_state = None
    if not cfg.lora_r:
        prefix = "lm." if shared else ""
        policy_state = {k.removeprefix(prefix): v for k, v in acc.get_state_dict(m.policy).items()
                        if k.startswith(prefix)}
    if not acc.is_main_process:
        return
    lm = policy.lm if shared else policy
    if cfg.lora_r:
        lm = lm.merge_and_unload()
        policy_state = lm.state_dict()
    lm.save_pretrained(s.out, safe_serialization=True, state_dict=cast_state_dict(policy_state, cfg.dtype))
    m.tokenizer.save_pretrained(s.out)


def load_models(cfg: Any, device: torch.device, load_value: Callable[[Any, Any, Any], Any] | None = None,
                wrap_policy: Callable[[Any], Any] | None = None) -> Models:
    """Policy (trained: fp32 master weights, or LoRA adapters on a base stored in cfg.dtype), reference (frozen),
    reward model (frozen, in cfg.dtype) and the algorithm's critic where it has one; dropout off in all of them."""
    from rlhf.models.dropout import disable_dropout
    from rlhf.models.generation import stop_token_ids
    from rlhf.models.loading import load_causal_lm, load_tokenizer
    from rlhf.models.precision import enable_gradient_checkpointing, prepare_quantized, quantization_config
    from rlhf.models.reward import load_reward_model

    quant = quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r)
    tok = load_tokenizer(cfg.policy, padding_side="left")
    policy = load_causal_lm(cfg.policy, cfg.dtype if cfg.lora_r else "fp32", quantization=quant)
    policy = prepare_quantized(policy, cfg.load_in, cfg.gradient_checkpointing)
    context = getattr(policy.config.get_text_config(), "max_position_embeddings", None)
    reward = load_reward_model(cfg.reward, dtype=cfg.dtype, device=str(device))
    reward.packed = cfg.packed
    _check_tokenizers(tok, reward.tokenizer_path, cfg)
    value = load_value(cfg, tok, device) if load_value is not None else None
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
    if wrap_policy is not None:
        policy = wrap_policy(policy)
    for model in (policy, value, ref):  # rollout and training forwards must agree (ratio = 1 before the first step)
        if model is not None:
            disable_dropout(model)
    reward.eval().requires_grad_(False)
    return Models(tok, policy, ref, reward, value, context, stop_token_ids(policy, tok))


def _check_distributed(cfg: Any, acc: Any, name: str) -> None:
    """Distributed setups no on-policy stage can run, refused up front rather than failing or hanging mid-run."""
    if acc.distributed_type.name == "FSDP" and acc.num_processes > 1:
        raise UserError(f"{name.upper()} rollouts cannot be generated from FSDP-sharded weights here; launch with "
                        "DeepSpeed ZeRO-3 (configs/recipes/accelerate/zero3.yaml) or plain DDP")
    if cfg.is_correction != "none" and sharded(acc) and cfg.generation_backend == "transformers":
        raise UserError("config field 'is_correction': sharded generation (transformers' generate in lock step) "
                        "reports no sampler log-probs to correct against; use --is_correction none")


def _use_sampler_logprobs(cfg: Any, acc: Any, needs_forward: str = "") -> bool:
    """Resolve `rollout_logprobs`: take the rollout's log-probs from the sampling loop, or recompute them."""
    if cfg.rollout_logprobs == "recompute" or cfg.is_correction != "none":  # the correction needs both log-probs
        return False
    cannot = [why for cond, why in (
        (bool(needs_forward), needs_forward),
        (sharded(acc), "parameters sharded across processes generate in lock step with transformers' generate"),
        (cfg.generation_backend != "transformers", f"the {cfg.generation_backend} backend's log-probs come from "
         "another engine"),
    ) if cond]
    if cfg.rollout_logprobs == "sampler" and cannot:
        raise UserError(f"config field 'rollout_logprobs': sampler cannot be used: {cannot[0]}; use auto or recompute")
    # auto: only where the cached and full forwards agree to float32 rounding
    return not cannot and (cfg.rollout_logprobs == "sampler" or cfg.dtype == "fp32")


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """Full state for a plain model; only the adapter weights for a LoRA model (the base is frozen)."""
    if hasattr(model, "peft_config"):
        return {k: v for k, v in model.state_dict().items() if "lora_" in k}
    return model.state_dict()


def _check_tokenizers(tok: Any, reward_tokenizer_path: str, cfg: Any) -> None:
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


def _tensorboard(out: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        console.print("[rl] tensorboard is not installed: metrics go to metrics.jsonl only", markup=False)
        return None
    return SummaryWriter(str(out / "tb"))

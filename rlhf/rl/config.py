"""The options every on-policy algorithm shares (PPO, RLOO, GRPO, REINFORCE++): models and data, rollout,
KL, the minibatch optimiser, precision and the run. Each algorithm's config inherits them and adds its own.
Every option's default and source: docs/ppo.md and docs/algorithms.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import CheckpointOptions, Device, Dtype, Gold, LoadIn, RunOptions, TrainPrecisionOptions, check, opt


@dataclass
class OnPolicyOptions(CheckpointOptions, TrainPrecisionOptions, RunOptions):
    """on-policy options (shared by ppo, rloo, grpo, reinforce_pp); the run, precision and checkpoint fields are
    the shared classes' (rlhf.config), re-declared here for their on-policy defaults and help"""

    # models and data
    policy: str = opt("", "the SFT model folder or hub id: the initial policy (and the reference unless --ref)")
    ref: str = opt("", "reference model; empty = a frozen copy of --policy (with --lora_r: the policy, adapters off)")
    reward: str = opt("", "reward model folder (from `rlhf reward`; its reward_config.json gain/bias are applied)")
    prompts: str = opt("", "JSONL of training prompts {'prompt_id', 'prompt'}")
    out: str = opt("runs/out", "output folder: the trained policy (HF format), metrics.jsonl, checkpoint/")
    gold: Gold = opt("", "optional gold judge to log objective/gold: 'demo' (the demo task's sentiment judge)")
    # rollout
    updates: int = opt(100, "number of updates (each: a rollout batch, then ppo_epochs of minibatch steps)")
    rollout_batch_size: int = opt(64, "rollouts (responses) per update, over all processes")
    num_samples: int = opt(1, "responses sampled per prompt (k): the update's rollout_batch_size / k prompts are each "
                           "sampled k times and share a group id (RLOO, GRPO: k >= 2)")
    generation_batch_size: int = opt(0, "rollouts generated together; each chunk has its own seed so samples do "
                                     "not depend on the process count (0 = the per-process batch)")
    max_new_tokens: int = opt(48, "longest response in tokens")
    temperature: float = opt(0.7, "sampling temperature, also used for every log-prob (lm-human-preferences: 0.7)")
    top_p: float = opt(1.0, "nucleus sampling mass (1.0 = off, the default: samples must come from the policy)")
    top_k: int = opt(0, "top-k sampling (0 = off)")
    stop_at_eos: bool = opt(True, "stop generating a response at its first EOS (responses are cut there anyway)")
    missing_eos_penalty: float | None = opt(None, "added to the score of a response without EOS: give a negative "
                                            "number, e.g. -1.0 (TRL's missing_eos_penalty=1.0 is -1.0 here)")
    missing_eos_score: float | None = opt(None, "replace the score of a response without EOS by this value, e.g. -1.0 "
                                          "(lm-human-preferences' penalty_reward_value); not with missing_eos_penalty")
    # defences against reward hacking at the score (rlhf.rl.defences; docs/reward-hacking.md)
    reward_aggregate: Literal["mean", "min", "mean_minus_std"] = opt(
        "mean", "score from a reward ensemble's members: mean, min (worst case) or mean_minus_std (mean - "
        "reward_std_coef x std; both Coste et al. 2023); min/mean_minus_std need `rlhf reward --ensemble N`, N >= 2")
    reward_std_coef: float = opt(1.0, "k of reward_aggregate mean_minus_std (>= 0)")
    reward_clip: float = opt(0.0, "clip the reward model's score to [-C, C] (normalised units; 0 = off); the share "
                             "clipped is logged as objective/reward_clipfrac")
    length_penalty: float = opt(0.0, "subtracted from the score per response token (>= 0; 0 = off)")
    length_regress: bool = opt(False, "subtract the score's linear fit on response length, fitted once on the first "
                               "update's rollouts (the SFT policy's samples) and frozen")
    # KL to the reference
    kl_coef: float = opt(0.05, "KL penalty coefficient beta (initial value when adaptive)")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator in the reward: k1 (unbiased, standard), "
                                                  "k2 (d^2/2) or k3 (>= 0)")
    adaptive_kl: bool = opt(False, "steer beta toward kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "target sequence KL (nats) for the adaptive controller")
    kl_horizon: int = opt(10000, "adaptive controller horizon in rollouts")
    # optimisation
    ppo_epochs: int = opt(4, "passes over each rollout batch (4: Stiennon et al. 2020, TRL)")
    num_minibatches: int = opt(4, "minibatches per epoch (per process)")
    grad_accum: int = opt(1, "micro-batches per minibatch (memory only: the gradient is the same)")
    cliprange: float = opt(0.2, "ratio clip epsilon (Schulman et al. 2017)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient (0 = off)")
    target_approx_kl: float = opt(0.0, "stop an update's epochs early once approx KL exceeds this (0 = never)")
    lr: float = opt(1e-5, "policy learning rate (Adam)")
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
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass of the trained models "
                                       "(less memory, ~30% slower training; generation is unaffected)")
    load_in: LoadIn = opt("", "'' (full precision), 4bit (QLoRA) or 8bit policy base and reward model via "
                          "bitsandbytes: CUDA only, needs lora_r > 0")
    pack_sequences: Literal["auto", "on", "off"] = opt(
        "auto", "padding-free scoring and training forwards: the real tokens of a batch in one row with restarting "
        "positions, so no matmul runs on padding (same results to float rounding; rlhf.models.packing, "
        "docs/performance.md); auto = on in fp32, off in bf16/fp16, where a packed row's rounding depends on its "
        "neighbours and the first PPO ratio is then not exactly 1")
    rollout_logprobs: Literal["auto", "sampler", "recompute"] = opt(
        "auto", "where the rollout's log-probs come from: sampler (the sampling step's own logits: no extra policy "
        "forward; equal to a full forward to ~1e-6 in fp32), recompute (one more forward after sampling), or auto "
        "(sampler in fp32 where nothing else needs the forward, recompute otherwise: bf16/fp16 KV-cache logits drift)")
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
    # several objectives: cost models beside the reward model (rlhf.rl.objectives; docs/reward-hacking.md)
    cost_reward: list[str] = opt([], "cost model folders (comma-separated; each from `rlhf reward` on its own labels, "
                                 "higher = more costly): fixed weights, or constraints with --cost_threshold")
    cost_weight: list[float] = opt([], "fixed weight w per cost model (one value = all; empty = 1.0): score = reward - "
                                   "w * cost; not with cost_threshold")
    cost_threshold: list[float] = opt([], "constrained: maximise the reward subject to mean cost <= this, per cost "
                                      "model (one value = all; normalised units: 0 = the SFT samples' mean) with a "
                                      "Lagrange multiplier (Safe RLHF, Dai et al. 2023); empty = fixed weights")
    lagrange_lr: float = opt(0.1, "multiplier step: lambda <- max(0, lambda + lagrange_lr * (batch mean cost - "
                             "threshold)) each update")
    lagrange_init: float = opt(0.0, "multiplier at update 1 (>= 0)")

    @property
    def packed(self) -> bool:
        """Whether scoring and training forwards are packed (pack_sequences resolved for the dtype)."""
        return self.pack_sequences == "on" or (self.pack_sequences == "auto" and self.dtype == "fp32")

    def validate(self) -> None:
        super().validate()  # every Literal field holds one of its choices (also for a config made in Python)
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
        check(self.is_threshold >= 1, "is_threshold", f"{self.is_threshold} < 1", "use e.g. 2.0")
        check(self.is_correction == "none" or self.rollout_logprobs != "sampler", "is_correction",
              "the correction compares the sampler's log-probs with the trainer's, so the trainer must recompute them",
              "use --rollout_logprobs auto or recompute")
        check(self.missing_eos_penalty is None or self.missing_eos_score is None, "missing_eos_score",
              "both missing_eos_penalty and missing_eos_score are set", "use one: a penalty added, or a fixed score")
        check(self.reward_std_coef >= 0, "reward_std_coef", "must be >= 0 (a negative k rewards disagreement)",
              "use e.g. 1.0")
        check(self.reward_clip >= 0, "reward_clip", "must be >= 0", "use e.g. 2.0, or 0 for no clipping")
        check(self.length_penalty >= 0, "length_penalty", "must be >= 0 (a negative penalty rewards length)",
              "use e.g. 0.02 per token, or 0 for none")
        check(self.ppo_epochs >= 1 and self.num_minibatches >= 1 and self.grad_accum >= 1, "ppo_epochs",
              "ppo_epochs, num_minibatches and grad_accum must be >= 1", "set them to 1 or more")
        check(self.num_samples >= 1, "num_samples", "must be >= 1", "use e.g. 4 responses per prompt")
        check(self.rollout_batch_size % self.num_samples == 0, "num_samples",
              f"rollout_batch_size={self.rollout_batch_size} is not a multiple of {self.num_samples} responses per "
              "prompt", "make rollout_batch_size a multiple of num_samples")
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
        # several objectives
        n_cost = len(self.cost_reward)
        for name, values in (("cost_weight", self.cost_weight), ("cost_threshold", self.cost_threshold)):
            check(not values or bool(n_cost), name, "given without a cost model", "pass --cost_reward COST_FOLDER")
            check(len(values) in (0, 1, n_cost), name, f"{len(values)} values for {n_cost} cost models",
                  "give one value (for all) or one per --cost_reward folder")
        check(not (self.cost_weight and self.cost_threshold), "cost_weight", "both fixed weights and thresholds given",
              "use --cost_weight (fixed) or --cost_threshold (a Lagrange multiplier per cost), not both")
        check(all(w >= 0 for w in self.cost_weight), "cost_weight", "must be >= 0", "use e.g. 1.0 (0 = log only)")
        check(self.lagrange_lr > 0, "lagrange_lr", "must be > 0", "use e.g. 0.1")
        check(self.lagrange_init >= 0, "lagrange_init", "must be >= 0 (a multiplier of an inequality constraint)",
              "use 0.0")

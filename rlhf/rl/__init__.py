"""The on-policy seam: PPO, RLOO, GRPO and REINFORCE++ share everything here and differ in their estimator and
loss (rlhf.stages.<algorithm>). An update reads like lm-human-preferences' step():

    rollout = collect(cfg, update, acc, s, k=...)         # respond, score, analyse (log-probs of policy and ref)
    advantages = <the algorithm's estimator>(rollout)     # GAE / leave-one-out / group-normalised / return-to-go
    stats, _ = optimise(cfg, update, acc, s, rollout, loss, models)   # epochs x minibatches x accumulation
    stats |= rollout_stats(...)                           # the shared metrics block

and a stage's run() is `start(...)` (accelerator, models, prompts, optimiser), `train(s, step)` (resume, the loop,
the SIGTERM checkpoint) and `save_policy(s)`. Layers: imports rlhf.core, data, models and train, never stages.
"""

from rlhf.rl.config import OnPolicyOptions
from rlhf.rl.distributed import explained_variance, global_masked_mean, global_mean, global_sum, global_whiten
from rlhf.rl.loop import Models, Session, finish, load_models, save_policy, start, train
from rlhf.rl.metrics import group_score_std, log_samples, rollout_stats, timing_stats, update_stats
from rlhf.rl.optimise import LogprobGap, Micro, clip_each, optimise, policy_term
from rlhf.rl.rollout import Rollout, collect, concat_batches, encode_prompts, group_prompt_indices, prompt_indices, score

__all__ = [
    "LogprobGap",
    "Micro",
    "Models",
    "OnPolicyOptions",
    "Rollout",
    "Session",
    "clip_each",
    "collect",
    "concat_batches",
    "encode_prompts",
    "explained_variance",
    "finish",
    "global_masked_mean",
    "global_mean",
    "global_sum",
    "global_whiten",
    "group_prompt_indices",
    "group_score_std",
    "load_models",
    "log_samples",
    "optimise",
    "policy_term",
    "prompt_indices",
    "rollout_stats",
    "save_policy",
    "score",
    "start",
    "timing_stats",
    "train",
    "update_stats",
]

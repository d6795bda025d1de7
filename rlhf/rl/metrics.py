"""The metrics every on-policy algorithm logs (names defined once in docs/metrics.md), reduced over processes, and
the sample table printed every few updates."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from rlhf.core import kl_estimate
from rlhf.io import write_jsonl
from rlhf.rl.distributed import global_mean, global_sum
from rlhf.train.progress import console


def rollout_stats(cfg: Any, update: int, acc: Any, s: Any, rollout: Any, kl_coef: float, kl_in_reward: bool = True,
                  is_w: torch.Tensor | None = None) -> tuple[dict[str, float], list[str]]:
    """objective/*, response/*, ensemble/* and rollout/is_* of one rollout; returns (stats, decoded responses).
    objective/kl is the k1 sequence KL of the sampling policy to the reference (the adaptive controller's input);
    objective/non_score_reward is -kl_coef x the sequence KL under cfg.kl_estimator when the KL is in the reward
    (kl_in_reward; GRPO puts it in the loss and logs 0 there)."""
    from rlhf.models.generation import decode_responses

    mask, old_logp, ref_logp = rollout.mask, rollout.old_logp, rollout.ref_logp
    scores, batch = rollout.scores, rollout.batch
    seq_kl = (kl_estimate(old_logp, ref_logp, "k1") * mask).sum(1)
    seq_kl3 = (kl_estimate(old_logp, ref_logp, "k3") * mask).sum(1)
    non_score = -kl_coef * (kl_estimate(old_logp, ref_logp, cfg.kl_estimator) * mask).sum(1) if kl_in_reward else \
        torch.zeros_like(seq_kl)
    mean_score = global_mean(scores, acc)
    stats: dict[str, float] = {
        "step": update,
        "objective/scores": mean_score,
        "objective/scores_std": math.sqrt(max(0.0, global_mean(scores**2, acc) - mean_score**2)),
        "objective/kl": global_mean(seq_kl, acc),
        "objective/kl_k3": global_mean(seq_kl3, acc),
        "objective/kl_coef": kl_coef,
        "objective/entropy": _masked(rollout.entropy, mask, acc),
        "objective/non_score_reward": global_mean(non_score, acc),
        "response/length_mean": global_mean(mask.sum(1).float(), acc),
        "response/eos_fraction": global_mean(batch.ended.float(), acc),
    }
    stats["objective/rlhf_reward"] = stats["objective/scores"] + stats["objective/non_score_reward"]
    if is_w is not None:  # the importance weights of is_correction and the share of tokens truncated or dropped
        stats["rollout/is_weight_mean"] = _masked(is_w, mask, acc)
        stats["rollout/is_clipped_frac"] = _masked((torch.exp(old_logp - batch.logprobs) > cfg.is_threshold).float(),
                                                   mask, acc)
    if rollout.member_scores.shape[0] > 1:
        stats["ensemble/disagreement"] = global_mean(rollout.member_scores.std(0), acc)
    texts = decode_responses(s.m.tokenizer, batch, s.m.eos_ids)
    stats["response/distinct2"] = distinct_bigrams(texts)
    if s.gold_fn is not None:
        stats["objective/gold"] = global_mean(torch.tensor(s.gold_fn(texts), device=acc.device), acc)
    return stats, texts


def update_stats(cfg: Any, update: int, acc: Any, s: Any, rollout: Any, kl_coef: float, train_stats: dict[str, float],
                 early_stopped: int, gap: Any, t0: float, t_train: float, *, kl_in_reward: bool = True,
                 is_w: torch.Tensor | None = None, extra: dict[str, float] | None = None) -> dict[str, float]:
    """The metrics row of one update (every algorithm's shared block, then `extra`, the algorithm's own), with the
    KL controller stepped on this rollout's KL and the sample table logged every log_samples_every updates."""
    stats, texts = rollout_stats(cfg, update, acc, s, rollout, kl_coef, kl_in_reward, is_w)
    s.kl_ctl.update(stats["objective/kl"], cfg.rollout_batch_size)
    if cfg.num_samples > 1:
        stats["objective/group_score_std"] = group_score_std(rollout.scores, rollout.group_ids, acc)
    stats.update({"policy/early_stopped": early_stopped, "lr/policy": s.schedulers[0].get_last_lr()[0]})
    stats.update(extra or {})
    stats.update(train_stats)
    stats.update(gap.stats(acc))  # measured on the first minibatch's policy forward (a warm-up update runs none)
    stats.update(timing_stats(acc, rollout, t0, t_train))
    if cfg.log_samples_every and update % cfg.log_samples_every == 0 and acc.is_main_process:
        log_samples(s.out, update, s.m.tokenizer, rollout.batch, texts, rollout.scores)
    return stats


def group_score_std(scores: torch.Tensor, group_ids: torch.Tensor, acc: Any) -> float:
    """objective/group_score_std: the mean over groups (prompts) of the std of the scores within a group (population
    std), over all processes; 0 means every group is constant and a group baseline has no signal to learn from."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    n = torch.zeros(len(uniq), device=scores.device).index_add_(0, inverse, torch.ones_like(scores, dtype=torch.float32))
    mean = torch.zeros_like(n).index_add_(0, inverse, scores.float()) / n
    var = torch.zeros_like(n).index_add_(0, inverse, (scores.float() - mean[inverse]) ** 2) / n
    return global_sum(var.sqrt().sum(), acc) / global_sum(torch.tensor(float(len(uniq))), acc)


def timing_stats(acc: Any, rollout: Any, t0: float, t_train: float) -> dict[str, float]:
    """time/* and throughput/tokens_per_s of an update that started at t0 and ended its training at t_train
    (perf_counter); time/train_s runs from the end of the rollout's scoring (advantages included)."""
    stats = {"time/generate_s": rollout.t_generate_s, "time/score_s": rollout.t_score_s,
             "time/train_s": t_train - rollout.t_done, "time/update_s": time.perf_counter() - t0}
    stats["throughput/tokens_per_s"] = global_sum(rollout.batch.attention_mask.sum().float(), acc) / stats["time/update_s"]
    return stats


def _masked(x: torch.Tensor, mask: torch.Tensor, acc: Any) -> float:
    return global_sum((x * mask).sum(), acc) / global_sum(mask.sum().float(), acc)


def distinct_bigrams(texts: list[str]) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        for g in zip(w, w[1:]):
            grams.add(g)
            total += 1
    return len(grams) / total if total else 0.0


def log_samples(out: Path, update: int, tok: Any, batch: Any, texts: list[str], scores: torch.Tensor) -> None:
    """Print a table of 4 sample responses and append them to out/samples.jsonl."""
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
    write_jsonl(path, [json.loads(x) for x in old] + rows)

"""Rollouts: which prompts an update samples, generation on every backend, scoring, and the log-probs of the
policy and the reference, gathered into one `Rollout` record that every on-policy algorithm starts from."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Rollout:
    """One update's samples on this process, everything without gradient. (B,) per response, (B, R) per token.

    k responses per prompt share a group id (the prompt's position among the update's prompts, the same on every
    process); `prompt_indices` repeats each chosen prompt k times (k = 1 for PPO)."""

    batch: Any  # rlhf.models.generation.Batch: prompts (left-padded), responses (right-padded), ended, sampler logp
    prompt_indices: list[int]  # (B,) index of each response's prompt in the prompt list
    group_ids: torch.Tensor  # (B,) long: responses to the same prompt in this update share one
    scores: torch.Tensor  # (B,) reward model score after the missing-EOS option
    member_scores: torch.Tensor  # (members, B) every ensemble member's normalised score (1 row for one model)
    old_logp: torch.Tensor  # (B, R) the sampling policy's log-probs (the trainer's, at the sampling temperature)
    ref_logp: torch.Tensor  # (B, R) the reference's log-probs
    entropy: torch.Tensor  # (B, R) the sampling policy's entropy
    values: torch.Tensor | None = None  # (B, R) V(s_t) at rollout time (algorithms with a critic)
    t_generate_s: float = 0.0
    t_score_s: float = 0.0
    t_done: float = 0.0  # perf_counter when the rollout was complete

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask


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


def group_prompt_indices(update: int, rollouts: int, k: int, n: int, seed: int) -> tuple[list[int], list[int]]:
    """(prompt index, group id) of each of an update's `rollouts` responses over all processes: rollouts / k prompts
    chosen as `prompt_indices` does, each repeated k times in a row; the group id is the prompt's position in the
    update. Seeded by (seed, update) only, so the process count never changes the batch."""
    chosen = prompt_indices(update, rollouts // k, n, seed)
    return [p for p in chosen for _ in range(k)], [g for g in range(len(chosen)) for _ in range(k)]


def score(reward: Any, batch: Any, missing_eos_penalty: float | None = None,
          missing_eos_score: float | None = None, defences: Any = None, acc: Any = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (B,), member scores (members, B)) of the reward model, with the missing-EOS option applied to the
    scores: a penalty added (TRL's missing_eos_penalty, sign included here) or a fixed score (lm-human-preferences'
    penalty_reward_value) for a response that never ended. `defences` (rlhf.rl.defences) replaces the members' mean
    by its score (aggregate, length terms, clipping) before the missing-EOS option."""
    scores, member_scores = reward(batch.input_ids, batch.attention_mask)
    if defences is not None:
        scores = defences.apply(member_scores, batch.response_mask.sum(1), acc)
    if missing_eos_penalty is not None:  # TRL: score - penalty; here the (negative) number is added
        scores = torch.where(batch.ended, scores, scores + missing_eos_penalty)
    if missing_eos_score is not None:  # lm-human-preferences: a fixed score for a response cut off
        scores = torch.where(batch.ended, scores, torch.full_like(scores, missing_eos_score))
    return scores, member_scores


def collect(cfg: Any, update: int, acc: Any, s: Any, *, k: int = 1, values_fn: Any = None) -> Rollout:
    """Sample this process's share of the update's rollouts and analyse them without autograd: the reward model's
    scores, the policy's log-probs and entropy (from the sampling steps or one more forward, at the sampling
    temperature), the reference's log-probs, and `values_fn(batch)` or the policy's own value head where given.

    `s` is the run's Session (rlhf.rl.loop): models, sampler, prompts, per-process batch and generation chunk.
    Each generation chunk is seeded by (seed, update, global chunk index), so samples do not depend on the
    process count."""
    import time

    from rlhf.models.generation import generate, left_pad, response_forward, sample_with_logprobs

    t0 = time.perf_counter()
    device, tok, local = acc.device, s.m.tokenizer, s.local_batch
    unwrapped = acc.unwrap_model(s.m.policy)
    idx, groups = group_prompt_indices(update, cfg.rollout_batch_size, k, len(s.prompts), cfg.seed)
    idx = idx[acc.process_index * local:(acc.process_index + 1) * local]
    groups = groups[acc.process_index * local:(acc.process_index + 1) * local]
    # an explicit, complete sampling config (nothing from the checkpoint's generation_config); every declared EOS
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
              eos_token_id=s.m.eos_ids, pad_token_id=tok.pad_token_id, stop_at_eos=cfg.stop_at_eos)
    seed = cfg.seed * 1_000_003 + update * 10_007
    chunks = []
    if s.vllm is not None:  # the policy's current weights into the engine, then the whole batch in one call
        s.vllm.sync_weights(unwrapped)
        chunks.append(s.vllm.sample([s.prompts[i] for i in idx], seed=seed, device=device,
                                    with_logprobs=cfg.is_correction != "none", **kw))
    else:
        for c in range(0, local, s.gen_chunk):
            torch.manual_seed(seed + (acc.process_index * local + c) // s.gen_chunk)  # + the global chunk index
            p_ids, p_mask = left_pad([s.prompts[i] for i in idx[c:c + s.gen_chunk]], tok.pad_token_id)
            p_ids, p_mask = p_ids.to(device), p_mask.to(device)
            if s.sampler_logprobs or cfg.is_correction != "none":  # log-probs and entropies from the sampling steps
                chunks.append(sample_with_logprobs(unwrapped, p_ids, p_mask, **kw))
            else:
                chunks.append(generate(unwrapped, p_ids, p_mask, synced_gpus=sharded(acc), **kw))
    batch = concat_batches(chunks, tok.pad_token_id)
    t_gen = time.perf_counter()

    with torch.inference_mode():
        scores, member_scores = score(s.m.reward, batch, cfg.missing_eos_penalty, cfg.missing_eos_score,
                                      s.defences, acc)
        if s.objectives is not None:  # cost models: reward - w * cost (rlhf.rl.objectives)
            scores = s.objectives.combine(batch, scores, acc)
        if s.sampler_logprobs:
            old_logp, entropy, values = batch.logprobs, batch.entropy, None
        else:  # one more policy forward over the rollout (it also gives a shared value head's values)
            old_logp, entropy, values = response_forward(unwrapped, batch, cfg.temperature, with_entropy=True,
                                                        packed=cfg.packed)
        # the reference under the policy's autocast: same weights, same compute path -> KL 0 before the first step
        with reference(s.m.ref, unwrapped), acc.autocast():
            ref_logp, _, _ = response_forward(s.m.ref if s.m.ref is not None else unwrapped, batch, cfg.temperature,
                                              packed=cfg.packed)
        if values_fn is not None:
            values = values_fn(batch)
    t_score = time.perf_counter()
    # clones leave inference mode: these tensors are read by autograd-tracked losses later
    return Rollout(batch, idx, torch.tensor(groups, dtype=torch.long, device=device), scores, member_scores,
                   old_logp.clone(), ref_logp.clone(), entropy, None if values is None else values.clone(),
                   t_gen - t0, t_score - t_gen, t_score)


def encode_prompts(cfg: Any, tok: Any, context: int | None) -> list[list[int]]:
    """Tokenise every prompt of cfg.prompts once (no re-tokenisation per update): strings as `rlhf sample` does,
    lists of messages through the chat template; check they fit with the response."""
    from rlhf.models.data_source import read_rows
    from rlhf.models.prompts import encode_prompts as encode

    return encode(read_rows(cfg.prompts, required=("prompt",)), tok, cfg.prompts, context, cfg.max_new_tokens)


def concat_batches(chunks: list[Any], pad_id: int) -> Any:
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
def reference(ref: Any, policy: Any):
    """With LoRA (ref is None) the reference is the policy with its adapters disabled: no second copy in memory."""
    if ref is None:
        with policy.disable_adapter():
            yield
    else:
        yield


def sharded(acc: Any) -> bool:
    """Parameters sharded across processes (DeepSpeed ZeRO-3 / FSDP): generation must run in lock step."""
    return acc.num_processes > 1 and acc.distributed_type.name in ("DEEPSPEED", "FSDP")

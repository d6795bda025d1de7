"""Sampling responses with `transformers` generate, and log-probs of given responses under a model.

Layout used everywhere: a batch is `[prompt (left-padded, P) | response (right-padded, R)]`, so response token t of
every row sits at column P + t. Response masks are True up to and including the first EOS.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from rlhf.core import entropy_from_logits, logprobs_from_logits
from rlhf.models.packing import needs_packing, pack, separates_packed_sequences


@dataclass
class Batch:
    """Prompt+response token batch. prompt: (B, P) left-padded; response: (B, R) right-padded."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # bool, True = real response token (incl. the first EOS)
    ended: torch.Tensor | None = None  # (B,) bool: the response contains an EOS
    # filled by `sample_with_logprobs`: (B, R) log-probs of the sampled tokens and entropies, 0 at padding
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)

    def index(self, idx: torch.Tensor | slice) -> Batch:
        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[idx]

        return Batch(self.prompt_ids[idx], self.prompt_mask[idx], self.response_ids[idx], self.response_mask[idx],
                     pick(self.ended), pick(self.logprobs), pick(self.entropy))


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids, mask) left-padded to the longest."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = length if length is not None else max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def eos_list(eos_token_id: int | Sequence[int]) -> list[int]:
    """One EOS id or several -> a list (an instruct model often declares several: `<|im_end|>`, `<|eot_id|>`)."""
    ids = [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    if not ids:
        raise ValueError("at least one EOS id is needed")
    return ids


def stop_token_ids(model: PreTrainedModel | None, tokenizer: Any) -> list[int]:
    """Every EOS id the model declares, the tokenizer's first: `tokenizer.eos_token_id`, then the ids of the model's
    `generation_config.eos_token_id` and `config.eos_token_id` (each an int or a list). A response ends at the first of
    any of them, in sampling, masks, `ended` and the reward position alike."""
    found: list[int] = []

    def add(x: Any) -> None:
        for i in ([x] if isinstance(x, int) else list(x or [])):
            if isinstance(i, int) and i not in found:
                found.append(i)

    add(tokenizer.eos_token_id)
    if model is not None:
        for m in model.modules():  # a peft / value-head wrapper holds the PreTrainedModel inside
            if isinstance(m, PreTrainedModel):
                add(getattr(getattr(m, "generation_config", None), "eos_token_id", None))
                add(getattr(m.config.get_text_config(), "eos_token_id", None))
                break
    if not found:
        raise ValueError("the tokenizer and the model declare no EOS token")
    return found


def truncate_after_eos(response_ids: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, R) -> (ids with everything after the first EOS set to pad, mask True through the first EOS, ended (B,)).
    `eos_token_id` may be a list: the first of any of them ends the response."""
    eos = torch.tensor(eos_list(eos_token_id), device=response_ids.device)
    is_eos = torch.isin(response_ids, eos)
    # position of the first EOS, or R when there is none
    R = response_ids.shape[1]
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], R, dtype=torch.long))
    positions = torch.arange(R, device=response_ids.device)[None]
    mask = positions <= first[:, None]
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_token_id))
    return ids, mask, is_eos.any(1)


def decode_responses(tokenizer: Any, batch: Batch, eos_token_id: int | Sequence[int]) -> list[str]:
    """The text of each response: its real tokens without the EOS that ended it, special tokens skipped."""
    eos = torch.tensor(eos_list(eos_token_id), device=batch.response_ids.device)
    keep = batch.response_mask & ~torch.isin(batch.response_ids, eos)
    return [tokenizer.decode(r[k], skip_special_tokens=True) for r, k in zip(batch.response_ids, keep)]


def sampling_generation_config(*, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                               eos_token_id: int | Sequence[int] | None, pad_token_id: int, min_new_tokens: int = 0,
                               base: Any = None) -> Any:
    """The complete `GenerationConfig` a sampling call runs with. base=None: built from these options only, so
    nothing a checkpoint's `generation_config.json` sets (repetition_penalty, no_repeat_ngram_size, min_p,
    typical_p, bad_words_ids, ...) changes the distribution; sampling is then softmax(logits / T), filtered only by
    top-k / top-p / min length. base=the model's own config (`rlhf sample --use_model_generation_config`): its
    settings, with these options on top."""
    from transformers import GenerationConfig

    cfg = GenerationConfig() if base is None else copy.deepcopy(base)
    cfg.update(do_sample=True, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
               top_p=top_p, top_k=top_k, pad_token_id=pad_token_id, use_cache=True, num_return_sequences=1,
               eos_token_id=None if eos_token_id is None else eos_list(eos_token_id))
    return cfg


@contextlib.contextmanager
def _only_this_generation_config(model: torch.nn.Module, use_model_config: bool):
    """`generate` fills every option its `generation_config` argument leaves unset from `model.generation_config`
    (transformers' `_prepare_generation_config`), so passing a config is not enough to keep a checkpoint's settings
    out: while sampling, each PreTrainedModel in `model` (a peft or value-head wrapper holds one) gets a blank one."""
    from transformers import GenerationConfig

    if use_model_config:
        yield
        return
    saved = [(m, m.generation_config) for m in model.modules()
             if isinstance(m, PreTrainedModel) and getattr(m, "generation_config", None) is not None]
    try:
        for m, _ in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, gc in saved:
            m.generation_config = gc


def model_generation_config(model: torch.nn.Module) -> Any:
    """The checkpoint's own `generation_config` (of the PreTrainedModel inside any wrapper), or None."""
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            return getattr(m, "generation_config", None)
    return None


@torch.no_grad()
def generate(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, eos_token_id: int | Sequence[int],
             pad_token_id: int, stop_at_eos: bool = True, min_new_tokens: int = 0, synced_gpus: bool = False,
             use_model_generation_config: bool = False) -> Batch:
    """Sample one response per (left-padded) prompt row with the KV cache; responses cut after the first EOS (any of
    `eos_token_id` when it is a list).

    The distribution is softmax(logits / temperature) with only the top-k / top-p / min-length filters asked for:
    the model's own `generation_config` is not applied (PPO scores the samples under exactly that distribution),
    unless use_model_generation_config=True (`rlhf sample` / `rlhf eval` opt-in).
    synced_gpus: keep every process stepping until all are done (DeepSpeed ZeRO-3 gathers each layer's shards in a
    collective, so a process that stopped early would hang the others)."""
    if use_model_generation_config and not stop_at_eos:
        raise ValueError("stop_at_eos=False cannot be combined with the model's own generation config (its EOS ids "
                         "would be filled back in)")
    was_training = model.training
    model.eval()
    gen_cfg = sampling_generation_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        # stop_at_eos=False: fixed-length responses (benchmarks); the EOS ids are still used for truncation
        eos_token_id=eos_token_id if stop_at_eos else None, pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
        base=model_generation_config(model) if use_model_generation_config else None)
    with _only_this_generation_config(model, use_model_generation_config):
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg,
                             **({"synced_gpus": True} if synced_gpus else {}))
    if was_training:
        model.train()
    response = out[:, prompt_ids.shape[1]:]
    ids, mask, ended = truncate_after_eos(response, eos_token_id, pad_token_id)
    return Batch(prompt_ids, prompt_mask, ids, mask, ended)


def sample_with_logprobs(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                         max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                         eos_token_id: int | Sequence[int], pad_token_id: int, stop_at_eos: bool = True,
                         min_new_tokens: int = 0, drop_finished: bool = True) -> Batch:
    """`generate`, plus the log-prob and entropy of every sampled token under softmax(logits / temperature), taken
    from the sampling step's own logits: PPO's rollout then needs no second policy forward.

    The loop is the one `generate` runs for do_sample (the KV cache filled by one prompt forward, then one token per
    step; transformers' own logits processors, in its order; softmax then multinomial, and pad after a row's EOS),
    so with the same seed it draws the same tokens. The log-probs match a full forward (`response_forward`) to
    float32 rounding (~1e-6) in fp32; in bf16/fp16 the cached and full forwards differ by more, so PPO recomputes
    them there (`rollout_logprobs`). Not for parameters sharded across processes (ZeRO-3): use `generate`.
    drop_finished: a row that has its EOS leaves the batch and the KV cache (generate keeps computing it until
    every row is done); the sampled tokens are the same either way.
    """
    # inference_mode (~20% faster per step than no_grad on a small model), then normal-tensor copies of the
    # outputs: inference tensors cannot be saved for backward, and these ids feed the training forwards
    with torch.inference_mode():
        out = _sample_loop(model, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, top_k, eos_token_id,
                           pad_token_id, stop_at_eos, min_new_tokens, drop_finished)
    return Batch(*(x.clone() for x in out))


def new_kv_cache(model: PreTrainedModel) -> object:
    """An empty `DynamicCache` laid out for `model` (its text config: sliding-window layers where it has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config.get_text_config())


def _sample_loop(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                 temperature: float, top_p: float, top_k: int, eos_token_id: int | Sequence[int], pad_token_id: int,
                 stop_at_eos: bool, min_new_tokens: int, drop_finished: bool = True) -> tuple[torch.Tensor, ...]:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    was_training = model.training
    model.eval()
    B, P = prompt_ids.shape
    device = prompt_ids.device
    # transformers' own processors, in generate's order, applied to z = logits / T (its temperature warper's output)
    processors = LogitsProcessorList()
    if min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(P, min_new_tokens, eos_list(eos_token_id), device=device))
    if top_k > 0:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))

    cache = new_kv_cache(model)
    # without padding the model's own positions and causal mask are the same, and cheaper to build
    attn = prompt_mask.long() if not bool(prompt_mask.all()) else None
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0) if attn is not None else None
    input_ids = prompt_ids
    sequences = prompt_ids  # only the min-length processor reads it
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_list(eos_token_id), device=device)
    rows = torch.arange(B, device=device)  # the rows the model still runs on (all, unless drop_finished)
    tokens, logps, ents = [], [], []
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, cache=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1].float()
        if logits.shape[0] < B:  # finished rows were dropped: zeros there (a uniform draw, replaced by pad below)
            logits = logits.new_zeros((B, logits.shape[1])).index_copy(0, rows, logits)
        z = logits / temperature if temperature != 1.0 else logits
        probs = torch.softmax(z, dim=-1)  # PPO's distribution: no top-k/top-p/min-length filter
        sample_from = torch.softmax(processors(sequences, z.clone()), dim=-1) if processors else probs
        # always all B rows: multinomial draws its noise for the whole (B, V) tensor, so dropping finished rows
        # leaves every running row's draw unchanged (same tokens as without drop_finished; tested)
        nxt = torch.multinomial(sample_from, num_samples=1).squeeze(1)
        if stop_at_eos:
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_token_id))
        # the formulas of rlhf.core.logprobs_from_logits / entropy_from_logits (gathered z - logsumexp(z), and
        # logsumexp(z) - sum softmax(z) z), sharing z and softmax(z) with the sampler; tested equal to them
        lse = torch.logsumexp(z, dim=-1)
        logps.append(z.gather(-1, nxt[:, None]).squeeze(1) - lse)
        ents.append(lse - (probs * z).sum(-1))
        tokens.append(nxt)
        if min_new_tokens > 0:
            sequences = torch.cat([sequences, nxt[:, None]], dim=1)
        if stop_at_eos:
            unfinished &= ~torch.isin(nxt, eos)
            if not unfinished.any():
                break
        if attn is not None:
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
            position_ids = position_ids[:, -1:] + 1
        if drop_finished and stop_at_eos and not bool(unfinished[rows].all()):
            # early exit of finished rows: out of the batch and the KV cache, so no later step computes them
            keep = unfinished[rows].nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows = rows[keep]
            if attn is not None:
                attn, position_ids = attn[keep], position_ids[keep]
        input_ids = nxt[rows][:, None]
    if was_training:
        model.train()
    ids, mask, ended = truncate_after_eos(torch.stack(tokens, 1), eos_token_id, pad_token_id)
    return prompt_ids, prompt_mask, ids, mask, ended, torch.stack(logps, 1) * mask, torch.stack(ents, 1) * mask


def response_forward(model: PreTrainedModel, batch: Batch, temperature: float = 1.0, with_entropy: bool = False,
                     packed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward over prompt+response: (B, R) log-probs of the response tokens, optionally (B, R) entropy, and
    (B, R) values V(s_t) when the model also has a value head (its output has `.token_values`); 0 at padding.

    The LM head only runs on the positions that predict response tokens. The temperature must be the sampling
    temperature, or PPO's first ratio is not 1. packed: the real tokens only, in one row (rlhf.models.packing),
    when the batch has padding; equal to the padded forward to float rounding.
    """
    attn = batch.attention_mask
    mask = batch.response_mask
    if packed and needs_packing(attn) and bool(mask.any()) and separates_packed_sequences(
            model, lambda **kw: model(**kw, use_cache=False).logits, batch.input_ids[attn.bool()]):
        return _packed_response_forward(model, batch, temperature, with_entropy)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # correct positions under left padding
    R = batch.response_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False,
                logits_to_keep=R + 1)
    logits = out.logits[:, :-1].float()  # position P-1+t predicts response token t
    logp = logprobs_from_logits(logits, batch.response_ids, temperature) * mask
    ent = entropy_from_logits(logits, temperature) * mask if with_entropy else None
    values = getattr(out, "token_values", None)  # not `.values`: HF outputs are dicts, .values is a method
    if values is not None:
        values = values[:, -(R + 1):-1] * mask  # the value of the state before each response token
    return logp, ent, values


def _packed_response_forward(model: PreTrainedModel, batch: Batch, temperature: float, with_entropy: bool
                             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """response_forward on the packed real tokens: the LM head (and the family's own logit scaling / soft-capping,
    since the model's forward runs) only at the K positions that predict a real response token."""
    pk = pack(batch.input_ids, batch.attention_mask)
    P = batch.prompt_ids.shape[1]
    rows, t = batch.response_mask.nonzero(as_tuple=True)  # the K real response tokens, row after row
    keep = pk.index_of(rows, P + t - 1)  # response token t of row b sits at column P+t, predicted at P+t-1
    out = model(input_ids=pk.ids, position_ids=pk.position_ids, use_cache=False, logits_to_keep=keep)
    logits = out.logits.float()  # (1, K, V)
    shape, where = batch.response_mask.shape, (rows, t)

    def scatter(x: torch.Tensor) -> torch.Tensor:  # (K,) -> (B, R), 0 at padding (differentiable)
        return x.new_zeros(shape).index_put(where, x)

    logp = scatter(logprobs_from_logits(logits, batch.response_ids[where][None], temperature)[0])
    ent = scatter(entropy_from_logits(logits, temperature)[0]) if with_entropy else None
    values = getattr(out, "token_values", None)
    if values is not None:
        values = scatter(values[0, keep])
    return logp, ent, values


def response_logprobs(model: PreTrainedModel, batch: Batch, temperature: float = 1.0,
                      with_entropy: bool = False, packed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, R) log-probs of the response tokens (0 at padding), and optionally per-token entropy."""
    logp, ent, _ = response_forward(model, batch, temperature, with_entropy, packed)
    return logp, ent

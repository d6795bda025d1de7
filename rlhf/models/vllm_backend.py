"""Optional vLLM rollout sampler for PPO: the `Batch` layout of `rlhf.models.generation`, with the policy's weights
pushed into the live engine before each rollout. Single process, one GPU, colocated with training.

How it talks to vLLM (checked against the vLLM docs, latest/stable/v0.32, and main-branch source in Nov 2026; it cannot
run on the CPU, so tests/models/test_vllm_backend.py has one GPU test):
- The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0). The public `LLM.apply_model(fn)` then calls
  `fn(model)` on the live vLLM model with our tensors passed by reference, and `fn` calls the model's own
  `load_weights` (HF names in; vLLM fuses q/k/v and gate/up itself), which copies them in place: the same call that
  vLLM's own weight-transfer engines end with.
  https://docs.vllm.ai/api/vllm/v1/worker/worker_base.html (WorkerBase.apply_model / get_model)
  https://docs.vllm.ai/en/stable/api/vllm/distributed/weight_transfer/ipc_engine/ (receive_weights -> load_weights)
  The same idea as TRL's colocate mode: https://github.com/huggingface/trl/blob/main/trl/generation/vllm_generation.py
- Not the native weight-transfer API (https://docs.vllm.ai/en/latest/training/weight_transfer/, backend "ipc",
  https://docs.vllm.ai/en/latest/api/vllm/entrypoints/rl/offline/): its trainer side changed several times between 0.22
  and 0.32, and its CUDA IPC handles are made for an engine in another process.
- Token ids in and out: skip_tokenizer_init, detokenize=False, generation_config="vllm" (no extra EOS ids from
  generation_config.json) and stop_token_ids=[our EOS]; top_k 0 or -1 means off; a stop token is kept in the output.
  https://docs.vllm.ai/en/latest/api/vllm/sampling_params/
- Sleep mode level 1 only (weights kept in CPU memory, KV cache dropped):
  https://docs.vllm.ai/en/latest/features/sleep_mode/ (level 2 drops the weights, and has given garbage after
  waking: https://github.com/vllm-project/vllm/issues/29341)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch

from rlhf.errors import UserError
from rlhf.models.generation import Batch, left_pad, right_pad, truncate_after_eos

_VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+\.")


def outputs_to_batch(prompt_ids: list[list[int]], responses: list[list[int]], eos_token_id: int | list[int], pad_token_id: int,
                     device: str | torch.device = "cpu", logprobs: list[list[float]] | None = None) -> Batch:
    """Prompt and response token lists -> `Batch`: prompts left-padded, responses right-padded to the longest (at
    least 1 column), cut after the first EOS; `ended` = the response holds an EOS. `logprobs`: the engine's log-prob
    of each response token (same lengths as `responses`), kept as `Batch.logprobs`, 0 at padding."""
    if len(prompt_ids) != len(responses) or not prompt_ids:
        raise ValueError(f"{len(prompt_ids)} prompts but {len(responses)} responses")
    p_ids, p_mask = left_pad(prompt_ids, pad_token_id)
    # pad with -1 (never a token id) first, so that a pad id equal to the EOS id is not taken for an EOS
    ids, real = right_pad([list(r) for r in responses], -1, max(1, max(len(r) for r in responses)))
    ids, mask, ended = truncate_after_eos(ids, eos_token_id, pad_token_id)
    mask &= real
    ids = torch.where(mask, ids, torch.full_like(ids, pad_token_id))
    lp = None
    if logprobs is not None:
        if [len(x) for x in logprobs] != [len(r) for r in responses]:
            raise ValueError("one log-prob per response token is needed")
        width = ids.shape[1]
        lp = torch.tensor([list(x) + [0.0] * (width - len(x)) for x in logprobs], dtype=torch.float32)
        lp = (lp * mask).to(device)
    return Batch(p_ids.to(device), p_mask.to(device), ids.to(device), mask.to(device), ended.to(device), lp)


def hf_weight_name(name: str) -> str | None:
    """A policy state_dict name -> the plain HF name, or None for a weight that is not the model's (LoRA A/B, the
    copy of a module that peft trains as a whole)."""
    parts = name.split(".")
    if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
        return None
    name = _MODULES_TO_SAVE.sub(".", name.removeprefix("base_model.model."))
    return name.replace(".base_layer.", ".")


def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every weight of the policy, with the active LoRA adapters merged in on the fly.

    The model is left untouched: peft's merge_adapter/unmerge_adapter round trip rounds a bf16 base twice per sync,
    and those errors would add up over the updates."""
    from rlhf.models.value import PolicyWithValueHead

    if isinstance(model, PolicyWithValueHead):
        model = model.lm
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "hf_quantizer", None) is not None:
        raise UserError("config field 'generation_backend': vllm cannot sync a 4/8-bit policy; use "
                        "--generation_backend transformers")
    return _named_weights(model.state_dict(), _lora_layers(model))


def _named_weights(state: dict[str, torch.Tensor], lora: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in state.items():
        hf = hf_weight_name(name)
        if hf is not None:
            yield hf, (_merged_weight(lora[name]) if name in lora else tensor)


def _lora_layers(model: Any) -> dict[str, Any]:
    """state_dict name of each LoRA-wrapped base weight -> its LoRA layer (plain LoRA only)."""
    from peft.tuners.lora import LoraLayer

    layers = {f"{n}.base_layer.weight": m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for layer in layers.values():
        for a in layer.active_adapters:
            if a in getattr(layer, "lora_variant", {}) or layer.lora_bias.get(a, False):
                raise UserError(f"config field 'generation_backend': vllm weight sync supports plain LoRA only "
                                f"(adapter '{a}' is DoRA or has a LoRA bias); use --generation_backend transformers")
    return layers


@torch.no_grad()
def _merged_weight(layer: Any) -> torch.Tensor:
    """Base weight + the active (not yet merged) adapters' deltas, in fp32."""
    weight = layer.get_base_layer().weight.detach().float()
    if layer.disable_adapters:
        return weight
    for a in layer.active_adapters:
        if a not in layer.merged_adapters and (a in layer.lora_A or a in layer.lora_embedding_A):
            weight = weight + layer.get_delta_weight(a).detach().float()
    return weight


def _load_weights(model: torch.nn.Module, weights: Any) -> list[str]:
    """Runs on the vLLM worker (in this process): load (HF name, tensor) pairs into the live model in place.
    Returns the vLLM parameters left unloaded (the check vLLM's own loader makes)."""
    loaded = model.load_weights(weights)
    if loaded is None:  # a model class that does not report what it loaded
        return []
    return sorted({name for name, _ in model.named_parameters()} - set(loaded))


def _pid(_model: torch.nn.Module) -> int:
    return os.getpid()


def _row_seed(seed: int, row: int) -> int:
    """One seed per prompt: a shared seed would give equal prompts equal samples."""
    return (seed * 1_000_003 + row) % 2**63


class VLLMSampler:
    """vLLM behind the interface of `rlhf.models.generation.generate`: `sample` returns the same `Batch` layout
    (`logprobs`/`entropy` None: PPO recomputes the log-probs with the policy); `sync_weights` pushes the policy."""

    def __init__(self, model_path: str, *, dtype: str, seed: int, max_model_len: int,
                 gpu_memory_utilization: float = 0.3, enable_sleep_mode: bool = False,
                 device: str | torch.device = "cuda", **engine_kwargs: Any):
        from rlhf.models.loading import resolve_dtype
        from rlhf.models.precision import vllm_unavailable

        reason = vllm_unavailable()
        if reason:
            raise UserError(f"config field 'generation_backend': vllm cannot be used: {reason}; set "
                            "generation_backend: transformers (--generation_backend transformers, the default)")
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise UserError("config field 'generation_backend': the vllm backend runs in a single process (one GPU); "
                            "use --generation_backend transformers with several processes")
        self._dtype = resolve_dtype(dtype)
        self.max_model_len = max_model_len
        self.device = device
        self._sleep_enabled = enable_sleep_mode
        self._asleep = False
        # the engine in this process, so that apply_model reaches the live model; read when the LLM is built
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm

        self._llm = vllm.LLM(model=model_path, dtype=_VLLM_DTYPES.get(dtype, dtype), seed=seed,
                             max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                             enable_sleep_mode=enable_sleep_mode, skip_tokenizer_init=True, generation_config="vllm",
                             **engine_kwargs)
        try:
            in_process = self._llm.apply_model(_pid) == [os.getpid()]
        except Exception as e:  # an engine in another process cannot take a local function
            raise RuntimeError(f"the vLLM engine does not run in this process ({e}); VLLM_ENABLE_V1_MULTIPROCESSING "
                               "must be 0 before the first vllm.LLM is built") from e
        if not in_process:
            raise RuntimeError("the vLLM engine does not run in this process; weight sync needs it to")

    def sleep(self) -> None:
        """Free the GPU memory of the KV cache and weights (weights kept in CPU memory) while training; the next
        `sync_weights` or `sample` wakes the engine. Needs enable_sleep_mode=True."""
        if not self._sleep_enabled:
            raise RuntimeError("VLLMSampler.sleep needs enable_sleep_mode=True")
        if not self._asleep:
            self._llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            torch.cuda.empty_cache()  # hand the training's cached blocks back first
            self._llm.wake_up()
            self._asleep = False

    @torch.no_grad()
    def sync_weights(self, model: Any) -> None:
        """Copy the policy's current weights (a HF causal LM, a peft LoRA model, or a `PolicyWithValueHead`; not a
        DDP wrapper) into the engine, and drop the prefix cache computed with the old ones."""
        self._wake()
        weights = ((name, t.detach().to(self._dtype) if t.is_floating_point() else t.detach())
                   for name, t in policy_weights(model))
        (missing,) = self._llm.apply_model(partial(_load_weights, weights=weights))
        if missing:
            raise RuntimeError(f"weight sync left {len(missing)} vLLM parameters unloaded (e.g. {missing[:3]}): the "
                               "policy's weight names do not match the checkpoint vLLM was built from")
        self._llm.reset_prefix_cache()

    def sample(self, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, eos_token_id: int | list[int], pad_token_id: int,
               stop_at_eos: bool = True, min_new_tokens: int = 0, seed: int | None = None,
               device: str | torch.device | None = None, with_logprobs: bool = False) -> Batch:
        """One response per prompt (token lists, no padding), as `generate` samples it: temperature, then top-k
        (0 = off) and top-p; stop at any of `eos_token_id` (an id or a list) unless stop_at_eos=False (then
        fixed-length responses, still cut after the first EOS). `seed`: reproducible samples, independent of batching."""
        from vllm import SamplingParams

        from rlhf.models.generation import eos_list

        eos = eos_list(eos_token_id)
        longest = max(len(p) for p in prompt_ids)
        if longest + max_new_tokens > self.max_model_len:
            raise UserError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the vLLM "
                            f"max_model_len {self.max_model_len}; raise it or shorten the prompts")
        self._wake()
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else -1,
                                 max_tokens=max_new_tokens, min_tokens=min_new_tokens, ignore_eos=not stop_at_eos,
                                 stop_token_ids=eos if stop_at_eos else None, detokenize=False,
                                 seed=None if seed is None else _row_seed(seed, i),
                                 # the sampled token's log-prob (with logprobs_mode processed_logprobs at engine build:
                                 # after temperature, the distribution the token was drawn from)
                                 logprobs=0 if with_logprobs else None)
                  for i in range(len(prompt_ids))]
        outputs = self._llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sampling_params=params,
                                     use_tqdm=False)
        responses, logps = [], []
        for out in outputs:  # in prompt order
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            if with_logprobs:
                logps.append([step[t].logprob for t, step in zip(ids, completion.logprobs)])
            # the stop token is part of token_ids; should a version leave it out, put it back
            if stop_at_eos and completion.finish_reason == "stop" and (not ids or ids[-1] not in eos):
                stop = getattr(completion, "stop_reason", None)
                ids.append(stop if isinstance(stop, int) and stop in eos else eos[0])
                if with_logprobs:
                    raise RuntimeError("vLLM left the stop token out of token_ids; its log-prob is unknown")
            responses.append(ids)
        return outputs_to_batch(prompt_ids, responses, eos_token_id, pad_token_id, device or self.device,
                                logprobs=logps if with_logprobs else None)

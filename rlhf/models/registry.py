"""Tiny model configs: real architectures built from a config with a seed (no downloads).

Sizes are chosen so that the demo trains on a laptop CPU in minutes; `tiny` is for tests (seconds).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

# name -> (model_type, kwargs). All Llama: RMSNorm, RoPE, SwiGLU, as in current open models.
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # ~0.2M parameters with a 1k vocab: unit and stage tests
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, max_position_embeddings=128)),
    # ~1.4M parameters with a 2k vocab: the laptop demo
    "small": ("llama", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=4, max_position_embeddings=256)),
    # ~5.8M parameters with a 2k vocab: a slower, more fluent demo
    "medium": ("llama", dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                             num_key_value_heads=4, max_position_embeddings=512)),
}


def tiny_config(name: str, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int,
                **overrides: Any) -> PretrainedConfig:
    if name not in TINY_CONFIGS:
        from rlhf.errors import UserError

        raise UserError(f"unknown tiny model '{name}'; choose one of: {', '.join(TINY_CONFIGS)}")
    model_type, kwargs = TINY_CONFIGS[name]
    kwargs = {**kwargs, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, **overrides}
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)


def build_tiny_causal_lm(name: str, tokenizer: Any, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A randomly initialised causal LM of the named tiny config, sized to the tokenizer's vocabulary."""
    config = tiny_config(name, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model

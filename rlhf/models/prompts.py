"""Prompt rows -> token ids for generation, one encoding for every stage that samples (sample, eval, ppo, value
pre-training): a string with BOS where the tokenizer adds one, a list of messages through the chat template
(rlhf.models.chat)."""

from __future__ import annotations

from typing import Any

from rlhf.errors import UserError


def encode_prompts(rows: list[dict[str, Any]], tokenizer: Any, source: str, context: int | None,
                   max_new_tokens: int) -> list[list[int]]:
    """Tokenise prompts: a string with BOS where the tokenizer adds one, a list of messages through the chat
    template (rlhf.models.chat); error if prompt + response cannot fit."""
    from rlhf.models.reward import encode_prompt

    encoded = []
    for i, r in enumerate(rows, start=1):
        p = r["prompt"]
        if isinstance(p, list):
            from rlhf.models.chat import encode_chat_prompt

            ids = encode_chat_prompt(tokenizer, p, f"{source}: row {i}: field 'prompt'")
        elif not isinstance(p, str) or not p.strip():
            raise UserError(f"{source}: row {i}: field 'prompt' is empty or not a string (or a list of messages)")
        else:
            ids = encode_prompt(tokenizer, p)
        if context is not None and len(ids) + max_new_tokens > context:
            raise UserError(f"{source}: row {i}: prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} "
                            f"exceeds the model's context of {context}; shorten the prompt or lower max_new_tokens")
        encoded.append(ids)
    return encoded

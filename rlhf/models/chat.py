"""Conversational data: lists of {"role", "content"} messages go through the tokenizer's chat template.

One encoding for every stage (SFT, sampling, labeling, reward, PPO), so a response is scored on the tokens the
policy produced:
- prompt: the template applied to the prompt messages with the generation prompt (e.g. "<|im_start|>assistant\\n"),
  tokenised without adding special tokens again (the template already has BOS where the family wants one).
- response: the template applied to prompt + response messages, minus the prompt's text, tokenised the same way and
  cut after the first EOS (ChatML's "\\n" after <|im_end|> is dropped); if the template does not end the turn with
  EOS (e.g. Gemma's <end_of_turn>), EOS is appended. A response that did not end has no turn end and no EOS.
Plain-text prompts keep the old encoding: the tokenizer's own special tokens (BOS) + text.
"""

from __future__ import annotations

from typing import Any

from rlhf.errors import UserError


def is_messages(value: Any) -> bool:
    return isinstance(value, list)


def check_messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: expected a non-empty list of messages {{'role': str, 'content': str}}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}[{i}]: expected a message {{'role': str, 'content': str}}, got {m!r}")
    return value


def _template(tokenizer: Any, messages: list[dict[str, str]], where: str, generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: conversational data (a list of messages) needs a tokenizer with a chat template, "
                        f"and {type(tokenizer).__name__} '{getattr(tokenizer, 'name_or_path', '')}' has none; give "
                        "plain-text prompts, or a --tokenizer with a chat_template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode_chat_prompt(tokenizer: Any, messages: list[dict[str, str]], where: str = "prompt") -> list[int]:
    text = _template(tokenizer, check_messages(messages, where), where, generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat_response(tokenizer: Any, prompt: list[dict[str, str]], response: list[dict[str, str]] | str,
                         ended: bool = True, where: str = "response") -> list[int]:
    """Token ids of the response turn(s) after the chat prompt (see the module docstring)."""
    if isinstance(response, str):
        response = [{"role": "assistant", "content": response}]
    check_messages(response, where)
    if not ended:  # a cut-off response: its content only, no turn end
        return tokenizer("".join(m["content"] for m in response), add_special_tokens=False)["input_ids"]
    head = _template(tokenizer, check_messages(prompt, where), where, generation_prompt=True)
    full = _template(tokenizer, prompt + response, where, generation_prompt=False)
    if not full.startswith(head):
        raise UserError(f"{where}: the chat template does not render the prompt (with its generation prompt) as a "
                        "prefix of the whole conversation, so the response tokens cannot be separated; use a template "
                        "whose add_generation_prompt output is a prefix of the rendered assistant turn")
    ids = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids + [eos]


def split_conversations(chosen: list[dict[str, str]], rejected: list[dict[str, str]], where: str
                        ) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """TRL's implicit prompt: the shared leading messages of chosen and rejected are the prompt."""
    check_messages(chosen, f"{where}: field 'chosen'")
    check_messages(rejected, f"{where}: field 'rejected'")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise UserError(f"{where}: conversational chosen and rejected share no leading messages, so there is no "
                        "prompt; add a 'prompt' field with the prompt messages")
    return chosen[:n], chosen[n:], rejected[n:]

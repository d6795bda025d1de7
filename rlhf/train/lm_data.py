"""Language-modelling examples (SFT, PPO-ptx): JSONL rows -> (input_ids, labels) with the loss on the response
only, their collation, and endless seeded micro-batches for the step loop (exact resume from a micro-batch count).

Row formats: {'text'} (plain LM, loss on every token but BOS), {'prompt', 'response'|'completion'} (loss on the
response and EOS), or conversational {'messages': [...]} / {'prompt': [...], 'completion': [...]} rendered with the
chat template (loss on the last assistant turn).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from rlhf.errors import UserError
from rlhf.models.chat import encode_chat_prompt, encode_chat_response

IGNORE = -100  # label id that cross-entropy skips (prompt tokens and padding)


def _mode(row: dict[str, Any]) -> str:
    if "messages" in row or isinstance(row.get("prompt"), list):
        return "chat"
    return "prompt/response" if "prompt" in row else "text"


def tokenize_examples(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, source: str
                      ) -> list[tuple[list[int], list[int]]]:
    """Rows -> (input_ids, labels) with BOS (if the tokenizer adds one) and EOS; prompt tokens get label -100.

    Raises UserError naming file, line and field for a bad row or an example longer than `max_length`.
    """
    if not rows:
        raise UserError(f"{source}: no examples")
    mode = _mode(rows[0])
    eos = tokenizer.eos_token_id
    out = []
    for i, r in enumerate(rows, start=1):
        where = f"{source}: row {i}"
        if mode == "chat":
            prompt, response = _chat_row(r, where)
            ids_p = encode_chat_prompt(tokenizer, prompt, where)
            ids_r = encode_chat_response(tokenizer, prompt, response, where=where)
            ids, labels = ids_p + ids_r, [IGNORE] * len(ids_p) + ids_r
        elif mode == "prompt/response":
            if "response" not in r and "completion" in r:
                r = {**r, "response": r["completion"]}
            for key in ("prompt", "response"):
                if not isinstance(r.get(key), str):
                    raise UserError(f"{where}: field '{key}' missing or not a string (prompt/response format)")
            if not r["response"].strip():
                raise UserError(f"{where}: field 'response' is empty")
            prompt = tokenizer(r["prompt"])["input_ids"]
            response = tokenizer(r["response"], add_special_tokens=False)["input_ids"] + [eos]
            ids, labels = prompt + response, [IGNORE] * len(prompt) + response
        else:
            if not isinstance(r.get("text"), str) or not r["text"].strip():
                raise UserError(f"{where}: field 'text' missing or empty (text format: one {{'text': ...}} per line; "
                                "for pairs use {'prompt','response'})")
            ids = tokenizer(r["text"])["input_ids"] + [eos]
            labels = list(ids)
            if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
                labels[0] = IGNORE  # BOS is given, never predicted
        if len(ids) > max_length:
            raise UserError(f"{where}: {len(ids)} tokens, longer than max_length={max_length} (the model's "
                            "context or --max_length); shorten the example or raise --max_length")
        out.append((ids, labels))
    return out


def _chat_row(r: dict[str, Any], where: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt messages, response messages): {'messages'} splits before the last assistant turn (TRL's
    conversational language modelling, loss on that turn); {'prompt', 'completion'|'response'} as given."""
    from rlhf.models.chat import check_messages

    if "messages" in r:
        msgs = check_messages(r["messages"], f"{where}: field 'messages'")
        last = max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last <= 0:
            raise UserError(f"{where}: field 'messages' needs an assistant message after at least one other message")
        return msgs[:last], msgs[last:]
    response = r.get("completion", r.get("response"))
    if not isinstance(response, list):
        raise UserError(f"{where}: a conversational 'prompt' needs 'completion' (or 'response') as a list of messages")
    return check_messages(r["prompt"], f"{where}: field 'prompt'"), check_messages(response, f"{where}: field "
                                                                                   "'completion'")


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def iter_batches(examples: list, batch_size: int, seed: int, rank: int, world: int, pad_id: int, start: int = 0):
    """Endless micro-batches: each epoch a fresh seeded shuffle; rank r takes every world-th batch.
    Skips the first `start` micro-batches (exact resume)."""
    epoch, produced = 0, 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        chunks = chunks[rank::world]
        for idx in chunks:
            if produced >= start:
                yield collate([examples[i] for i in idx], pad_id)
            produced += 1
        epoch += 1

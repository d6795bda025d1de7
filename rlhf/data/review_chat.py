"""The demo task for a chat model: the same review openings, continuations and gold judge, as chat turns.

An instruct checkpoint (e.g. SmolLM2-135M-Instruct) is trained and sampled in its own chat template, so the demo
task is put into it: the system turn states the task, the user turn is the review's opening, and the assistant
turn is the continuation (without the leading space it has in the plain files). The gold judge scores the
assistant turn's text, as in the plain task (rlhf.data.gold: call it on the response only).

`write_chat_data(plain_dir, out_dir)` reads the files of `rlhf.data.demo.write_demo_data` and writes, atomically:
  sft_train.jsonl / sft_val.jsonl             {"prompt": [system, user], "completion": [assistant]}
  prompts_train.jsonl / prompts_heldout.jsonl {"prompt_id": ..., "prompt": [system, user]}
Row order and the train / held-out split are those of the plain files; `max_sft` keeps the first N SFT rows.
The system turn asks for one or two sentences, so each SFT completion keeps the first `max_sentences` (2) sentences
of the plain continuation (median 14 SmolLM2 tokens, 97% within 24; the plain files' 2-4 sentences have a median of
22 and would teach the policy to run past a short `max_new_tokens` without EOS).

`render_samples_for_labeling(samples, out, tokenizer)`: the label store holds text prompts, so each chat prompt of a
samples file is stored as its rendered template (with the generation prompt). That string encodes to exactly the
ids of the chat prompt (`rlhf.models.chat.encode_chat_prompt` tokenises the same text without adding special
tokens, and this tokenizer adds none), and a string response encodes as its text + EOS, which is the chat
response's encoding too: the reward model is trained on the token layout that PPO's rollouts have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.io import read_jsonl, write_jsonl

SYSTEM = "Continue the product review the user starts. Write one or two sentences."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chat_prompt(opening: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": opening}]


def first_sentences(text: str, n: int) -> str:
    """The first n sentences of text (ended by . ! or ? and whitespace); all of it for n <= 0."""
    text = text.strip()
    return " ".join(_SENTENCE_END.split(text)[:n]) if n > 0 else text


def write_chat_data(plain_dir: Path, out_dir: Path, max_sft: int = 0, max_sentences: int = 2) -> dict[str, Path]:
    plain_dir, out_dir = Path(plain_dir), Path(out_dir)
    paths = {}
    for name in ("sft_train", "sft_val"):
        rows = read_jsonl(plain_dir / f"{name}.jsonl", required=("prompt", "response"))
        rows = rows[:max_sft] if max_sft else rows
        paths[name] = write_jsonl(out_dir / f"{name}.jsonl", [
            {"prompt": chat_prompt(r["prompt"]),
             "completion": [{"role": "assistant", "content": first_sentences(r["response"], max_sentences)}]}
            for r in rows])
    for name in ("prompts_train", "prompts_heldout"):
        rows = read_jsonl(plain_dir / f"{name}.jsonl", required=("prompt_id", "prompt"))
        paths[name] = write_jsonl(out_dir / f"{name}.jsonl", [
            {"prompt_id": r["prompt_id"], "prompt": chat_prompt(r["prompt"])} for r in rows])
    return paths


def render_samples_for_labeling(samples: Path, out: Path, tokenizer: Any) -> Path:
    """A copy of `samples` whose chat prompts are their rendered template text (see the module docstring)."""
    if tokenizer("a")["input_ids"] != tokenizer("a", add_special_tokens=False)["input_ids"]:
        raise UserError(f"{type(tokenizer).__name__} adds special tokens to plain text, so a rendered chat prompt "
                        "would not encode like the chat prompt; label conversational samples with a store that "
                        "keeps messages")
    rows = read_jsonl(samples, required=("prompt", "responses"))
    for r in rows:
        if isinstance(r["prompt"], list):
            r["prompt"] = tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
    return write_jsonl(out, rows)

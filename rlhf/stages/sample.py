"""Sampling: K responses per prompt from a model, written as JSONL for labeling.

    rlhf sample --model runs/x/sft --prompts runs/x/data/prompts_train.jsonl --k 4 --out runs/x/samples.jsonl

Each output row: {prompt_id, prompt, responses: [K strings], ended: [K bools: the response emitted EOS],
model, sampling: {temperature, top_p, top_k, max_new_tokens, seed, eos_token_ids, use_model_generation_config,
model_generation_config (only when used)}}. By default the model's own generation_config.json is not applied.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.config import ModelOptions, PrecisionOptions, RunOptions, check, opt, save_config
from rlhf.io import atomic_write_text
from rlhf.models.data_source import read_rows
from rlhf.models.prompts import encode_prompts  # noqa: F401  (was defined here; sample.encode_prompts still works)
from rlhf.stages.common import stage_outputs
from rlhf.train.progress import progress, say
from rlhf.train.seeds import set_seed


@dataclass
class SampleConfig(ModelOptions, PrecisionOptions, RunOptions):
    model: str = opt("", "hub id or local folder of the causal LM to sample from")
    prompts: str = opt("", "JSONL of prompts: rows {'prompt_id', 'prompt'} (prompt_id optional)")
    out: str = opt("runs/samples.jsonl", "output JSONL file")
    k: int = opt(4, "responses per prompt")
    max_prompts: int = opt(0, "use at most N prompts (0 = all)")
    temperature: float = opt(1.0, "sampling temperature (> 0)")
    top_p: float = opt(1.0, "nucleus sampling mass (1.0 = off)")
    top_k: int = opt(0, "top-k sampling (0 = off)")
    max_new_tokens: int = opt(48, "longest response in tokens; generation stops earlier at EOS")
    batch_size: int = opt(64, "sequences generated together")
    seed: int = opt(0, "sampling seed")
    use_model_generation_config: bool = opt(False, "also apply the model's own generation_config.json (e.g. its "
                                            "repetition_penalty, no_repeat_ngram_size, min_p); off: the samples come "
                                            "from softmax(logits / temperature) with only top_k/top_p, as PPO scores "
                                            "them; the choice and the settings used are written to each row")

    def validate(self) -> None:
        super().validate()  # the shared groups: choices, model (rlhf.config)
        check(bool(self.prompts), "prompts", "no prompt file given", "pass --prompts FILE.jsonl")
        check(self.k >= 1, "k", f"{self.k} responses per prompt", "use k >= 1")
        check(self.temperature > 0, "temperature", "must be > 0 (0 would divide the logits by zero)",
              "use a small value like 0.1 for near-greedy sampling")
        check(0 < self.top_p <= 1, "top_p", f"{self.top_p} is outside (0, 1]", "use a value in (0, 1]")
        check(self.top_k >= 0, "top_k", "must be >= 0", "use 0 to turn it off")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", "use 1 or more")
        check(self.batch_size >= 1, "batch_size", "must be >= 1", "use 1 or more")


@stage_outputs(out="file")  # checked before any sampling: a folder or read-only path fails now, not at the end
def run(cfg: SampleConfig) -> Path:
    from rlhf.models.generation import decode_responses, generate, left_pad, stop_token_ids
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out.with_suffix(".config.yaml"))
    set_seed(cfg.seed)
    from rlhf.models.precision import check_dtype, resolve_device

    device = torch.device(resolve_device(cfg.device))  # cuda asked for on a machine without one: an error
    check_dtype(cfg.dtype, device.type)  # inference: the weights are loaded in this dtype

    # 1. prompts, model, tokenizer
    rows = read_rows(cfg.prompts, required=("prompt",))  # JSONL, save_to_disk folder or hub dataset
    if cfg.max_prompts:
        rows = rows[: cfg.max_prompts]
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    model = load_causal_lm(cfg.model, cfg.dtype).to(device).eval()
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    encoded = encode_prompts(rows, tokenizer, cfg.prompts, context, cfg.max_new_tokens)
    eos_ids = stop_token_ids(model, tokenizer)  # every EOS the model declares ends a response

    # 2. generate K per prompt in batches of whole rows; prompts sorted by length to keep padding small
    flat = [(i, j) for i in sorted(range(len(rows)), key=lambda i: len(encoded[i])) for j in range(cfg.k)]
    responses: list[list[str]] = [[""] * cfg.k for _ in rows]
    ended: list[list[bool]] = [[False] * cfg.k for _ in rows]
    t0, n_tokens = time.perf_counter(), 0
    with progress() as bar:
        task = bar.add_task("sample", total=len(flat), info="")
        for start in range(0, len(flat), cfg.batch_size):
            chunk = flat[start: start + cfg.batch_size]
            ids, mask = left_pad([encoded[i] for i, _ in chunk], tokenizer.pad_token_id)
            b = generate(model, ids.to(device), mask.to(device), max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, eos_token_id=eos_ids,
                         pad_token_id=tokenizer.pad_token_id, use_model_generation_config=cfg.use_model_generation_config)
            n_tokens += int(b.response_mask.sum())
            for row, ((i, j), text) in enumerate(zip(chunk, decode_responses(tokenizer, b, eos_ids))):
                responses[i][j] = text
                ended[i][j] = bool(b.ended[row])
            bar.update(task, advance=len(chunk), info=f"{n_tokens / (time.perf_counter() - t0):.0f} tok/s")

    # 3. write atomically
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "eos_token_ids": eos_ids,
                "use_model_generation_config": cfg.use_model_generation_config}
    if cfg.use_model_generation_config:  # what the model's own config added (the options above override it)
        sampling["model_generation_config"] = model_generation_settings(model)
    lines = []
    for i, r in enumerate(rows):
        lines.append(json.dumps({"prompt_id": str(r.get("prompt_id", i)), "prompt": r["prompt"],
                                 "responses": responses[i], "ended": ended[i], "model": cfg.model,
                                 "sampling": sampling}, ensure_ascii=False))
    atomic_write_text(out, "\n".join(lines) + "\n")
    eos_rate = sum(map(sum, ended)) / max(1, len(rows) * cfg.k)
    say(f"[sample] {len(rows)} prompts x {cfg.k} responses, EOS rate {eos_rate:.2f}, "
                  f"{n_tokens / (time.perf_counter() - t0):.0f} tokens/s -> {out}")
    return out


def model_generation_settings(model: Any) -> dict[str, Any]:
    """The non-default settings of the model's own generation config (what --use_model_generation_config applies)."""
    from rlhf.models.generation import model_generation_config

    gc = model_generation_config(model)
    return {} if gc is None else {k: v for k, v in gc.to_diff_dict().items() if not k.startswith("_")
                                  and k != "transformers_version"}
